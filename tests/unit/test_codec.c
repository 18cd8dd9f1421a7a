/* test_codec.c - the cluster codecs.
 *
 * Round trips for every level of both types over data of several shapes
 * and every cluster size zcow writes; the zlib type's output inflated by
 * zlib itself with windowBits -12, one byte of output at a time, so that a
 * back-reference beyond 4 KiB is an error (as it is for QEMU's reader);
 * the zstd type's output decoded by libzstd's one-shot API; streams
 * followed by garbage (qcow2 readers read whole sectors); truncated and
 * corrupt input; and many threads at once (contexts are per thread).
 *
 * Buffers are allocated at their exact sizes so that ASan catches any
 * write past OUT_CAP or read past IN_LEN. */
#include <errno.h>
#include <pthread.h>
#include <zlib.h>
#include <zstd.h>

#include "codec.h"
#include "unit.h"
#include "zcow.h"

enum shape { ONES, ZEROS, RANDOM, TEXT, MIXED, FAR_REPEAT, N_SHAPES };
static const char *const shape_names[N_SHAPES] = { "ones",  "zeros", "random",
                                                   "text",  "mixed", "far-repeat" };

/* Words of a made-up language: compressible the way text is. */
static void fill_text(uint64_t *rs, uint8_t *p, size_t len)
{
    static const char *const words[] = { "the",    "cluster", "qcow2",   "image",  "backup",
                                         "write",  "cache",   "O_DIRECT", "zlib",  "sector",
                                         "refcount", "of",    "and",     "a",      "to",
                                         "compressed", "guest", "host",  "offset", "\n" };
    size_t n = sizeof(words) / sizeof(words[0]), at = 0;
    while (at < len) {
        const char *w = words[unit_rand(rs) % n];
        size_t wl = strlen(w);
        for (size_t i = 0; i < wl && at < len; i++)
            p[at++] = (uint8_t)w[i];
        if (at < len)
            p[at++] = ' ';
    }
}

static void fill_shape(enum shape s, uint64_t *rs, uint8_t *p, size_t len)
{
    switch (s) {
    case ONES: memset(p, 1, len); break;
    case ZEROS: memset(p, 0, len); break;
    case RANDOM: unit_fill_random(rs, p, len); break;
    case TEXT: fill_text(rs, p, len); break;
    case MIXED:
        /* quarters: text, random, zeros, ones - with odd boundaries */
        for (size_t at = 0; at < len;) {
            size_t n = (size_t)unit_range(rs, 1, 3000);
            if (n > len - at)
                n = len - at;
            switch (unit_rand(rs) % 4) {
            case 0: fill_text(rs, p + at, n); break;
            case 1: unit_fill_random(rs, p + at, n); break;
            case 2: memset(p + at, 0, n); break;
            default: memset(p + at, 1, n); break;
            }
            at += n;
        }
        break;
    case FAR_REPEAT:
        /* A random block of 5000 bytes, repeated: every match is 5000 bytes
         * back, beyond a 4 KiB window.  A compressor honouring the window
         * cannot shrink it; one that does not, can - and zlib -12 refuses
         * its output. */
        unit_fill_random(rs, p, len < 5000 ? len : 5000);
        for (size_t at = 5000; at < len; at++)
            p[at] = p[at - 5000];
        break;
    default: break;
    }
}

/* Inflate with zlib, windowBits -12, giving zlib one byte of output room
 * per call: every back-reference is then checked against the 4 KiB window
 * and nothing else.  Returns 0 if the stream decodes to exactly WANT. */
