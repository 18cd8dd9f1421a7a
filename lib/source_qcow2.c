/* source_qcow2.c - a qcow2 image (with its backing chain) as a conversion
 * source, on top of the reader.
 *
 * Compressed clusters can go across untouched when the output uses the
 * same compression type and cluster size, from whichever image of the
 * chain holds them.  qcow2 records a compressed
 * stream in whole 512-byte sectors, so the stored bytes may end with the
 * start of the next stream; copying those would make the new image's
 * descriptor claim bytes that are not ours.  So the exact end of the
 * stream is found by inflating it (codec_stream_length): the copy gets exactly the stream,
 * and a stream that does not decode to exactly one cluster is not copied
 * (it is read, and reported, by the normal path). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "error.h"
#include "reader.h"
#include "source.h"
#include "zcow.h"

static int q_pread(struct source *s, void *buf, size_t len, uint64_t off)
{
    return reader_read(s->priv, off, buf, len);
}

static int q_extent(struct source *s, uint64_t off, uint64_t max, uint64_t *len,
                    enum extent_kind *kind)
{
    int zero = 0;
    int e = reader_extent(s->priv, off, max, len, &zero);
    *kind = zero ? EXTENT_ZERO : EXTENT_DATA;
    return e;
}

/* SOURCE_QCOW2_TOP: what the top image leaves to its backing file is
 * UNCHANGED, so a copy visits only what the image itself holds. */
static int q_top_extent(struct source *s, uint64_t off, uint64_t max, uint64_t *len,
                        enum extent_kind *kind)
{
    int k = READER_DATA;
    int e = reader_top_extent(s->priv, off, max, len, &k);
    *kind = k == READER_DATA ? EXTENT_DATA : k == READER_ZERO ? EXTENT_ZERO : EXTENT_UNCHANGED;
    return e;
}

static int q_read_compressed(struct source *s, uint64_t off, int type, uint32_t cluster_size,
                             void *buf, size_t cap)
{
    if ((off & (cluster_size - 1)) || off >= s->size)
        return 0;
    /* Flattening a chain: the cluster is copied from the image that holds
     * it, whichever of the chain that is. */
    struct reader *r;
    int e = reader_layer_of(s->priv, off, cluster_size, &r);
    if (e < 0)
        return e;
    if (!r || reader_cluster_size(r) != cluster_size || reader_compression_type(r) != type)
        return 0;
    struct zcow_cluster_info ci;
    if ((e = reader_cluster_info(r, off, &ci)) < 0)
        return e;
    /* Whole sectors do not fit: a descriptor no writer makes; recompress. */
    if (ci.kind != ZCOW_CLUSTER_COMPRESSED || ci.compressed_len > cap)
        return 0;
    int n = reader_read_compressed(r, &ci, buf, cap);
    if (n < 0)
        return n;
    size_t len = codec_stream_length(type, buf, (size_t)n, cluster_size);
    /* A stream the new image cannot hold as compressed is recompressed. */
    return len > 0 && len <= cluster_size - 1 ? (int)len : 0;
}

static void q_close(struct source *s)
{
    reader_close(s->priv);
    free(s->name);
    free(s);
}

static const struct source_ops qcow2_ops = {
    .name = "qcow2",
    .pread = q_pread,
    .extent = q_extent,
    .read_compressed = q_read_compressed,
    .close = q_close,
};

static const struct source_ops qcow2_top_ops = {
    .name = "qcow2",
    .pread = q_pread,
    .extent = q_top_extent,
    .read_compressed = q_read_compressed,
    .close = q_close,
};

int source_qcow2_open(const char *name, bool direct, struct source **out)
{
    return source_qcow2_open_flags(name, direct, 0, out);
}

int source_qcow2_open_flags(const char *name, bool direct, unsigned flags, struct source **out)
{
    *out = NULL;
    struct source *s = calloc(1, sizeof(*s));
    if (!s || !(s->name = strdup(name))) {
        free(s);
        return zerr(ENOMEM, "out of memory");
    }
    struct reader *r;
    int e = reader_open(name, "qcow2", direct, &r);
    if (e < 0) {
        free(s->name);
        free(s);
        return e;
    }
    if (flags & SOURCE_QCOW2_EXACT)
        reader_set_exact(r);
    s->ops = flags & SOURCE_QCOW2_TOP ? &qcow2_top_ops : &qcow2_ops;
    s->priv = r;
    s->size = reader_size(r);
    *out = s;
    return 0;
}
