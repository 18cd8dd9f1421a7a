/* test_writer.c - the writer through the public API: multi-cluster writes
 * from unaligned buffers, read-your-writes while writing, clusters
 * written again (replaced, no space leaked, alone and from many threads,
 * across refcount blocks already written), zero clusters over a backing file,
 * refcounts across a refcount block boundary, L2 tables written out and
 * read back, and qemu-img's verdict on each image. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include "unit.h"
#include "zcow.h"

static char dir[] = "/var/tmp/zcow-test-writer.XXXXXX";

static int qemu_img_ok(const char *path)
{
    char cmd[4300];
    snprintf(cmd, sizeof(cmd), "qemu-img check -q '%s' >/dev/null 2>&1", path);
    return system(cmd) == 0;
}

/* Clusters: 0 random, 1 text, 2 zero, 3..5 random (a run), 6 ones. */
static void fill(uint8_t *buf, uint32_t cs, uint64_t *rs)
{
    unit_fill_random(rs, buf, cs);
    for (uint32_t i = 0; i < cs; i++)
        buf[cs + i] = (uint8_t) "the quick brown fox "[i % 20];
    memset(buf + 2 * cs, 0, cs);
    unit_fill_random(rs, buf + 3 * cs, 3 * cs);
    memset(buf + 6 * cs, 1, cs);
}

static void test_write_read(int type, uint32_t cs, int cache_mode, int write_cache)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/w-%d-%u-%d-%d.qcow2", dir, type, cs, cache_mode, write_cache);
    zcow_create_opts *o = zcow_create_opts_new();
    CHECK(o && zcow_create_opts_set_cluster_size(o, cs) == 0 &&
          zcow_create_opts_set_compression_type(o, type) == 0 &&
          zcow_create_opts_set_cache_mode(o, cache_mode) == 0 &&
          zcow_create_opts_set_write_cache(o, write_cache) == 0 &&
          zcow_create_opts_set_virtual_size(o, 8ull * cs - 512) == 0); /* a short last cluster */
    zcow_image *img;
    int r = zcow_create(path, o, &img);
    zcow_create_opts_free(o);
    CHECKF(r == 0, "create: %s", zcow_get_error());
    if (r)
        return;
    uint64_t rs = unit_stream(cs + (uint64_t)type);
    uint8_t *raw = malloc(8 * (size_t)cs + 1), *back = malloc(8 * (size_t)cs);
    uint8_t *data = raw + 1; /* deliberately not aligned */
    memset(data, 0, 8 * (size_t)cs);
    fill(data, cs, &rs);
    unit_fill_random(&rs, data + 7 * (size_t)cs, cs - 512);

    r = zcow_write(img, 0, data, 7 * (size_t)cs);
    CHECKF(r == 0, "write: %s", zcow_get_error());
    r = zcow_write(img, 7ull * cs, data + 7 * (size_t)cs, cs - 512);
    CHECKF(r == 0, "write of the short last cluster: %s", zcow_get_error());

    /* Read-your-writes, before anything is finalised. */
    memset(back, 0xee, 8 * (size_t)cs);
    r = zcow_read(img, 0, back, 8 * (size_t)cs - 512);
    CHECKF(r == 0, "read while writing: %s", zcow_get_error());
    CHECK(memcmp(back, data, 8 * (size_t)cs - 512) == 0);

    /* Written twice: the second write replaces the first (and reads so),
     * then a third puts the text back. */
    r = zcow_write_cluster(img, cs, data, cs);
    CHECKF(r == 0, "second write of a cluster: %s", zcow_get_error());
    CHECK(zcow_read(img, cs, back, cs) == 0 && memcmp(back, data, cs) == 0);
    CHECK(zcow_write_cluster(img, cs, data + cs, cs) == 0);
    CHECK(zcow_flush(img) == 0);
    r = zcow_close(img);
    CHECKF(r == 0, "close after rewrites: %s", zcow_get_error());
    CHECKF(qemu_img_ok(path), "qemu-img check failed on %s", path);

    r = zcow_open(path, NULL, 1, &img);
    CHECKF(r == 0, "open: %s", zcow_get_error());
    if (r == 0) {
        memset(back, 0xee, 8 * (size_t)cs);
        CHECK(zcow_read(img, 0, back, 8 * (size_t)cs - 512) == 0);
        CHECK(memcmp(back, data, 8 * (size_t)cs - 512) == 0);
        zcow_info *info = zcow_info_new();
        CHECK(zcow_get_info(img, info) == 0);
        /* Text and ones shrink; the last (random, padded with 512 zeros)
         * may or may not; the zero cluster is not allocated. */
        uint64_t compressed = zcow_info_get_clusters_compressed(info);
        uint64_t normal = zcow_info_get_clusters_normal(info);
        CHECKF(compressed + normal == 7 && compressed >= 2 && compressed <= 3,
               "%llu compressed, %llu normal", (unsigned long long)compressed,
               (unsigned long long)normal);
        zcow_info_free(info);
        zcow_close(img);
    }
    free(raw);
    free(back);
}