static int zlib_inflate_window12(const uint8_t *in, size_t in_len, const uint8_t *want,
                                 size_t want_len, const char **why)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, -12) != Z_OK) {
        *why = "inflateInit2 failed";
        return -1;
    }
    uint8_t *out = malloc(want_len + 1);
    if (!out) {
        inflateEnd(&z);
        *why = "out of memory";
        return -1;
    }
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)in_len;
    size_t done = 0;
    int r = Z_OK;
    while (r == Z_OK) {
        if (done > want_len)
            break;
        z.next_out = out + done;
        z.avail_out = 1;
        r = inflate(&z, Z_NO_FLUSH);
        done = z.total_out;
        if (r == Z_BUF_ERROR && z.avail_out == 1)
            break; /* no progress: input exhausted */
        if (r == Z_BUF_ERROR)
            r = Z_OK;
    }
    int ok = r == Z_STREAM_END && done == want_len && memcmp(out, want, want_len) == 0;
    if (!ok)
        *why = r == Z_DATA_ERROR ? (z.msg ? z.msg : "data error")
             : r != Z_STREAM_END ? "stream does not end"
             : done != want_len  ? "wrong length"
                                 : "wrong data";
    inflateEnd(&z);
    free(out);
    return ok ? 0 : -1;
}

/* zlib with its default (32 KiB) window, whole buffer at once. */
static int zlib_inflate_plain(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, -15) != Z_OK)
        return -1;
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)in_len;
    z.next_out = out;
    z.avail_out = (uInt)out_len;
    int r = inflate(&z, Z_FINISH);
    int ok = r == Z_STREAM_END && z.total_out == out_len;
    inflateEnd(&z);
    return ok ? 0 : -1;
}

struct codec {
    int type, level;
};

static const char *type_name(int type) { return type == ZCOW_COMPRESSION_ZSTD ? "zstd" : "zlib"; }

