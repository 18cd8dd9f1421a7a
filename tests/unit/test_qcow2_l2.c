/* test_qcow2_l2.c - the L2 entry classifier (qcow2_l2.h) against the
 * spec, QEMU's docs/interop/qcow2.txt ("Cluster mapping", "Extended L2
 * Entries"): a table of entries written from the spec's words, then
 * random entries and bitmaps against a reference written here from the
 * same words, subcluster by subcluster; entries at their places in
 * standard and extended tables. */
#include <stdbool.h>
#include <string.h>

#include "qcow2_l2.h"
#include "unit.h"

#define COPIED (1ull << 63)
#define COMPRESSED (1ull << 62)
#define HOST 0x50000ull /* a cluster-aligned host offset */

/* ---- the spec's words, as a reference --------------------------------- */

/* "Bit 62: 1 for compressed clusters."  Standard clusters: "Bit 0: If set
 * to 1, the cluster reads as all zeros ... With version 2 or with extended
 * L2 entries, this is always 0" (so it is not looked at then); "Bits 9-55
 * host cluster offset ... If the offset is 0 and bit 63 is clear, the
 * cluster is unallocated" (bit 63 with offset 0 only with a data file). */
static enum qcow2_subcluster_type spec_type(uint64_t e, uint64_t bm, bool ext, unsigned sc)
{
    if (e & COMPRESSED)
        return QCOW2_SUBCLUSTER_COMPRESSED;
    bool host = (e >> 9) & ((1ull << 47) - 1);
    if (!ext) {
        if (e & 1)
            return host ? QCOW2_SUBCLUSTER_ZERO_ALLOC : QCOW2_SUBCLUSTER_ZERO_PLAIN;
        return host ? QCOW2_SUBCLUSTER_NORMAL : QCOW2_SUBCLUSTER_UNALLOCATED_PLAIN;
    }
    /* "1: the subcluster is allocated.  In this case the host cluster offset
     * field must contain a valid offset."  "1: the subcluster reads as
     * zeros.  In this case the allocation status bit must be unset."  A
     * bitmap breaking either rule makes the whole entry invalid. */
    for (unsigned i = 0; i < 32; i++) {
        bool alloc = (bm >> i) & 1, zero = (bm >> (32 + i)) & 1;
        if ((alloc && !host) || (alloc && zero))
            return QCOW2_SUBCLUSTER_INVALID;
    }
    bool alloc = (bm >> sc) & 1, zero = (bm >> (32 + sc)) & 1;
    if (zero)
        return host ? QCOW2_SUBCLUSTER_ZERO_ALLOC : QCOW2_SUBCLUSTER_ZERO_PLAIN;
    if (alloc)
        return QCOW2_SUBCLUSTER_NORMAL;
    return host ? QCOW2_SUBCLUSTER_UNALLOCATED_ALLOC : QCOW2_SUBCLUSTER_UNALLOCATED_PLAIN;
}

/* ---- a table of cases ---------------------------------------------------- */

struct cluster_case {
    uint64_t entry;
    bool ext;
    enum qcow2_cluster_type want;
};

