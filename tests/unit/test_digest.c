/* test_digest.c - content digests (digest.h).
 *
 * Expectations come from blkhash's definition: digests Python's hashlib
 * gave (known answers), and a straight implementation of the construction
 * here (SHA-256 of each block, SHA-256 of the hashes) for random cases.
 * Checked: blocks given in any order and from several threads at once, a
 * short last block, zero blocks (given as zero or as data of zeros, and a
 * block made zero after it held data) and that they cost no memory, calls
 * off the blocks refused; the block-hash file round trip (sparse on disk,
 * no temporary left; where two digests differ), and hostile files (missing, empty, truncated, wrong
 * magic, version, algorithm or disk size, a flipped entry): a clear error
 * naming the file, no crash. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blkhash_ref.h"
#include "digest.h"
#include "error.h"
#include "unit.h"
#include "zcow.h"

#define KiB 1024u
#define MiB (1024u * 1024u)
#define B DIGEST_BLOCK

static char dir[] = "/var/tmp/zcow-test-digest.XXXXXX";

static void final_of(struct digest *d, char hex[DIGEST_HEX_SIZE]) { digest_final(d, hex); }

/* Digests hashlib computed (tests/interop/blkhash.py's construction). */
static void test_known_answers(void)
{
    static const struct {
        uint64_t size;
        int pattern; /* 0: zeros; 1: byte i is i % 251 */
        const char *hex;
    } known[] = {
        { 0, 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" },
        { 65536, 0, "5eeec6a431c711d04c80c9370ce9d46688f8f30f5d14f321f6e4f0558098ede3" },
        { 200000, 1, "bf2187045a84f25369fb8ca6a17623571e97266c1c640e6ed3c1a4e99189dad7" },
        { 3 * 65536 + 100, 0, "c83bfdcb67e1df1bb0ace59db7723c1e06df65360d5fb9096b3a2af9c6a0671c" },
    };
    for (size_t k = 0; k < sizeof(known) / sizeof(known[0]); k++) {
        uint64_t size = known[k].size;
        uint8_t *buf = calloc(1, size + 1);
        for (uint64_t i = 0; known[k].pattern && i < size; i++)
            buf[i] = (uint8_t)(i % 251);
        char hex[DIGEST_HEX_SIZE];
        struct digest *d;
        /* As data, and (for zeros) never given at all. */
        CHECK(digest_new(size, &d) == 0);
        CHECK(digest_data(d, 0, buf, size) == 0);
        final_of(d, hex);
        CHECKF(!strcmp(hex, known[k].hex), "size %llu as data: %s", (unsigned long long)size, hex);
        digest_free(d);
        if (!known[k].pattern) {
            CHECK(digest_new(size, &d) == 0);
            final_of(d, hex);
            CHECKF(!strcmp(hex, known[k].hex), "size %llu untouched: %s", (unsigned long long)size,
                   hex);
            CHECK(digest_zero(d, 0, size) == 0);
            final_of(d, hex);
            CHECK(!strcmp(hex, known[k].hex));
            digest_free(d);
        }
        free(buf);
    }
}

/* Random sizes, blocks given in random runs and order, some zeroed later. */
static void test_random(void)
{
    uint64_t rng = unit_stream(1);
    for (int round = 0; round < 40; round++) {
        uint64_t size = unit_range(&rng, 1, 40) * B + (round % 3 ? unit_range(&rng, 0, B - 1) : 0);
        uint64_t n = (size + B - 1) / B;
        uint8_t *buf = malloc(n * B);
        unit_fill_random(&rng, buf, n * B);
        struct digest *d;
        CHECK(digest_new(size, &d) == 0);
        /* Garbage first, then the runs in a shuffled order. */
        uint8_t *junk = malloc(n * B);
        unit_fill_random(&rng, junk, n * B);
        CHECK(digest_data(d, 0, junk, size) == 0);
        uint64_t *order = malloc(n * sizeof(*order));
        for (uint64_t i = 0; i < n; i++)
            order[i] = i;
        for (uint64_t i = n - 1; i > 0; i--) {
            uint64_t j = unit_range(&rng, 0, i), t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        for (uint64_t i = 0; i < n; i++) {
            uint64_t b = order[i];
            bool zero = unit_range(&rng, 0, 4) == 0;
            uint64_t len = b == n - 1 ? size - b * B : B;
            if (zero) {
                memset(buf + b * B, 0, len);
                /* Zeros as a zero call, or as data. */
                if (unit_range(&rng, 0, 1))
                    CHECK(digest_zero(d, b * B, len) == 0);
                else
                    CHECK(digest_data(d, b * B, buf + b * B, len) == 0);
            } else {
                CHECK(digest_data(d, b * B, buf + b * B, len) == 0);
            }
        }
        char got[DIGEST_HEX_SIZE], want[DIGEST_HEX_SIZE];
        final_of(d, got);
        blkhash_ref(buf, size, want);
        CHECKF(!strcmp(got, want), "size %llu: %s, want %s", (unsigned long long)size, got, want);
        /* Final leaves the digest as it was. */
        final_of(d, got);
        CHECK(!strcmp(got, want));
        digest_free(d);
        free(order);
        free(junk);
        free(buf);
    }
}

/* Calls off the blocks are refused with a message; past the end clipped. */
static void test_alignment(void)
{
    struct digest *d;
    uint64_t size = 3 * B + 1000;
    uint8_t *buf = calloc(1, 4 * B);
    buf[5] = 1;
    CHECK(digest_new(size, &d) == 0);
    zerr_clear();
    CHECK(digest_data(d, 512, buf, B) == -EINVAL);
    CHECK(strstr(zcow_get_error(), "not a run of") != NULL);
    CHECK(digest_data(d, 0, buf, B + 4096) == -EINVAL);
    CHECK(digest_zero(d, B, 100) == -EINVAL);
    CHECK(digest_data(d, 5 * B, buf, B) == -EINVAL);
    /* To the end, and past it: the bytes past it do not count. */
    CHECK(digest_data(d, 3 * B, buf, 1000) == 0);
    char a[DIGEST_HEX_SIZE], b[DIGEST_HEX_SIZE];
    final_of(d, a);
    memset(buf + 1000, 0xff, B - 1000);
    CHECK(digest_data(d, 3 * B, buf, B) == 0);
    final_of(d, b);
    CHECK(!strcmp(a, b));
    uint8_t *whole = calloc(1, size);
    whole[3 * B + 5] = 1;
    blkhash_ref(whole, size, b);
    CHECK(!strcmp(a, b));
    digest_free(d);
    free(whole);
    free(buf);
}

static long resident_kib(void)
{
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f && fscanf(f, "%ld %ld", &pages, &rss) != 2)
        rss = 0;
    if (f)
        fclose(f);
    return rss * (sysconf(_SC_PAGESIZE) / 1024);
}

/* A 256 GiB disk of a few data blocks: the entries of its zero blocks
 * take no memory (128 MiB of entries, hardly any touched), and its
 * block-hash file is sparse. */
static void test_sparse(void)
{
    uint64_t size = 256ull << 30;
    long before = resident_kib();
    struct digest *d;
    CHECK(digest_new(size, &d) == 0);
    uint8_t *buf = malloc(B);
    uint64_t rng = unit_stream(2);
    unit_fill_random(&rng, buf, B);
    CHECK(digest_data(d, 0, buf, B) == 0);
    CHECK(digest_data(d, size - B, buf, B) == 0);
    CHECK(digest_data(d, 100ull << 30, buf, B) == 0);
    /* A hole given as zero, and as zero data, over blocks never touched. */
    CHECK(digest_zero(d, B, (1ull << 30)) == 0);
    memset(buf, 0, B);
    for (uint64_t off = 2ull << 30; off < (2ull << 30) + 64 * B; off += B)
        CHECK(digest_data(d, off, buf, B) == 0);
    long grown = resident_kib() - before;
    CHECKF(grown < 8 * 1024, "a 256 GiB digest of 3 data blocks takes %ld KiB", grown);
    char path[256];
    snprintf(path, sizeof(path), "%s/sparse.blkhash", dir);
    CHECK(digest_save(d, path) == 0);
    struct stat st;
    CHECK(stat(path, &st) == 0);
    CHECKF(st.st_size == (off_t)(4096 + (size / B) * 32), "size %lld", (long long)st.st_size);
    CHECKF(st.st_blocks * 512 < 1 * MiB, "the block-hash file takes %lld bytes",
           (long long)st.st_blocks * 512);
    digest_free(d);
    unlink(path);
    free(buf);
}

/* Several threads give disjoint blocks at once (TSan runs this). */
struct worker_arg {
    struct digest *d;
    const uint8_t *buf;
    uint64_t n_blocks, size;
    unsigned index, n;
};

static void *worker(void *p)
{
    struct worker_arg *a = p;
    for (uint64_t b = a->index; b < a->n_blocks; b += a->n) {
        uint64_t len = b == a->n_blocks - 1 ? a->size - b * B : B;
        CHECK(digest_data(a->d, b * B, a->buf + b * B, len) == 0);
        if (b % 7 == 0)
            CHECK(digest_zero(a->d, b * B, len) == 0);
    }
    return NULL;
}

static void test_threads(void)
{
    uint64_t size = 12 * MiB + 4321, n = (size + B - 1) / B;
    uint8_t *buf = malloc(n * B);
    uint64_t rng = unit_stream(3);
    unit_fill_random(&rng, buf, n * B);
    struct digest *d;
    CHECK(digest_new(size, &d) == 0);
    pthread_t t[4];
    struct worker_arg a[4];
    for (unsigned i = 0; i < 4; i++) {
        a[i] = (struct worker_arg){ d, buf, n, size, i, 4 };
        pthread_create(&t[i], NULL, worker, &a[i]);
    }
    for (unsigned i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    for (uint64_t b = 0; b < n; b += 7)
        memset(buf + b * B, 0, b == n - 1 ? size - b * B : B);
    char got[DIGEST_HEX_SIZE], want[DIGEST_HEX_SIZE];
    final_of(d, got);
    blkhash_ref(buf, size, want);
    CHECKF(!strcmp(got, want), "threads: %s, want %s", got, want);
    digest_free(d);
    free(buf);
}

/* Saved and loaded: the same digest, and an incremental on the loaded
 * one is the digest of the changed disk. */
static void test_round_trip(void)
{
    uint64_t rng = unit_stream(4);
    uint64_t size = 200 * B + 777, n = (size + B - 1) / B;
    uint8_t *buf = calloc(1, n * B);
    for (uint64_t b = 0; b < n; b += 3)
        unit_fill_random(&rng, buf + b * B, B);
    memset(buf + size, 0, n * B - size);
    struct digest *d, *l;
    CHECK(digest_new(size, &d) == 0);
    CHECK(digest_data(d, 0, buf, size) == 0);
    char path[256], a[DIGEST_HEX_SIZE], b[DIGEST_HEX_SIZE];
    snprintf(path, sizeof(path), "%s/rt.blkhash", dir);
    CHECK(digest_save(d, path) == 0);
    CHECK(digest_load(path, size, &l) == 0);
    final_of(d, a);
    final_of(l, b);
    CHECKF(!strcmp(a, b), "loaded %s, saved %s", b, a);
    /* No temporary file beside it. */
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "test \"$(ls -A %s | grep -c zcow-tmp)\" = 0", dir);
    CHECK(system(cmd) == 0);
    /* An incremental on the loaded one. */
    unit_fill_random(&rng, buf + 10 * B, 2 * B);
    CHECK(digest_data(l, 10 * B, buf + 10 * B, 2 * B) == 0);
    memset(buf + 30 * B, 0, B);
    CHECK(digest_zero(l, 30 * B, B) == 0);
    final_of(l, a);
    blkhash_ref(buf, size, b);
    CHECK(!strcmp(a, b));
    /* Where the two differ: blocks 10 and 11 (data now), 30 (zero now). */
    uint64_t first;
    CHECK(digest_differences(d, l, &first) == 3 && first == 10);
    CHECK(digest_differences(l, d, &first) == 3 && first == 10);
    CHECK(digest_differences(d, d, &first) == 0 && first == UINT64_MAX);
    /* Saved over the old file: replaced. */
    CHECK(digest_save(l, path) == 0);
    digest_free(l);
    CHECK(digest_load(path, size, &l) == 0);
    final_of(l, a);
    CHECK(!strcmp(a, b));
    digest_free(l);
    digest_free(d);
    free(buf);
}

/* Write LEN bytes of P to PATH. */
static void put(const char *path, const void *p, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0 && write(fd, p, len) == (ssize_t)len);
    close(fd);
}

