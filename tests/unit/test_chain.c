/* test_chain.c - walks over backing chains cost what they touch.
 *
 * Chains of depth 1, 2, 8 and 32 over a 1 GiB disk, written through the
 * public API with a different cluster size in each layer: data clusters
 * (compressed and, for incompressible data, normal) spread over the disk,
 * zero clusters over older data, data over data.  The top is walked with
 * reader_extent() and every data extent read back and compared with a
 * model of the guest contents.  The walk must cost no more L2 table
 * lookups than the extents it returns and the tables the chain holds,
 * per image of the chain: a walk that asks a backing file about more than
 * the run it needs (as it once did: exponential in the depth) fails here
 * by its count, not by a timing.
 * The top's own clusters (reader_top_extent, what zcow verify reads of
 * each image) are what that layer wrote, found with the top's tables
 * only; opened alone (reader_open_alone), it reads them, and zeros where
 * it leaves the data to its backing file. */
#include <errno.h>
#include <sys/stat.h>

#include "reader.h"
#include "unit.h"
#include "zcow.h"

#define DISK (1ull << 30)
#define BLOCK 4096u /* the model's granularity: the smallest cluster */
#define BLOCKS (DISK / BLOCK)
#define WRITES_PER_LAYER 24

static char dir[] = "/tmp/zcow-test-chain-XXXXXX";

/* Per 4 KiB guest block: 0 zero, else the fill of the layer that wrote it
 * (odd: a byte repeated, compressible; even: pseudo-random, normal). */
static uint8_t *model;
static uint8_t *owner; /* per block: 1 + the layer that wrote it last, 0 none */
static uint64_t rng;

static void fill(uint8_t *p, size_t len, uint8_t v, uint64_t off)
{
    if (v & 1) {
        memset(p, v, len);
        return;
    }
    for (size_t i = 0; i < len; i += 8) {
        uint64_t x = (off + i) * 0x9E3779B97F4A7C15ull ^ ((uint64_t)v << 56);
        x ^= x >> 29;
        x *= 0xBF58476D1CE4E5B9ull;
        x ^= x >> 32;
        memcpy(p + i, &x, 8);
    }
}

static void layer_path(char *out, size_t cap, int k)
{
    snprintf(out, cap, "%s/l%02d.qcow2", dir, k);
}

/* Write layer K of a chain over layer K-1, cluster size CS. */
static void write_layer(int k, uint32_t cs)
{
    char path[256], prev[64];
    layer_path(path, sizeof(path), k);
    snprintf(prev, sizeof(prev), "l%02d.qcow2", k - 1);
    zcow_create_opts *o = zcow_create_opts_new();
    CHECK(o && zcow_create_opts_set_virtual_size(o, DISK) == 0 &&
          zcow_create_opts_set_cluster_size(o, cs) == 0 &&
          zcow_create_opts_set_cache_mode(o, ZCOW_CACHE_WRITEBACK) == 0);
    if (k > 0)
        CHECK(zcow_create_opts_set_backing_file(o, prev) == 0 &&
              zcow_create_opts_set_backing_format(o, "qcow2") == 0);
    zcow_image *img;
    int e = zcow_create(path, o, &img);
    zcow_create_opts_free(o);
    CHECKF(e == 0, "create %s: %s", path, zcow_get_error());
    if (e < 0)
        return;
    uint8_t *buf = malloc(cs);
    uint64_t clusters = DISK / cs;
    /* Distinct clusters, in order (a cluster is written once). */
    uint64_t picks[WRITES_PER_LAYER];
    int n = 0;
    for (unsigned attempt = 0; n < WRITES_PER_LAYER; attempt++) {
        uint64_t c = unit_rand(&rng) % clusters;
        /* Some next to the layers below: data over data, zero over data. */
        if (attempt % 3 == 0)
            c = ((uint64_t)(attempt / 3 % 8) * (DISK / 8) + (uint64_t)k * 65536) / cs;
        int dup = 0;
        for (int i = 0; i < n; i++)
            dup |= picks[i] == c;
        if (!dup)
            picks[n++] = c;
    }
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (picks[j] < picks[i]) {
                uint64_t t = picks[i];
                picks[i] = picks[j];
                picks[j] = t;
            }
    for (int i = 0; i < n; i++) {
        uint64_t off = picks[i] * cs;
        /* One in four a zero cluster (stated over the backing file). */
        uint8_t v = unit_rand(&rng) % 4 == 0 ? 0 : (uint8_t)(2 + k * 2 + (unit_rand(&rng) & 1));
        if (v == 0)
            memset(buf, 0, cs);
        else
            fill(buf, cs, v, off);
        e = zcow_write_cluster(img, off, buf, cs);
        CHECKF(e == 0, "write layer %d at %llu: %s", k, (unsigned long long)off, zcow_get_error());
        memset(model + off / BLOCK, v, cs / BLOCK);
        memset(owner + off / BLOCK, k + 1, cs / BLOCK);
    }
    free(buf);
    e = zcow_close(img);
    CHECKF(e == 0, "close %s: %s", path, zcow_get_error());
}

