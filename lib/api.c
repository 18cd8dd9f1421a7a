/* api.c - the public entry points: check arguments, dispatch to the
 * writer or the reader. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "image.h"
#include "reader.h"
#include "writer.h"

void zcow_create_options_init(struct zcow_create_options *o)
{
    memset(o, 0, sizeof(*o));
    o->cluster_size = 65536;
    o->compression_type = ZCOW_COMPRESSION_ZLIB;
    o->level = ZCOW_LEVEL_DEFAULT;
    o->cache_mode = ZCOW_CACHE_NONE;
    o->write_cache = 1;
}

static zcow_image *new_handle(void)
{
    zcow_image *img = calloc(1, sizeof(*img));
    if (!img)
        zerr(ENOMEM, "out of memory");
    return img;
}

int zcow_create(const char *path, const struct zcow_create_options *opts, zcow_image **out)
{
    *out = NULL;
    if (!path || !opts)
        return zerr(EINVAL, "zcow_create: missing path or options");
    zcow_image *img = new_handle();
    if (!img)
        return -ENOMEM;
    int r = writer_create(path, opts, &img->w);
    if (r < 0) {
        free(img);
        return r;
    }
    *out = img;
    return 0;
}

int zcow_open(const char *path, const char *format, int direct, zcow_image **out)
{
    *out = NULL;
    zcow_image *img = new_handle();
    if (!img)
        return -ENOMEM;
    int r = reader_open(path, format, direct, &img->r);
    if (r < 0) {
        free(img);
        return r;
    }
    *out = img;
    return 0;
}

zcow_image *zcow_get_backing(zcow_image *img)
{
    if (!img || !img->r || img->backing)
        return img ? img->backing : NULL;
    struct reader *b = reader_backing(img->r);
    if (!b || !(img->backing = new_handle()))
        return NULL;
    img->backing->r = b;
    img->backing->borrowed = 1;
    return img->backing;
}

/* Free the handles zcow_get_backing() made under IMG (their readers
 * belong to IMG's chain). */
static void free_backing_handles(zcow_image *img)
{
    while (img) {
        zcow_image *next = img->backing;
        if (img->borrowed)
            free(img);
        img = next;
    }
}

static int not_writable(void) { return zerr(EBADF, "image is open read-only"); }
static int not_readable(void) { return zerr(ENOTSUP, "not supported on an image being written"); }

int zcow_write(zcow_image *img, uint64_t off, const void *buf, size_t len)
{
    return img->w ? writer_write(img->w, off, buf, len) : not_writable();
}

int zcow_write_cluster(zcow_image *img, uint64_t off, const void *buf, size_t len)
{
    if (!img->w)
        return not_writable();
    if (len > writer_cluster_size(img->w))
        return zerr(EINVAL, "zcow_write_cluster: %zu bytes is more than a cluster", len);
    return writer_write(img->w, off, buf, len);
}

int zcow_write_compressed(zcow_image *img, uint64_t off, const void *cdata, size_t clen)
{
    return img->w ? writer_write_compressed(img->w, off, cdata, clen) : not_writable();
}

int zcow_read(zcow_image *img, uint64_t off, void *buf, size_t len)
{
    return img->w ? writer_read(img->w, off, buf, len) : reader_read(img->r, off, buf, len);
}

int zcow_flush(zcow_image *img)
{
    return img->w ? writer_flush(img->w) : 0;
}

int zcow_cluster_info(zcow_image *img, uint64_t off, struct zcow_cluster_info *info)
{
    return img->r ? reader_cluster_info(img->r, off, info) : not_readable();
}

int zcow_read_compressed(zcow_image *img, const struct zcow_cluster_info *info, void *buf,
                         size_t cap)
{
    return img->r ? reader_read_compressed(img->r, info, buf, cap) : not_readable();
}

int zcow_get_info(zcow_image *img, struct zcow_info *info)
{
    return img->w ? writer_get_info(img->w, info) : reader_get_info(img->r, info);
}

int zcow_close(zcow_image *img)
{
    if (!img || img->borrowed)
        return 0;
    int r = 0;
    if (img->w)
        r = writer_close(img->w);
    free_backing_handles(img->backing);
    reader_close(img->r);
    free(img);
    return r;
}

void zcow_abort(zcow_image *img)
{
    if (!img || img->borrowed)
        return;
    if (img->w)
        writer_abort(img->w);
    free_backing_handles(img->backing);
    reader_close(img->r);
    free(img);
}
