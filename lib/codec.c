/* codec.c - per-thread compression contexts for the zlib and zstd types. */
#include "codec.h"

#include <errno.h>
#include <isa-l/igzip_lib.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "zcow.h"

/* QEMU inflates with windowBits -12: no back-reference beyond 4 KiB. */
#define DEFLATE_WINDOW_BITS 12

struct codec_thread {
    struct isal_zstream isal;
    uint8_t *isal_level_buf;
    size_t isal_level_buf_size;
    struct inflate_state *inflate;
    z_stream zdef;
    int zdef_level; /* -1: not initialised */
    ZSTD_CCtx *zstd_c;
    ZSTD_DCtx *zstd_d;
    z_stream zinf;          /* for codec_stream_length(), zlib type */
    bool zinf_ready;
    uint8_t *scratch;       /* its discarded output */
};

/* codec_stream_length() inflates through this much scratch. */
#define SCRATCH_OUT (32u << 10)

static pthread_key_t thread_key;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;

static void codec_thread_free(void *p)
{
    struct codec_thread *t = p;
    if (!t)
        return;
    free(t->isal_level_buf);
    free(t->inflate);
    if (t->zdef_level >= 0)
        deflateEnd(&t->zdef);
    ZSTD_freeCCtx(t->zstd_c);
    ZSTD_freeDCtx(t->zstd_d);
    if (t->zinf_ready)
        inflateEnd(&t->zinf);
    free(t->scratch);
    free(t);
}

static void make_key(void) { pthread_key_create(&thread_key, codec_thread_free); }

static struct codec_thread *thread_ctx(void)
{
    pthread_once(&key_once, make_key);
    struct codec_thread *t = pthread_getspecific(thread_key);
    if (t)
        return t;
    t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->zdef_level = -1;
    if (pthread_setspecific(thread_key, t) != 0) {
        free(t);
        return NULL;
    }
    return t;
}

int codec_resolve_level(int type, int level)
{
    if (type == ZCOW_COMPRESSION_ZSTD) {
        if (level == ZCOW_LEVEL_DEFAULT)
            return CODEC_ZSTD_DEFAULT_LEVEL;
        return level >= 1 && level <= CODEC_ZSTD_MAX_LEVEL ? level : -EINVAL;
    }
    if (type != ZCOW_COMPRESSION_ZLIB)
        return -EINVAL;
    if (level == ZCOW_LEVEL_DEFAULT)
        return CODEC_ZLIB_DEFAULT_LEVEL;
    return level >= 0 && level <= CODEC_ZLIB_MAX_LEVEL ? level : -EINVAL;
}

static size_t isal_level_buf_size(int level)
{
    switch (level) {
    case 1: return ISAL_DEF_LVL1_DEFAULT;
    case 2: return ISAL_DEF_LVL2_DEFAULT;
    case 3: return ISAL_DEF_LVL3_DEFAULT;
    default: return 0;
    }
}

static int compress_isal(struct codec_thread *t, int level, const void *in, size_t in_len,
                         void *out, size_t out_cap)
{
    size_t need = isal_level_buf_size(level);
    if (need > t->isal_level_buf_size) {
        uint8_t *b = realloc(t->isal_level_buf, need);
        if (!b)
            return -ENOMEM;
        /* ISA-L's levels 1-3 read entries of the hash table in LEVEL_BUF
         * that the call did not write (valgrind: "conditional jump depends
         * on uninitialised value" in isal_deflate_stateless, 4 KiB
         * clusters): start from defined bytes. */
        memset(b, 0, need);
        t->isal_level_buf = b;
        t->isal_level_buf_size = need;
    }
    struct isal_zstream *s = &t->isal;
    isal_deflate_stateless_init(s);
    s->level = (uint32_t)level;
    s->level_buf = need ? t->isal_level_buf : NULL;
    s->level_buf_size = (uint32_t)need;
    s->hist_bits = DEFLATE_WINDOW_BITS;
    s->gzip_flag = IGZIP_DEFLATE;
    s->end_of_stream = 1;
    s->flush = NO_FLUSH;
    s->next_in = (uint8_t *)in;
    s->avail_in = (uint32_t)in_len;
    s->next_out = out;
    s->avail_out = (uint32_t)out_cap;
    int r = isal_deflate_stateless(s);
    if (r == STATELESS_OVERFLOW)
        return -ENOSPC;
    if (r != COMP_OK || s->avail_in != 0)
        return -EIO;
    return (int)s->total_out;
}

