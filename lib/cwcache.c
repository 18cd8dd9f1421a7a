/* cwcache.c - the compressed write cache (see cwcache.h). */
#include "cwcache.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

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
    /* About 1 MiB per write; for big clusters, one cluster. */
    c->run_max = (1u << 20) >> cluster_bits;
    if (c->run_max == 0)
        c->run_max = 1;
    /* A run being gathered, the open cluster and one more must fit. */
    if (max_clusters < c->run_max + 2)
        max_clusters = c->run_max + 2;
    c->max_clusters = max_clusters;
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
    zerr_first_init(&c->error);
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

bool cw_has_room(struct cwcache *c)
{
    return c->n_clusters < c->max_clusters || zerr_failed(&c->error);
}

void cw_wait_for_room(struct cwcache *c)
{
    while (!cw_has_room(c))
        pthread_cond_wait(&c->cond, c->lock);
}

/* Hand the run being gathered out for writing. */
static void hand_out_run(struct cwcache *c, struct cw_ready *ready)
{
    if (!c->run.n)
        return;
    ready->runs[ready->n++] = c->run;
    c->run.first = NULL;
    c->run.n = 0;
    c->run_last = NULL;
}

/* CL is finished: add it to the run, or start a new run if it does not
 * follow the run's last cluster. */
static void finish(struct cwcache *c, struct cw_cluster *cl, struct cw_ready *ready)
{
    cl->final = true;
    if (c->run.n && c->run_last->index + 1 != cl->index)
        hand_out_run(c, ready);
    if (c->run.n)
        c->run_last->run_next = cl;
    else
        c->run.first = cl;
    c->run_last = cl;
    c->run.n++;
    /* A cluster not full to its end ends the run: a write never carries
     * the unused tail of a cluster in its middle. */
    if (c->run.n >= c->run_max || cl->end < c->cluster_size)
        hand_out_run(c, ready);
}

void cw_close_open(struct cwcache *c, struct cw_ready *ready)
{
    if (c->open)
        finish(c, c->open, ready);
    c->open = NULL;
    hand_out_run(c, ready); /* the allocator went elsewhere */
}

int cw_append(struct cwcache *c, uint64_t offset, const void *data, uint32_t len,
              struct cw_ready *ready)
{
    const uint8_t *p = data;
    while (len > 0) {
        uint64_t index = offset >> c->cluster_bits;
        uint32_t at = (uint32_t)(offset & (c->cluster_size - 1));
        if (!c->open || c->open->index != index) {
            if (c->open)
                cw_close_open(c, ready);
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
        if (c->open->end == c->cluster_size) { /* full: the next may follow it */
            finish(c, c->open, ready);
            c->open = NULL;
        }
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

int cw_write_run(struct cwcache *c, const struct cw_run *run)
{
    struct iovec iov_small[16];
    struct iovec *iov = run->n <= 16 ? iov_small : calloc(run->n, sizeof(*iov));
    int err = iov ? 0 : zerr(ENOMEM, "out of memory");

    pthread_mutex_lock(c->lock);
    /* Never write around a flush of the same cluster. */
    for (struct cw_cluster *cl = run->first; cl; cl = cl->run_next)
        while (cl->flushing)
            pthread_cond_wait(&c->cond, c->lock);
    if (!err)
        err = zerr_kept(&c->error);
    pthread_mutex_unlock(c->lock);

    uint64_t start = run->first->index << c->cluster_bits;
    uint64_t total = 0;
    unsigned i = 0;
    for (struct cw_cluster *cl = run->first; i < run->n; cl = cl->run_next, i++) {
        uint32_t len = used_length(c, cl->end);
        memset(cl->buf + cl->end, 0, len - cl->end);
        if (iov) {
            iov[i].iov_base = cl->buf;
            iov[i].iov_len = len;
        }
        total += len;
    }
    if (!err) {
        err = blk_pwritev(c->file, iov, (int)run->n, start);
        if (!err)
            blk_drop_range(c->file, start, total);
    }
    if (iov != iov_small)
        free(iov);

    pthread_mutex_lock(c->lock);
    zerr_keep(&c->error, err);
    err = zerr_kept(&c->error);
    struct cw_cluster *cl = run->first;
    for (i = 0; i < run->n; i++) {
        struct cw_cluster *next = cl->run_next;
        release(c, cl);
        cl = next;
    }
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

/* One past the highest cached cluster (the open one is the highest). */
static uint64_t cached_end(const struct cwcache *c)
{
    if (c->open)
        return c->open->index + 1;
    uint64_t end = 0;
    for (unsigned h = 0; h < c->hash_size; h++)
        for (struct cw_cluster *cl = c->hash[h]; cl; cl = cl->hash_next)
            if (cl->index + 1 > end)
                end = cl->index + 1;
    return end;
}

int cw_flush(struct cwcache *c)
{
    pthread_mutex_lock(c->lock);
    /* The clusters cached now, below LIMIT, must reach the file; clusters
     * cached later have higher indexes (allocation is sequential), so the
     * flush cannot starve.  While runs are written, writers may finish
     * more of these clusters into a new run: hand it out too, as its
     * writers may all be done and none would. */
    uint64_t limit = cached_end(c);
    while (!zerr_failed(&c->error)) {
        if (c->run.n && c->run.first->index < limit) {
            struct cw_ready ready = { .n = 0 };
            hand_out_run(c, &ready);
            pthread_mutex_unlock(c->lock);
            for (unsigned i = 0; i < ready.n; i++)
                cw_write_run(c, &ready.runs[i]);
            pthread_mutex_lock(c->lock);
            continue;
        }
        /* The rest below LIMIT are being written by others: wait. */
        if (!finished_below(c, limit))
            break;
        pthread_cond_wait(&c->cond, c->lock);
    }
    struct cw_cluster *cl = c->open;
    if (zerr_failed(&c->error) || !cl || cl->index >= limit || cl->end == 0) {
        int err = zerr_kept(&c->error);
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
    zerr_keep(&c->error, err);
    err = zerr_kept(&c->error);
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
    zerr_first_destroy(&c->error);
    c->hash = NULL;
}
