/* test_qcow2_refcount.c - refcounts and the allocator (qcow2_refcount.h).
 * The expectations come from QEMU's docs/interop/qcow2.txt, "Host cluster
 * management" (entries of refcount_bits = 1 << refcount_order bits, sub-byte
 * ones from the least significant bit; refcount_block_entries = cluster_size
 * * 8 / refcount_bits; the table one 8-byte offset per block, contiguous
 * clusters), and from the rules DESIGN.md takes from QEMU: a compressed
 * cluster's refcount is the number of streams touching it, capped at
 * 2^refcount_bits - 1; streams straddle only into the physically next
 * cluster; the refcount blocks count every cluster exactly once, the table
 * and themselves included.  The allocator's output is checked against a
 * model kept here of what it handed out; images qemu-img made are read
 * through the geometry. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2_refcount.h"
#include "unit.h"

/* ---- entries --------------------------------------------------------------- */

static void test_refcounts(void)
{
    uint64_t rs = unit_stream(2);
    enum { BLOCK = 4096 };
    for (unsigned order = 0; order <= 6; order++) {
        unsigned bits = 1u << order;
        uint64_t n = (uint64_t)BLOCK * 8 / bits;
        uint64_t max = bits == 64 ? ~0ull : (1ull << bits) - 1;
        uint8_t *block = calloc(1, BLOCK);
        uint64_t *shadow = calloc(n, sizeof(*shadow));
        if (!block || !shadow) {
            CHECK(!"out of memory");
            return;
        }
        for (uint64_t i = 0; i < n; i++)
            CHECK(qcow2_refcount_get(block, order, i) == 0);
        /* Random sets in random order, then every entry read back: setting
         * one entry must never disturb its neighbours. */
        for (uint64_t k = 0; k < 4 * n; k++) {
            uint64_t i = unit_rand(&rs) % n;
            uint64_t v = unit_rand(&rs) & max;
            if (k % 5 == 0)
                v = max;
            if (k % 7 == 0)
                v = 0;
            qcow2_refcount_set(block, order, i, v);
            shadow[i] = v;
            CHECKF(qcow2_refcount_get(block, order, i) == v, "order %u index %llu", order,
                   (unsigned long long)i);
        }
        long bad = 0;
        for (uint64_t i = 0; i < n; i++)
            if (qcow2_refcount_get(block, order, i) != shadow[i])
                bad++;
        CHECKF(bad == 0, "order %u: %ld entries differ from what was set", order, bad);

        /* The layout QEMU uses: sub-byte entries from the least significant
         * bit up; wider ones big-endian. */
        memset(block, 0, BLOCK);
        qcow2_refcount_set(block, order, 1, 1);
        switch (order) {
        case 0: CHECK(block[0] == 0x02); break;
        case 1: CHECK(block[0] == 0x04); break;
        case 2: CHECK(block[0] == 0x10); break;
        case 3: CHECK(block[1] == 0x01); break;
        case 4: CHECK(block[2] == 0x00 && block[3] == 0x01); break;
        case 5: CHECK(block[7] == 0x01 && block[4] == 0); break;
        case 6: CHECK(block[15] == 0x01 && block[8] == 0); break;
        }
        memset(block, 0, BLOCK);
        qcow2_refcount_set(block, order, n - 1, max);
        CHECK(qcow2_refcount_get(block, order, n - 1) == max);
        CHECK(qcow2_refcount_get(block, order, n - 2) == 0);
        CHECKF(block[BLOCK - 1] == (order == 0   ? 0x80
                                    : order == 1 ? 0xc0
                                    : order == 2 ? 0xf0
                                                 : 0xff),
               "order %u: last byte %#x", order, block[BLOCK - 1]);
        free(block);
        free(shadow);
    }
}

/* "refcount_block_index = (offset / cluster_size) % refcount_block_entries
 *  refcount_table_index = (offset / cluster_size) / refcount_block_entries" */
