/* qcow2_refcount.c - refcounts and the front-to-back allocator (see
 * qcow2_refcount.h). */
#include "qcow2_refcount.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "blockio.h"
#include "error.h"

/* ---- entries and geometry --------------------------------------------- */

/* Entries of 1, 2 or 4 bits: the byte holding entry I, the entry's shift
 * in it (from the least significant bit) and its mask. */
static uint8_t *sub_byte(const void *block, unsigned order, uint64_t i, unsigned *shift,
                         uint8_t *mask)
{
    unsigned bits = 1u << order, per_byte = 8 / bits;
    *shift = (unsigned)(i % per_byte) * bits;
    *mask = (uint8_t)(((1u << bits) - 1) << *shift);
    return (uint8_t *)block + i / per_byte;
}

uint64_t qcow2_refcount_get(const void *block, unsigned order, uint64_t i)
{
    const uint8_t *b = block;
    unsigned shift;
    uint8_t mask;
    switch (order) {
    case 0:
    case 1:
    case 2: {
        uint8_t byte = *sub_byte(block, order, i, &shift, &mask); /* sets shift and mask */
        return (byte & mask) >> shift;
    }
    case 3: return b[i];
    case 4: return qcow2_be16(b + 2 * i);
    case 5: return qcow2_be32(b + 4 * i);
    default: return qcow2_be64(b + 8 * i);
    }
}

void qcow2_refcount_set(void *block, unsigned order, uint64_t i, uint64_t v)
{
    uint8_t *b = block, *p, mask;
    unsigned shift;
    switch (order) {
    case 0:
    case 1:
    case 2:
        p = sub_byte(block, order, i, &shift, &mask);
        *p = (uint8_t)((*p & ~mask) | ((v << shift) & mask));
        break;
    case 3: b[i] = (uint8_t)v; break;
    case 4: qcow2_put_be16(b + 2 * i, (uint16_t)v); break;
    case 5: qcow2_put_be32(b + 4 * i, (uint32_t)v); break;
    default: qcow2_put_be64(b + 8 * i, v); break;
    }
}

void qcow2_refcount_layout(uint64_t first_free, uint64_t blocks_done, unsigned cluster_bits,
                           unsigned order, uint64_t *table_clusters, uint64_t *new_blocks)
{
    uint64_t entries = 1ull << qcow2_refblock_bits(cluster_bits, order);
    uint64_t table = 1, blocks = 0;
    /* Growing either may need more of the other: grow both until they
     * agree.  Each step only grows, and by little: few rounds. */
    for (;;) {
        uint64_t total = first_free + table + blocks;
        uint64_t n_blocks = (total + entries - 1) / entries;
        uint64_t need_table = (n_blocks * 8 + (1ull << cluster_bits) - 1) >> cluster_bits;
        uint64_t need_blocks = n_blocks > blocks_done ? n_blocks - blocks_done : 0;
        if (need_table <= table && need_blocks == blocks)
            break;
        if (need_table > table)
            table = need_table;
        blocks = need_blocks;
    }
    *table_clusters = table;
    *new_blocks = blocks;
}

/* ---- the allocator -------------------------------------------------------- */

int qcow2_alloc_init(struct qcow2_alloc *a, unsigned cluster_bits, unsigned order)
{
    memset(a, 0, sizeof(*a));
    a->cluster_bits = cluster_bits;
    a->cluster_size = 1u << cluster_bits;
    a->order = order;
    a->rc_entries = 1ull << qcow2_refblock_bits(cluster_bits, order);
    a->refcount_max = qcow2_refcount_max(order);
    return 0;
}

void qcow2_alloc_free(struct qcow2_alloc *a)
{
    for (unsigned i = 0; i < a->rc_n; i++)
        free(a->rc_blocks[i]);
    free(a->rc_blocks);
    free(a->reftable);
    free(a->late.k);
    free(a->freed.k);
    memset(a, 0, sizeof(*a));
}

void qcow2_refblocks_free(struct qcow2_refblock *list)
{
    while (list) {
        struct qcow2_refblock *next = list->next;
        free(list->buf);
        free(list);
        list = next;
    }
}

/* The in-memory block holding cluster K's refcount, made if absent; NULL
 * when out of memory, or for a block already handed out (a bug). */
