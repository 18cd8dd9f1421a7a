/* restore.c - convert_to_raw(): any source (a qcow2 image, a raw file) to
 * a sparse raw file or a block device.
 *
 * Workers take 4 MiB chunks in order from an atomic counter; each reads
 * its chunk through the source and writes the blocks that hold data.  On a
 * regular file, zero extents and all-zero blocks are left as holes (the
 * file is new, and ftruncate sets its length at the end); on a block
 * device they must be written, since the device holds old data. */
#include <errno.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "blockio.h"
#include "convert.h"
#include "error.h"

#define CHUNK (4u << 20)
#define MAX_WORKERS 256

struct restore {
    const struct zcow_convert_options *o;
    struct source *src;
    struct blk out;
    uint64_t size;
    uint64_t chunks;
    bool blockdev;
    atomic_uint_fast64_t next;  /* next chunk to take */
    atomic_uint_fast64_t done;  /* bytes finished */
    atomic_int failed;
    pthread_mutex_t lock;       /* guards progress calls */
    struct zerr_first first;    /* the first worker's failure */
    uint64_t reported;
};

static void fail(struct restore *j, int err)
{
    zerr_keep(&j->first, err);
    atomic_store(&j->failed, 1);
}

static void progress(struct restore *j, uint64_t bytes)
{
    uint64_t done = atomic_fetch_add(&j->done, bytes) + bytes;
    if (!j->o->progress)
        return;
    /* One caller at a time, and never backwards. */
    pthread_mutex_lock(&j->lock);
    if (done > j->reported) {
        j->reported = done;
        j->o->progress(j->o->progress_opaque, done, j->size);
    }
    pthread_mutex_unlock(&j->lock);
}

static bool all_zero(const uint8_t *p, size_t len)
{
    const uint64_t *w = (const uint64_t *)p; /* blk_alloc'ed: aligned */
    for (size_t i = 0; i < len / 8; i++)
        if (w[i])
            return false;
    for (size_t i = len & ~(size_t)7; i < len; i++)
        if (p[i])
            return false;
    return true;
}

/* Zero [OFF, OFF+LEN) of a block device: BLKZEROOUT, else write ZEROS. */
static int zero_device(struct restore *j, uint64_t off, uint64_t len, const uint8_t *zeros)
{
    uint64_t range[2] = { off, len };
    if (!(off % 512) && !(len % 512) && ioctl(j->out.fd, BLKZEROOUT, range) == 0)
        return 0;
    while (len > 0) {
        size_t n = len < CHUNK ? (size_t)len : CHUNK;
        int e = blk_pwrite(&j->out, zeros, n, off);
        if (e < 0)
            return e;
        off += n;
        len -= n;
    }
    return 0;
}

/* Write the blocks of BUF (the chunk at OFF, LEN bytes, LEN rounded up to
 * BLK_ALIGN with zeros) that are not all zero, in runs. */
static int write_data(struct restore *j, const uint8_t *buf, uint64_t off, size_t len)
{
    size_t i = 0;
    while (i < len) {
        size_t n = len - i < BLK_ALIGN ? len - i : BLK_ALIGN;
        if (!j->blockdev && all_zero(buf + i, n)) {
            i += n;
            continue;
        }
        size_t start = i;
        while (i < len) {
            n = len - i < BLK_ALIGN ? len - i : BLK_ALIGN;
            if (!j->blockdev && all_zero(buf + i, n))
                break;
            i += n;
        }
        int e = blk_pwrite(&j->out, buf + start, i - start, off + start);
        if (e < 0)
            return e;
        blk_drop_range(&j->out, off + start, i - start);
    }
    return 0;
}

static int restore_chunk(struct restore *j, uint64_t off, uint8_t *buf)
{
    uint64_t len = j->size - off < CHUNK ? j->size - off : CHUNK;
    /* Under O_DIRECT the tail is written whole and cut by ftruncate; a
     * device is written exactly up to the image's size. */
    size_t io = (size_t)((len + BLK_ALIGN - 1) & ~(uint64_t)(BLK_ALIGN - 1));
    size_t wlen = j->blockdev ? (size_t)len : io;
    const struct source_ops *ops = j->src->ops;

    /* A chunk that the source knows to be zero is not read at all. */
    if (ops->extent) {
        uint64_t elen;
        enum extent_kind kind = EXTENT_DATA;
        int e = ops->extent(j->src, off, len, &elen, &kind);
        if (e < 0)
            return e;
        if (kind == EXTENT_ZERO && elen >= len) {
            if (!j->blockdev)
                return 0;
            memset(buf, 0, wlen);
            return zero_device(j, off, wlen, buf);
        }
    }
    int e = ops->pread(j->src, buf, io, off);
    if (e < 0)
        return e;
    return write_data(j, buf, off, wlen);
}

