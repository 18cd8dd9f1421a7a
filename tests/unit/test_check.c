/* test_check.c - zcow_check() on images built here byte by byte (a
 * compressed chunk straddling two host clusters, refcount widths 1..64,
 * overflowing 1-bit refcounts, an L1 table whose 4096 entries all point
 * at one L2 table, stored refcounts too low and too high, streams that do
 * not decompress, hostile headers, the memory cap), on an image written
 * by zcow itself, and zcow_compare() on raw files. */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>

#include "codec.h"
#include "options.h" /* struct zcow_check_result: this test reads check.c's findings directly */
#include "qcow2.h"
#include "qcow2_ext.h"
#include "qcow2_refcount.h"
#include "unit.h"
#include "zcow.h"

static char dir[] = "/tmp/zcow-test-check-XXXXXX";
static char path_buf[4][512];

static const char *tpath(int slot, const char *name)
{
    snprintf(path_buf[slot], sizeof(path_buf[slot]), "%s/%s", dir, name);
    return path_buf[slot];
}

static void save(const char *path, const void *buf, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write(fd, buf, len) != (ssize_t)len) {
        perror(path);
        exit(1);
    }
    close(fd);
}

/* ---- A hand-built image (4 KiB clusters) ---------------------------------
 *
 *  cluster 0  header           cluster 4  L2 table
 *  cluster 1  refcount table   cluster 5  a normal data cluster
 *  cluster 2  refcount block   cluster 6  compressed chunk A, and the
 *  cluster 3  L1 table (1 entry)          start of chunk B
 *                              cluster 7  the end of chunk B
 *
 * So the refcounts are 1 everywhere but cluster 6 (2: chunk A and chunk B
 * both touch it). */

#define CB 12
#define CS 4096u

struct image {
    uint8_t buf[48 * CS]; /* room for an L1 table of 20000 entries */
    size_t len;
    unsigned order;
    uint8_t cluster_a[CS], cluster_b[CS];
};

static void set_rc(struct image *im, uint64_t k, uint64_t v)
{
    qcow2_refcount_set(im->buf + 2 * CS, im->order, k, v);
}

static size_t compress_or_die(const void *in, void *out, size_t cap)
{
    int n = codec_compress(ZCOW_COMPRESSION_ZLIB, 6, in, CS, out, cap);
    if (n <= 0) {
        fprintf(stderr, "cannot compress the test cluster: %d\n", n);
        exit(1);
    }
    return (size_t)n;
}

/* L1_ENTRIES entries, all pointing at the one L2 table (the virtual size
 * grows with them: one L2 table maps 2 MiB). */
static void build(struct image *im, unsigned order, uint32_t l1_entries)
{
    memset(im, 0, sizeof(*im));
    im->order = order;
    uint64_t l1_off = 3 * CS, next = 8 * CS;
    if (l1_entries > CS / 8) { /* a long L1 table goes after the data */
        l1_off = next;
        next += (uint64_t)l1_entries * 8;
    }
    struct qcow2_header h = {
        .magic = QCOW2_MAGIC,
        .version = 3,
        .cluster_bits = CB,
        .size = (uint64_t)l1_entries * (CS / 8) * CS,
        .l1_size = l1_entries,
        .l1_table_offset = l1_off,
        .refcount_table_offset = CS,
        .refcount_table_clusters = 1,
        .refcount_order = order,
        .header_length = QCOW2_HEADER_V3_LEN,
    };
    qcow2_header_encode(&h, im->buf);
    qcow2_write_extensions(im->buf + QCOW2_HEADER_V3_LEN, CS - QCOW2_HEADER_V3_LEN, NULL);
    qcow2_put_be64(im->buf + CS, 2 * CS);
    for (uint32_t i = 0; i < l1_entries; i++)
        qcow2_put_be64(im->buf + l1_off + 8 * i, (4 * CS) | QCOW2_OFLAG_COPIED);

    /* L2: entry 0 normal, entry 1 chunk A, entry 2 chunk B. */
    uint8_t *l2 = im->buf + 4 * CS;
    qcow2_put_be64(l2, (5 * CS) | QCOW2_OFLAG_COPIED);
    memset(im->buf + 5 * CS, 0x5c, CS);
    for (unsigned i = 0; i < CS; i++) {
        im->cluster_a[i] = (uint8_t)(i / 64);
        im->cluster_b[i] = (uint8_t)(i % 7 == 0 ? i : 3);
    }
    uint8_t tmp[CS];
    size_t na = compress_or_die(im->cluster_a, tmp, CS - 1);
    uint64_t a_off = 6 * CS + 100;
    memcpy(im->buf + a_off, tmp, na);
    qcow2_put_be64(l2 + 8, qcow2_compressed_descriptor(CB, a_off, na));
    size_t nb = compress_or_die(im->cluster_b, tmp, CS - 1);
    uint64_t b_off = 7 * CS - nb / 2; /* straddles clusters 6 and 7 */
    memcpy(im->buf + b_off, tmp, nb);
    qcow2_put_be64(l2 + 16, qcow2_compressed_descriptor(CB, b_off, nb));

    im->len = next;
    for (uint64_t k = 0; k < next / CS + (next % CS != 0); k++)
        set_rc(im, k, 1);
    set_rc(im, 6, order == 0 ? 1 : 2);
}