static void test_cluster_types(void)
{
    uint64_t desc = COMPRESSED | (3ull << 54) | 0x12345; /* 64 KiB clusters */
    const struct cluster_case cases[] = {
        { 0, false, QCOW2_CLUSTER_UNALLOCATED },
        { 1, false, QCOW2_CLUSTER_ZERO_PLAIN },
        { HOST | 1, false, QCOW2_CLUSTER_ZERO_ALLOC },
        { HOST | 1 | COPIED, false, QCOW2_CLUSTER_ZERO_ALLOC },
        { HOST, false, QCOW2_CLUSTER_NORMAL },
        { HOST | COPIED, false, QCOW2_CLUSTER_NORMAL },
        { COPIED, false, QCOW2_CLUSTER_UNALLOCATED }, /* no external data file */
        { desc, false, QCOW2_CLUSTER_COMPRESSED },
        { desc | 1, false, QCOW2_CLUSTER_COMPRESSED }, /* bit 0 is the offset's */
        { 0, true, QCOW2_CLUSTER_UNALLOCATED },
        { 1, true, QCOW2_CLUSTER_UNALLOCATED }, /* bit 0 means nothing here */
        { HOST | 1, true, QCOW2_CLUSTER_NORMAL },
        { HOST | COPIED, true, QCOW2_CLUSTER_NORMAL },
        { desc, true, QCOW2_CLUSTER_COMPRESSED },
        { (1ull << 55) | COPIED, false, QCOW2_CLUSTER_NORMAL }, /* bit 55: the last */
        { 1ull << 56, false, QCOW2_CLUSTER_UNALLOCATED },       /* reserved, not offset */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        enum qcow2_cluster_type t = qcow2_cluster_type(cases[i].entry, cases[i].ext);
        CHECKF(t == cases[i].want, "entry %#llx%s: type %d, want %d",
               (unsigned long long)cases[i].entry, cases[i].ext ? " (extended)" : "", t,
               cases[i].want);
    }
}

struct sc_case {
    uint64_t entry, bitmap;
    unsigned sc;
    enum qcow2_subcluster_type want;
};

static void test_subcluster_types(void)
{
    const struct sc_case cases[] = {
        { 0, 0, 0, QCOW2_SUBCLUSTER_UNALLOCATED_PLAIN },
        { 0, 1ull << (32 + 3), 3, QCOW2_SUBCLUSTER_ZERO_PLAIN },
        { 0, 1ull << (32 + 3), 4, QCOW2_SUBCLUSTER_UNALLOCATED_PLAIN },
        { 0, 1ull << 7, 7, QCOW2_SUBCLUSTER_INVALID }, /* allocated, no offset */
        { 0, 1ull << 7, 8, QCOW2_SUBCLUSTER_INVALID }, /* the whole entry is */
        { HOST, 1ull << 5, 5, QCOW2_SUBCLUSTER_NORMAL },
        { HOST, 1ull << 5, 6, QCOW2_SUBCLUSTER_UNALLOCATED_ALLOC },
        { HOST, 1ull << (32 + 31), 31, QCOW2_SUBCLUSTER_ZERO_ALLOC },
        { HOST, (1ull << 9) | (1ull << (32 + 9)), 9, QCOW2_SUBCLUSTER_INVALID },
        { HOST, (1ull << 9) | (1ull << (32 + 9)), 0, QCOW2_SUBCLUSTER_INVALID },
        { HOST | COPIED, QCOW2_L2_BITMAP_ALL_ALLOC, 31, QCOW2_SUBCLUSTER_NORMAL },
        { COMPRESSED | 0x12345, 0, 17, QCOW2_SUBCLUSTER_COMPRESSED },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct sc_case *k = &cases[i];
        enum qcow2_subcluster_type t = qcow2_subcluster_type(k->entry, k->bitmap, true, k->sc);
        CHECKF(t == k->want, "entry %#llx bitmap %#llx subcluster %u: type %d, want %d",
               (unsigned long long)k->entry, (unsigned long long)k->bitmap, k->sc, t, k->want);
    }
}

/* Random entries (mostly of the interesting shapes) and bitmaps: every
 * subcluster's type as the spec's reference says, and every range the
 * longest run of one type. */
