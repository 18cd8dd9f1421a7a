/* qcow2_l2.h - L2 table entries: where they lie in a table (standard and
 * extended), and the one classifier of an entry and of its subclusters,
 * used by the reader, the writer and the checker alike.  No I/O.
 *
 * The classification is QEMU's (block/qcow2.h: qcow2_get_cluster_type,
 * qcow2_get_subcluster_type), from docs/interop/qcow2.txt, "Cluster
 * mapping" and "Extended L2 Entries".  External data files, the one case
 * where offset 0 with COPIED is allocated, are refused before any entry is
 * classified, so they have no place here. */
#ifndef ZCOW_QCOW2_L2_H
#define ZCOW_QCOW2_L2_H

#include <stdbool.h>
#include <stdint.h>

#include "qcow2.h"

/* Extended L2: every standard cluster is 32 subclusters; the second word
 * of an entry has one allocation bit (0..31) and one zero bit (32..63)
 * per subcluster. */
#define QCOW2_SUBCLUSTERS 32
#define QCOW2_L2_BITMAP_ALL_ALLOC 0xffffffffull
#define QCOW2_L2_BITMAP_ALL_ZERO 0xffffffff00000000ull

/* Bytes per entry, and log2 of the entries per table. */
static inline unsigned qcow2_l2_entry_bytes(bool extended) { return extended ? 16 : 8; }
static inline unsigned qcow2_l2_bits(unsigned cluster_bits, bool extended)
{
    return cluster_bits - (extended ? 4 : 3);
}

/* Entry I of TABLE (on-disk form): the descriptor, and the subcluster
 * bitmap (0 without extended L2). */
static inline void qcow2_l2_get(const void *table, bool extended, uint64_t i, uint64_t *entry,
                                uint64_t *bitmap)
{
    const uint8_t *p = (const uint8_t *)table + (i << (extended ? 4 : 3));
    *entry = qcow2_be64(p);
    *bitmap = extended ? qcow2_be64(p + 8) : 0;
}

/* Set entry I of a standard TABLE (zcow writes no extended L2). */
static inline void qcow2_l2_set(void *table, uint64_t i, uint64_t entry)
{
    qcow2_put_be64((uint8_t *)table + 8 * i, entry);
}

/* The host cluster offset of a standard descriptor (bits 9..55). */
static inline uint64_t qcow2_l2_host(uint64_t entry) { return entry & QCOW2_OFFSET_MASK; }

/* A whole cluster, as QEMU's QCow2ClusterType. */
enum qcow2_cluster_type {
    QCOW2_CLUSTER_UNALLOCATED, /* offset 0: reads the backing file */
    QCOW2_CLUSTER_ZERO_PLAIN,  /* zero flag, no offset (not with extended L2) */
    QCOW2_CLUSTER_ZERO_ALLOC,  /* zero flag, a preallocated offset (idem) */
    QCOW2_CLUSTER_NORMAL,      /* data at the offset */
    QCOW2_CLUSTER_COMPRESSED,  /* a compressed descriptor */
};

/* One subcluster (the whole cluster without extended L2), as QEMU's
 * QCow2SubclusterType. */
enum qcow2_subcluster_type {
    QCOW2_SUBCLUSTER_NORMAL,
    QCOW2_SUBCLUSTER_ZERO_PLAIN,
    QCOW2_SUBCLUSTER_ZERO_ALLOC,
    QCOW2_SUBCLUSTER_UNALLOCATED_PLAIN, /* no host cluster */
    QCOW2_SUBCLUSTER_UNALLOCATED_ALLOC, /* a host cluster, this part unused */
    QCOW2_SUBCLUSTER_COMPRESSED,
    QCOW2_SUBCLUSTER_INVALID, /* a bitmap the spec forbids: corrupt */
};

/* Bit 0 (zero) counts only without extended L2, where it is reserved. */
static inline enum qcow2_cluster_type qcow2_cluster_type(uint64_t entry, bool extended)
{
    if (entry & QCOW2_OFLAG_COMPRESSED)
        return QCOW2_CLUSTER_COMPRESSED;
    if ((entry & QCOW2_OFLAG_ZERO) && !extended)
        return qcow2_l2_host(entry) ? QCOW2_CLUSTER_ZERO_ALLOC : QCOW2_CLUSTER_ZERO_PLAIN;
    return qcow2_l2_host(entry) ? QCOW2_CLUSTER_NORMAL : QCOW2_CLUSTER_UNALLOCATED;
}

/* Subcluster SC (0..31; 0 without extended L2) of the entry.  Invalid,
 * as the spec says: in an allocated cluster, a subcluster both allocated
 * and zero; in an unallocated one, any allocation bit. */
static inline enum qcow2_subcluster_type qcow2_subcluster_type(uint64_t entry, uint64_t bitmap,
                                                               bool extended, unsigned sc)
{
    enum qcow2_cluster_type t = qcow2_cluster_type(entry, extended);
    if (!extended) {
        switch (t) {
        case QCOW2_CLUSTER_COMPRESSED: return QCOW2_SUBCLUSTER_COMPRESSED;
        case QCOW2_CLUSTER_ZERO_PLAIN: return QCOW2_SUBCLUSTER_ZERO_PLAIN;
        case QCOW2_CLUSTER_ZERO_ALLOC: return QCOW2_SUBCLUSTER_ZERO_ALLOC;
        case QCOW2_CLUSTER_NORMAL: return QCOW2_SUBCLUSTER_NORMAL;
        default: return QCOW2_SUBCLUSTER_UNALLOCATED_PLAIN;
        }
    }
    uint64_t alloc = 1ull << sc, zero = 1ull << (32 + sc);
    switch (t) {
    case QCOW2_CLUSTER_COMPRESSED: return QCOW2_SUBCLUSTER_COMPRESSED;
    case QCOW2_CLUSTER_NORMAL:
        if ((bitmap >> 32) & bitmap)
            return QCOW2_SUBCLUSTER_INVALID;
        if (bitmap & zero)
            return QCOW2_SUBCLUSTER_ZERO_ALLOC;
        return (bitmap & alloc) ? QCOW2_SUBCLUSTER_NORMAL : QCOW2_SUBCLUSTER_UNALLOCATED_ALLOC;
    default: /* unallocated: zero flags are not seen with extended L2 */
        if (bitmap & QCOW2_L2_BITMAP_ALL_ALLOC)
            return QCOW2_SUBCLUSTER_INVALID;
        return (bitmap & zero) ? QCOW2_SUBCLUSTER_ZERO_PLAIN : QCOW2_SUBCLUSTER_UNALLOCATED_PLAIN;
    }
}

/* How many subclusters from SC on (at least 1, at most 32 - SC) have the
 * type of SC, stored in *TYPE.  Without extended L2 the cluster is one
 * piece: 32 - SC. */
unsigned qcow2_subcluster_range(uint64_t entry, uint64_t bitmap, bool extended, unsigned sc,
                                enum qcow2_subcluster_type *type);

#endif