struct lines {
    int n;
    char first[256];
};

static void collect(void *opaque, const char *line)
{
    struct lines *l = opaque;
    if (l->n++ == 0)
        snprintf(l->first, sizeof(l->first), "%s", line);
}

static int run_check(const struct image *im, unsigned flags, struct zcow_check_result *res,
                     struct lines *lines)
{
    const char *p = tpath(0, "built.qcow2");
    save(p, im->buf, im->len);
    memset(lines, 0, sizeof(*lines));
    return zcow_check(p, flags, collect, lines, res);
}

static void test_clean_and_straddle(void)
{
    static struct image im;
    struct zcow_check_result res;
    struct lines lines;
    for (unsigned order = 1; order <= 6; order++) {
        build(&im, order, 1);
        int r = run_check(&im, ZCOW_CHECK_DECOMPRESS, &res, &lines);
        CHECKF(r == 0, "order %u: %s", order, zcow_get_error());
        CHECKF(res.corruptions == 0 && res.leaks == 0 && res.check_errors == 0,
               "order %u: %llu corruptions, %llu leaks, first finding: %s", order,
               (unsigned long long)res.corruptions, (unsigned long long)res.leaks, lines.first);
        CHECK(res.allocated_clusters == 3);
        CHECK(res.compressed_clusters == 2);
        CHECK(res.fragmented_clusters == 2);
        CHECK(res.total_clusters == 512);
        CHECK(res.image_end_offset == 8 * CS);
        CHECK(res.cluster_size == CS);
        CHECK(res.decompress_failures == 0);
    }

    /* Chunk B counts in cluster 6 too: a stored 1 there is too low. */
    build(&im, 4, 1);
    set_rc(&im, 6, 1);
    CHECK(run_check(&im, 0, &res, &lines) == 0);
    CHECKF(res.corruptions == 1 && res.leaks == 0, "%llu corruptions, %llu leaks",
           (unsigned long long)res.corruptions, (unsigned long long)res.leaks);
    CHECKF(!strcmp(lines.first, "ERROR cluster 6 refcount=1 reference=2"), "got '%s'", lines.first);

    /* One too many on the normal cluster: a leak and a COPIED error. */
    build(&im, 4, 1);
    set_rc(&im, 5, 2);
    CHECK(run_check(&im, 0, &res, &lines) == 0);
    CHECK(res.leaks == 1 && res.corruptions == 1);

    /* 1-bit refcounts: the second reference to cluster 6 overflows. */
    build(&im, 0, 1);
    CHECK(run_check(&im, 0, &res, &lines) == 0);
    CHECKF(res.corruptions == 1 && res.leaks == 0, "%llu corruptions",
           (unsigned long long)res.corruptions);
    CHECKF(strstr(lines.first, "overflow") != NULL, "got '%s'", lines.first);
}