/* One round trip, with every independent check that applies. */
static void round_trip(struct codec c, enum shape s, size_t cs, uint64_t *rs, int window_check)
{
    uint8_t *in = malloc(cs), *out = malloc(cs - 1), *back = malloc(cs);
    if (!in || !out || !back) {
        CHECK(!"out of memory");
        goto done;
    }
    fill_shape(s, rs, in, cs);
    int n = codec_compress(c.type, c.level, in, cs, out, cs - 1);
    const char *what = shape_names[s];

    if (s == RANDOM || (s == FAR_REPEAT && cs <= 5000)) {
        /* Incompressible (for the zlib type, within its 4 KiB window):
         * the caller stores the cluster uncompressed. */
        CHECKF(n == -ENOSPC, "%s level %d %s %zu: got %d, want -ENOSPC", type_name(c.type),
               c.level, what, cs, n);
        goto done;
    }
    if (s == FAR_REPEAT && c.type == ZCOW_COMPRESSION_ZLIB) {
        /* Only chance matches lie within 4 KiB: at best a few bytes saved. */
        CHECKF(n == -ENOSPC || (size_t)n > cs - cs / 32,
               "level %d far-repeat %zu: %d bytes - matches beyond the 4 KiB window?", c.level,
               cs, n);
    } else if (s != MIXED) {
        CHECKF(n > 0, "%s level %d %s %zu: compress returned %d", type_name(c.type), c.level, what,
               cs, n);
    } else {
        CHECKF(n > 0 || n == -ENOSPC, "%s level %d %s %zu: compress returned %d",
               type_name(c.type), c.level, what, cs, n);
    }
    if (n <= 0)
        goto done;
    CHECK((size_t)n <= cs - 1);
    if (s == ONES || s == ZEROS)
        CHECKF((size_t)n < cs / 16, "%s level %d %s %zu: %d bytes", type_name(c.type), c.level,
               what, cs, n);

    /* Through our own decoder. */
    memset(back, 0xcc, cs);
    int r = codec_decompress(c.type, out, (size_t)n, back, cs);
    CHECKF(r == 0, "%s level %d %s %zu: decompress returned %d", type_name(c.type), c.level, what,
           cs, r);
    CHECKF(memcmp(in, back, cs) == 0, "%s level %d %s %zu: round trip differs", type_name(c.type),
           c.level, what, cs);
    r = codec_decompress_exact(c.type, out, (size_t)n, back, cs);
    CHECKF(r == 0, "%s level %d %s %zu: exact decompress returned %d", type_name(c.type), c.level,
           what, cs, r);

    /* Through the reference decoders. */
    if (c.type == ZCOW_COMPRESSION_ZLIB) {
        const char *why = "";
        if (window_check)
            CHECKF(zlib_inflate_window12(out, (size_t)n, in, cs, &why) == 0,
                   "level %d %s %zu: zlib windowBits -12 refuses the stream: %s", c.level, what,
                   cs, why);
        memset(back, 0xcc, cs);
        CHECKF(zlib_inflate_plain(out, (size_t)n, back, cs) == 0 && memcmp(in, back, cs) == 0,
               "level %d %s %zu: zlib inflate differs", c.level, what, cs);
    } else {
        memset(back, 0xcc, cs);
        size_t z = ZSTD_decompress(back, cs, out, (size_t)n);
        CHECKF(!ZSTD_isError(z) && z == cs && memcmp(in, back, cs) == 0,
               "level %d %s %zu: ZSTD_decompress: %s", c.level, what, cs,
               ZSTD_isError(z) ? ZSTD_getErrorName(z) : "wrong data");
        unsigned long long fcs = ZSTD_getFrameContentSize(out, (size_t)n);
        CHECKF(fcs == ZSTD_CONTENTSIZE_UNKNOWN || fcs == cs, "frame content size %llu", fcs);
    }

    /* Followed by garbage up to the end of a sector and beyond, as a qcow2
     * reader reads it: same result. */
    size_t extra = 512 + (size_t)unit_range(rs, 0, 1023);
    uint8_t *padded = malloc((size_t)n + extra);
    if (padded) {
        memcpy(padded, out, (size_t)n);
        unit_fill_random(rs, padded + n, extra);
        memset(back, 0xcc, cs);
        r = codec_decompress(c.type, padded, (size_t)n + extra, back, cs);
        CHECKF(r == 0 && memcmp(in, back, cs) == 0,
               "%s level %d %s %zu: stream followed by garbage: %d", type_name(c.type), c.level,
               what, cs, r);
        r = codec_decompress_exact(c.type, padded, (size_t)n + extra, back, cs);
        CHECKF(r == 0, "%s level %d %s %zu: exact, stream followed by garbage: %d",
               type_name(c.type), c.level, what, cs, r);
        /* Another stream right behind, as when chunks are packed. */
        memcpy(padded + n, out, extra < (size_t)n ? extra : (size_t)n);
        r = codec_decompress(c.type, padded, (size_t)n + extra, back, cs);
        CHECKF(r == 0 && memcmp(in, back, cs) == 0,
               "%s level %d %s %zu: stream followed by a stream: %d", type_name(c.type), c.level,
               what, cs, r);
        r = codec_decompress_exact(c.type, padded, (size_t)n + extra, back, cs);
        CHECKF(r == 0, "%s level %d %s %zu: exact, stream followed by a stream: %d",
               type_name(c.type), c.level, what, cs, r);
        free(padded);
    }

    /* Truncated: an error, never a crash or wrong data reported as good.
     * The last bytes of a deflate stream may hold only the end-of-block
     * code: cut there, every byte still comes out (QEMU's zlib reader
     * accepts that too), so the error is required for deep cuts only. */
    if (n > 1) {
        size_t cut = (size_t)unit_range(rs, 1, (uint64_t)n - 1);
        uint8_t *t = malloc(cut);
        if (t) {
            memcpy(t, out, cut);
            memset(back, 0xcc, cs);
            /* Exact: a stream that does not end is refused, however
             * little is missing. */
            CHECKF(codec_decompress_exact(c.type, t, cut, back, cs) < 0,
                   "%s level %d %s %zu: exact: stream cut at %zu of %d decoded", type_name(c.type),
                   c.level, what, cs, cut, n);
            r = codec_decompress(c.type, t, cut, back, cs);
            if (cut <= (size_t)n / 2)
                CHECKF(r < 0, "%s level %d %s %zu: stream cut at %zu of %d decoded (%d)",
                       type_name(c.type), c.level, what, cs, cut, n, r);
            else
                CHECKF(r < 0 || memcmp(in, back, cs) == 0,
                       "%s level %d %s %zu: stream cut at %zu of %d: wrong data, no error",
                       type_name(c.type), c.level, what, cs, cut, n);
            free(t);
        }
    }
done:
    free(in);
    free(out);
    free(back);
}

