/* api.c - the public entry points on image handles: check arguments,
 * dispatch to the writer or the reader.  The options and result objects
 * are in options.c, the entry points of 0.1 in compat_0_1.c. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "image.h"
#include "reader.h"
#include "writer.h"

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
    int r = create_options_check_cache_clusters(opts->cache_clusters);
    if (r < 0)
        return r;
    zcow_image *img = new_handle();
    if (!img)
        return -ENOMEM;
    r = writer_create(path, opts, &img->w);
    if (r < 0) {
        free(img);
        return r;
    }
    *out = img;
    return 0;
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

/* The handles of IMG's backing chain, made when IMG is opened so that
 * zcow_get_backing() only reads (any thread may call it). */
static int make_backing_handles(zcow_image *img)
{
    for (zcow_image *h = img; reader_backing(h->r); h = h->backing) {
        if (!(h->backing = new_handle()))
            return -ENOMEM;
        h->backing->r = reader_backing(h->r);
        h->backing->borrowed = 1;
        h->backing->above = h;
    }
    return 0;
}

int zcow_open(const char *path, const char *format, int direct, zcow_image **out)
{
    *out = NULL;
    zcow_image *img = new_handle();
    if (!img)
        return -ENOMEM;
    int r = reader_open(path, format, direct, &img->r);
    if (r == 0 && (!(img->path = strdup(path)) || make_backing_handles(img) < 0)) {
        free_backing_handles(img->backing);
        free(img->path);
        reader_close(img->r);
        r = zerr(ENOMEM, "out of memory");
    }
    if (r < 0) {
        free(img);
        return r;
    }
    *out = img;
    return 0;
}


zcow_image *zcow_get_backing(zcow_image *img) { return img ? img->backing : NULL; }


/* The name IMG was opened by: its own, or for a backing handle the path
 * the image above resolved, which that image's reader owns.  The info
 * walks the L2 tables of the image above: a cost only the check, which
 * reads a whole file, pays.  Nothing is cached, so concurrent checks of
 * one handle do not race. */
static int image_path(const zcow_image *img, const char **path)
{
    if (!img->borrowed) {
        *path = img->path;
        return 0;
    }
    struct zcow_info info;
    int r = reader_get_info(img->above->r, &info);
    if (r < 0)
        return r;
    if (!info.backing_path)
        return zerr(EINVAL, "zcow_check_image: the backing file has no path");
    *path = info.backing_path;
    return 0;
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

int zcow_flush(zcow_image *img) { return img->w ? writer_flush(img->w) : 0; }

int zcow_cluster_info(zcow_image *img, uint64_t off, struct zcow_cluster_info *info)
{
    return img->r ? reader_cluster_info(img->r, off, info) : not_readable();
}

int zcow_read_compressed(zcow_image *img, const struct zcow_cluster_info *info, void *buf,
                         size_t cap)
{
    return img->r ? reader_read_compressed(img->r, info, buf, cap) : not_readable();
}

int zcow_get_info(zcow_image *img, zcow_info *info)
{
    if (!img || !info)
        return zerr(EINVAL, "zcow_get_info: missing image or info object");
    return img->w ? writer_get_info(img->w, info) : reader_get_info(img->r, info);
}

int zcow_check_image(zcow_image *img, unsigned flags, zcow_check_report_fn *report, void *opaque,
                     zcow_check_result *res)
{
    if (res)
        memset(res, 0, sizeof(*res));
    if (!img)
        return zerr(EINVAL, "zcow_check_image: missing image");
    if (img->w)
        return not_readable();
    const char *path = NULL;
    int r = image_path(img, &path);
    return r < 0 ? r : zcow_check(path, flags, report, opaque, res);
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
    free(img->path);
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
    free(img->path);
    free(img);
}