static void test_shared_l2(void)
{
    /* 4096 L1 entries, one L2 table: each reference is counted (so the L2
     * table, the data cluster and both compressed clusters are referenced
     * 4096 times, 4 errors) but the table is read once: fast. */
    static struct image im;
    struct zcow_check_result res;
    struct lines lines;
    build(&im, 4, 4096);
    double t0 = unit_now();
    CHECK(run_check(&im, 0, &res, &lines) == 0);
    double dt = unit_now() - t0;
    CHECKF(res.corruptions == 4, "%llu corruptions", (unsigned long long)res.corruptions);
    CHECK(res.allocated_clusters == 3 * 4096ull);
    CHECK(res.compressed_clusters == 2 * 4096ull);
    CHECKF(dt < 2.0, "took %.2f s", dt);

    /* 20000 entries: the L1 table is read in pieces (8192 entries each);
     * every entry of every piece is counted. */
    build(&im, 4, 20000);
    CHECK(run_check(&im, 0, &res, &lines) == 0);
    CHECKF(res.allocated_clusters == 3 * 20000ull, "%llu clusters allocated",
           (unsigned long long)res.allocated_clusters);
    CHECKF(res.corruptions == 4, "%llu corruptions", (unsigned long long)res.corruptions);
}

static void test_decompress_failure(void)
{
    static struct image im;
    struct zcow_check_result res;
    struct lines lines;
    build(&im, 4, 1);
    memset(im.buf + 6 * CS + 100, 0xff, 40); /* chunk A: not a deflate stream */
    CHECK(run_check(&im, 0, &res, &lines) == 0);
    CHECK(res.corruptions == 0 && res.decompress_failures == 0);
    CHECK(run_check(&im, ZCOW_CHECK_DECOMPRESS, &res, &lines) == 0);
    CHECKF(res.decompress_failures == 1 && res.corruptions == 1, "%llu failures",
           (unsigned long long)res.decompress_failures);
}

