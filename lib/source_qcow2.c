/* source_qcow2.c - a qcow2 image (with its backing chain) as a conversion
 * source, on top of the reader.
 *
 * Compressed clusters can go across untouched when the output uses the
 * same compression type and cluster size.  qcow2 records a compressed
 * stream in whole 512-byte sectors, so the stored bytes may end with the
 * start of the next stream; copying those would make the new image's
 * descriptor claim bytes that are not ours.  So the exact end of the
 * stream is found by inflating it here: the copy gets exactly the stream,
 * and a stream that does not decode to exactly one cluster is not copied
 * (it is read, and reported, by the normal path). */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "error.h"
#include "reader.h"
#include "source.h"
#include "zcow.h"

/* Inflated bytes go through this much scratch: only the input position
 * matters.  Both inflaters keep their own window. */
#define SCRATCH_OUT (32u << 10)

struct stream_thread {
    z_stream z;
    bool z_ready;
    ZSTD_DCtx *zstd;
    uint8_t *in;        /* the stored bytes of one compressed cluster */
    size_t in_cap;
    uint8_t out[SCRATCH_OUT];
};

static pthread_key_t stream_key;
static pthread_once_t stream_once = PTHREAD_ONCE_INIT;

static void stream_thread_free(void *p)
{
    struct stream_thread *t = p;
    if (t->z_ready)
        inflateEnd(&t->z);
    ZSTD_freeDCtx(t->zstd);
    free(t->in);
    free(t);
}

static void stream_make_key(void) { pthread_key_create(&stream_key, stream_thread_free); }

static struct stream_thread *stream_thread(void)
{
    pthread_once(&stream_once, stream_make_key);
    struct stream_thread *t = pthread_getspecific(stream_key);
    if (t)
        return t;
    t = calloc(1, sizeof(*t));
    if (t && pthread_setspecific(stream_key, t) != 0) {
        free(t);
        t = NULL;
    }
    return t;
}

/* Raw deflate with QEMU's 4 KiB window: a stream that needs a larger one
 * is refused, as QEMU would refuse to read it. */
static size_t deflate_length(struct stream_thread *t, const uint8_t *in, size_t in_len,
                             size_t out_len)
{
    if (!t->z_ready) {
        memset(&t->z, 0, sizeof(t->z));
        if (inflateInit2(&t->z, -12) != Z_OK)
            return 0;
        t->z_ready = true;
    } else if (inflateReset(&t->z) != Z_OK) {
        return 0;
    }
    t->z.next_in = (Bytef *)in;
    t->z.avail_in = (uInt)in_len;
    size_t total = 0;
    for (;;) {
        t->z.next_out = t->out;
        t->z.avail_out = SCRATCH_OUT;
        int r = inflate(&t->z, Z_NO_FLUSH);
        total += SCRATCH_OUT - t->z.avail_out;
        if (total > out_len)
            return 0;
        if (r == Z_STREAM_END)
            break;
        if (r != Z_OK)
            return 0; /* bad data, or the input ends inside the stream */
    }
    return total == out_len ? in_len - t->z.avail_in : 0;
}

/* zstd frames, one after another, until exactly OUT_LEN bytes are out and
 * the last frame is complete. */
static size_t zstd_length(struct stream_thread *t, const uint8_t *in, size_t in_len,
                          size_t out_len)
{
    if (!t->zstd && !(t->zstd = ZSTD_createDCtx()))
        return 0;
    ZSTD_DCtx_reset(t->zstd, ZSTD_reset_session_only);
    ZSTD_inBuffer ib = { in, in_len, 0 };
    size_t total = 0;
    for (;;) {
        ZSTD_outBuffer ob = { t->out, SCRATCH_OUT, 0 };
        size_t before = ib.pos;
        size_t r = ZSTD_decompressStream(t->zstd, &ob, &ib);
        if (ZSTD_isError(r))
            return 0;
        total += ob.pos;
        if (total > out_len)
            return 0;
        if (r == 0 && total == out_len)
            return ib.pos;
        if (ib.pos == before && ob.pos == 0)
            return 0; /* the input ends inside a frame */
    }
}

/* The exact byte count of the compressed stream at IN that decodes to
 * OUT_LEN bytes; 0 if there is none. */
static size_t stream_length(struct stream_thread *t, int type, const uint8_t *in, size_t in_len,
                            size_t out_len)
{
    if (type == ZCOW_COMPRESSION_ZLIB)
        return deflate_length(t, in, in_len, out_len);
    if (type == ZCOW_COMPRESSION_ZSTD)
        return zstd_length(t, in, in_len, out_len);
    return 0;
}

static int q_pread(struct source *s, void *buf, size_t len, uint64_t off)
{
    return reader_read(s->priv, off, buf, len);
}

static int q_extent(struct source *s, uint64_t off, uint64_t *len, int *is_zero)
{
    return reader_extent(s->priv, off, len, is_zero);
}

static int q_read_compressed(struct source *s, uint64_t off, int type, uint32_t cluster_size,
                             void *buf, size_t cap)
{
    struct reader *r = s->priv;
    if (reader_cluster_size(r) != cluster_size || reader_compression_type(r) != type ||
        (off & (cluster_size - 1)) || off >= s->size)
        return 0;
    struct zcow_cluster_info ci;
    int e = reader_cluster_info(r, off, &ci);
    if (e < 0)
        return e;
    if (ci.kind != ZCOW_CLUSTER_COMPRESSED)
        return 0;
    struct stream_thread *t = stream_thread();
    if (!t)
        return zerr(ENOMEM, "out of memory");
    if (t->in_cap < ci.compressed_len) {
        uint8_t *p = realloc(t->in, ci.compressed_len);
        if (!p)
            return zerr(ENOMEM, "out of memory");
        t->in = p;
        t->in_cap = ci.compressed_len;
    }
    int n = reader_read_compressed(r, &ci, t->in, t->in_cap);
    if (n < 0)
        return n;
    size_t len = stream_length(t, type, t->in, (size_t)n, cluster_size);
    /* A stream the new image cannot hold as compressed is recompressed. */
    if (len == 0 || len > cap || len > cluster_size - 1)
        return 0;
    memcpy(buf, t->in, len);
    return (int)len;
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

int source_qcow2_open(const char *name, bool direct, struct source **out)
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
    s->ops = &qcow2_ops;
    s->priv = r;
    s->size = reader_size(r);
    *out = s;
    return 0;
}
