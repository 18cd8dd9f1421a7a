/* test_qcow2.c - the on-disk format: compressed cluster descriptors for
 * every cluster size, header encode/decode (header extensions:
 * test_qcow2_ext.c; refcounts: test_qcow2_refcount.c).  The expectations are written from
 * QEMU's docs/interop/qcow2.txt, not from lib/qcow2.c. */
#include <errno.h>

#include "qcow2.h"
#include "unit.h"

/* ---- compressed cluster descriptors ------------------------------------ */

/* The spec's rule, computed independently of the code under test. */
static uint64_t spec_sectors(uint64_t off, uint64_t len)
{
    return (off + len - 1) / 512 - off / 512;
}

static long descriptor_failures;

static void check_descriptor(unsigned cb, uint64_t off, uint64_t len)
{
    unsigned x = 62 - (cb - 8);
    uint64_t e = qcow2_compressed_descriptor(cb, off, len);
    uint64_t sectors = spec_sectors(off, len);
    uint64_t want = (1ull << 62) | (sectors << x) | off;
    long before = atomic_load(&unit_failures);

    CHECKF(e == want, "cb %u off %llu len %llu: %#llx, want %#llx", cb, (unsigned long long)off,
           (unsigned long long)len, (unsigned long long)e, (unsigned long long)want);
    CHECKF(!(e >> 63), "cb %u off %llu: bit 63 set", cb, (unsigned long long)off);
    CHECKF(e & QCOW2_OFLAG_COMPRESSED, "cb %u: bit 62 clear", cb);
    /* The sector count must fit in bits x..61. */
    CHECKF(sectors < (1ull << (62 - x)), "cb %u off %llu len %llu: %llu sectors overflow", cb,
           (unsigned long long)off, (unsigned long long)len, (unsigned long long)sectors);

    uint64_t doff = 0, dlen = 0;
    qcow2_decode_compressed(cb, e, &doff, &dlen);
    CHECKF(doff == off, "cb %u: decoded offset %llu, want %llu", cb, (unsigned long long)doff,
           (unsigned long long)off);
    /* The reader reads whole sectors: from OFF to the end of the last sector
     * holding the stream, which covers the stream and ends on a sector. */
    uint64_t want_len = (sectors + 1) * 512 - (off % 512);
    CHECKF(dlen == want_len, "cb %u off %llu len %llu: decoded length %llu, want %llu", cb,
           (unsigned long long)off, (unsigned long long)len, (unsigned long long)dlen,
           (unsigned long long)want_len);
    CHECK(dlen >= len && dlen < len + 512);
    CHECK((off + dlen) % 512 == 0);

    /* A reader must ignore bit 63 if a writer set it (QEMU masks it). */
    uint64_t doff2 = 0, dlen2 = 0;
    qcow2_decode_compressed(cb, e | QCOW2_OFLAG_COPIED, &doff2, &dlen2);
    CHECK(doff2 == off && dlen2 == dlen);

    if (atomic_load(&unit_failures) != before)
        descriptor_failures++;
}