static void *worker(void *arg)
{
    struct restore *j = arg;
    uint8_t *buf = blk_alloc(CHUNK);
    if (!buf) {
        fail(j, zerr(ENOMEM, "out of memory"));
        return NULL;
    }
    while (!atomic_load(&j->failed)) {
        uint64_t c = atomic_fetch_add(&j->next, 1);
        if (c >= j->chunks)
            break;
        uint64_t off = c * CHUNK;
        int e = restore_chunk(j, off, buf);
        if (e < 0) {
            fail(j, e);
            break;
        }
        progress(j, j->size - off < CHUNK ? j->size - off : CHUNK);
    }
    free(buf);
    return NULL;
}

int convert_to_raw(const struct zcow_convert_options *o, struct source *src,
                   struct zcow_convert_stats *st)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct restore *j = calloc(1, sizeof(*j));
    if (!j)
        return zerr(ENOMEM, "out of memory");
    j->o = o;
    j->src = src;
    j->size = src->size;
    j->chunks = (j->size + CHUNK - 1) / CHUNK;
    pthread_mutex_init(&j->lock, NULL);
    zerr_first_init(&j->first);

    /* A device is written in place; a file gets a temporary name beside
     * the destination, renamed over it when complete. */
    struct stat sb;
    j->blockdev = stat(o->dst, &sb) == 0 && S_ISBLK(sb.st_mode);
    bool direct = o->create.cache_mode == ZCOW_CACHE_NONE;
    int e = blk_create(&j->out, o->dst, direct, o->create.drop_pages, !j->blockdev);
    if (e < 0)
        goto out_free;
    if (j->blockdev) {
        int64_t dev_size = blk_size(&j->out);
        if (dev_size >= 0 && (uint64_t)dev_size < j->size) {
            e = zerr(ENOSPC, "cannot write '%s': the device (%lld bytes) is smaller than the "
                     "image (%llu bytes)", o->dst, (long long)dev_size,
                     (unsigned long long)j->size);
            goto out_close;
        }
    }

    /* Restoring waits on I/O more than it computes: unless told, keep
     * more chunks in flight than there are CPUs (measured: 2 CPUs, 8
     * workers restore 1 GiB ~30% faster than 2 under O_DIRECT). */
    int n = convert_threads(o);
    if (o->threads <= 0)
        n = n * 2 < 4 ? 4 : n * 2;
    if (n > MAX_WORKERS)
        n = MAX_WORKERS;
    if ((uint64_t)n > j->chunks)
        n = j->chunks ? (int)j->chunks : 1;
    pthread_t tids[MAX_WORKERS];
    int started = 0;
    for (; started < n; started++)
        if (pthread_create(&tids[started], NULL, worker, j) != 0)
            break;
    if (started == 0)
        worker(j); /* no thread to spare: do it here */
    for (int i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    if (zerr_failed(&j->first)) {
        e = zerr_kept(&j->first);
        goto out_close;
    }

    if (!j->blockdev && ftruncate(j->out.fd, (off_t)j->size) != 0) {
        e = zerr_sys(errno, "cannot set the size of '%s'", o->dst);
        goto out_close;
    }
    if ((e = blk_commit(&j->out)) < 0)
        goto out_close;
    st->bytes_in = j->size;
    st->bytes_out = j->blockdev ? j->size : (fstat(j->out.fd, &sb) == 0 ? (uint64_t)sb.st_size : 0);
    if (o->progress && j->reported < j->size)
        o->progress(o->progress_opaque, j->size, j->size);
out_close:
    blk_close(&j->out);
out_free:
    pthread_mutex_destroy(&j->lock);
    zerr_first_destroy(&j->first);
    free(j);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    st->seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    return e;
}
