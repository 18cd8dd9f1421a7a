/* cwcache.h - the compressed write cache.
 *
 * Compressed chunks are small and unaligned; under O_DIRECT each one would
 * be a read-modify-write.  The cache keeps each host cluster being filled
 * in an aligned buffer and writes it with one aligned write as soon as its
 * data end is final and all its bytes are in.
 *
 * Shape: "v3" of the upstream series.  Allocation is sequential, and
 * cw_append() is called inside the allocator's critical section, so the
 * cache only ever sees appends: at most one cluster is open (receiving
 * bytes); a cluster becomes finished when the allocator moves past it.
 * Finished clusters that are physically contiguous (a stream straddled
 * from one into the next) are gathered into a run of up to about 1 MiB,
 * which the writer whose append completed it writes with one aligned
 * pwritev after unlocking (cw_write_run()): fewer, larger writes.  A run is
 * handed out as soon as it can grow no more - the allocator left its last
 * cluster, or it reached its size.
 *
 * Locking: every function taking a `struct cwcache *` must be called with
 * *cache->lock held, except cw_write_finished(), cw_flush() and cw_free(),
 * which take it themselves.  No lock is held across I/O.  Lookups by
 * cluster are O(1) (hash on the cluster index). */
#ifndef ZCOW_CWCACHE_H
#define ZCOW_CWCACHE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "blockio.h"
#include "error.h"

struct cw_cluster {
    uint64_t index;    /* host cluster index (offset >> cluster_bits) */
    uint8_t *buf;      /* cluster_size bytes, aligned */
    uint32_t end;      /* bytes handed out so far (all have arrived) */
    bool final;        /* the allocator moved past: end will not grow */
    unsigned flushing; /* partial writes of a flush in progress */
    struct cw_cluster *hash_next;
    struct cw_cluster *run_next; /* the next cluster of its run */
};

/* Contiguous finished clusters, written together. */
struct cw_run {
    struct cw_cluster *first;
    unsigned n;
};

/* Room for the runs one append can hand out. */
#define CW_MAX_RUNS 3

struct cwcache {
    pthread_mutex_t *lock; /* the image's allocator lock */
    pthread_cond_t cond;   /* a cluster left the cache, or a flush ended */
    struct blk *file;
    unsigned cluster_bits;
    uint32_t cluster_size;
    unsigned max_clusters;   /* back-pressure bound */
    unsigned n_clusters;     /* open + finished, not yet written */
    struct cw_cluster *open; /* the one receiving appends, or NULL */
    struct cw_run run;       /* finished, contiguous, not yet handed out */
    struct cw_cluster *run_last;
    unsigned run_max; /* clusters per run */
    struct cw_cluster **hash;
    unsigned hash_size;  /* power of two */
    uint8_t **free_bufs; /* recycled cluster buffers */
    unsigned n_free;
    struct zerr_first error; /* the sticky I/O error, with its message */
};

int cw_init(struct cwcache *c, pthread_mutex_t *lock, struct blk *file, unsigned cluster_bits,
            unsigned max_clusters);
/* Free the cache and every buffer it holds; writes nothing (flush or
 * close the open cluster and write its run first). */
void cw_free(struct cwcache *c);

/* Block (releasing the lock) while the cache is full.  Call before
 * allocating, never between allocation and cw_append(). */
void cw_wait_for_room(struct cwcache *c);

/* Would cw_wait_for_room() return at once?  (A caller that dropped the
 * lock after waiting asks again.) */
bool cw_has_room(struct cwcache *c);

/* Runs handed out by one call, to be written after unlocking. */
struct cw_ready {
    struct cw_run runs[CW_MAX_RUNS];
    unsigned n;
};

/* Copy LEN bytes that the allocator placed at host byte OFFSET.  OFFSET is
 * the end of the open cluster, or the start of a new cluster (which closes
 * the open one) - a chunk straddles only into the physically next cluster.
 * Runs this append completed are added to READY: the caller writes them
 * with cw_write_run() after unlocking. */
int cw_append(struct cwcache *c, uint64_t offset, const void *data, uint32_t len,
              struct cw_ready *ready);

/* The allocator moved past the open cluster without filling it. */
void cw_close_open(struct cwcache *c, struct cw_ready *ready);

/* Write a run (one aligned write: whole clusters, then the used part of
 * the last, rounded up to the O_DIRECT alignment) and drop it.  Called
 * without the lock.  Returns 0 or the (now sticky) error. */
int cw_write_run(struct cwcache *c, const struct cw_run *run);

/* If the cluster holding host byte OFFSET is cached, copy up to LEN bytes
 * from it to BUF (bytes not yet handed out read as zero) and return the
 * count; 0 if that cluster is not cached (then it is on disk). */
uint32_t cw_read_cached(struct cwcache *c, uint64_t offset, void *buf, uint32_t len);

/* Write every cached byte: writes the run being gathered, waits for
 * runs in flight and writes the open cluster's prefix (it stays cached, as more bytes may
 * come).  Takes the lock itself.  Returns the sticky error. */
int cw_flush(struct cwcache *c);

#endif