static void test_locate(void)
{
    for (unsigned cb = 9; cb <= 21; cb++) {
        for (unsigned order = 0; order <= 6; order++) {
            uint64_t entries = (1ull << cb) * 8 / (1u << order);
            CHECK(1ull << qcow2_refblock_bits(cb, order) == entries);
            uint64_t ks[] = {
                0, 1, entries - 1, entries, entries + 1, 7 * entries + 5, (1ull << 40) + 3
            };
            for (size_t i = 0; i < sizeof(ks) / sizeof(ks[0]); i++) {
                uint64_t t, b;
                qcow2_refcount_locate(cb, order, ks[i], &t, &b);
                CHECK(t == ks[i] / entries && b == ks[i] % entries);
            }
        }
        CHECK(qcow2_refcount_max(0) == 1 && qcow2_refcount_max(4) == 65535 &&
              qcow2_refcount_max(5) == 0xffffffffull && qcow2_refcount_max(6) == ~0ull);
    }
}

/* ---- the layout of the table and the last blocks ------------------------ */

/* Does a table of T clusters and B new blocks after FF clusters, with D
 * blocks placed already, count every cluster? */
static bool layout_ok(uint64_t ff, uint64_t d, uint64_t t, uint64_t b, unsigned cb, unsigned order)
{
    uint64_t entries = (1ull << cb) * 8 / (1u << order);
    uint64_t total = ff + t + b;               /* clusters in the file */
    return total <= (d + b) * entries &&       /* blocks count them all */
           (d + b) * 8 <= (t << cb) && t >= 1; /* the table holds every block */
}

/* The fewest: no smaller table works with any number of blocks, and no
 * fewer blocks with this table.  Found by search, not by the fixed point
 * under test. */
static void expect_layout(uint64_t ff, uint64_t d, unsigned cb, unsigned order)
{
    uint64_t t, b;
    qcow2_refcount_layout(ff, d, cb, order, &t, &b);
    CHECKF(layout_ok(ff, d, t, b, cb, order),
           "cb %u order %u ff %llu done %llu: %llu + %llu "
           "do not count every cluster",
           cb, order, (unsigned long long)ff, (unsigned long long)d, (unsigned long long)t,
           (unsigned long long)b);
    uint64_t entries = (1ull << cb) * 8 / (1u << order);
    /* Blocks needed at least: the clusters before any new block. */
    uint64_t lo = (ff + entries - 1) / entries > d ? (ff + entries - 1) / entries - d : 0;
    for (uint64_t tt = 1; tt <= t; tt++) {
        for (uint64_t bb = lo; bb <= b + 2; bb++) {
            if ((tt < t || bb < b) && layout_ok(ff, d, tt, bb, cb, order)) {
                CHECKF(0,
                       "cb %u order %u ff %llu done %llu: %llu + %llu works, fewer than "
                       "%llu + %llu",
                       cb, order, (unsigned long long)ff, (unsigned long long)d,
                       (unsigned long long)tt, (unsigned long long)bb, (unsigned long long)t,
                       (unsigned long long)b);
                return;
            }
        }
    }
}

