/* dest_raw.c - a raw file or a block device as a copy destination.
 *
 * A file is new (made under a temporary name beside the destination and
 * renamed over it on commit): zero stretches and all-zero blocks are left
 * as holes, and ftruncate sets its length at the end.  A block device is
 * written in place (never truncated nor renamed) and holds old data, so its
 * zero stretches are zeroed too: with BLKZEROOUT (the kernel uses the
 * device's write-zeroes or writes zeros itself), or by writing zeros where
 * the ioctl is not supported; or, when the caller promises the device
 * reads as zero (target_is_zero), left alone. */
#include <errno.h>
#include <linux/fs.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blockio.h"
#include "dest.h"
#include "error.h"
#include "util.h"

/* Zeros written at once where BLKZEROOUT is refused. */
#define ZERO_BUF (1u << 20)

struct rdest {
    struct dest d;
    struct blk out;
    bool blockdev;
    uint32_t sector;        /* the device's logical block size */
    atomic_bool no_zeroout; /* BLKZEROOUT is not supported: write zeros */
    uint8_t *zeros;         /* ZERO_BUF bytes, for a block device */
    struct blk_rmw rmw;     /* for the end of a disk that ends mid-sector */
};

/* Write LEN bytes at OFF (a multiple of BLK_ALIGN) of the device.  O_DIRECT
 * takes whole logical blocks: the end of a disk that is not a multiple of
 * them is read, overlaid and written back (the bytes after the disk keep
 * what the device held).  Only the last write of a disk ends so, and its
 * block lies after OFF: no other write shares it. */
static int dev_write(struct rdest *rd, const void *buf, size_t len, uint64_t off)
{
    size_t whole = len % rd->sector ? len & ~(size_t)(BLK_ALIGN - 1) : len;
    int e = whole ? blk_pwrite(&rd->out, buf, whole, off) : 0;
    if (e == 0 && whole < len)
        e = blk_pwrite_rmw(&rd->out, &rd->rmw, (const uint8_t *)buf + whole, len - whole,
                           off + whole);
    if (e == 0)
        blk_drop_range(&rd->out, off, len);
    return e;
}

/* A file: the blocks of BUF that are not all zero, in runs; the length is
 * rounded up to BLK_ALIGN (the tail is cut by ftruncate).  A device: all
 * of it, exactly. */
static int r_write(struct dest *d, uint64_t off, const void *buf, size_t len)
{
    struct rdest *rd = d->priv;
    const uint8_t *p = buf;
    if (rd->blockdev)
        return dev_write(rd, p, len, off);
    len = (len + BLK_ALIGN - 1) & ~(size_t)(BLK_ALIGN - 1);
    size_t i = 0;
    while (i < len) {
        if (buf_is_zero(p + i, BLK_ALIGN)) {
            i += BLK_ALIGN;
            continue;
        }
        size_t start = i;
        while (i < len && !buf_is_zero(p + i, BLK_ALIGN))
            i += BLK_ALIGN;
        int e = blk_pwrite(&rd->out, p + start, i - start, off + start);
        if (e < 0)
            return e;
        blk_drop_range(&rd->out, off + start, i - start);
    }
    return 0;
}

/* A device only (a file reads as zero where it is not written). */
static int r_zero(struct dest *d, uint64_t off, uint64_t len)
{
    struct rdest *rd = d->priv;
    /* BLKZEROOUT takes whole logical blocks; the end of a disk that is not
     * a multiple of them is written (dev_write). */
    uint64_t whole = off % rd->sector ? 0 : len - len % rd->sector;
    if (whole && !atomic_load(&rd->no_zeroout)) {
        uint64_t range[2] = { off, whole };
        if (ioctl(rd->out.fd, BLKZEROOUT, range) == 0) {
            off += whole;
            len -= whole;
        } else if (errno != EOPNOTSUPP && errno != ENOTTY) {
            return zerr_sys(errno, "cannot zero %llu bytes at offset %llu of '%s' (BLKZEROOUT)",
                            (unsigned long long)whole, (unsigned long long)off, d->name);
        } else {
            atomic_store(&rd->no_zeroout, true);
        }
    }
    while (len > 0) {
        size_t n = len < ZERO_BUF ? (size_t)len : ZERO_BUF;
        int e = dev_write(rd, rd->zeros, n, off);
        if (e < 0)
            return e;
        off += n;
        len -= n;
    }
    return 0;
}

static int r_commit(struct dest *d, struct zcow_convert_stats *st)
{
    struct rdest *rd = d->priv;
    if (!rd->blockdev && ftruncate(rd->out.fd, (off_t)d->size) != 0)
        return zerr_sys(errno, "cannot set the size of '%s'", d->name);
    int e = blk_commit(&rd->out);
    if (e < 0)
        return e;
    struct stat sb;
    st->bytes_out = rd->blockdev ? d->size : fstat(rd->out.fd, &sb) == 0 ? (uint64_t)sb.st_size : 0;
    return 0;
}

static void r_close(struct dest *d)
{
    struct rdest *rd = d->priv;
    blk_close(&rd->out);
    if (rd->blockdev)
        blk_rmw_destroy(&rd->rmw);
    free(rd->zeros);
    free(rd);
}

static const struct dest_ops raw_ops = {
    .name = "raw",
    .write = r_write,
    .zero = r_zero,
    .write_compressed = NULL,
    .commit = r_commit,
    .close = r_close,
};

int dest_raw_open(const struct zcow_convert_options *o, uint64_t size, struct dest **out)
{
    *out = NULL;
    struct rdest *rd = calloc(1, sizeof(*rd));
    if (!rd)
        return zerr(ENOMEM, "out of memory");
    struct dest *d = &rd->d;
    d->ops = &raw_ops;
    d->name = o->dst;
    d->size = size;
    d->granularity = BLK_ALIGN;
    d->priv = rd;
    struct stat sb;
    rd->blockdev = stat(o->dst, &sb) == 0 && S_ISBLK(sb.st_mode);
    if (o->target_is_zero && !rd->blockdev) {
        free(rd);
        return zerr(EINVAL,
                    "'%s': target-is-zero is for a block device or an NBD export (a new file "
                    "reads as zero anyway)",
                    o->dst);
    }
    d->unwritten_is_zero = !rd->blockdev || o->target_is_zero;
    d->in_place = rd->blockdev;
    if (rd->blockdev && !(rd->zeros = blk_zalloc(ZERO_BUF))) {
        free(rd);
        return zerr(ENOMEM, "out of memory");
    }
    bool direct = o->create.cache_mode == ZCOW_CACHE_NONE;
    int e = blk_create(&rd->out, o->dst, direct, o->create.drop_pages, !rd->blockdev);
    if (e < 0) {
        free(rd->zeros);
        free(rd);
        return e;
    }
    if (rd->blockdev) {
        blk_rmw_init(&rd->rmw);
        int sector = 0;
        rd->sector =
            ioctl(rd->out.fd, BLKSSZGET, &sector) == 0 && sector > 0 ? (uint32_t)sector : 512;
        int64_t dev_size = blk_size(&rd->out);
        if (dev_size >= 0 && (uint64_t)dev_size < size) {
            e = zerr(ENOSPC,
                     "cannot write '%s': the device (%lld bytes) is smaller than the "
                     "image (%llu bytes)",
                     o->dst, (long long)dev_size, (unsigned long long)size);
            r_close(d);
            return e;
        }
    }
    *out = d;
    return 0;
}