/* Over a backing file, an all-zero cluster must read as zero, not as the
 * backing file's data. */
static void test_backing_zero(void)
{
    char base[4200], top[4200], cmd[9000];
    snprintf(base, sizeof(base), "%s/base.raw", dir);
    snprintf(top, sizeof(top), "%s/top.qcow2", dir);
    FILE *f = fopen(base, "wb");
    for (int i = 0; i < 2 * 65536; i++)
        fputc(0x5a, f);
    fclose(f);
    zcow_create_opts *o = zcow_create_opts_new();
    CHECK(o && zcow_create_opts_set_virtual_size(o, 2 * 65536) == 0 &&
          zcow_create_opts_set_backing_file(o, base) == 0 &&
          zcow_create_opts_set_backing_format(o, "raw") == 0);
    zcow_image *img;
    CHECK(zcow_create(top, o, &img) == 0);
    zcow_create_opts_free(o);
    uint8_t *zero = calloc(1, 65536);
    CHECK(zcow_write_cluster(img, 0, zero, 65536) == 0);
    CHECK(zcow_close(img) == 0);
    CHECK(qemu_img_ok(top));
    /* Cluster 0 is zero; cluster 1 comes from the backing file. */
    snprintf(cmd, sizeof(cmd),
             "qemu-io -f qcow2 -c 'read -P 0 0 64k' -c 'read -P 0x5a 64k 64k' '%s' "
             "| grep -q 'Pattern verification failed' && exit 1 || exit 0",
             top);
    CHECKF(system(cmd) == 0, "zero cluster over a backing file reads wrong");
    free(zero);
}

/* 4 KiB clusters with 16-bit refcounts: one refcount block counts 2048
 * clusters, 8 MiB of file (qcow2.txt, "Host cluster management").  Text,
 * then 9 MiB of random data, then text again: the file passes the first
 * block's end while a compressed cluster is still open in it (the writer
 * must close it to write the block), and ends in the second block.  qemu-img
 * must find every refcount right (no leak, no corruption) and the data
 * equal to the input. */