static void test_layout(void)
{
    const unsigned cbs[] = { 9, 12, 16, 21 };
    for (size_t i = 0; i < sizeof(cbs) / sizeof(cbs[0]); i++) {
        unsigned cb = cbs[i];
        for (unsigned order = 0; order <= 6; order++) {
            uint64_t e = (1ull << cb) * 8 / (1u << order); /* clusters per block */
            uint64_t per_table = (1ull << cb) / 8;         /* blocks per table cluster */
            /* Around the first block's end, the tenth's, and where one
             * table cluster no longer holds every block (and two). */
            uint64_t centers[] = { 2, e, 10 * e, per_table * e, 2 * per_table * e };
            for (size_t c = 0; c < sizeof(centers) / sizeof(centers[0]); c++) {
                for (uint64_t ff = centers[c] > 6 ? centers[c] - 6 : 1; ff <= centers[c] + 6;
                     ff++) {
                    expect_layout(ff, 0, cb, order);
                    expect_layout(ff, ff / e, cb, order); /* every whole block placed */
                    if (ff / e > 1)
                        expect_layout(ff, ff / e - 1, cb, order);
                }
            }
        }
    }
    /* Table growth, spelled out for 4 KiB clusters and 16-bit refcounts: a
     * block counts 2048 clusters (8 MiB), a table cluster holds 512 blocks
     * (4 GiB).  A file of 4 GiB needs a second table cluster once its own
     * refcount structures no longer fit in the first. */
    uint64_t t, b;
    qcow2_refcount_layout(512 * 2048 - 2, 511, 12, 4, &t, &b);
    CHECK(t == 1 && b == 1); /* 512 blocks, the last counts the table and itself */
    qcow2_refcount_layout(512 * 2048 - 1, 511, 12, 4, &t, &b);
    CHECK(t == 2 && b == 2); /* 2 table clusters and the block: a 513th block */
    /* 2 MiB clusters: a block counts 2^20 clusters (2 TiB), a table
     * cluster 2^18 blocks. */
    qcow2_refcount_layout(1ull << 20, 0, 21, 4, &t, &b);
    CHECK(t == 1 && b == 2);
    qcow2_refcount_layout((1ull << 38) - 1, 0, 21, 4, &t, &b);
    CHECK(t == 2 && b == (1ull << 18) + 1);
}

/* ---- the allocator against a model of what it handed out ---------------- */

enum { K_NONE, K_WHOLE, K_COMPRESSED };

struct model {
    unsigned cb, order;
    uint64_t cap;      /* clusters the arrays hold */
    uint32_t *refs;    /* references handed out per cluster */
    uint8_t *kind;     /* K_WHOLE (one owner) or K_COMPRESSED */
    uint64_t last_end; /* end of the last compressed stream */
    struct qcow2_refblock *blocks;
    long bad;
};

static void model_init(struct model *m, unsigned cb, unsigned order, uint64_t cap)
{
    memset(m, 0, sizeof(*m));
    m->cb = cb;
    m->order = order;
    m->cap = cap;
    m->refs = calloc(cap, sizeof(*m->refs));
    m->kind = calloc(cap, 1);
}

static void model_free(struct model *m)
{
    qcow2_refblocks_free(m->blocks);
    free(m->refs);
    free(m->kind);
}

#define MODEL_CHECK(m, cond, ...)                                                                  \
    do {                                                                                           \
        if (!(cond) && (m)->bad++ < 5)                                                             \
            CHECKF(0, __VA_ARGS__);                                                                \
    } while (0)

static void take_whole(struct model *m, uint64_t off)
{
    uint64_t k = off >> m->cb;
    MODEL_CHECK(m, (off & ((1ull << m->cb) - 1)) == 0, "cluster offset %#llx unaligned",
                (unsigned long long)off);
    MODEL_CHECK(m, k < m->cap && m->kind[k] == K_NONE, "cluster %llu taken twice",
                (unsigned long long)k);
    if (k < m->cap) {
        m->kind[k] = K_WHOLE;
        m->refs[k]++;
    }
}

/* Each step returns false once the allocator failed: loops stop. */
static bool whole(struct model *m, struct qcow2_alloc *a)
{
    uint64_t off;
    int r = qcow2_alloc_cluster(a, &off);
    MODEL_CHECK(m, r == 0, "qcow2_alloc_cluster: %d", r);
    if (r == 0)
        take_whole(m, off);
    return r == 0;
}

