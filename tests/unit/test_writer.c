/* test_writer.c - the writer through the public API: multi-cluster writes
 * from unaligned buffers, read-your-writes while writing, a cluster
 * written twice (refused, not sticky), zero clusters over a backing file,
 * refcounts across a refcount block boundary, L2 tables written out and
 * read back, and qemu-img's verdict on each image. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

    /* Written twice: refused, and no harm done. */
    r = zcow_write_cluster(img, cs, data, cs);
    CHECKF(r == -EEXIST, "second write of a cluster returned %d", r);
    CHECK(zcow_flush(img) == 0);
    r = zcow_close(img);
    CHECKF(r == 0, "close after a refused write: %s", zcow_get_error());
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
    char cmd[200];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
    return unit_done();
}
