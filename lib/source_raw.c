/* source_raw.c - a raw file or block device as a conversion source.
 * Holes are found with SEEK_DATA/SEEK_HOLE, so they are never read. */
#include <errno.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "blockio.h"
#include "error.h"
#include "source.h"

static int raw_pread(struct source *s, void *buf, size_t len, uint64_t off)
{
    struct blk *b = s->priv;
    if (off >= s->size) {
        memset(buf, 0, len);
        return 0;
    }
    int64_t n = blk_pread(b, buf, len, off);
    if (n < 0)
        return (int)n;
    /* Past the end, or a file that shrank under us: zeros. */
    memset((uint8_t *)buf + n, 0, len - (size_t)n);
    return 0;
}

static int raw_extent(struct source *s, uint64_t off, uint64_t max, uint64_t *len,
                      enum extent_kind *kind)
{
    struct blk *b = s->priv;
    if (off >= s->size) {
        *len = UINT64_MAX - off;
        *kind = EXTENT_ZERO;
        goto out;
    }
    off_t data = lseek(b->fd, (off_t)off, SEEK_DATA);
    if (data < 0 && errno == ENXIO) { /* a hole up to the end */
        *len = s->size - off;
        *kind = EXTENT_ZERO;
        goto out;
    }
    if (data < 0) { /* SEEK_DATA unsupported: all data */
        *len = s->size - off;
        *kind = EXTENT_DATA;
        goto out;
    }
    if ((uint64_t)data > off) {
        *len = (uint64_t)data - off;
        *kind = EXTENT_ZERO;
        goto out;
    }
    off_t hole = lseek(b->fd, (off_t)off, SEEK_HOLE);
    *len = (hole < 0 || (uint64_t)hole <= off ? s->size : (uint64_t)hole) - off;
    *kind = EXTENT_DATA;
out:
    if (*len > max)
        *len = max;
    return 0;
}

static void raw_close(struct source *s)
{
    blk_close(s->priv);
    free(s->priv);
    free(s->name);
    free(s);
}

static const struct source_ops raw_ops = {
    .name = "raw",
    .pread = raw_pread,
    .extent = raw_extent,
    .read_compressed = NULL,
    .close = raw_close,
};

int source_raw_open(const char *name, bool direct, struct source **out)
{
    struct source *s = calloc(1, sizeof(*s));
    struct blk *b = calloc(1, sizeof(*b));
    if (!s || !b || !(s->name = strdup(name))) {
        free(s);
        free(b);
        return zerr(ENOMEM, "out of memory");
    }
    int r = blk_open_read(b, name, direct);
    if (r < 0) {
        free(s->name);
        free(s);
        free(b);
        return r;
    }
    int64_t size;
    if (b->is_blockdev) {
        uint64_t bytes = 0;
        size = ioctl(b->fd, BLKGETSIZE64, &bytes) == 0 ? (int64_t)bytes : blk_size(b);
    } else {
        size = blk_size(b);
    }
    if (size < 0) {
        blk_close(b);
        free(b);
        free(s->name);
        free(s);
        return (int)size;
    }
    s->ops = &raw_ops;
    s->priv = b;
    s->size = (uint64_t)size;
    *out = s;
    return 0;
}