static bool stream(struct model *m, struct qcow2_alloc *a, uint32_t len)
{
    uint64_t off;
    bool closed;
    uint64_t cs = 1ull << m->cb;
    int r = qcow2_alloc_bytes(a, len, &off, &closed);
    MODEL_CHECK(m, r == 0, "qcow2_alloc_bytes: %d", r);
    if (r < 0)
        return false;
    uint64_t first = off >> m->cb, last = (off + len - 1) >> m->cb;
    /* Packed after the previous stream, or at the start of a new cluster. */
    MODEL_CHECK(m, off == m->last_end || (off & (cs - 1)) == 0,
                "stream at %#llx, the last ended at %#llx", (unsigned long long)off,
                (unsigned long long)m->last_end);
    MODEL_CHECK(m, first != 0, "a stream in cluster 0");
    for (uint64_t k = first; k <= last && k < m->cap; k++) {
        MODEL_CHECK(m, m->kind[k] != K_WHOLE, "stream at %#llx in a whole cluster %llu",
                    (unsigned long long)off, (unsigned long long)k);
        m->kind[k] = K_COMPRESSED;
        m->refs[k]++;
        MODEL_CHECK(m, m->refs[k] <= qcow2_refcount_max(m->order),
                    "cluster %llu: %u streams, refcount_max %llu", (unsigned long long)k,
                    m->refs[k], (unsigned long long)qcow2_refcount_max(m->order));
    }
    m->last_end = off + len;
    return true;
}

static bool retire(struct model *m, struct qcow2_alloc *a)
{
    bool closed;
    struct qcow2_refblock *out = NULL;
    int r = qcow2_alloc_retire(a, &out, &closed);
    MODEL_CHECK(m, r == 0, "qcow2_alloc_retire: %d", r);
    for (struct qcow2_refblock *b = out; b; b = b->next)
        take_whole(m, b->offset);
    struct qcow2_refblock **tail = &m->blocks;
    while (*tail)
        tail = &(*tail)->next;
    *tail = out;
    /* Memory holds the blocks of the clusters still being filled: the
     * frontier's, the open compressed cluster's, and none below. */
    MODEL_CHECK(m, a->rc_n <= 2, "%u blocks in memory after retiring", a->rc_n);
    return r == 0;
}

/* Finish, then read every refcount back through the table and the blocks
 * handed out, and compare with the model. */
static void finish_and_compare(struct model *m, struct qcow2_alloc *a)
{
    qcow2_alloc_close(a);
    retire(m, a);
    uint64_t table_off, table_clusters;
    uint8_t *table;
    struct qcow2_refblock *out = NULL;
    CHECK(qcow2_alloc_finish(a, &out, &table_off, &table_clusters, &table) == 0);
    for (uint64_t i = 0; i < table_clusters; i++)
        take_whole(m, table_off + (i << m->cb));
    for (struct qcow2_refblock *b = out; b; b = b->next)
        take_whole(m, b->offset);
    struct qcow2_refblock **tail = &m->blocks;
    while (*tail)
        tail = &(*tail)->next;
    *tail = out;

    uint64_t total = table_off / (1ull << m->cb) + table_clusters;
    for (struct qcow2_refblock *b = out; b; b = b->next)
        if ((b->offset >> m->cb) + 1 > total)
            total = (b->offset >> m->cb) + 1;
    CHECK(total <= m->cap);
    uint64_t entries = 1ull << qcow2_refblock_bits(m->cb, m->order);
    uint64_t table_len = table_clusters << (m->cb - 3);
    uint64_t n_blocks = (total + entries - 1) / entries;
    CHECKF(n_blocks <= table_len, "%llu blocks, a table of %llu entries",
           (unsigned long long)n_blocks, (unsigned long long)table_len);
    for (uint64_t k = 0; k < n_blocks * entries && k < m->cap; k++) {
        uint64_t want = m->refs[k];
        if (k < total)
            MODEL_CHECK(m, want >= 1, "cluster %llu below the end is unused (a leak)",
                        (unsigned long long)k);
        uint64_t bo = qcow2_be64(table + 8 * (k / entries));
        const uint8_t *blk = NULL;
        for (struct qcow2_refblock *b = m->blocks; b && !blk; b = b->next)
            if (b->offset == bo)
                blk = b->buf;
        MODEL_CHECK(m, blk != NULL, "no block at %#llx for cluster %llu", (unsigned long long)bo,
                    (unsigned long long)k);
        if (!blk)
            break;
        uint64_t got = qcow2_refcount_get(blk, m->order, k % entries);
        MODEL_CHECK(m, got == want, "cluster %llu: refcount %llu, %llu references",
                    (unsigned long long)k, (unsigned long long)got, (unsigned long long)want);
    }
    for (uint64_t i = n_blocks; i < table_len; i++)
        MODEL_CHECK(m, qcow2_be64(table + 8 * i) == 0, "table entry %llu past the blocks",
                    (unsigned long long)i);
    free(table);
    CHECKF(m->bad == 0, "cb %u order %u: %ld disagreements", m->cb, m->order, m->bad);
}

