/* dest_qcow2.c - a qcow2 image as a copy destination, through the public
 * writer API (zcow_create, zcow_write, ...): each data stretch is
 * compressed cluster by cluster in the calling thread and placed by the
 * writer's allocator and write cache; or, uncompressed (create.uncompressed,
 * an image to run a VM from), written as runs of normal clusters, zeros
 * left unallocated.  Either way under a temporary name, renamed on commit. */
#include <errno.h>
#include <stdlib.h>

#include "blockio.h"
#include "dest.h"
#include "error.h"

struct qdest {
    struct dest d;
    zcow_image *img; /* NULL once closed by commit */
    uint8_t *zeros;  /* one cluster of zeros, with a backing file */
};

static int q_write(struct dest *d, uint64_t off, const void *buf, size_t len)
{
    struct qdest *q = d->priv;
    return zcow_write(q->img, off, buf, len);
}

/* Over a backing file a stretch that reads as zero must say so: with zero
 * clusters (an all-zero cluster is stored as one). */
static int q_zero(struct dest *d, uint64_t off, uint64_t len)
{
    struct qdest *q = d->priv;
    for (uint64_t end = off + len; off < end; off += d->cluster_size) {
        uint64_t n = end - off < d->cluster_size ? end - off : d->cluster_size;
        int r = zcow_write_cluster(q->img, off, q->zeros, (size_t)n);
        if (r < 0)
            return r;
    }
    return 0;
}

static int q_write_compressed(struct dest *d, uint64_t off, const void *buf, size_t len)
{
    struct qdest *q = d->priv;
    return zcow_write_compressed(q->img, off, buf, len);
}

static int q_commit(struct dest *d, struct zcow_convert_stats *st)
{
    struct qdest *q = d->priv;
    struct zcow_info info;
    zcow_get_info(q->img, &info);
    st->clusters_compressed = info.clusters_compressed - st->clusters_copied;
    st->clusters_normal = info.clusters_normal;
    st->clusters_zero = info.clusters_zero;
    int r = zcow_close(q->img);
    q->img = NULL;
    return r;
}

static void q_close(struct dest *d)
{
    struct qdest *q = d->priv;
    if (q->img)
        zcow_abort(q->img);
    free(q->zeros);
    free(q);
}

static const struct dest_ops qcow2_ops = {
    .name = "qcow2",
    .write = q_write,
    .zero = q_zero,
    .write_compressed = q_write_compressed,
    .commit = q_commit,
    .close = q_close,
};

/* Uncompressed: compressed clusters of the source are read and written
 * as data. */
static const struct dest_ops qcow2_plain_ops = {
    .name = "qcow2",
    .write = q_write,
    .zero = q_zero,
    .write_compressed = NULL,
    .commit = q_commit,
    .close = q_close,
};

int dest_qcow2_open(const struct zcow_convert_options *o, uint64_t size, struct dest **out)
{
    *out = NULL;
    struct zcow_create_options copts = o->create;
    copts.virtual_size = (size + 511) & ~(uint64_t)511;
    copts.atomic = 1;
    struct qdest *q = calloc(1, sizeof(*q));
    if (!q)
        return zerr(ENOMEM, "out of memory");
    struct dest *d = &q->d;
    d->ops = copts.uncompressed ? &qcow2_plain_ops : &qcow2_ops;
    d->name = o->dst;
    d->size = copts.virtual_size;
    d->cluster_size = copts.cluster_size ? copts.cluster_size : 65536;
    d->granularity = d->cluster_size;
    d->compression_type = copts.compression_type;
    d->compresses = !copts.uncompressed;
    /* Unallocated clusters read from the backing file, if there is one. */
    d->unwritten_is_zero = !copts.backing_file;
    d->priv = q;
    if (!d->unwritten_is_zero && !(q->zeros = blk_zalloc(d->cluster_size))) {
        free(q);
        return zerr(ENOMEM, "out of memory");
    }
    int r = zcow_create(o->dst, &copts, &q->img);
    if (r < 0) {
        free(q->zeros);
        free(q);
        return r;
    }
    *out = d;
    return 0;
}
