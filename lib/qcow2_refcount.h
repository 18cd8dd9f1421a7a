/* qcow2_refcount.h - refcounts: entries of every width, where the count of
 * a cluster lives, and the allocator of an image written front to back.
 * No I/O, no lock: the writer calls the allocator under its own lock and
 * writes what it hands out after dropping it; the checker reads stored
 * refcounts through the geometry here.
 *
 * Spec: QEMU docs/interop/qcow2.txt, "Host cluster management": a
 * refcount table (contiguous clusters) of 8-byte big-endian block offsets,
 * each refcount block one cluster of cluster_size * 8 / refcount_bits
 * entries, refcount_bits = 1 << refcount_order (0..6), sub-byte entries
 * from the least significant bit.  QEMU: block/qcow2-refcount.c. */
#ifndef ZCOW_QCOW2_REFCOUNT_H
#define ZCOW_QCOW2_REFCOUNT_H

#include <stdbool.h>
#include <stdint.h>

#include "qcow2.h"

/* ---- entries and geometry --------------------------------------------- */

/* Entry INDEX of a refcount BLOCK, for refcount_order ORDER (0..6). */
uint64_t qcow2_refcount_get(const void *block, unsigned order, uint64_t index);
void qcow2_refcount_set(void *block, unsigned order, uint64_t index, uint64_t value);

/* The largest refcount an entry holds: 2^refcount_bits - 1. */
static inline uint64_t qcow2_refcount_max(unsigned order)
{
    return order >= 6 ? UINT64_MAX : (1ull << (1u << order)) - 1;
}

/* log2 of the entries per refcount block. */
static inline unsigned qcow2_refblock_bits(unsigned cluster_bits, unsigned order)
{
    return cluster_bits + 3 - order;
}

/* The refcount of host cluster K: entry *INDEX of the block that entry
 * *TABLE_INDEX of the refcount table points at. */
static inline void qcow2_refcount_locate(unsigned cluster_bits, unsigned order, uint64_t k,
                                         uint64_t *table_index, uint64_t *index)
{
    unsigned bits = qcow2_refblock_bits(cluster_bits, order);
    *table_index = k >> bits;
    *index = k & ((1ull << bits) - 1);
}

/* The refcount structures that must be appended after the first FIRST_FREE
 * clusters of a file whose refcount blocks 0..BLOCKS_DONE-1 are already
 * placed (below FIRST_FREE): a table of *TABLE_CLUSTERS clusters, then
 * *NEW_BLOCKS blocks, the fewest with which the table has an entry for
 * every block and the blocks a count for every cluster, their own
 * included.  The table covers all blocks, from 0. */
void qcow2_refcount_layout(uint64_t first_free, uint64_t blocks_done, unsigned cluster_bits,
                           unsigned order, uint64_t *table_clusters, uint64_t *new_blocks);

/* ---- the allocator of a file written front to back ---------------------- */

/* Every cluster is taken, in order, from the allocation frontier: data
 * clusters, L2 tables, the L1 table, refcount blocks, the refcount table.
 * Compressed streams are packed byte by byte into the open compressed
 * cluster.  As nothing below the frontier changes again, a refcount block
 * is final once the frontier (and the open compressed cluster) has passed
 * it; it is then handed out to be written, and memory holds only the
 * blocks of the clusters still being filled. */
struct qcow2_alloc {
    unsigned cluster_bits;
    uint32_t cluster_size;
    unsigned order;      /* refcount_order */
    uint64_t rc_entries; /* refcounts per block */
    uint64_t refcount_max;
    uint64_t next_cluster; /* the frontier, in clusters */
    uint64_t cbyte;        /* next free compressed byte; 0: no open cluster */
    uint64_t rc_first;     /* blocks [rc_first, rc_first + rc_n) are in memory */
    uint8_t **rc_blocks;
    unsigned rc_n, rc_cap;
    uint64_t *reftable; /* block offsets, host order; 0: none yet */
    uint64_t reftable_len, reftable_cap;
    /* References dropped by rewrites (qcow2_alloc_unref()). */
    struct qcow2_clusters {
        uint64_t *k; /* host cluster indexes */
        uint64_t n, cap;
    } late,    /* in blocks already handed out: to apply to the written block */
        freed; /* counted down to zero in memory, for good */
};

