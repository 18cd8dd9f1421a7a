/* cwcache.c - the compressed write cache (see cwcache.h). */
#include "cwcache.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

static unsigned hash_of(const struct cwcache *c, uint64_t index)
{
    return (unsigned)(index * 0x9e3779b97f4a7c15ull >> 40) & (c->hash_size - 1);
}

int cw_init(struct cwcache *c, pthread_mutex_t *lock, struct blk *file, unsigned cluster_bits,
            unsigned max_clusters)
{
    memset(c, 0, sizeof(*c));
    c->lock = lock;
    c->file = file;
    c->cluster_bits = cluster_bits;
    c->cluster_size = 1u << cluster_bits;
    /* One append touches at most two clusters; the open one plus the two
     * it may finish must fit. */
    c->max_clusters = max_clusters < 3 ? 3 : max_clusters;
    c->hash_size = 64;
    while (c->hash_size < c->max_clusters * 2)
        c->hash_size *= 2;
    c->hash = calloc(c->hash_size, sizeof(*c->hash));
    c->free_bufs = calloc(c->max_clusters, sizeof(*c->free_bufs));
    if (!c->hash || !c->free_bufs) {
        free(c->hash);
        free(c->free_bufs);
        return zerr(ENOMEM, "out of memory");
    }
    pthread_cond_init(&c->cond, NULL);
    return 0;
}

static struct cw_cluster *lookup(const struct cwcache *c, uint64_t index)
{
    struct cw_cluster *cl = c->hash[hash_of(c, index)];
    while (cl && cl->index != index)
        cl = cl->hash_next;
    return cl;
}

static void unhash(struct cwcache *c, struct cw_cluster *cl)
{
    struct cw_cluster **pp = &c->hash[hash_of(c, cl->index)];
    while (*pp != cl)
        pp = &(*pp)->hash_next;
    *pp = cl->hash_next;
}

static void release(struct cwcache *c, struct cw_cluster *cl)
{
    unhash(c, cl);
    if (c->n_free < c->max_clusters)
        c->free_bufs[c->n_free++] = cl->buf;
    else
        free(cl->buf);
    free(cl);
    c->n_clusters--;
    pthread_cond_broadcast(&c->cond);
}

static struct cw_cluster *new_cluster(struct cwcache *c, uint64_t index)
{
    struct cw_cluster *cl = calloc(1, sizeof(*cl));
    if (!cl)
        return NULL;
    cl->buf = c->n_free ? c->free_bufs[--c->n_free] : blk_alloc(c->cluster_size);
    if (!cl->buf) {
        free(cl);
        return NULL;
    }
    cl->index = index;
    unsigned h = hash_of(c, index);
    cl->hash_next = c->hash[h];
    c->hash[h] = cl;
    c->n_clusters++;
    return cl;
}

void cw_wait_for_room(struct cwcache *c)
{
    while (c->n_clusters >= c->max_clusters && !c->error)
        pthread_cond_wait(&c->cond, c->lock);
}

void cw_close_open(struct cwcache *c, struct cw_cluster **finished, unsigned *n_finished)
{
    if (!c->open)
        return;
    c->open->final = true;
    finished[(*n_finished)++] = c->open;
    c->open = NULL;
}

int cw_append(struct cwcache *c, uint64_t offset, const void *data, uint32_t len,
              struct cw_cluster **finished, unsigned *n_finished)
{
    const uint8_t *p = data;
    while (len > 0) {
        uint64_t index = offset >> c->cluster_bits;
        uint32_t at = (uint32_t)(offset & (c->cluster_size - 1));
        if (!c->open || c->open->index != index) {
            cw_close_open(c, finished, n_finished);
            if (at != 0) /* the allocator starts new clusters at their start */
                return zerr(EIO, "internal error: write cache append at %llu out of order",
                            (unsigned long long)offset);
            c->open = new_cluster(c, index);
            if (!c->open)
                return zerr(ENOMEM, "out of memory");
        } else if (at != c->open->end) {
            return zerr(EIO, "internal error: write cache append at %llu, expected %llu",
                        (unsigned long long)offset,
                        (unsigned long long)((index << c->cluster_bits) + c->open->end));
        }
        uint32_t n = c->cluster_size - at < len ? c->cluster_size - at : len;
        memcpy(c->open->buf + at, p, n);
        c->open->end = at + n;
        if (c->open->end == c->cluster_size)
            cw_close_open(c, finished, n_finished);
        p += n;
        offset += n;
        len -= n;
    }
    return 0;
}