static uint8_t *rc_block(struct qcow2_alloc *a, uint64_t k)
{
    uint64_t b = k / a->rc_entries;
    if (b < a->rc_first)
        return NULL;
    while (b >= a->rc_first + a->rc_n) {
        if (a->rc_n == a->rc_cap) {
            unsigned cap = a->rc_cap ? a->rc_cap * 2 : 4;
            uint8_t **nb = realloc(a->rc_blocks, cap * sizeof(*nb));
            if (!nb)
                return NULL;
            a->rc_blocks = nb;
            a->rc_cap = cap;
        }
        a->rc_blocks[a->rc_n] = blk_zalloc(a->cluster_size);
        if (!a->rc_blocks[a->rc_n])
            return NULL;
        a->rc_n++;
    }
    return a->rc_blocks[b - a->rc_first];
}

uint64_t qcow2_alloc_refcount(const struct qcow2_alloc *a, uint64_t k)
{
    uint64_t b = k / a->rc_entries;
    if (b < a->rc_first || b >= a->rc_first + a->rc_n)
        return 0;
    return qcow2_refcount_get(a->rc_blocks[b - a->rc_first], a->order, k % a->rc_entries);
}

static int rc_inc(struct qcow2_alloc *a, uint64_t k)
{
    uint8_t *blk = rc_block(a, k);
    if (!blk)
        return zerr(ENOMEM, "out of memory for refcounts");
    uint64_t i = k % a->rc_entries;
    qcow2_refcount_set(blk, a->order, i, qcow2_refcount_get(blk, a->order, i) + 1);
    return 0;
}

int qcow2_clusters_add(struct qcow2_clusters *l, uint64_t k)
{
    if (l->n == l->cap) {
        uint64_t cap = l->cap ? l->cap * 2 : 64;
        uint64_t *nk = realloc(l->k, cap * sizeof(*nk));
        if (!nk)
            return zerr(ENOMEM, "out of memory for refcounts");
        l->k = nk;
        l->cap = cap;
    }
    l->k[l->n++] = k;
    return 0;
}

static int cmp_u64(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return (a > b) - (a < b);
}

void qcow2_clusters_sort(struct qcow2_clusters *l)
{
    if (l->n > 1)
        qsort(l->k, l->n, sizeof(*l->k), cmp_u64);
}

int qcow2_alloc_unref(struct qcow2_alloc *a, uint64_t first, uint64_t last)
{
    for (uint64_t k = first; k <= last; k++) {
        uint64_t b = k / a->rc_entries;
        int r;
        if (b < a->rc_first) { /* its block is written: apply at the end */
            if ((r = qcow2_clusters_add(&a->late, k)) < 0)
                return r;
            continue;
        }
        uint64_t rc = qcow2_alloc_refcount(a, k);
        if (rc == 0 || k >= a->next_cluster)
            return zerr(EIO, "internal error: host cluster %llu has no reference to drop",
                        (unsigned long long)k);
        uint8_t *blk = a->rc_blocks[b - a->rc_first];
        qcow2_refcount_set(blk, a->order, k % a->rc_entries, rc - 1);
        bool open = a->cbyte && (a->cbyte >> a->cluster_bits) == k;
        if (rc == 1 && !open && (r = qcow2_clusters_add(&a->freed, k)) < 0)
            return r;
    }
    return 0;
}

static int reftable_set(struct qcow2_alloc *a, uint64_t block, uint64_t offset)
{
    if (block >= a->reftable_cap) {
        uint64_t cap = a->reftable_cap ? a->reftable_cap * 2 : 64;
        while (cap <= block)
            cap *= 2;
        uint64_t *t = realloc(a->reftable, cap * sizeof(*t));
        if (!t)
            return zerr(ENOMEM, "out of memory");
        memset(t + a->reftable_cap, 0, (cap - a->reftable_cap) * sizeof(*t));
        a->reftable = t;
        a->reftable_cap = cap;
    }
    a->reftable[block] = offset;
    if (block + 1 > a->reftable_len)
        a->reftable_len = block + 1;
    return 0;
}

int qcow2_alloc_cluster(struct qcow2_alloc *a, uint64_t *offset)
{
    int r = rc_inc(a, a->next_cluster);
    if (r < 0)
        return r;
    *offset = a->next_cluster++ << a->cluster_bits;
    return 0;
}

void qcow2_alloc_close(struct qcow2_alloc *a) { a->cbyte = 0; }