static void expect_refused(const char *path, uint64_t size, const char *cause, const char *what)
{
    struct digest *d = (struct digest *)&d;
    zerr_clear();
    int r = digest_load(path, size, &d);
    const char *msg = zcow_get_error();
    CHECKF(r < 0 && d == NULL, "%s: loaded (%d)", what, r);
    CHECKF(strstr(msg, path) && strstr(msg, cause), "%s: message '%s', want '%s'", what, msg,
           cause);
}

static void test_hostile(void)
{
    uint64_t rng = unit_stream(5);
    uint64_t size = 20 * B;
    uint8_t *buf = malloc(size);
    unit_fill_random(&rng, buf, size);
    struct digest *d;
    CHECK(digest_new(size, &d) == 0);
    CHECK(digest_data(d, 0, buf, size) == 0);
    char good[256], bad[256];
    snprintf(good, sizeof(good), "%s/good.blkhash", dir);
    snprintf(bad, sizeof(bad), "%s/bad.blkhash", dir);
    CHECK(digest_save(d, good) == 0);
    digest_free(d);
    size_t flen = 4096 + 20 * 32;
    uint8_t *f = malloc(flen), *g = malloc(flen);
    int fd = open(good, O_RDONLY);
    CHECK(fd >= 0 && read(fd, f, flen) == (ssize_t)flen);
    close(fd);

    snprintf(bad, sizeof(bad), "%s/missing.blkhash", dir);
    expect_refused(bad, size, "No such file", "missing");
    snprintf(bad, sizeof(bad), "%s/bad.blkhash", dir);
    put(bad, f, 0);
    expect_refused(bad, size, "not a zcow block-hash file", "empty");
    put(bad, f, 100);
    expect_refused(bad, size, "truncated", "a piece of the header");
    put(bad, f, flen - 1);
    expect_refused(bad, size, "truncated", "one byte short");
    put(bad, f, 4096 + 10 * 32);
    expect_refused(bad, size, "truncated", "half the entries");
    memcpy(g, f, flen);
    memcpy(g, "QFI\xfb", 4);
    put(bad, g, flen);
    expect_refused(bad, size, "not a zcow block-hash file", "a qcow2 magic");
    memcpy(g, f, flen);
    g[8] = 9;
    put(bad, g, flen);
    expect_refused(bad, size, "version 9", "a later version");
    memcpy(g, f, flen);
    memcpy(g + 32, "md5/4k\0\0\0\0", 10);
    put(bad, g, flen);
    expect_refused(bad, size, "another kind", "another algorithm");
    memcpy(g, f, flen);
    g[14] = 0x02; /* block size 128 KiB */
    put(bad, g, flen);
    expect_refused(bad, size, "another kind", "another block size");
    expect_refused(good, size + B, "of a disk of", "another disk size");
    expect_refused(good, size - 1, "of a disk of", "a disk one byte smaller");
    memcpy(g, f, flen);
    g[4096 + 5 * 32 + 7] ^= 0x10;
    put(bad, g, flen);
    expect_refused(bad, size, "damaged", "a flipped bit in an entry");
    memcpy(g, f, flen);
    memset(g + 4096 + 3 * 32, 0, 32); /* an entry zeroed: "a zero block" */
    put(bad, g, flen);
    expect_refused(bad, size, "damaged", "an entry zeroed");
    memcpy(g, f, flen);
    g[48] ^= 1;
    put(bad, g, flen);
    expect_refused(bad, size, "damaged", "a flipped bit in the recorded digest");
    /* A huge disk size in the header, asked for as such: refused by its
     * length, not read. */
    memcpy(g, f, flen);
    uint64_t huge = 1ull << 50;
    memcpy(g + 16, &huge, 8);
    put(bad, g, flen);
    expect_refused(bad, huge, "truncated", "a huge disk in a small file");
    /* A size beyond any disk: refused, not wrapped around. */
    CHECK(digest_new(UINT64_MAX, &d) == -EFBIG && d == NULL);
    put(bad, f, flen);
    memcpy(g, f, flen);
    huge = UINT64_MAX;
    memcpy(g + 16, &huge, 8);
    put(bad, g, flen);
    expect_refused(bad, UINT64_MAX, "too large", "a disk of 2^64 - 1 bytes");
    /* And the good one still loads. */
    CHECK(digest_load(good, size, &d) == 0);
    digest_free(d);
    unlink(bad);
    unlink(good);
    free(f);
    free(g);
    free(buf);
}

int main(void)
{
    unit_init("test_digest");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_known_answers();
    test_random();
    test_alignment();
    test_threads();
    test_round_trip();
    test_hostile();
    if (!UNIT_SANITIZED)
        test_sparse(); /* shadow memory would count against it */
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
    return unit_done();
}