static void test_hostile(void)
{
    static struct image im;
    struct zcow_check_result res;
    struct lines lines;
    const char *p = tpath(1, "bad.qcow2");

    save(p, "", 0);
    CHECK(zcow_check(p, 0, NULL, NULL, &res) == -EINVAL);
    save(p, "QFI\xfb\0\0\0\3", 8);
    CHECK(zcow_check(p, 0, NULL, NULL, &res) == -EINVAL);
    CHECK(strstr(zcow_get_error(), "bad.qcow2") != NULL);
    CHECK(zcow_check(tpath(1, "missing.qcow2"), 0, NULL, NULL, &res) == -ENOENT);

    /* Each header field out of range: the check does not run. */
    struct {
        size_t off, width;
        uint64_t value;
        int err;
    } cases[] = {
        { 36, 4, 0, -EINVAL },           /* L1 too small for the size */
        { 36, 4, 0x800000, -EINVAL },    /* L1 too large */
        { 40, 8, 3 * CS + 8, -EINVAL },  /* L1 unaligned */
        { 48, 8, CS + 512, -EINVAL },    /* refcount table unaligned */
        { 56, 4, 0xffffffff, -EINVAL },  /* refcount table too large */
        { 60, 4, 70000, -EINVAL },       /* too many snapshots */
        { 64, 8, 7, -EINVAL },           /* snapshot table unaligned */
        { 72, 8, 1ull << 40, -ENOTSUP }, /* unknown incompatible bit */
        { 72, 8, QCOW2_INCOMPAT_DATA_FILE, -ENOTSUP },
        { 72, 8, QCOW2_INCOMPAT_EXTL2, -EINVAL }, /* 4 KiB clusters: subclusters too small */
        { 8, 8, 2 * CS, -EINVAL },                /* backing file name past the header */
        { 96, 4, 7, -EINVAL },                    /* refcount order */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        build(&im, 4, 1);
        if (cases[i].width == 8)
            qcow2_put_be64(im.buf + cases[i].off, cases[i].value);
        else
            qcow2_put_be32(im.buf + cases[i].off, (uint32_t)cases[i].value);
        int r = run_check(&im, 0, &res, &lines);
        CHECKF(r == cases[i].err, "case %zu: got %d, want %d (%s)", i, r, cases[i].err,
               zcow_get_error());
    }

    /* No refcount table: QEMU checks such an image (every refcount reads
     * as zero, so every used cluster is an error). */
    build(&im, 4, 1);
    qcow2_put_be32(im.buf + 56, 0);
    CHECK(run_check(&im, 0, &res, &lines) == 0);
    /* Clusters 0 and 3 to 7 (the refcount structures are unused now),
     * and the COPIED flags of the L1 entry and the normal cluster. */
    CHECKF(res.corruptions == 6 + 2, "%llu corruptions", (unsigned long long)res.corruptions);

    /* A refcount table whose entries all point past the end of the file,
     * and an L1 entry pointing there: corruptions, not a crash. */
    build(&im, 4, 1);
    for (unsigned i = 0; i < CS / 8; i++)
        qcow2_put_be64(im.buf + CS + 8 * i, (1ull << 40) + (uint64_t)i * CS);
    qcow2_put_be64(im.buf + 3 * CS, 1ull << 50);
    CHECK(run_check(&im, ZCOW_CHECK_DECOMPRESS, &res, &lines) == 0);
    CHECK(res.corruptions > 0);

    /* A snapshot table entry whose L1 is the active one: refcounts 2. */
    build(&im, 4, 1);
    uint8_t *sn = im.buf + 8 * CS;
    qcow2_put_be64(sn, 3 * CS);
    qcow2_put_be32(sn + 8, 1);
    qcow2_put_be16(sn + 12, 1);
    qcow2_put_be32(sn + 36, 16); /* extra data: VM state and disk sizes */
    qcow2_put_be64(sn + 48, qcow2_be64(im.buf + 24));
    sn[56] = '1';
    im.len = 9 * CS;
    qcow2_put_be32(im.buf + 60, 1);
    qcow2_put_be64(im.buf + 64, 8 * CS);
    set_rc(&im, 8, 1);
    CHECK(run_check(&im, 0, &res, &lines) == 0);
    /* L1 cluster, L2 cluster, data cluster, compressed 6 and 7: 5 errors;
     * the active L1 entry has COPIED with stored refcount 1: fine. */
    CHECKF(res.corruptions == 5, "%llu corruptions", (unsigned long long)res.corruptions);
    for (uint64_t k = 3; k <= 7; k++)
        set_rc(&im, k, k == 6 ? 4 : 2);
    /* COPIED is still set on the L1 entry and the normal L2 entry. */
    CHECK(run_check(&im, 0, &res, &lines) == 0);
    CHECKF(res.corruptions == 2 && res.leaks == 0, "%llu corruptions, %llu leaks",
           (unsigned long long)res.corruptions, (unsigned long long)res.leaks);
}

static void test_memory_cap(void)
{
    /* 512-byte clusters in a 300 GiB sparse file: 600 M clusters need
     * more than 1 GiB of counters; the check refuses instead of trying. */
    const char *p = tpath(2, "huge.qcow2");
    static struct image im;
    build(&im, 4, 1);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ftruncate(fd, 300ll << 30) != 0) {
        printf("test_check: no 300 GiB sparse file here, memory cap not tested\n");
        if (fd >= 0)
            close(fd);
        return;
    }
    struct qcow2_header h = {
        .magic = QCOW2_MAGIC,
        .version = 3,
        .cluster_bits = 9,
        .size = 1 << 20,
        .l1_size = 32,
        .l1_table_offset = 4096,
        .refcount_table_offset = 512,
        .refcount_table_clusters = 1,
        .refcount_order = 4,
        .header_length = 112,
    };
    uint8_t hdr[512] = { 0 };
    qcow2_header_encode(&h, hdr);
    CHECK(pwrite(fd, hdr, sizeof(hdr), 0) == (ssize_t)sizeof(hdr));
    close(fd);
    struct zcow_check_result res;
    CHECK(zcow_check(p, 0, NULL, NULL, &res) == -EFBIG);
    CHECKF(strstr(zcow_get_error(), "1 GiB") != NULL, "%s", zcow_get_error());
    unlink(p);
}