/* A refcount block handed out to be written: BUF (one cluster, aligned
 * for O_DIRECT) at OFFSET.  The caller frees BUF and the node. */
struct qcow2_refblock {
    uint64_t offset;
    uint8_t *buf;
    struct qcow2_refblock *next;
};

/* An empty file of 2^CLUSTER_BITS clusters with refcounts of 2^ORDER
 * bits.  Returns 0 or -ENOMEM. */
int qcow2_alloc_init(struct qcow2_alloc *a, unsigned cluster_bits, unsigned order);
void qcow2_alloc_free(struct qcow2_alloc *a);

/* Take the cluster at the frontier, refcount 1. */
int qcow2_alloc_cluster(struct qcow2_alloc *a, uint64_t *offset);

/* Take LEN bytes (1 .. cluster size - 1) for a compressed stream, packed
 * right after the previous one.  A stream straddles into the next cluster
 * only if that is the physically next one (the frontier); otherwise, or
 * when the open cluster's refcount is at refcount_max, a new cluster is
 * opened.  Each cluster the stream touches gets one more reference.  Sets
 * *CLOSED when the open compressed cluster was left before these bytes. */
int qcow2_alloc_bytes(struct qcow2_alloc *a, uint32_t len, uint64_t *offset, bool *closed);

/* Leave the open compressed cluster for good (at the end of the file). */
void qcow2_alloc_close(struct qcow2_alloc *a);

/* Hand out, appended to *OUT, every refcount block that is final: below
 * the frontier and the open compressed cluster.  Each is placed at the
 * frontier (and counted).  A compressed cluster left a whole block behind
 * the frontier (runs of incompressible data) is closed so that its block
 * can go: then *CLOSED is set. */
int qcow2_alloc_retire(struct qcow2_alloc *a, struct qcow2_refblock **out, bool *closed);

/* The end of the file: append the refcount table and the last blocks
 * (qcow2_refcount_layout), counting themselves.  The blocks go to *OUT,
 * the table to *TABLE (*TABLE_CLUSTERS clusters at *TABLE_OFFSET, encoded,
 * aligned; the caller frees it).  Call qcow2_alloc_close() and
 * qcow2_alloc_retire() first.  Returns 0, -ENOMEM, or -EFBIG when the
 * table would pass QEMU's limit. */
int qcow2_alloc_finish(struct qcow2_alloc *a, struct qcow2_refblock **out, uint64_t *table_offset,
                       uint64_t *table_clusters, uint8_t **table);

/* The refcount of host cluster K as counted so far (0 for a block that
 * was handed out: the caller then has it). */
uint64_t qcow2_alloc_refcount(const struct qcow2_alloc *a, uint64_t k);

/* A guest cluster written again: drop one reference from each host
 * cluster FIRST..LAST its old data touched (a data cluster, or the one or
 * two clusters of a compressed stream).  Counted down in memory where the
 * cluster's block still is; for a block already handed out, the cluster
 * goes to A->late, which the caller applies to the written block before
 * the end.  A cluster whose count reaches zero in memory goes to A->freed
 * (its space may be given back to the file system at the end) unless it
 * is the open compressed cluster, which may gain references again.  The
 * space is never handed out again: the allocator only moves forward, so
 * a write still in flight to the old place harms nothing.  Returns 0,
 * -ENOMEM, or -EIO for a count already zero (a bug). */
int qcow2_alloc_unref(struct qcow2_alloc *a, uint64_t first, uint64_t last);

/* Append K to L (-ENOMEM); sort L's indexes in place. */
int qcow2_clusters_add(struct qcow2_clusters *l, uint64_t k);
void qcow2_clusters_sort(struct qcow2_clusters *l);

/* Free a list of handed-out blocks (after writing them, or on failure). */
void qcow2_refblocks_free(struct qcow2_refblock *list);

#endif