static int compress_zlib(struct codec_thread *t, int level, const void *in, size_t in_len,
                         void *out, size_t out_cap)
{
    z_stream *z = &t->zdef;
    if (t->zdef_level != level) {
        if (t->zdef_level >= 0)
            deflateEnd(z);
        memset(z, 0, sizeof(*z));
        t->zdef_level = -1;
        if (deflateInit2(z, level, Z_DEFLATED, -DEFLATE_WINDOW_BITS, 9, Z_DEFAULT_STRATEGY) != Z_OK)
            return -ENOMEM;
        t->zdef_level = level;
    } else if (deflateReset(z) != Z_OK) {
        return -EIO;
    }
    z->next_in = (Bytef *)in;
    z->avail_in = (uInt)in_len;
    z->next_out = out;
    z->avail_out = (uInt)out_cap;
    int r = deflate(z, Z_FINISH);
    if (r == Z_STREAM_END)
        return (int)z->total_out;
    return r == Z_OK || r == Z_BUF_ERROR ? -ENOSPC : -EIO;
}

static int compress_zstd(struct codec_thread *t, int level, const void *in, size_t in_len,
                         void *out, size_t out_cap)
{
    if (!t->zstd_c && !(t->zstd_c = ZSTD_createCCtx()))
        return -ENOMEM;
    size_t r = ZSTD_compressCCtx(t->zstd_c, out, out_cap, in, in_len, level);
    if (ZSTD_isError(r))
        return ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall ? -ENOSPC : -EIO;
    return (int)r;
}

/* See CODEC_ZLIB_AUTO in codec.h. */
#define PROBE_BYTES 4096
static int auto_level(struct codec_thread *t, const void *in, size_t in_len, void *out,
                      size_t out_cap)
{
    if (in_len <= PROBE_BYTES || out_cap < PROBE_BYTES)
        return 3;
    int r = compress_isal(t, 2, in, PROBE_BYTES, out, out_cap);
    bool repetitive = r > 0 && r < PROBE_BYTES / 8;
    bool incompressible = r < 0 || r > PROBE_BYTES * 125 / 128;
    return repetitive || incompressible ? 2 : 3;
}

int codec_compress(int type, int level, const void *in, size_t in_len, void *out, size_t out_cap)
{
    struct codec_thread *t = thread_ctx();
    if (!t)
        return -ENOMEM;
    if (type == ZCOW_COMPRESSION_ZSTD)
        return compress_zstd(t, level, in, in_len, out, out_cap);
    if (level == CODEC_ZLIB_AUTO)
        level = auto_level(t, in, in_len, out, out_cap);
    if (level <= ISAL_DEF_MAX_LEVEL)
        return compress_isal(t, level, in, in_len, out, out_cap);
    return compress_zlib(t, level, in, in_len, out, out_cap);
}

int codec_compress_zlib_reference(int level, const void *in, size_t in_len, void *out,
                                  size_t out_cap)
{
    struct codec_thread *t = thread_ctx();
    if (!t)
        return -ENOMEM;
    return compress_zlib(t, level, in, in_len, out, out_cap);
}

/* ISA-L inflate; the input may hold bytes after the stream (whole sectors
 * are read), which are ignored once OUT_LEN bytes are out.  EXACT: the
 * stream must also end there (its final block's end code may come after
 * the last byte out: one more call, with room for one byte, finds it or
 * finds more output). */
static int decompress_deflate(struct codec_thread *t, const void *in, size_t in_len, void *out,
                              size_t out_len, bool exact)
{
    if (!t->inflate && !(t->inflate = malloc(sizeof(*t->inflate))))
        return -ENOMEM;
    struct inflate_state *s = t->inflate;
    isal_inflate_init(s);
    s->crc_flag = ISAL_DEFLATE;
    s->next_in = (uint8_t *)in;
    s->avail_in = (uint32_t)in_len;
    s->next_out = out;
    s->avail_out = (uint32_t)out_len;
    int r = isal_inflate(s);
    if (r < 0 || s->avail_out != 0)
        return -EIO;
    if (exact && s->block_state != ISAL_BLOCK_FINISH) {
        uint8_t extra;
        s->next_out = &extra;
        s->avail_out = 1;
        r = isal_inflate(s);
        if (r < 0 || s->avail_out != 1 || s->block_state != ISAL_BLOCK_FINISH)
            return -EIO;
    }
    return 0;
}

/* As QEMU: several frames may follow one another; stop when the output is
 * full; an error or no progress is corruption.  EXACT: a frame must also
 * end there (zstd says 0 once a frame is decoded and flushed; one more
 * call, with room for one byte, finds its end or finds more output). */