static void test_refcount_block_boundary(void)
{
    char path[4200], raw[4200], cmd[9000];
    snprintf(path, sizeof(path), "%s/boundary.qcow2", dir);
    snprintf(raw, sizeof(raw), "%s/boundary.raw", dir);
    const size_t size = 12u << 20, mib = 1u << 20;
    uint8_t *data = malloc(size);
    uint64_t rs = unit_stream(40);
    for (size_t i = 0; i < mib; i++)
        data[i] = (uint8_t) "refcount block boundary "[i % 24];
    unit_fill_random(&rs, data + mib, 9 * mib);
    for (size_t i = 10 * mib; i < 11 * mib; i++)
        data[i] = (uint8_t) "and past it "[i % 12];
    memset(data + 11 * mib, 0, mib);
    FILE *f = fopen(raw, "wb");
    CHECK(f && fwrite(data, 1, size, f) == size);
    if (f)
        fclose(f);

    zcow_create_opts *o = zcow_create_opts_new();
    CHECK(o && zcow_create_opts_set_cluster_size(o, 4096) == 0 &&
          zcow_create_opts_set_virtual_size(o, size) == 0);
    zcow_image *img;
    int r = zcow_create(path, o, &img);
    zcow_create_opts_free(o);
    CHECKF(r == 0, "create: %s", zcow_get_error());
    if (r == 0) {
        for (size_t off = 0; off < size && r == 0; off += 256 * 1024)
            r = zcow_write(img, off, data + off, 256 * 1024);
        CHECKF(r == 0, "write: %s", zcow_get_error());
        CHECKF(zcow_close(img) == 0, "close: %s", zcow_get_error());
    }
    f = fopen(path, "rb");
    long len = 0;
    if (f && fseek(f, 0, SEEK_END) == 0)
        len = ftell(f);
    if (f)
        fclose(f);
    CHECKF(len > (8l << 20), "the image (%ld bytes) stays in the first refcount block", len);
    CHECKF(qemu_img_ok(path), "qemu-img check failed on %s", path);
    snprintf(cmd, sizeof(cmd), "qemu-img compare -q -f raw -F qcow2 '%s' '%s'", raw, path);
    CHECKF(system(cmd) == 0, "the image does not read back as its input");
    free(data);
}

/* More L2 tables than the writer keeps in memory (64; 4 KiB clusters: a
 * table maps 2 MiB): two clusters in each of 300 tables, the tables in a
 * random order each time, so that every table is written out, read back
 * and changed again.  Read-your-writes through tables read back, then
 * qemu-img's verdict and a comparison with a raw copy. */