static void test_descriptors(void)
{
    uint64_t rs = unit_stream(1);
    for (unsigned cb = QCOW2_MIN_CLUSTER_BITS; cb <= QCOW2_MAX_CLUSTER_BITS; cb++) {
        uint64_t cs = 1ull << cb;
        unsigned x = 62 - (cb - 8);
        CHECKF(qcow2_csize_shift(cb) == x, "cb %u: shift %u, want %u", cb, qcow2_csize_shift(cb),
               x);
        uint64_t max_off = (1ull << x) - 1;

        /* Offsets: sector boundaries, mid-sector, the last byte of a sector,
         * the start of a host cluster, and the largest the field holds. */
        /* clang-format off */
        uint64_t offs[] = { cs,          cs + 1,          cs + 511,        cs + 512,
                            cs + 1000,   5 * cs - 1,      7 * cs + 300,    (1ull << 40) + 77,
                            max_off - cs, max_off - 511,  max_off - 512,   max_off };
        /* clang-format on */
        /* Every length 1..cs-1 for the small sizes, a sample plus every
         * boundary around sector multiples for the large ones. */
        for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
            uint64_t off = offs[i];
            if (off > max_off)
                continue;
            if (cb <= 13) {
                for (uint64_t len = 1; len < cs; len++)
                    check_descriptor(cb, off, len);
            } else {
                for (uint64_t k = 0; k < cs / 512; k++) {
                    uint64_t base = k * 512;
                    for (int d = -1; d <= 1; d++) {
                        uint64_t len = base + (uint64_t)(int64_t)d;
                        if (len >= 1 && len < cs)
                            check_descriptor(cb, off, len);
                    }
                }
                check_descriptor(cb, off, cs - 1);
                for (int n = 0; n < 200; n++)
                    check_descriptor(cb, off, unit_range(&rs, 1, cs - 1));
            }
        }
        /* Random offsets anywhere the field reaches, random lengths. */
        for (int n = 0; n < 2000; n++) {
            uint64_t off = unit_range(&rs, 512, max_off);
            check_descriptor(cb, off, unit_range(&rs, 1, cs - 1));
        }
        /* The sector rule at its edges, by example: a 1-byte stream at the
         * last byte of a sector takes 0 additional sectors; 2 bytes there
         * take 1. */
        CHECK(((qcow2_compressed_descriptor(cb, cs + 511, 1) >> x) & ((1ull << (62 - x)) - 1)) ==
              0);
        CHECK(((qcow2_compressed_descriptor(cb, cs + 511, 2) >> x) & ((1ull << (62 - x)) - 1)) ==
              1);
        CHECK(((qcow2_compressed_descriptor(cb, cs, 512) >> x) & ((1ull << (62 - x)) - 1)) == 0);
        CHECK(((qcow2_compressed_descriptor(cb, cs, 513) >> x) & ((1ull << (62 - x)) - 1)) == 1);
    }
    CHECKF(descriptor_failures == 0, "%ld descriptors wrong", descriptor_failures);

    /* Known values, worked by hand from the spec: 64 KiB clusters (x = 54),
     * a 1000-byte stream at host offset 0x30000 + 100 ends at byte 1099 of
     * its first sector's run: sectors 0..2, so 2 additional ones. */
    CHECK(qcow2_compressed_descriptor(16, 0x30064, 1000) ==
          (0x4000000000000000ull | (2ull << 54) | 0x30064));
    CHECK(qcow2_compressed_descriptor(16, 0x30064, 412) ==
          (0x4000000000000000ull | (0ull << 54) | 0x30064));
    CHECK(qcow2_compressed_descriptor(16, 0x30064, 413) ==
          (0x4000000000000000ull | (1ull << 54) | 0x30064));
    /* 2 MiB clusters (x = 49): a full-cluster-minus-one stream at a sector
     * boundary takes 4095 additional sectors. */
    CHECK(qcow2_compressed_descriptor(21, 0x400000, (1u << 21) - 1) ==
          (0x4000000000000000ull | (4095ull << 49) | 0x400000));
}

/* ---- header ------------------------------------------------------------ */

static struct qcow2_header sample_header(unsigned cb, int ctype)
{
    struct qcow2_header h;
    memset(&h, 0, sizeof(h));
    h.magic = QCOW2_MAGIC;
    h.version = 3;
    h.cluster_bits = cb;
    h.size = (16ull << 40) + 512;
    h.l1_size = 12345;
    h.l1_table_offset = 3ull << cb;
    h.refcount_table_offset = 1ull << cb;
    h.refcount_table_clusters = 2;
    h.incompatible_features = ctype ? QCOW2_INCOMPAT_COMPRESSION : 0;
    h.compatible_features = 0;
    h.autoclear_features = 0;
    h.refcount_order = 4;
    h.header_length = QCOW2_HEADER_V3_LEN;
    h.compression_type = (uint8_t)ctype;
    return h;
}