static void test_random(void)
{
    uint64_t rs = unit_stream(1);
    long wrong = 0;
    for (int round = 0; round < 200000; round++) {
        uint64_t e;
        switch (unit_rand(&rs) % 5) {
        case 0: e = 0; break;
        case 1: e = HOST | (unit_rand(&rs) & (COPIED | 1)); break;
        case 2: e = COMPRESSED | (unit_rand(&rs) & ((1ull << 62) - 1)); break;
        case 3: e = unit_rand(&rs) & 1; break;
        default: e = unit_rand(&rs); break;
        }
        uint64_t bm = 0;
        switch (unit_rand(&rs) % 4) {
        case 0: break;
        case 1: bm = unit_rand(&rs) & QCOW2_L2_BITMAP_ALL_ALLOC; break;
        case 2: bm = unit_rand(&rs) & QCOW2_L2_BITMAP_ALL_ZERO; break;
        default: {
            /* Allocated and zero bits on distinct subclusters: valid. */
            uint64_t a = unit_rand(&rs) & QCOW2_L2_BITMAP_ALL_ALLOC;
            bm = a | ((~a & unit_rand(&rs) & QCOW2_L2_BITMAP_ALL_ALLOC) << 32);
            if (unit_rand(&rs) % 8 == 0)
                bm = unit_rand(&rs);
        }
        }
        bool ext = unit_rand(&rs) & 1;
        uint64_t use_bm = ext ? bm : 0;
        enum qcow2_subcluster_type want[32];
        for (unsigned sc = 0; sc < 32; sc++) {
            want[sc] = spec_type(e, use_bm, ext, ext ? sc : 0);
            enum qcow2_subcluster_type t = qcow2_subcluster_type(e, use_bm, ext, ext ? sc : 0);
            if (t != want[sc] && wrong++ < 5)
                CHECKF(0, "entry %#llx bitmap %#llx%s subcluster %u: %d, want %d",
                       (unsigned long long)e, (unsigned long long)use_bm, ext ? " ext" : "", sc, t,
                       want[sc]);
        }
        unsigned sc = (unsigned)unit_range(&rs, 0, ext ? 31 : 0);
        unsigned end = sc + 1;
        while (ext && end < 32 && want[end] == want[sc])
            end++;
        if (!ext)
            end = 32;
        enum qcow2_subcluster_type t;
        unsigned n = qcow2_subcluster_range(e, use_bm, ext, sc, &t);
        if ((n != end - sc || t != want[sc]) && wrong++ < 5)
            CHECKF(0, "entry %#llx bitmap %#llx%s: range from %u is %u of %d, want %u of %d",
                   (unsigned long long)e, (unsigned long long)use_bm, ext ? " ext" : "", sc, n, t,
                   end - sc, want[sc]);
    }
    CHECKF(wrong == 0, "%ld wrong answers", wrong);
}

/* "l2_entries = cluster_size / sizeof(uint64_t)", or with extended L2
 * "cluster_size / (2 * sizeof(uint64_t))", entries big-endian in order. */
static void test_layout(void)
{
    for (unsigned cb = 9; cb <= 21; cb++) {
        CHECK(qcow2_l2_bits(cb, false) == cb - 3);
        CHECK(qcow2_l2_bits(cb, true) == cb - 4);
    }
    CHECK(qcow2_l2_entry_bytes(false) == 8 && qcow2_l2_entry_bytes(true) == 16);
    static uint8_t table[4096];
    for (unsigned i = 0; i < sizeof(table); i++)
        table[i] = (uint8_t)(i * 7 + 1);
    uint64_t e, bm;
    qcow2_l2_get(table, false, 5, &e, &bm);
    uint64_t want = 0;
    for (unsigned k = 0; k < 8; k++)
        want = want << 8 | table[40 + k];
    CHECK(e == want && bm == 0);
    qcow2_l2_get(table, true, 5, &e, &bm);
    uint64_t want_e = 0, want_bm = 0;
    for (unsigned k = 0; k < 8; k++) {
        want_e = want_e << 8 | table[80 + k];
        want_bm = want_bm << 8 | table[88 + k];
    }
    CHECK(e == want_e && bm == want_bm);
    uint8_t before[4096];
    memcpy(before, table, sizeof(table));
    qcow2_l2_set(table, 9, 0x0102030405060708ull);
    for (unsigned k = 0; k < 8; k++)
        CHECK(table[72 + k] == k + 1);
    CHECK(!memcmp(table, before, 72) && !memcmp(table + 80, before + 80, sizeof(table) - 80));
    CHECK(qcow2_l2_host(0xffffffffffffffffull) == 0x00fffffffffffe00ull);
}

int main(void)
{
    unit_init("test_qcow2_l2");
    test_cluster_types();
    test_subcluster_types();
    test_random();
    test_layout();
    return unit_done();
}