/* The part of a cluster worth writing: up to its data end, rounded up to
 * the O_DIRECT alignment (the tail is zero and never read). */
static uint32_t used_length(const struct cwcache *c, uint32_t end)
{
    uint32_t len = (end + BLK_ALIGN - 1) & ~(BLK_ALIGN - 1);
    return len < c->cluster_size ? len : c->cluster_size;
}

int cw_write_finished(struct cwcache *c, struct cw_cluster *cl)
{
    pthread_mutex_lock(c->lock);
    while (cl->flushing) /* never write around a flush of the same cluster */
        pthread_cond_wait(&c->cond, c->lock);
    int err = c->error;
    pthread_mutex_unlock(c->lock);

    uint64_t start = cl->index << c->cluster_bits;
    uint32_t len = used_length(c, cl->end);
    if (!err) {
        memset(cl->buf + cl->end, 0, len - cl->end);
        err = blk_pwrite(c->file, cl->buf, len, start);
        if (!err)
            blk_drop_range(c->file, start, len);
    }

    pthread_mutex_lock(c->lock);
    if (err && !c->error)
        c->error = err;
    err = c->error;
    release(c, cl);
    pthread_mutex_unlock(c->lock);
    return err;
}

uint32_t cw_read_cached(struct cwcache *c, uint64_t offset, void *buf, uint32_t len)
{
    struct cw_cluster *cl = lookup(c, offset >> c->cluster_bits);
    if (!cl)
        return 0;
    uint32_t at = (uint32_t)(offset & (c->cluster_size - 1));
    uint32_t n = c->cluster_size - at < len ? c->cluster_size - at : len;
    uint32_t have = cl->end > at ? cl->end - at : 0;
    if (have > n)
        have = n;
    memcpy(buf, cl->buf + at, have);
    memset((uint8_t *)buf + have, 0, n - have);
    return n;
}

static bool finished_below(const struct cwcache *c, uint64_t limit)
{
    for (unsigned h = 0; h < c->hash_size; h++)
        for (struct cw_cluster *cl = c->hash[h]; cl; cl = cl->hash_next)
            if (cl != c->open && cl->index < limit)
                return true;
    return false;
}

int cw_flush(struct cwcache *c)
{
    pthread_mutex_lock(c->lock);
    /* Clusters finished later than now have higher indexes (allocation is
     * sequential): waiting for the lower ones cannot starve. */
    uint64_t limit = c->open ? c->open->index : UINT64_MAX;
    while (!c->error && finished_below(c, limit))
        pthread_cond_wait(&c->cond, c->lock);
    struct cw_cluster *cl = c->open;
    if (c->error || !cl || cl->end == 0) {
        int err = c->error;
        pthread_mutex_unlock(c->lock);
        return err;
    }
    /* Write a copy of the open cluster's prefix: appends go on meanwhile,
     * and the cluster's own final write waits for this one. */
    uint32_t len = used_length(c, cl->end);
    uint8_t *copy = blk_zalloc(len);
    if (!copy) {
        pthread_mutex_unlock(c->lock);
        return zerr(ENOMEM, "out of memory");
    }
    memcpy(copy, cl->buf, cl->end);
    uint64_t start = cl->index << c->cluster_bits;
    cl->flushing++;
    pthread_mutex_unlock(c->lock);

    int err = blk_pwrite(c->file, copy, len, start);
    free(copy);

    pthread_mutex_lock(c->lock);
    cl->flushing--;
    if (err && !c->error)
        c->error = err;
    err = c->error;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(c->lock);
    return err;
}

void cw_free(struct cwcache *c)
{
    if (!c->hash)
        return;
    for (unsigned h = 0; h < c->hash_size; h++) {
        struct cw_cluster *cl = c->hash[h];
        while (cl) {
            struct cw_cluster *next = cl->hash_next;
            free(cl->buf);
            free(cl);
            cl = next;
        }
    }
    for (unsigned i = 0; i < c->n_free; i++)
        free(c->free_bufs[i]);
    free(c->hash);
    free(c->free_bufs);
    pthread_cond_destroy(&c->cond);
    c->hash = NULL;
}