static void test_header_v3(void)
{
    for (unsigned cb = QCOW2_MIN_CLUSTER_BITS; cb <= QCOW2_MAX_CLUSTER_BITS; cb++) {
        for (int ctype = 0; ctype <= 1; ctype++) {
            struct qcow2_header h = sample_header(cb, ctype), d;
            uint8_t buf[512];
            memset(buf, 0xa5, sizeof(buf));
            qcow2_header_encode(&h, buf);
            /* Byte positions from the spec. */
            CHECK(memcmp(buf, "QFI\xfb", 4) == 0);
            CHECK(qcow2_be32(buf + 4) == 3);
            CHECK(qcow2_be32(buf + 20) == cb);
            CHECK(qcow2_be64(buf + 24) == h.size);
            CHECK(qcow2_be32(buf + 36) == 12345);
            CHECK(qcow2_be64(buf + 40) == h.l1_table_offset);
            CHECK(qcow2_be64(buf + 48) == h.refcount_table_offset);
            CHECK(qcow2_be32(buf + 56) == 2);
            CHECK(qcow2_be64(buf + 72) == (ctype ? 8u : 0u));
            CHECK(qcow2_be32(buf + 96) == 4);
            CHECK(qcow2_be32(buf + 100) == 112);
            CHECK(buf[104] == ctype);
            for (int i = 105; i < 112; i++)
                CHECKF(buf[i] == 0, "padding byte %d is %#x", i, buf[i]);
            CHECKF(buf[112] == 0xa5, "encode wrote past 112 bytes");

            const char *why = "unset";
            int r = qcow2_header_decode(buf, QCOW2_HEADER_V3_LEN, &d, &why);
            CHECKF(r == 0, "cb %u type %d: decode: %d (%s)", cb, ctype, r, why ? why : "");
            CHECK(why == NULL);
            CHECK(d.magic == h.magic && d.version == 3 && d.cluster_bits == cb);
            CHECK(d.size == h.size && d.l1_size == h.l1_size);
            CHECK(d.l1_table_offset == h.l1_table_offset);
            CHECK(d.refcount_table_offset == h.refcount_table_offset);
            CHECK(d.refcount_table_clusters == 2 && d.nb_snapshots == 0);
            CHECK(d.incompatible_features == h.incompatible_features);
            CHECK(d.refcount_order == 4 && d.header_length == 112);
            CHECK(d.compression_type == ctype);
        }
    }
}

/* Every field with a value of its own, at the byte the spec gives it, and
 * back again. */
static void test_header_fields(void)
{
    struct qcow2_header h = {
        .magic = QCOW2_MAGIC,
        .version = 3,
        .backing_file_offset = 0x0102030405060708ull,
        .backing_file_size = 0x11121314,
        .cluster_bits = 16,
        .size = 0x2122232425262728ull,
        .crypt_method = 0x31323334,
        .l1_size = 0x41424344,
        .l1_table_offset = 0x5152535455565758ull,
        .refcount_table_offset = 0x6162636465666768ull,
        .refcount_table_clusters = 0x71727374,
        .nb_snapshots = 0x81828384,
        .snapshots_offset = 0x9192939495969798ull,
        .incompatible_features = QCOW2_INCOMPAT_COMPRESSION | 0xa000000000000000ull,
        .compatible_features = 0xb1b2b3b4b5b6b7b8ull,
        .autoclear_features = 0xc1c2c3c4c5c6c7c8ull,
        .refcount_order = 6,
        .header_length = QCOW2_HEADER_V3_LEN,
        .compression_type = 1,
    }, d;
    uint8_t buf[QCOW2_HEADER_V3_LEN];
    qcow2_header_encode(&h, buf);
    CHECK(qcow2_be32(buf + 0) == QCOW2_MAGIC && qcow2_be32(buf + 4) == 3);
    CHECK(qcow2_be64(buf + 8) == h.backing_file_offset);
    CHECK(qcow2_be32(buf + 16) == h.backing_file_size);
    CHECK(qcow2_be32(buf + 20) == 16);
    CHECK(qcow2_be64(buf + 24) == h.size);
    CHECK(qcow2_be32(buf + 32) == h.crypt_method);
    CHECK(qcow2_be32(buf + 36) == h.l1_size);
    CHECK(qcow2_be64(buf + 40) == h.l1_table_offset);
    CHECK(qcow2_be64(buf + 48) == h.refcount_table_offset);
    CHECK(qcow2_be32(buf + 56) == h.refcount_table_clusters);
    CHECK(qcow2_be32(buf + 60) == h.nb_snapshots);
    CHECK(qcow2_be64(buf + 64) == h.snapshots_offset);
    CHECK(qcow2_be64(buf + 72) == h.incompatible_features);
    CHECK(qcow2_be64(buf + 80) == h.compatible_features);
    CHECK(qcow2_be64(buf + 88) == h.autoclear_features);
    CHECK(qcow2_be32(buf + 96) == 6 && qcow2_be32(buf + 100) == QCOW2_HEADER_V3_LEN);
    CHECK(buf[104] == 1);
    const char *why;
    CHECK(qcow2_header_decode(buf, sizeof(buf), &d, &why) == 0);
    CHECK(memcmp(&d, &h, sizeof(h)) == 0);
}