static void test_l2_eviction(void)
{
    enum { TABLES = 300, CS = 4096 };
    const uint64_t span = 2u << 20, size = TABLES * span;
    char path[4200], raw[4200], cmd[9000];
    snprintf(path, sizeof(path), "%s/l2-evict.qcow2", dir);
    snprintf(raw, sizeof(raw), "%s/l2-evict.raw", dir);
    zcow_create_opts *o = zcow_create_opts_new();
    CHECK(o && zcow_create_opts_set_cluster_size(o, CS) == 0 &&
          zcow_create_opts_set_virtual_size(o, size) == 0);
    zcow_image *img;
    int r = zcow_create(path, o, &img);
    zcow_create_opts_free(o);
    CHECKF(r == 0, "create: %s", zcow_get_error());
    if (r)
        return;
    FILE *f = fopen(raw, "wb");
    CHECK(f && ftruncate(fileno(f), (off_t)size) == 0);
    uint64_t rs = unit_stream(41);
    unsigned order[TABLES];
    uint8_t data[CS], back[CS];
    long wrong = 0;
    for (unsigned pass = 0; pass < 2; pass++) {
        for (unsigned i = 0; i < TABLES; i++)
            order[i] = i;
        for (unsigned i = TABLES - 1; i > 0; i--) { /* shuffle */
            unsigned j = (unsigned)unit_range(&rs, 0, i), t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        for (unsigned i = 0; i < TABLES; i++) {
            uint64_t off = order[i] * span + (pass + 1) * 64 * CS;
            for (unsigned k = 0; k < CS; k++) /* compressible, distinct per cluster */
                data[k] = (uint8_t)(order[i] + pass * 7 + k / 64);
            if (zcow_write_cluster(img, off, data, CS) != 0 && wrong++ < 3)
                CHECKF(0, "write at %llu: %s", (unsigned long long)off, zcow_get_error());
            if (f && (fseek(f, (long)off, SEEK_SET) != 0 || fwrite(data, 1, CS, f) != CS))
                wrong++;
        }
    }
    /* Read back the first pass's clusters, whose tables left memory. */
    for (unsigned t = 0; t < TABLES; t += 7) {
        for (unsigned k = 0; k < CS; k++)
            data[k] = (uint8_t)(t + k / 64);
        if ((zcow_read(img, t * span + 64 * CS, back, CS) != 0 || memcmp(back, data, CS)) &&
            wrong++ < 3)
            CHECKF(0, "read back of table %u wrong: %s", t, zcow_get_error());
    }
    CHECKF(wrong == 0, "%ld failures", wrong);
    if (f)
        fclose(f);
    CHECKF(zcow_close(img) == 0, "close: %s", zcow_get_error());
    CHECKF(qemu_img_ok(path), "qemu-img check failed on %s", path);
    snprintf(cmd, sizeof(cmd), "qemu-img compare -q -f raw -F qcow2 '%s' '%s'", raw, path);
    CHECKF(system(cmd) == 0, "the image does not read back as written");
}

/* ---- rewrites ---------------------------------------------------------------- */

/* Content VERSION of guest cluster GCI, of kind KIND: 0 zero, 1 text
 * (compresses well), 2 random (stored uncompressed), 3 half random (may
 * go either way). */
static void version_data(uint8_t *buf, uint32_t cs, uint64_t gci, unsigned version, unsigned kind)
{
    uint64_t rs = unit_stream(gci * 131 + version);
    switch (kind) {
    case 0: memset(buf, 0, cs); break;
    case 1:
        for (uint32_t i = 0; i < cs; i++)
            buf[i] = (uint8_t)("rewrite "[i % 8] + version + gci);
        break;
    case 2: unit_fill_random(&rs, buf, cs); break;
    default:
        unit_fill_random(&rs, buf, cs / 2);
        memset(buf + cs / 2, (int)(version + gci), cs - cs / 2);
    }
}

/* A compressed stream of BUF in the image's type, made by zlib and libzstd
 * (not by the code under test); 0 when it does not shrink. */
static size_t compress_ref(int type, const uint8_t *buf, uint32_t cs, uint8_t *out)
{
    if (type == ZCOW_COMPRESSION_ZSTD) {
        size_t n = ZSTD_compress(out, cs - 1, buf, cs, 3);
        return ZSTD_isError(n) ? 0 : n;
    }
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (deflateInit2(&z, 6, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK)
        return 0;
    z.next_in = (uint8_t *)buf;
    z.avail_in = cs;
    z.next_out = out;
    z.avail_out = cs - 1;
    int zr = deflate(&z, Z_FINISH);
    size_t n = cs - 1 - z.avail_out;
    deflateEnd(&z);
    return zr == Z_STREAM_END ? n : 0;
}

static int run_quiet(const char *fmt, const char *a, const char *b)
{
    char cmd[9000];
    snprintf(cmd, sizeof(cmd), fmt, a, b);
    return system(cmd);
}

/* qemu-img's verdict on the closed image at PATH: no leak, no error
 * (exit 0 of check), and the guest content MODEL (written to RAW). */
static void judge(const char *path, const char *raw, const uint8_t *model, size_t size)
{
    FILE *f = fopen(raw, "wb");
    CHECK(f && fwrite(model, 1, size, f) == size);
    if (f)
        fclose(f);
    CHECKF(run_quiet("qemu-img check '%s' >/dev/null%s", path, "") == 0,
           "qemu-img check: leaks or errors in %s", path);
    CHECKF(run_quiet("qemu-img compare -q -f raw -F qcow2 '%s' '%s'", raw, path) == 0,
           "%s does not read as written", path);
}

/* Write every cluster of a 48-cluster image, then rewrite random ones,
 * four rounds, each write through one of zcow_write (runs of clusters),
 * zcow_write_cluster and zcow_write_compressed, with every kind of content
 * replacing every other.  After each round, before any flush, the image
 * must read as the last write of each cluster (read-your-writes, the
 * clusters still in the write cache included); at the end qemu-img check
 * must find no leak and no error, and the image must equal a raw model. */
static void test_rewrites(int type, uint32_t cs, int cache_mode, int write_cache, int backing)
{
    enum { N = 48 };
    char path[4200], raw[4300], base[4300];
    snprintf(path, sizeof(path), "%s/rw-%d-%u-%d-%d-%d.qcow2", dir, type, cs, cache_mode,
             write_cache, backing);
    snprintf(raw, sizeof(raw), "%s.raw", path);
    snprintf(base, sizeof(base), "%s.base", path);
    size_t size = (size_t)N * cs;
    uint8_t *model = malloc(size), *back = malloc(size), *buf = malloc(size);
    uint8_t *cbuf = malloc(cs);
    uint64_t rs = unit_stream(cs * 4u + (unsigned)type * 2u + (unsigned)backing);
    if (backing) { /* the base reads as 0x5a: a cluster written as zero must not */
        memset(model, 0x5a, size);
        FILE *f = fopen(base, "wb");
        CHECK(f && fwrite(model, 1, size, f) == size);
        if (f)
            fclose(f);
    } else {
        memset(model, 0, size);
    }
    zcow_create_opts *o = zcow_create_opts_new();
    CHECK(o && zcow_create_opts_set_cluster_size(o, cs) == 0 &&
          zcow_create_opts_set_compression_type(o, type) == 0 &&
          zcow_create_opts_set_cache_mode(o, cache_mode) == 0 &&
          zcow_create_opts_set_write_cache(o, write_cache) == 0 &&
          zcow_create_opts_set_virtual_size(o, size) == 0);
    if (backing)
        CHECK(zcow_create_opts_set_backing_file(o, base) == 0 &&
              zcow_create_opts_set_backing_format(o, "raw") == 0);
    zcow_image *img;
    int r = zcow_create(path, o, &img);
    zcow_create_opts_free(o);
    CHECKF(r == 0, "create: %s", zcow_get_error());
    if (r)
        goto out;
    if (backing) { /* before any write: unallocated clusters read the base */
        CHECKF(zcow_read(img, 0, back, size) == 0, "read: %s", zcow_get_error());
        CHECK(memcmp(back, model, size) == 0);
    }
    long bad = 0;
    for (unsigned round = 0; round < 5; round++) {
        for (uint64_t g = 0; g < N;) {
            /* Round 0 writes all; later rounds about a third, in runs. */
            uint64_t run = unit_range(&rs, 1, 4);
            if (g + run > N)
                run = N - g;
            if (round > 0 && unit_range(&rs, 0, 2) != 0) {
                g += run;
                continue;
            }
            for (uint64_t k = 0; k < run; k++)
                version_data(buf + k * cs, cs, g + k, round, (unsigned)unit_range(&rs, 0, 3));
            unsigned how = (unsigned)unit_range(&rs, 0, 2);
            if (how == 0) {
                r = zcow_write(img, g * cs, buf, run * cs);
            } else {
                r = 0;
                for (uint64_t k = 0; k < run && r == 0; k++) {
                    size_t clen = how == 2 ? compress_ref(type, buf + k * cs, cs, cbuf) : 0;
                    r = clen ? zcow_write_compressed(img, (g + k) * cs, cbuf, clen)
                             : zcow_write_cluster(img, (g + k) * cs, buf + k * cs, cs);
                }
            }
            if (r != 0 && bad++ < 3)
                CHECKF(0, "round %u write at cluster %llu: %s", round, (unsigned long long)g,
                       zcow_get_error());
            memcpy(model + g * cs, buf, run * cs);
            g += run;
        }
        memset(back, 0xee, size);
        r = zcow_read(img, 0, back, size);
        if ((r != 0 || memcmp(back, model, size) != 0) && bad++ < 3)
            CHECKF(0, "round %u: the image does not read as written (%s)", round,
                   r ? zcow_get_error() : "content");
        if (round == 2)
            CHECKF(zcow_flush(img) == 0, "flush: %s", zcow_get_error());
    }
    CHECKF(bad == 0, "%ld failures", bad);
    CHECKF(zcow_close(img) == 0, "close: %s", zcow_get_error());
    judge(path, raw, model, size);
out:
    free(model);
    free(back);
    free(buf);
    free(cbuf);
}

static uint64_t allocated_bytes(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_blocks * 512 : 0;
}

/* Rewrites of clusters whose refcount block was already written: 4 KiB
 * clusters, one block counts 8 MiB of file.  Compressible clusters, then
 * 10 MiB of random data (uncompressed clusters), so that the file passes
 * the first block; then the early clusters are written again (compressed
 * over compressed, random over compressed, text and zeros over random):
 * the block must be read back and counted down, and the 10 MiB written as
 * zeros given back to the file system. */
static void test_rewrite_written_blocks(void)
{
    enum { CS = 4096, TEXT = 64, RANDOM = 2560 };
    const size_t size = (size_t)(TEXT + RANDOM + 64) * CS;
    char path[4200], raw[4200];
    snprintf(path, sizeof(path), "%s/rw-late.qcow2", dir);
    snprintf(raw, sizeof(raw), "%s/rw-late.raw", dir);
    uint8_t *model = calloc(1, size);
    zcow_create_opts *o = zcow_create_opts_new();
    CHECK(o && zcow_create_opts_set_cluster_size(o, CS) == 0 &&
          zcow_create_opts_set_virtual_size(o, size) == 0);
    zcow_image *img;
    int r = zcow_create(path, o, &img);
    zcow_create_opts_free(o);
    CHECKF(r == 0, "create: %s", zcow_get_error());
    if (r) {
        free(model);
        return;
    }
    for (uint64_t g = 0; g < TEXT; g++)
        version_data(model + g * CS, CS, g, 0, 1);
    for (uint64_t g = TEXT; g < TEXT + RANDOM; g++)
        version_data(model + g * CS, CS, g, 0, 2);
    CHECKF(zcow_write(img, 0, model, (TEXT + RANDOM) * (size_t)CS) == 0, "write: %s",
           zcow_get_error());
    /* The early clusters again: text over text, random over text, zeros and
     * text over the random ones. */
    for (uint64_t g = 0; g < TEXT; g++)
        version_data(model + g * CS, CS, g, 1, g % 2 ? 1 : 2);
    for (uint64_t g = TEXT; g < TEXT + RANDOM; g++)
        version_data(model + g * CS, CS, g, 1, g < TEXT + 64 ? 1 : 0);
    /* Shuffled, so that the old places are counted down out of order. */
    uint64_t rs = unit_stream(42);
    static unsigned order[TEXT + RANDOM];
    for (unsigned i = 0; i < TEXT + RANDOM; i++)
        order[i] = i;
    for (unsigned i = TEXT + RANDOM - 1; i > 0; i--) {
        unsigned j = (unsigned)unit_range(&rs, 0, i), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    long bad = 0;
    for (unsigned i = 0; i < TEXT + RANDOM; i++)
        if (zcow_write_cluster(img, (uint64_t)order[i] * CS, model + (size_t)order[i] * CS, CS) &&
            bad++ < 3)
            CHECKF(0, "rewrite of cluster %u: %s", order[i], zcow_get_error());
    CHECK(bad == 0);
    CHECKF(zcow_close(img) == 0, "close: %s", zcow_get_error());
    judge(path, raw, model, size);
    /* The file still spans the 10 MiB, but holds little of it. */
    uint64_t held = allocated_bytes(path);
    CHECKF(held < (3u << 20), "%llu bytes still allocated after the random data was replaced",
           (unsigned long long)held);
    free(model);
}

/* Many threads rewriting at once: each owns every 8th cluster and writes
 * all of its clusters six times over (kinds mixed, so that streams of
 * different threads share host clusters and old streams are dropped from
 * clusters still in the write cache), reading each back at once.  The
 * image ends as the last version of each cluster, qemu-img check clean. */
enum { RT_THREADS = 8, RT_CLUSTERS = 256, RT_CS = 4096, RT_VERSIONS = 6 };
struct rt_arg {
    zcow_image *img;
    unsigned id;
    uint8_t *model;
    long bad;
};

static void *rewrite_thread(void *p)
{
    struct rt_arg *a = p;
    uint8_t buf[RT_CS], back[RT_CS];
    for (unsigned v = 0; v < RT_VERSIONS; v++)
        for (uint64_t g = a->id; g < RT_CLUSTERS; g += RT_THREADS) {
            version_data(buf, RT_CS, g, v, (unsigned)((g + v) % 4));
            if (zcow_write_cluster(a->img, g * RT_CS, buf, RT_CS) != 0 ||
                zcow_read(a->img, g * RT_CS, back, RT_CS) != 0 || memcmp(back, buf, RT_CS) != 0)
                a->bad++;
            memcpy(a->model + g * RT_CS, buf, RT_CS);
        }
    return NULL;
}

static void test_rewrite_threads(void)
{
    char path[4200], raw[4200];
    snprintf(path, sizeof(path), "%s/rw-threads.qcow2", dir);
    snprintf(raw, sizeof(raw), "%s/rw-threads.raw", dir);
    const size_t size = (size_t)RT_CLUSTERS * RT_CS;
    uint8_t *model = calloc(1, size);
    zcow_create_opts *o = zcow_create_opts_new();
    /* A small cache bound: writers wait for room while others rewrite. */
    CHECK(o && zcow_create_opts_set_cluster_size(o, RT_CS) == 0 &&
          zcow_create_opts_set_cache_clusters(o, 4) == 0 &&
          zcow_create_opts_set_virtual_size(o, size) == 0);
    zcow_image *img;
    int r = zcow_create(path, o, &img);
    zcow_create_opts_free(o);
    CHECKF(r == 0, "create: %s", zcow_get_error());
    if (r) {
        free(model);
        return;
    }
    pthread_t t[RT_THREADS];
    struct rt_arg args[RT_THREADS];
    for (unsigned i = 0; i < RT_THREADS; i++) {
        args[i] = (struct rt_arg){ img, i, model, 0 };
        CHECK(pthread_create(&t[i], NULL, rewrite_thread, &args[i]) == 0);
    }
    long bad = 0;
    for (unsigned i = 0; i < RT_THREADS; i++) {
        pthread_join(t[i], NULL);
        bad += args[i].bad;
    }
    CHECKF(bad == 0, "%ld writes failed or did not read back", bad);
    CHECKF(zcow_close(img) == 0, "close: %s", zcow_get_error());
    judge(path, raw, model, size);
    free(model);
}

int main(void)
{
    unit_init("test_writer");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    for (int type = 0; type <= 1; type++)
        for (uint32_t cs = 4096; cs <= (2u << 20); cs *= 32)
            test_write_read(type, cs, ZCOW_CACHE_NONE, 1);
    test_write_read(ZCOW_COMPRESSION_ZLIB, 65536, ZCOW_CACHE_WRITEBACK, 1);
    test_write_read(ZCOW_COMPRESSION_ZSTD, 65536, ZCOW_CACHE_NONE, 0);
    test_backing_zero();
    test_refcount_block_boundary();
    test_l2_eviction();
    for (int type = 0; type <= 1; type++)
        for (uint32_t cs = 4096; cs <= 65536; cs *= 16) {
            test_rewrites(type, cs, ZCOW_CACHE_NONE, 1, 0);
            test_rewrites(type, cs, ZCOW_CACHE_NONE, 1, 1);
        }
    test_rewrites(ZCOW_COMPRESSION_ZLIB, 65536, ZCOW_CACHE_WRITEBACK, 1, 0);
    test_rewrites(ZCOW_COMPRESSION_ZLIB, 65536, ZCOW_CACHE_NONE, 0, 1);
    test_rewrite_written_blocks();
    test_rewrite_threads();
    char cmd[200];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
    return unit_done();
}