static int decompress_zstd(struct codec_thread *t, const void *in, size_t in_len, void *out,
                           size_t out_len, bool exact)
{
    if (!t->zstd_d && !(t->zstd_d = ZSTD_createDCtx()))
        return -ENOMEM;
    ZSTD_DCtx_reset(t->zstd_d, ZSTD_reset_session_only);
    ZSTD_inBuffer ib = { in, in_len, 0 };
    ZSTD_outBuffer ob = { out, out_len, 0 };
    size_t r = 1;
    while (ob.pos < ob.size) {
        size_t before_in = ib.pos, before_out = ob.pos;
        r = ZSTD_decompressStream(t->zstd_d, &ob, &ib);
        if (ZSTD_isError(r))
            return -EIO;
        if (ib.pos == before_in && ob.pos == before_out)
            return -EIO;
    }
    if (exact && r != 0) {
        uint8_t extra;
        ZSTD_outBuffer more = { &extra, 1, 0 };
        r = ZSTD_decompressStream(t->zstd_d, &more, &ib);
        if (ZSTD_isError(r) || r != 0 || more.pos != 0)
            return -EIO;
    }
    return 0;
}

static int decompress(int type, const void *in, size_t in_len, void *out, size_t out_len,
                      bool exact)
{
    struct codec_thread *t = thread_ctx();
    if (!t)
        return -ENOMEM;
    if (type == ZCOW_COMPRESSION_ZSTD)
        return decompress_zstd(t, in, in_len, out, out_len, exact);
    if (type == ZCOW_COMPRESSION_ZLIB)
        return decompress_deflate(t, in, in_len, out, out_len, exact);
    return -EINVAL;
}

int codec_decompress(int type, const void *in, size_t in_len, void *out, size_t out_len)
{
    return decompress(type, in, in_len, out, out_len, false);
}

int codec_decompress_exact(int type, const void *in, size_t in_len, void *out, size_t out_len)
{
    return decompress(type, in, in_len, out, out_len, true);
}

/* Raw deflate with QEMU's 4 KiB window (zlib enforces it, ISA-L would
 * not): a stream that needs a larger one is refused, as QEMU refuses it. */
static size_t deflate_length(struct codec_thread *t, const uint8_t *in, size_t in_len,
                             size_t out_len)
{
    if (!t->zinf_ready) {
        memset(&t->zinf, 0, sizeof(t->zinf));
        if (inflateInit2(&t->zinf, -DEFLATE_WINDOW_BITS) != Z_OK)
            return 0;
        t->zinf_ready = true;
    } else if (inflateReset(&t->zinf) != Z_OK) {
        return 0;
    }
    t->zinf.next_in = (Bytef *)in;
    t->zinf.avail_in = (uInt)in_len;
    size_t total = 0;
    for (;;) {
        t->zinf.next_out = t->scratch;
        t->zinf.avail_out = SCRATCH_OUT;
        int r = inflate(&t->zinf, Z_NO_FLUSH);
        total += SCRATCH_OUT - t->zinf.avail_out;
        if (total > out_len)
            return 0;
        if (r == Z_STREAM_END)
            break;
        if (r != Z_OK)
            return 0; /* bad data, or the input ends inside the stream */
    }
    return total == out_len ? in_len - t->zinf.avail_in : 0;
}

/* zstd frames, one after another, until exactly OUT_LEN bytes are out and
 * the last frame is complete. */
static size_t zstd_length(struct codec_thread *t, const uint8_t *in, size_t in_len,
                          size_t out_len)
{
    if (!t->zstd_d && !(t->zstd_d = ZSTD_createDCtx()))
        return 0;
    ZSTD_DCtx_reset(t->zstd_d, ZSTD_reset_session_only);
    ZSTD_inBuffer ib = { in, in_len, 0 };
    size_t total = 0;
    for (;;) {
        ZSTD_outBuffer ob = { t->scratch, SCRATCH_OUT, 0 };
        size_t before = ib.pos;
        size_t r = ZSTD_decompressStream(t->zstd_d, &ob, &ib);
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

size_t codec_stream_length(int type, const void *in, size_t in_len, size_t out_len)
{
    struct codec_thread *t = thread_ctx();
    if (!t || (!t->scratch && !(t->scratch = malloc(SCRATCH_OUT))))
        return 0;
    if (type == ZCOW_COMPRESSION_ZLIB)
        return deflate_length(t, in, in_len, out_len);
    if (type == ZCOW_COMPRESSION_ZSTD)
        return zstd_length(t, in, in_len, out_len);
    return 0;
}