static void test_header_v2(void)
{
    /* A version 2 header as QEMU's compat=0.10 writes it: 72 bytes. */
    uint8_t buf[72];
    memset(buf, 0, sizeof(buf));
    qcow2_put_be32(buf + 0, QCOW2_MAGIC);
    qcow2_put_be32(buf + 4, 2);
    qcow2_put_be32(buf + 20, 16);
    qcow2_put_be64(buf + 24, 1ull << 30);
    qcow2_put_be32(buf + 36, 2);
    qcow2_put_be64(buf + 40, 0x30000);
    qcow2_put_be64(buf + 48, 0x10000);
    qcow2_put_be32(buf + 56, 1);
    struct qcow2_header d;
    const char *why = "unset";
    int r = qcow2_header_decode(buf, sizeof(buf), &d, &why);
    CHECKF(r == 0, "v2 decode: %d (%s)", r, why ? why : "");
    CHECK(d.version == 2 && d.cluster_bits == 16 && d.size == (1ull << 30));
    CHECK(d.l1_size == 2 && d.l1_table_offset == 0x30000 && d.refcount_table_offset == 0x10000);
    /* Version 3 fields take their implied values. */
    CHECK(d.refcount_order == 4);
    CHECK(d.header_length == 72);
    CHECK(d.compression_type == 0 && d.incompatible_features == 0);
}

static void test_header_rejects(void)
{
    struct {
        const char *what;
        unsigned at, width;
        uint64_t value;
        size_t len;
    } bad[] = {
        { "bad magic", 0, 4, 0x514649fa, 112 },
        { "version 1", 4, 4, 1, 112 },
        { "version 4", 4, 4, 4, 112 },
        { "cluster_bits 8", 20, 4, 8, 112 },
        { "cluster_bits 22", 20, 4, 22, 112 },
        { "header_length 100", 100, 4, 100, 112 },
        { "header_length 113", 100, 4, 113, 112 },
        { "refcount_order 7", 96, 4, 7, 112 },
        { "compression type 2", 104, 1, 2, 112 },
        { "zstd without its feature bit", 104, 1, 1, 112 },
        { "zlib with the compression feature bit", 72, 8, QCOW2_INCOMPAT_COMPRESSION, 112 },
        { "short buffer", 0, 0, 0, 71 },
        { "v3 cut in the middle", 0, 0, 0, 90 },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct qcow2_header h = sample_header(16, 0), d;
        uint8_t buf[QCOW2_HEADER_V3_LEN];
        qcow2_header_encode(&h, buf);
        if (bad[i].width == 4)
            qcow2_put_be32(buf + bad[i].at, (uint32_t)bad[i].value);
        else if (bad[i].width == 8)
            qcow2_put_be64(buf + bad[i].at, bad[i].value);
        else if (bad[i].width == 1)
            buf[bad[i].at] = (uint8_t)bad[i].value;
        const char *why = NULL;
        int r = qcow2_header_decode(buf, bad[i].len, &d, &why);
        CHECKF(r == -EINVAL, "%s: decode returned %d", bad[i].what, r);
        CHECKF(why != NULL && *why, "%s: no reason given", bad[i].what);
    }
    /* A header longer than its cluster (512-byte clusters). */
    struct qcow2_header h = sample_header(9, 0), d;
    uint8_t big[1024];
    memset(big, 0, sizeof(big));
    qcow2_header_encode(&h, big);
    qcow2_put_be32(big + 100, 520);
    const char *why = NULL;
    CHECK(qcow2_header_decode(big, sizeof(big), &d, &why) == -EINVAL && why);
}

int main(void)
{
    unit_init("test_qcow2");
    test_descriptors();
    test_header_v3();
    test_header_fields();
    test_header_v2();
    test_header_rejects();
    return unit_done();
}