int qcow2_alloc_bytes(struct qcow2_alloc *a, uint32_t len, uint64_t *offset, bool *closed)
{
    *closed = false;
    if (a->cbyte) {
        uint64_t ci = a->cbyte >> a->cluster_bits;
        uint64_t room = ((ci + 1) << a->cluster_bits) - a->cbyte;
        bool straddle = len > room && a->next_cluster == ci + 1;
        if (qcow2_alloc_refcount(a, ci) >= a->refcount_max || (len > room && !straddle)) {
            a->cbyte = 0;
            *closed = true;
        } else if (straddle) {
            a->next_cluster++; /* counted below, with the stream */
        }
    }
    if (!a->cbyte)
        a->cbyte = a->next_cluster++ << a->cluster_bits;
    *offset = a->cbyte;
    uint64_t first = *offset >> a->cluster_bits, last = (*offset + len - 1) >> a->cluster_bits;
    for (uint64_t k = first; k <= last; k++) {
        int r = rc_inc(a, k);
        if (r < 0)
            return r;
    }
    a->cbyte = *offset + len;
    if ((a->cbyte & (a->cluster_size - 1)) == 0)
        a->cbyte = 0; /* exactly full: nothing more fits */
    return 0;
}

/* Hand the first block in memory out, to be written at OFFSET: appended
 * to *OUT, its offset in the table. */
static int hand_out(struct qcow2_alloc *a, uint64_t offset, struct qcow2_refblock **out)
{
    struct qcow2_refblock *b = calloc(1, sizeof(*b));
    if (!b)
        return zerr(ENOMEM, "out of memory");
    int r = reftable_set(a, a->rc_first, offset);
    if (r < 0) {
        free(b);
        return r;
    }
    b->offset = offset;
    b->buf = a->rc_blocks[0];
    memmove(a->rc_blocks, a->rc_blocks + 1, (a->rc_n - 1) * sizeof(*a->rc_blocks));
    a->rc_n--;
    a->rc_first++;
    while (*out)
        out = &(*out)->next;
    *out = b;
    return 0;
}

int qcow2_alloc_retire(struct qcow2_alloc *a, struct qcow2_refblock **out, bool *closed)
{
    *closed = false;
    for (;;) {
        uint64_t frontier_block = a->next_cluster / a->rc_entries;
        if (a->cbyte) {
            uint64_t cblock = (a->cbyte >> a->cluster_bits) / a->rc_entries;
            if (cblock < frontier_block && cblock == a->rc_first) {
                a->cbyte = 0;
                *closed = true;
            }
        }
        if (a->rc_first >= frontier_block || a->rc_n == 0)
            return 0;
        uint64_t off;
        int r = qcow2_alloc_cluster(a, &off);
        if (r == 0)
            r = hand_out(a, off, out);
        if (r < 0)
            return r;
    }
}

int qcow2_alloc_finish(struct qcow2_alloc *a, struct qcow2_refblock **out, uint64_t *table_offset,
                       uint64_t *table_clusters, uint8_t **table)
{
    uint64_t first_free = a->next_cluster, done = a->rc_first, clusters, blocks;
    *table = NULL;
    qcow2_refcount_layout(first_free, done, a->cluster_bits, a->order, &clusters, &blocks);
    /* QEMU refuses a larger table (block/qcow2.h, QCOW_MAX_REFTABLE_SIZE). */
    if (clusters > QCOW2_MAX_REFTABLE_BYTES >> a->cluster_bits)
        return zerr(EFBIG, "image too large for a refcount table");
    uint64_t off;
    for (uint64_t i = 0; i < clusters + blocks; i++) {
        int r = qcow2_alloc_cluster(a, &off);
        if (r < 0)
            return r;
    }
    /* The blocks in memory are now exactly the new ones, [done, done +
     * blocks): hand them all out. */
    while (a->rc_n) {
        int r = hand_out(a, (first_free + clusters + (a->rc_first - done)) << a->cluster_bits, out);
        if (r < 0)
            return r;
    }
    uint8_t *t = blk_zalloc(clusters << a->cluster_bits);
    if (!t)
        return zerr(ENOMEM, "out of memory");
    for (uint64_t b = 0; b < a->reftable_len; b++)
        qcow2_put_be64(t + 8 * b, a->reftable[b]);
    *table_offset = first_free << a->cluster_bits;
    *table_clusters = clusters;
    *table = t;
    return 0;
}
