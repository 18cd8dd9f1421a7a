/* qcow2_cache.h - a cache of metadata tables of one cluster each (L2
 * tables), keyed by their host offset, as QEMU's block/qcow2-cache.c.  It
 * serves both kinds of image handle:
 *   - read-only (reader.c): a table missing is read from the file, a
 *     table evicted is dropped;
 *   - write-back (writer.c): a new table starts empty in the cache
 *     (qcow2_cache_get_empty), changed tables are marked dirty, and a
 *     dirty table is written when it is evicted or flushed.
 * Tables are in their on-disk (big-endian) form, in buffers aligned for
 * O_DIRECT.  Eviction takes the least recently used table that is not
 * busy.
 *
 * Locking: the cache has no lock of its own.  Every function is called
 * with the owner's lock (*c->lock) held, except init and free.  A function
 * that reads or writes a table drops the lock meanwhile: that table's slot
 * is then busy, and a thread wanting it waits for it (so a table is read
 * once, however many threads want it).  A table pointer handed out is
 * valid until the lock is next dropped, by the caller or by a cache call
 * that may drop it (get, make_room, flush): use it, or copy out of it,
 * before.  Lookups scan the slots, at most QCOW2_CACHE_MAX_SLOTS. */
#ifndef ZCOW_QCOW2_CACHE_H
#define ZCOW_QCOW2_CACHE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "blockio.h"

/* Lookups scan the slots: more would be slower than reading less often. */
#define QCOW2_CACHE_MAX_SLOTS 64
#define QCOW2_CACHE_MIN_SLOTS 4

struct qcow2_cache_slot {
    uint64_t offset;   /* host offset of the table; 0: the slot is free */
    uint64_t last_use; /* LRU tick */
    uint8_t *buf;      /* table_size bytes, allocated on first use */
    bool dirty;        /* changed since read, or new: to be written */
    bool busy;         /* being read or written, the lock dropped */
};

struct qcow2_cache {
    pthread_mutex_t *lock; /* the owner's */
    pthread_cond_t cond;   /* a slot stopped being busy */
    struct blk *file;
    uint32_t table_size;
    unsigned n_slots;
    struct qcow2_cache_slot *slots;
    uint64_t tick;
    /* Counters, for tests that prove what a path costs. */
    uint64_t reads;  /* tables read from the file */
    uint64_t writes; /* tables written to it */
};

/* A cache of N_SLOTS tables (clamped to QCOW2_CACHE_MIN_SLOTS ..
 * QCOW2_CACHE_MAX_SLOTS) of TABLE_SIZE bytes in FILE, guarded by LOCK.
 * Returns 0 or -ENOMEM. */
int qcow2_cache_init(struct qcow2_cache *c, pthread_mutex_t *lock, struct blk *file,
                     uint32_t table_size, unsigned n_slots);

/* Free every buffer; writes nothing (flush first). */
void qcow2_cache_free(struct qcow2_cache *c);

/* The table at host offset OFFSET (not 0), read from the file if it is not
 * cached (bytes past the end of the file read as zero: the caller checks
 * the offset first).  Evicting a dirty table to make room writes it.  May
 * drop the lock.  Returns 0, or a negative errno (the read or a write-back
 * failed: then the evicted table is lost). */
int qcow2_cache_get(struct qcow2_cache *c, uint64_t offset, uint8_t **table);

/* Make sure a slot is free, evicting (and writing back) as need be.  May
 * drop the lock: a caller that checked something before must check it
 * again.  Returns 0 with a free slot ready for qcow2_cache_get_empty(), or
 * a negative errno. */
int qcow2_cache_make_room(struct qcow2_cache *c);

/* A new table at OFFSET, which the caller has just allocated: zeroed,
 * dirty, in the slot qcow2_cache_make_room() freed.  Never drops the
 * lock; call it with nothing having dropped the lock since make_room. */
uint8_t *qcow2_cache_get_empty(struct qcow2_cache *c, uint64_t offset);

/* TABLE (from get or get_empty) was changed: write it before dropping it. */
void qcow2_cache_mark_dirty(struct qcow2_cache *c, const uint8_t *table);

/* Write every dirty table; they stay cached, clean.  Drops the lock while
 * writing.  Returns 0 or the first error (the tables stay dirty). */
int qcow2_cache_flush(struct qcow2_cache *c);

#endif