static const struct codec codecs[] = {
    { ZCOW_COMPRESSION_ZLIB, 0 }, { ZCOW_COMPRESSION_ZLIB, 1 }, { ZCOW_COMPRESSION_ZLIB, 2 },
    { ZCOW_COMPRESSION_ZLIB, 3 }, { ZCOW_COMPRESSION_ZLIB, 4 }, { ZCOW_COMPRESSION_ZLIB, 5 },
    { ZCOW_COMPRESSION_ZLIB, 6 }, { ZCOW_COMPRESSION_ZLIB, 7 }, { ZCOW_COMPRESSION_ZLIB, 8 },
    { ZCOW_COMPRESSION_ZLIB, 9 }, { ZCOW_COMPRESSION_ZSTD, 1 }, { ZCOW_COMPRESSION_ZSTD, 3 },
    { ZCOW_COMPRESSION_ZSTD, 9 }, { ZCOW_COMPRESSION_ZSTD, 19 },
};
#define N_CODECS (sizeof(codecs) / sizeof(codecs[0]))

static void test_round_trips(void)
{
    uint64_t rs = unit_stream(10);
    for (unsigned cb = 12; cb <= 21; cb++) {
        size_t cs = (size_t)1 << cb;
        for (size_t k = 0; k < N_CODECS; k++) {
            /* Every codec on every size up to 256 KiB; of 512 KiB, 1 MiB
             * and 2 MiB, each codec takes one in turn (all of them would
             * take a minute).  zstd 19 compresses ~1 MB/s: up to 64 KiB. */
            if (cb >= 19 && k % 3 != cb % 3)
                continue;
            if (codecs[k].type == ZCOW_COMPRESSION_ZSTD && codecs[k].level >= 19 && cb > 16)
                continue;
            for (int s = 0; s < N_SHAPES; s++) {
                /* The byte-at-a-time inflate is slow; it runs on every
                 * level and shape up to 128 KiB clusters. */
                round_trip(codecs[k], (enum shape)s, cs, &rs, cb <= 17);
            }
        }
    }
}

/* The window checker itself must refuse a stream made with zlib's default
 * 32 KiB window when it reaches back further than 4 KiB. */
static void test_window_checker(void)
{
    uint64_t rs = unit_stream(13);
    size_t cs = 65536, cap = cs + 1024;
    uint8_t *in = malloc(cs), *out = malloc(cap);
    if (!in || !out)
        goto out;
    fill_shape(FAR_REPEAT, &rs, in, cs);
    z_stream z;
    memset(&z, 0, sizeof(z));
    CHECK(deflateInit2(&z, 6, Z_DEFLATED, -15, 9, Z_DEFAULT_STRATEGY) == Z_OK);
    z.next_in = in;
    z.avail_in = (uInt)cs;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    CHECK(deflate(&z, Z_FINISH) == Z_STREAM_END);
    size_t n = z.total_out;
    deflateEnd(&z);
    CHECKF(n < cs / 4, "a 32 KiB window should shrink far-repeat data: %zu bytes", n);
    const char *why = "";
    CHECKF(zlib_inflate_window12(out, n, in, cs, &why) != 0,
           "the windowBits -12 check accepted 5000-byte back-references");
out:
    free(in);
    free(out);
}