static uint64_t be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* The L2 tables of layer K: its L1 entries in use (qcow2.txt: l1_size at
 * byte 36, l1_table_offset at 40, offsets in bits 9-55). */
static uint64_t l2_tables(int k)
{
    char path[256];
    layer_path(path, sizeof(path), k);
    FILE *f = fopen(path, "rb");
    uint8_t h[48], e[8];
    uint64_t n = 0;
    if (!f || fread(h, 1, sizeof(h), f) != sizeof(h)) {
        CHECKF(0, "cannot read the header of %s", path);
        if (f)
            fclose(f);
        return 0;
    }
    uint64_t l1_size = be(h + 36, 4), l1_off = be(h + 40, 8);
    for (uint64_t i = 0; i < l1_size; i++) {
        if (fseek(f, (long)(l1_off + 8 * i), SEEK_SET) != 0 || fread(e, 1, 8, f) != 8)
            break;
        n += (be(e, 8) & 0x00fffffffffffe00ull) != 0;
    }
    fclose(f);
    return n;
}

/* Walk the top of a chain of DEPTH images; check contents and cost. */
static void walk_chain(int depth)
{
    char top[256];
    layer_path(top, sizeof(top), depth - 1);
    struct reader *r;
    int e = reader_open(top, NULL, 0, &r);
    CHECKF(e == 0, "open %s: %s", top, zcow_get_error());
    if (e < 0)
        return;
    uint64_t tables = 0;
    for (int k = 0; k < depth; k++)
        tables += l2_tables(k);
    uint64_t extents = 0, bad = 0;
    uint8_t *buf = malloc(4u << 20), *want = malloc(4u << 20);
    uint64_t off = 0;
    int last = -1;
    while (off < DISK) {
        uint64_t len;
        int zero;
        e = reader_extent(r, off, DISK - off, &len, &zero);
        if (e < 0 || len == 0 || len > DISK - off) {
            CHECKF(0, "depth %d: extent at %llu: %d, len %llu", depth, (unsigned long long)off, e,
                   (unsigned long long)len);
            break;
        }
        CHECKF(zero != last, "depth %d: extent at %llu is not maximal", depth,
               (unsigned long long)off);
        last = zero;
        extents++;
        for (uint64_t p = off; p < off + len; p += 4u << 20) {
            size_t n = off + len - p < (4u << 20) ? (size_t)(off + len - p) : (4u << 20);
            if (zero) {
                for (uint64_t b = p / BLOCK; b < (p + n) / BLOCK; b++)
                    bad += model[b] != 0;
                continue;
            }
            if ((e = reader_read(r, p, buf, n)) < 0) {
                CHECKF(0, "depth %d: read at %llu: %s", depth, (unsigned long long)p,
                       zcow_get_error());
                break;
            }
            for (size_t i = 0; i < n; i += BLOCK)
                fill(want + i, BLOCK, model[(p + i) / BLOCK], p + i);
            for (size_t i = 0; i < n; i += BLOCK)
                if (model[(p + i) / BLOCK] == 0)
                    memset(want + i, 0, BLOCK);
            bad += memcmp(buf, want, n) != 0;
        }
        off += len;
    }
    CHECKF(bad == 0, "depth %d: %llu blocks differ from the model", depth, (unsigned long long)bad);
    /* Each extent costs every image at most a few walks (the run it
     * returns, and the one where it stops), each image's tables are
     * walked once more when the extents cross them, and reads walk the
     * data they return once per image. */
    uint64_t lookups = reader_l2_lookups(r);
    uint64_t bound = 4 * (uint64_t)depth * (extents + tables);
    printf("  depth %2d: %llu extents, %llu l2 tables, %llu lookups (bound %llu)\n", depth,
           (unsigned long long)extents, (unsigned long long)tables, (unsigned long long)lookups,
           (unsigned long long)bound);
    CHECKF(lookups <= bound, "depth %d: %llu l2 lookups for %llu extents over %llu tables", depth,
           (unsigned long long)lookups, (unsigned long long)extents, (unsigned long long)tables);
    free(buf);
    free(want);
    reader_close(r);
}

/* What the top of a chain of DEPTH images holds itself: every stretch of
 * reader_top_extent against the layers' writes, at the cost of the top's
 * tables only; and the top opened alone reads what it holds. */