static void test_zcow_written(void)
{
    /* An image zcow writes checks clean, with every cluster compressed. */
    const char *p = tpath(3, "written.qcow2");
    const uint64_t size = 4 << 20;
    zcow_create_opts *o = zcow_create_opts_new();
    CHECK(o && zcow_create_opts_set_virtual_size(o, size) == 0 &&
          zcow_create_opts_set_cluster_size(o, 65536) == 0 &&
          zcow_create_opts_set_cache_mode(o, ZCOW_CACHE_WRITEBACK) == 0);
    zcow_image *img;
    int r = zcow_create(p, o, &img);
    zcow_create_opts_free(o);
    CHECKF(r == 0, "%s", zcow_get_error());
    if (r < 0)
        return;
    static uint8_t data[65536];
    uint64_t st = unit_stream(1);
    for (uint64_t off = 0; off < size; off += sizeof(data)) {
        for (size_t i = 0; i < sizeof(data); i++)
            data[i] = (uint8_t)(unit_rand(&st) & 3);
        CHECK(zcow_write_cluster(img, off, data, sizeof(data)) == 0);
    }
    CHECK(zcow_close(img) == 0);
    struct zcow_check_result res;
    struct lines lines = { 0 };
    CHECK(zcow_check(p, ZCOW_CHECK_DECOMPRESS, collect, &lines, &res) == 0);
    CHECKF(res.corruptions == 0 && res.leaks == 0 && res.check_errors == 0, "first: %s",
           lines.first);
    CHECK(res.compressed_clusters == 64 && res.allocated_clusters == 64);
}

static void write_file(const char *path, const uint8_t *buf, size_t len) { save(path, buf, len); }

static void test_compare(void)
{
    size_t len = 9 << 20; /* three 4 MiB blocks, the last one short */
    uint8_t *a = malloc(len + (1 << 20));
    uint64_t st = unit_stream(2);
    unit_fill_random(&st, a, len);
    const char *pa = tpath(0, "a.raw"), *pb = tpath(1, "b.raw");
    write_file(pa, a, len);
    write_file(pb, a, len);
    uint64_t off = 7;
    CHECK(zcow_compare(pa, "raw", pb, "raw", 0, &off) == ZCOW_COMPARE_IDENTICAL);
    CHECK(zcow_compare(pa, NULL, pb, NULL, 1, &off) == ZCOW_COMPARE_IDENTICAL);

    /* Two differences: the first, rounded down to its sector, is found
     * whichever thread gets there first. */
    uint64_t d1 = unit_range(&st, 0, len / 2), d2 = unit_range(&st, len / 2, len - 1);
    uint8_t *b = malloc(len + (1 << 20));
    memcpy(b, a, len);
    b[d1] ^= 0x40;
    b[d2] ^= 0x01;
    write_file(pb, b, len);
    CHECK(zcow_compare(pa, "raw", pb, "raw", 0, &off) == ZCOW_COMPARE_CONTENT);
    CHECKF(off == (d1 & ~511ull), "mismatch at %llu, want %llu", (unsigned long long)off,
           (unsigned long long)(d1 & ~511ull));

    /* A longer image with a zero tail is the same, unless strict. */
    memcpy(b, a, len);
    memset(b + len, 0, 1 << 20);
    write_file(pb, b, len + (1 << 20));
    CHECK(zcow_compare(pa, "raw", pb, "raw", 0, &off) == ZCOW_COMPARE_IDENTICAL);
    CHECK(zcow_compare(pb, "raw", pa, "raw", 0, &off) == ZCOW_COMPARE_IDENTICAL);
    CHECK(zcow_compare(pa, "raw", pb, "raw", 1, &off) == ZCOW_COMPARE_SIZE);
    b[len + 1000] = 1;
    write_file(pb, b, len + (1 << 20));
    CHECK(zcow_compare(pa, "raw", pb, "raw", 0, &off) == ZCOW_COMPARE_CONTENT);
    CHECK(off == len + 512);

    CHECK(zcow_compare(pa, "raw", tpath(2, "missing.raw"), "raw", 0, &off) == -ENOENT);
    free(a);
    free(b);
}

int main(void)
{
    unit_init("test_check");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_clean_and_straddle();
    test_shared_l2();
    test_decompress_failure();
    test_hostile();
    test_memory_cap();
    test_zcow_written();
    test_compare();
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
    return unit_done();
}