/* Random streams, whole clusters and retirements, as the writer makes them:
 * the header first, then data, L2 tables, runs of incompressible data. */
static void test_random_allocations(void)
{
    uint64_t rs = unit_stream(3);
    const unsigned cbs[] = { 12, 16 };
    for (size_t i = 0; i < 2; i++) {
        for (unsigned order = 0; order <= 6; order++) {
            unsigned cb = cbs[i];
            uint64_t cs = 1ull << cb;
            struct qcow2_alloc a;
            struct model m;
            CHECK(qcow2_alloc_init(&a, cb, order) == 0);
            /* Enough to cross a few blocks even for 64-bit refcounts. */
            uint64_t entries = 1ull << qcow2_refblock_bits(cb, order);
            uint64_t ops = 3 * entries < 20000 ? 3 * entries : 20000;
            model_init(&m, cb, order, 4 * ops + 64);
            whole(&m, &a); /* the header */
            bool ok = true;
            for (uint64_t n = 0; n < ops && ok; n++) {
                switch (unit_rand(&rs) % 8) {
                case 0: ok = whole(&m, &a); break;
                case 1:
                    for (int k = (int)unit_range(&rs, 1, 40); k > 0 && ok; k--)
                        ok = whole(&m, &a);
                    break;
                case 2: ok = stream(&m, &a, (uint32_t)unit_range(&rs, 1, (uint32_t)cs - 1)); break;
                default: ok = stream(&m, &a, (uint32_t)unit_range(&rs, 1, (uint32_t)cs / 8)); break;
                }
                if (ok && unit_rand(&rs) % 4 == 0)
                    ok = retire(&m, &a);
            }
            finish_and_compare(&m, &a);
            model_free(&m);
            qcow2_alloc_free(&a);
        }
    }
}

/* refcount_max reached: "start a new host cluster when it is reached".
 * 4-bit refcounts (max 15) and streams of 100 bytes in 4 KiB clusters:
 * clusters 1, 2, ... each take exactly 15 streams; 16-bit refcounts in a
 * 2 MiB cluster and streams of one byte: 65535 streams, then the next
 * cluster. */