/* The fast (ISA-L) levels and zlib's must agree on what they encode. */
static void test_reference(void)
{
    uint64_t rs = unit_stream(11);
    size_t cs = 65536;
    uint8_t *in = malloc(cs), *a = malloc(cs - 1), *back = malloc(cs);
    if (!in || !a || !back)
        goto out;
    for (int s = 0; s < N_SHAPES; s++) {
        fill_shape((enum shape)s, &rs, in, cs);
        for (int level = 1; level <= 9; level++) {
            int n = codec_compress_zlib_reference(level, in, cs, a, cs - 1);
            if (s == RANDOM) {
                CHECKF(n == -ENOSPC, "reference level %d %s: %d", level, shape_names[s], n);
                continue;
            }
            if (s == FAR_REPEAT) {
                CHECKF(n == -ENOSPC || (size_t)n > cs - cs / 32, "reference level %d %s: %d",
                       level, shape_names[s], n);
                if (n == -ENOSPC)
                    continue;
            }
            CHECKF(n > 0 || (s == MIXED && n == -ENOSPC), "reference level %d %s: %d", level,
                   shape_names[s], n);
            if (n <= 0)
                continue;
            CHECK(codec_decompress(ZCOW_COMPRESSION_ZLIB, a, (size_t)n, back, cs) == 0 &&
                  memcmp(back, in, cs) == 0);
            const char *why = "";
            CHECKF(zlib_inflate_window12(a, (size_t)n, in, cs, &why) == 0, "reference: %s", why);
        }
    }
out:
    free(in);
    free(a);
    free(back);
}

static void test_levels(void)
{
    CHECK(codec_resolve_level(ZCOW_COMPRESSION_ZLIB, ZCOW_LEVEL_DEFAULT) ==
          CODEC_ZLIB_DEFAULT_LEVEL);
    CHECK(codec_resolve_level(ZCOW_COMPRESSION_ZSTD, ZCOW_LEVEL_DEFAULT) ==
          CODEC_ZSTD_DEFAULT_LEVEL);
    for (int l = 0; l <= 9; l++)
        CHECK(codec_resolve_level(ZCOW_COMPRESSION_ZLIB, l) == l);
    for (int l = 1; l <= 19; l++)
        CHECK(codec_resolve_level(ZCOW_COMPRESSION_ZSTD, l) == l);
    CHECK(codec_resolve_level(ZCOW_COMPRESSION_ZLIB, 10) == -EINVAL);
    CHECK(codec_resolve_level(ZCOW_COMPRESSION_ZLIB, -2) == -EINVAL);
    CHECK(codec_resolve_level(ZCOW_COMPRESSION_ZSTD, 0) == -EINVAL);
    CHECK(codec_resolve_level(ZCOW_COMPRESSION_ZSTD, 20) == -EINVAL);
    CHECK(codec_resolve_level(2, ZCOW_LEVEL_DEFAULT) == -EINVAL);
    CHECK(codec_decompress(2, "x", 1, (char[16]){ 0 }, 16) < 0);
}

/* Bytes that are not a stream, and streams with bytes flipped: an error or
 * some output, never a crash (ASan watches the buffers). */
static void test_garbage(void)
{
    uint64_t rs = unit_stream(12);
    size_t cs = 65536;
    uint8_t *in = malloc(cs), *c = malloc(cs - 1), *back = malloc(cs);
    if (!in || !c || !back)
        goto out;
    for (int type = 0; type <= 1; type++) {
        for (int round = 0; round < 300; round++) {
            size_t len = (size_t)unit_range(&rs, 1, 4096);
            uint8_t *g = malloc(len);
            if (!g)
                break;
            unit_fill_random(&rs, g, len);
            int r = codec_decompress(type, g, len, back, cs);
            if (type == ZCOW_COMPRESSION_ZSTD)
                CHECKF(r < 0, "random bytes decoded as zstd (len %zu)", len);
            else
                CHECK(r <= 0);
            free(g);
        }
        fill_shape(TEXT, &rs, in, cs);
        int n = codec_compress(type, type ? 3 : 2, in, cs, c, cs - 1);
        CHECK(n > 0);
        for (int round = 0; n > 0 && round < 300; round++) {
            uint8_t *g = malloc((size_t)n);
            if (!g)
                break;
            memcpy(g, c, (size_t)n);
            int flips = (int)unit_range(&rs, 1, 8);
            for (int f = 0; f < flips; f++)
                g[unit_rand(&rs) % (uint64_t)n] ^= (uint8_t)unit_range(&rs, 1, 255);
            int r = codec_decompress(type, g, (size_t)n, back, cs);
            CHECK(r <= 0);
            free(g);
        }
        /* Empty input and a too-short output buffer. */
        CHECK(codec_decompress(type, c, 0, back, cs) < 0);
        if (n > 0) {
            uint8_t *small = malloc(100);
            if (small) {
                int r = codec_decompress(type, c, (size_t)n, small, 100);
                (void)r; /* either is fine; it must stay inside SMALL */
                free(small);
            }
        }
    }
out:
    free(in);
    free(c);
    free(back);
}