static void top_extents(int depth)
{
    char top[256];
    layer_path(top, sizeof(top), depth - 1);
    struct reader *r, *alone;
    int e = reader_open(top, NULL, 0, &r);
    CHECKF(e == 0, "open %s: %s", top, zcow_get_error());
    if (e < 0)
        return;
    e = reader_open_alone(top, 0, &alone);
    CHECKF(e == 0, "open %s alone: %s", top, zcow_get_error());
    if (e < 0) {
        reader_close(r);
        return;
    }
    CHECK(reader_backing(alone) == NULL && (reader_backing_name(alone) != NULL) == (depth > 1) &&
          (depth == 1 || !strcmp(reader_backing_format(alone), "qcow2")));
    uint64_t off = 0, extents = 0, bad = 0;
    uint8_t *buf = malloc(BLOCK), *want = malloc(BLOCK);
    while (off < DISK) {
        uint64_t len;
        int kind = -1;
        e = reader_top_extent(r, off, DISK - off, &len, &kind);
        if (e < 0 || len == 0 || len > DISK - off || len % BLOCK) {
            CHECKF(0, "depth %d: top extent at %llu: %d, len %llu", depth, (unsigned long long)off,
                   e, (unsigned long long)len);
            break;
        }
        extents++;
        for (uint64_t b = off / BLOCK; b < (off + len) / BLOCK; b++) {
            bool mine = owner[b] == depth;
            int expect = !mine      ? (depth > 1 ? READER_BELOW : READER_ZERO)
                         : model[b] ? READER_DATA
                                    : READER_ZERO;
            bad += kind != expect;
        }
        /* Alone, the top reads its data, and zeros below. */
        if (kind != READER_ZERO && reader_read(alone, off, buf, BLOCK) == 0) {
            uint64_t b = off / BLOCK;
            if (kind == READER_DATA)
                fill(want, BLOCK, model[b], off);
            else
                memset(want, 0, BLOCK);
            bad += memcmp(buf, want, BLOCK) != 0;
        }
        off += len;
    }
    CHECKF(bad == 0, "depth %d: %llu blocks of the top's own extents are wrong", depth,
           (unsigned long long)bad);
    /* The backing files are never asked. */
    uint64_t below = reader_backing(r) ? reader_l2_lookups(reader_backing(r)) : 0;
    uint64_t lookups = reader_l2_lookups(r) - below;
    CHECKF(below == 0 && lookups <= 4 * (extents + l2_tables(depth - 1)),
           "depth %d: %llu lookups in the top, %llu below, for %llu extents", depth,
           (unsigned long long)lookups, (unsigned long long)below, (unsigned long long)extents);
    free(buf);
    free(want);
    reader_close(alone);
    reader_close(r);
}

/* zcow_get_backing() hands out the chain opened with the top image. */
static void public_chain(int depth)
{
    char top[256];
    layer_path(top, sizeof(top), depth - 1);
    zcow_image *img;
    int e = zcow_open(top, NULL, 0, &img);
    CHECKF(e == 0, "open %s: %s", top, zcow_get_error());
    if (e < 0)
        return;
    int n = 0;
    zcow_info *info = zcow_info_new();
    for (zcow_image *l = img; l; l = zcow_get_backing(l)) {
        CHECK(zcow_get_info(l, info) == 0);
        CHECKF(zcow_get_backing(l) == zcow_get_backing(l), "depth %d: image %d", depth, n);
        CHECK((zcow_info_get_backing_file(info) != NULL) == (n < depth - 1));
        if (n > 0)
            CHECK(zcow_close(l) == 0); /* borrowed: does nothing */
        n++;
    }
    CHECKF(n == depth, "depth %d: the chain has %d images", depth, n);
    zcow_info_free(info);
    CHECK(zcow_close(img) == 0);
}

int main(void)
{
    unit_init("test_chain");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    model = calloc(BLOCKS, 1);
    owner = calloc(BLOCKS, 1);
    rng = unit_stream(0);
    static const uint32_t sizes[] = { 65536, 4096, 16384, 65536, 8192, 2097152 / 4 };
    int made = 0;
    static const int depths[] = { 1, 2, 8, 32 };
    for (size_t d = 0; d < sizeof(depths) / sizeof(depths[0]); d++) {
        for (; made < depths[d]; made++)
            write_layer(made, sizes[made % (sizeof(sizes) / sizeof(sizes[0]))]);
        walk_chain(depths[d]);
        top_extents(depths[d]);
        public_chain(depths[d]);
    }
    for (int k = 0; k < made; k++) {
        char path[256];
        layer_path(path, sizeof(path), k);
        if (!getenv("KEEP"))
            unlink(path);
    }
    if (!getenv("KEEP"))
        rmdir(dir);
    free(model);
    free(owner);
    return unit_done();
}
