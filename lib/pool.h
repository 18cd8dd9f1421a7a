/* pool.h - one bounded pool of worker threads, for every part of the
 * library that works in parallel (the copy engine's readers and writers,
 * compare).  As zstd's POOL: a fixed set of threads takes jobs in order
 * from a bounded queue; adding to a full queue blocks, which is the
 * back-pressure that keeps memory bounded.
 *
 * Thread safety: pool_add, pool_try_add and pool_join may be called from
 * any thread, jobs included (a job may add to another pool; adding to its
 * own pool from a job can deadlock when the queue is full).  pool_free
 * must not race with any other call on the pool. */
#ifndef ZCOW_POOL_H
#define ZCOW_POOL_H

#include <stdbool.h>
#include <stdint.h>

struct pool;

/* A job: ARG and N as given to pool_add; WORKER is the index of the thread
 * running it, 0 to pool_threads() - 1, for per-thread buffers. */
typedef void pool_fn(void *arg, uint64_t n, unsigned worker);

/* Start up to THREADS threads (>= 1) taking jobs from a queue of QUEUE
 * (>= 1) waiting jobs.  Fewer threads when the system refuses more, as
 * long as one starts; none: -EAGAIN ("cannot start a thread"). */
int pool_create(unsigned threads, unsigned queue, struct pool **out);

/* The threads that started. */
unsigned pool_threads(const struct pool *p);

/* Queue FN(ARG, N), waiting while the queue is full. */
void pool_add(struct pool *p, pool_fn *fn, void *arg, uint64_t n);

/* Queue FN(ARG, N) if there is room; false if the queue is full. */
bool pool_try_add(struct pool *p, pool_fn *fn, void *arg, uint64_t n);

/* Wait until every job queued so far has finished. */
void pool_join(struct pool *p);

/* Finish the queued jobs, stop the threads and free P (NULL: nothing). */
void pool_free(struct pool *p);

#endif