/* Many threads at once, each on its own data and codec. */
struct worker {
    int id;
    long rounds;
    long failed;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    uint64_t rs = unit_stream(100 + (uint64_t)w->id);
    size_t cs = 65536;
    uint8_t *in = malloc(cs), *out = malloc(cs - 1), *back = malloc(cs);
    if (!in || !out || !back) {
        w->failed++;
        goto out;
    }
    for (long i = 0; i < w->rounds; i++) {
        struct codec c = codecs[unit_rand(&rs) % (N_CODECS - 1)]; /* not zstd 19: slow */
        enum shape s = (enum shape)(unit_rand(&rs) % N_SHAPES);
        fill_shape(s, &rs, in, cs);
        int n = codec_compress(c.type, c.level, in, cs, out, cs - 1);
        if (n == -ENOSPC)
            continue;
        if (n <= 0) {
            w->failed++;
            continue;
        }
        memset(back, 0, cs);
        if (codec_decompress(c.type, out, (size_t)n, back, cs) != 0 || memcmp(in, back, cs) != 0)
            w->failed++;
    }
out:
    free(in);
    free(out);
    free(back);
    return NULL;
}

static void test_threads(void)
{
    enum { N = 8 };
    pthread_t t[N];
    struct worker w[N];
    for (int i = 0; i < N; i++) {
        w[i] = (struct worker){ .id = i, .rounds = 150, .failed = 0 };
        CHECK(pthread_create(&t[i], NULL, worker_main, &w[i]) == 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        CHECKF(w[i].failed == 0, "thread %d: %ld round trips failed", i, w[i].failed);
    }
}

/* A stream of more than a cluster: the plain decoder stops at the
 * cluster's end, as QEMU's does; the exact one refuses it, at any excess
 * from one byte up, both types. */
static void test_exact_longer(void)
{
    uint64_t rs = unit_stream(14);
    const size_t cs = 65536;
    uint8_t *in = malloc(2 * cs), *out = malloc(4 * cs), *back = malloc(cs);
    if (!in || !out || !back) {
        CHECK(!"out of memory");
        goto done;
    }
    fill_text(&rs, in, 2 * cs);
    const int types[] = { ZCOW_COMPRESSION_ZLIB, ZCOW_COMPRESSION_ZSTD };
    const size_t excess[] = { 1, 2, 100, 4096, cs };
    for (size_t t = 0; t < 2; t++) {
        for (size_t x = 0; x < sizeof(excess) / sizeof(excess[0]); x++) {
            /* ISA-L takes at most a cluster: zlib itself makes the zlib type's. */
            int n =
                types[t] == ZCOW_COMPRESSION_ZLIB
                    ? codec_compress_zlib_reference(6, in, cs + excess[x], out, 4 * cs)
                    : codec_compress(types[t], ZCOW_LEVEL_DEFAULT, in, cs + excess[x], out, 4 * cs);
            CHECKF(n > 0, "%s: compress %zu bytes: %d", type_name(types[t]), cs + excess[x], n);
            if (n <= 0)
                continue;
            CHECKF(codec_decompress(types[t], out, (size_t)n, back, cs) == 0 &&
                       memcmp(in, back, cs) == 0,
                   "%s: %zu bytes more than a cluster: plain decode", type_name(types[t]),
                   excess[x]);
            CHECKF(codec_decompress_exact(types[t], out, (size_t)n, back, cs) == -EIO,
                   "%s: %zu bytes more than a cluster: exact decode accepts it",
                   type_name(types[t]), excess[x]);
        }
    }
done:
    free(in);
    free(out);
    free(back);
}

int main(void)
{
    unit_init("test_codec");
    test_exact_longer();
    test_levels();
    test_window_checker();
    test_reference();
    test_garbage();
    test_threads();
    test_round_trips();
    return unit_done();
}
