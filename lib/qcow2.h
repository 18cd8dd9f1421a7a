/* qcow2.h - the qcow2 on-disk format: the header, feature bits, byte
 * order, compressed cluster descriptors.  No I/O, no policy.  Each
 * structure with more to it has its own module, as in QEMU's
 * block/qcow2-*.c: qcow2_ext.h (header extensions), qcow2_l2.h (L2
 * entries), qcow2_refcount.h (refcounts and the allocator), qcow2_cache.h
 * (the table cache).
 * Spec: QEMU docs/interop/qcow2.txt.  All fields big-endian on disk. */
#ifndef ZCOW_QCOW2_H
#define ZCOW_QCOW2_H

#include <assert.h>
#include <endian.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QCOW2_MAGIC 0x514649fbu /* "QFI\xfb" */

/* QEMU accepts cluster_bits 9..21; zcow writes 12..21 (4 KiB .. 2 MiB). */
#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21
#define ZCOW_MIN_CLUSTER_BITS 12

/* QEMU refuses larger tables (block/qcow2.h): 32 MiB of L1, 8 MiB of
 * refcount table.  We refuse them too, on write and on read. */
#define QCOW2_MAX_L1_BYTES (32u << 20)
#define QCOW2_MAX_REFTABLE_BYTES (8u << 20)

/* QEMU writes header_length 112 (sizeof(QCowHeader)). */
#define QCOW2_HEADER_V3_LEN 112
#define QCOW2_HEADER_V2_LEN 72

/* Incompatible feature bits. */
enum {
    QCOW2_INCOMPAT_DIRTY = 1u << 0,
    QCOW2_INCOMPAT_CORRUPT = 1u << 1,
    QCOW2_INCOMPAT_DATA_FILE = 1u << 2,
    QCOW2_INCOMPAT_COMPRESSION = 1u << 3,
    QCOW2_INCOMPAT_EXTL2 = 1u << 4,
    QCOW2_INCOMPAT_MASK = 0x1f,
};
enum { QCOW2_COMPAT_LAZY_REFCOUNTS = 1u << 0 };
enum { QCOW2_AUTOCLEAR_BITMAPS = 1u << 0, QCOW2_AUTOCLEAR_DATA_FILE_RAW = 1u << 1 };

/* The header as it is on disk (version 3, 112 bytes). */
struct qcow2_header {
    uint32_t magic;
    uint32_t version;
    uint64_t backing_file_offset;
    uint32_t backing_file_size;
    uint32_t cluster_bits;
    uint64_t size;
    uint32_t crypt_method;
    uint32_t l1_size;
    uint64_t l1_table_offset;
    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    /* version 3 from here */
    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint32_t refcount_order;
    uint32_t header_length;
    uint8_t compression_type;
    uint8_t padding[7];
} __attribute__((packed));
static_assert(sizeof(struct qcow2_header) == QCOW2_HEADER_V3_LEN, "qcow2 header is 112 bytes");

/* L1 and standard L2 entries. */
#define QCOW2_OFLAG_COPIED (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED (1ull << 62)
#define QCOW2_OFLAG_ZERO 1ull
#define QCOW2_OFFSET_MASK 0x00fffffffffffe00ull /* bits 9..55 */
#define QCOW2_L1E_RESERVED 0x7f000000000001ffull
#define QCOW2_L2E_RESERVED 0x3f000000000001feull

/* Byte order. */
static inline uint64_t qcow2_be64(const void *p)
{
    uint64_t v;
    __builtin_memcpy(&v, p, 8);
    return be64toh(v);
}
static inline uint32_t qcow2_be32(const void *p)
{
    uint32_t v;
    __builtin_memcpy(&v, p, 4);
    return be32toh(v);
}
static inline uint16_t qcow2_be16(const void *p)
{
    uint16_t v;
    __builtin_memcpy(&v, p, 2);
    return be16toh(v);
}
static inline void qcow2_put_be64(void *p, uint64_t v)
{
    v = htobe64(v);
    __builtin_memcpy(p, &v, 8);
}
static inline void qcow2_put_be32(void *p, uint32_t v)
{
    v = htobe32(v);
    __builtin_memcpy(p, &v, 4);
}
static inline void qcow2_put_be16(void *p, uint16_t v)
{
    v = htobe16(v);
    __builtin_memcpy(p, &v, 2);
}

/* Compressed cluster descriptor: bit 62 set, bit 63 clear; with
 * x = 62 - (cluster_bits - 8), the host byte offset is in bits 0..x-1 and
 * the number of 512-byte sectors after the first one in bits x..61. */
static inline unsigned qcow2_csize_shift(unsigned cluster_bits) { return 62 - (cluster_bits - 8); }

static inline uint64_t qcow2_compressed_descriptor(unsigned cluster_bits, uint64_t host_offset,
                                                   uint64_t len)
{
    unsigned shift = qcow2_csize_shift(cluster_bits);
    uint64_t sectors = (host_offset + len - 1) / 512 - host_offset / 512;
    return QCOW2_OFLAG_COMPRESSED | (sectors << shift) | host_offset;
}

/* Decode: the host offset, and the byte count a reader must read (whole
 * sectors, so it may reach into the next stream or past the end of file). */
static inline void qcow2_decode_compressed(unsigned cluster_bits, uint64_t entry,
                                           uint64_t *host_offset, uint64_t *len)
{
    unsigned shift = qcow2_csize_shift(cluster_bits);
    uint64_t off = entry & ((1ull << shift) - 1);
    uint64_t sectors = (entry & ~QCOW2_OFLAG_COMPRESSED & ~QCOW2_OFLAG_COPIED) >> shift;
    *host_offset = off;
    *len = (sectors + 1) * 512 - (off & 511);
}

/* Encode the header into BUF (at least header_length bytes).  Fields are
 * taken from H in host byte order. */
void qcow2_header_encode(const struct qcow2_header *h, void *buf);

/* Decode a header from BUF of LEN bytes into host order, filling the
 * version 3 defaults for a version 2 header.  Returns 0, or -EINVAL with a
 * static reason in *WHY when the bytes are not a header zcow can read. */
int qcow2_header_decode(const void *buf, size_t len, struct qcow2_header *h, const char **why);

#endif