static void test_refcount_max(void)
{
    struct qcow2_alloc a;
    uint64_t off;
    bool closed;
    CHECK(qcow2_alloc_init(&a, 12, 2) == 0);
    CHECK(qcow2_alloc_cluster(&a, &off) == 0 && off == 0);
    long wrong = 0;
    for (uint64_t i = 0; i < 15 * 4; i++) {
        CHECK(qcow2_alloc_bytes(&a, 100, &off, &closed) == 0);
        uint64_t want = ((1 + i / 15) << 12) + (i % 15) * 100;
        if (off != want || closed != (i > 0 && i % 15 == 0))
            wrong++;
    }
    CHECKF(wrong == 0, "%ld streams misplaced with 4-bit refcounts", wrong);
    for (uint64_t k = 1; k <= 4; k++)
        CHECK(qcow2_alloc_refcount(&a, k) == 15);
    qcow2_alloc_free(&a);

    CHECK(qcow2_alloc_init(&a, 21, 4) == 0);
    CHECK(qcow2_alloc_cluster(&a, &off) == 0);
    wrong = 0;
    for (uint64_t i = 0; i < 65535; i++)
        if (qcow2_alloc_bytes(&a, 1, &off, &closed) != 0 || off != (1ull << 21) + i)
            wrong++;
    CHECKF(wrong == 0, "%ld one-byte streams misplaced", wrong);
    CHECK(qcow2_alloc_refcount(&a, 1) == 65535);
    CHECK(qcow2_alloc_bytes(&a, 1, &off, &closed) == 0 && off == 2ull << 21 && closed);
    qcow2_alloc_free(&a);

    /* 1-bit refcounts: one stream per cluster, however short. */
    CHECK(qcow2_alloc_init(&a, 12, 0) == 0);
    CHECK(qcow2_alloc_cluster(&a, &off) == 0);
    wrong = 0;
    for (uint64_t i = 1; i <= 5; i++)
        if (qcow2_alloc_bytes(&a, 200, &off, &closed) != 0 || off != i * 4096 || closed != (i > 1))
            wrong++;
    CHECKF(wrong == 0, "%ld streams misplaced with 1-bit refcounts", wrong);
    qcow2_alloc_free(&a);
}

/* Streams straddle into the next cluster only if it is the physically
 * next one: not when a whole cluster was taken in between. */
static void test_straddle(void)
{
    struct qcow2_alloc a;
    uint64_t off;
    bool closed;
    CHECK(qcow2_alloc_init(&a, 12, 4) == 0);
    CHECK(qcow2_alloc_cluster(&a, &off) == 0);
    CHECK(qcow2_alloc_bytes(&a, 3000, &off, &closed) == 0 && off == 4096);
    CHECK(qcow2_alloc_bytes(&a, 3000, &off, &closed) == 0 && off == 4096 + 3000 && !closed);
    CHECK(qcow2_alloc_refcount(&a, 1) == 2 && qcow2_alloc_refcount(&a, 2) == 1);
    CHECK(qcow2_alloc_cluster(&a, &off) == 0 && off == 3 * 4096); /* an L2 table, say */
    CHECK(qcow2_alloc_bytes(&a, 3000, &off, &closed) == 0 && off == 4 * 4096 && closed);
    CHECK(qcow2_alloc_bytes(&a, 1096, &off, &closed) == 0 && off == 4 * 4096 + 3000);
    /* Exactly full: the next stream starts a new cluster, nothing closed. */
    CHECK(qcow2_alloc_bytes(&a, 10, &off, &closed) == 0 && off == 5 * 4096 && !closed);
    qcow2_alloc_free(&a);
}

/* Refcount table growth, whole: 4 KiB clusters and 16-bit refcounts, a
 * file past 4 GiB (513 blocks), retiring as the writer does; the table
 * takes two clusters and every count is right.  And a 2 MiB cluster file
 * past its first block (2^20 clusters). */
static void test_growth(void)
{
    struct {
        unsigned cb;
        uint64_t clusters;
        uint64_t table;
    } cases[] = {
        { 12, 513 * 2048 + 100, 2 },
        { 21, (1ull << 20) + 100, 1 },
    };
    for (size_t i = 0; i < 2; i++) {
        struct qcow2_alloc a;
        struct model m;
        unsigned cb = cases[i].cb;
        CHECK(qcow2_alloc_init(&a, cb, 4) == 0);
        model_init(&m, cb, 4, cases[i].clusters + 4096);
        whole(&m, &a);
        bool ok = true;
        for (uint64_t n = 1; a.next_cluster < cases[i].clusters && ok; n++) {
            ok = n % 7 == 0 ? stream(&m, &a, 1000) : whole(&m, &a);
            if (ok && n % 1024 == 0)
                ok = retire(&m, &a);
        }
        uint64_t before = a.next_cluster;
        finish_and_compare(&m, &a);
        uint64_t entries = 1ull << qcow2_refblock_bits(cb, 4);
        uint64_t n_blocks = (a.next_cluster + entries - 1) / entries;
        CHECKF((n_blocks * 8 + (1ull << cb) - 1) >> cb == cases[i].table, "cb %u: %llu blocks", cb,
               (unsigned long long)n_blocks);
        CHECK(a.next_cluster > before);
        model_free(&m);
        qcow2_alloc_free(&a);
    }
}

/* ---- images qemu-img made, of every refcount width ------------------------ */

/* qemu-img create -o refcount_bits=N, data written with qemu-io: every
 * cluster below the image end qemu-img check reports has refcount 1 (no
 * snapshots), none above; read through the table as the spec says. */
static void test_qemu_images(void)
{
    char dir[] = "/tmp/zcow-test-qcow2-refcount-XXXXXX";
    if (!mkdtemp(dir)) {
        CHECK(0);
        return;
    }
    for (unsigned order = 0; order <= 6; order++) {
        char path[256], cmd[2048];
        snprintf(path, sizeof(path), "%s/rb%u.qcow2", dir, 1u << order);
        snprintf(cmd, sizeof(cmd),
                 "qemu-img create -q -f qcow2 -o refcount_bits=%u,cluster_size=4k '%s' 64M && "
                 "qemu-io -c 'write -P 7 0 3M' -c 'write -P 9 40M 1M' '%s' >/dev/null && "
                 "qemu-img check --output=json '%s' | "
                 "sed -n 's/.*\"image-end-offset\": *\\([0-9]*\\).*/\\1/p' > '%s.end'",
                 1u << order, path, path, path, path);
        CHECKF(system(cmd) == 0, "%s", cmd);
        char endp[300];
        snprintf(endp, sizeof(endp), "%s.end", path);
        FILE *f = fopen(endp, "r");
        unsigned long long end = 0;
        CHECK(f && fscanf(f, "%llu", &end) == 1);
        if (f)
            fclose(f);
        f = fopen(path, "rb");
        CHECK(f != NULL);
        if (!f)
            continue;
        fseek(f, 0, SEEK_END);
        long size = ftell(f);
        uint8_t *img = calloc(1, (size_t)size);
        fseek(f, 0, SEEK_SET);
        CHECK(fread(img, 1, (size_t)size, f) == (size_t)size);
        fclose(f);
        struct qcow2_header h;
        const char *why;
        CHECK(qcow2_header_decode(img, (size_t)size, &h, &why) == 0 && h.refcount_order == order);
        uint64_t k_end = end >> 12, bad = 0;
        CHECKF(k_end > 1000, "order %u: image end %llu", order, end);
        uint64_t entries = 1ull << qcow2_refblock_bits(12, order);
        for (uint64_t k = 0; k < k_end + entries && k < k_end + 5000; k++) {
            uint64_t ti, bi;
            qcow2_refcount_locate(12, order, k, &ti, &bi);
            uint64_t rc = 0;
            if (ti < (uint64_t)h.refcount_table_clusters * 512) {
                uint64_t bo = qcow2_be64(img + h.refcount_table_offset + 8 * ti) & ~0x1ffull;
                if (bo && bo + 4096 <= (uint64_t)size)
                    rc = qcow2_refcount_get(img + bo, order, bi);
            }
            if (rc != (k < k_end ? 1u : 0u) && bad++ < 3)
                CHECKF(0, "refcount_bits %u: cluster %llu refcount %llu", 1u << order,
                       (unsigned long long)k, (unsigned long long)rc);
        }
        free(img);
    }
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

int main(void)
{
    unit_init("test_qcow2_refcount");
    test_refcounts();
    test_locate();
    test_layout();
    test_random_allocations();
    test_refcount_max();
    test_straddle();
    test_growth();
    test_qemu_images();
    return unit_done();
}
