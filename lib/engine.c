/* engine.c - the copy engine (see engine.h).
 *
 * Locking: engine.lock guards the slots' states; a slot in READING or
 * WRITING belongs to the one job working on it, which uses its buffer and
 * plan without the lock.  Jobs are queued with engine.lock held (a pool's
 * lock is taken inside it, never the other way round).  The segment
 * counter, the byte counters and the first failure are atomic (the keeper
 * has its own lock).  No lock is held across a call to the source or the
 * destination. */
#include "engine.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "blockio.h"
#include "digest.h"
#include "error.h"
#include "pool.h"

/* Compressing destinations: bytes per read.  Large reads cost less per
 * byte, but every slot holds one segment, so many workers get smaller
 * ones. */
#define SEGMENT_BYTES_MAX (4u << 20)
#define SEGMENT_BYTES_MIN (1u << 20)
#define SEGMENT_BUDGET (16u << 20)
/* Other destinations: reads of 4 MiB, the size the restore was tuned at. */
#define SEGMENT_BYTES_PLAIN (4u << 20)
#define MAX_WORKERS 256
/* A few reads in flight keep a disk busy. */
#define MAX_READERS 4
#define PROGRESS_INTERVAL_NS 100000000L

/* A stretch of a segment, in whole granules but at the end of the
 * destination, all of one kind. */
struct stretch {
    uint64_t off, end;
    enum extent_kind kind;
};

/* A segment's plan: its stretches, found once from the source's extents. */
struct plan {
    struct stretch *s;
    unsigned n, cap; /* cap: one per granule, the worst case */
};

enum slot_state { SLOT_FREE, SLOT_READING, SLOT_READY, SLOT_WRITING };

struct slot {
    enum slot_state state; /* guarded by engine.lock */
    uint64_t index;        /* the segment */
    uint8_t *buf;          /* its bytes, aligned */
    uint8_t *cbuf;         /* a compressed cluster (copy mode) */
    struct plan plan;
};

struct engine {
    struct source *src;
    struct dest *dst;
    const struct engine_config *cfg;
    uint64_t size;
    uint32_t segment, gran;
    uint64_t n_segments;
    bool copy;                  /* compressed clusters go across as they are */
    struct digest *digest;      /* cfg->digest */
    atomic_ullong next_segment; /* the next to hand out; moved past long holes */
    atomic_ullong done_bytes;
    atomic_ullong n_copied;
    struct zerr_first first;
    pthread_mutex_t lock; /* guards the slots' states */
    pthread_cond_t freed; /* a slot became free */
    struct slot *slots;
    unsigned n_slots;
    struct pool *readers; /* NULL: direct */
    struct pool *writers;
};

/* ---- planning ------------------------------------------------------------ */

/* Stretches of KIND that need no call to the destination. */
static bool skippable(const struct engine *e, enum extent_kind kind)
{
    return kind == EXTENT_UNCHANGED || (kind == EXTENT_ZERO && e->dst->unwritten_is_zero);
}

/* Segments wholly inside a hole of KIND that reaches END are skipped:
 * move the shared counter past them, unless another job already did.  The
 * job that moves it owns them: a zero hole clears their digest blocks. */
static int skip_hole(struct engine *e, uint64_t end, enum extent_kind kind)
{
    uint64_t target = end / e->segment;
    unsigned long long cur = atomic_load(&e->next_segment);
    while (cur < target) {
        if (atomic_compare_exchange_weak(&e->next_segment, &cur, target)) {
            atomic_fetch_add(&e->done_bytes, (target - cur) * e->segment);
            if (e->digest && kind == EXTENT_ZERO)
                return digest_zero(e->digest, cur * e->segment, (target - cur) * e->segment);
            return 0;
        }
    }
    return 0;
}

/* The segment before AT ends in a skippable stretch: if it goes on past
 * AT, skip the segments wholly inside it.  The one look past a segment. */
static int skip_beyond(struct engine *e, uint64_t at)
{
    uint64_t len;
    enum extent_kind kind = EXTENT_DATA;
    int r = e->src->ops->extent(e->src, at, e->size - at, &len, &kind);
    if (r == 0 && skippable(e, kind) && len >= e->segment)
        r = skip_hole(e, at + len, kind);
    return r;
}

static void plan_add(struct plan *p, uint64_t off, uint64_t end, enum extent_kind kind)
{
    if (p->n && p->s[p->n - 1].kind == kind && p->s[p->n - 1].end == off)
        p->s[p->n - 1].end = end;
    else
        p->s[p->n++] = (struct stretch){ off, end, kind };
}

/* Split the segment at SEG_OFF into stretches of whole granules (a granule
 * with any data in it is data), asking the source about it only. */
static int plan_segment(struct engine *e, uint64_t seg_off, struct plan *p)
{
    uint64_t seg_end = seg_off + e->segment < e->size ? seg_off + e->segment : e->size;
    uint64_t mask = e->gran - 1;
    uint64_t off = seg_off;
    p->n = 0;
    while (off < seg_end) {
        uint64_t len = seg_end - off;
        enum extent_kind kind = EXTENT_DATA;
        if (e->src->ops->extent) {
            int r = e->src->ops->extent(e->src, off, len, &len, &kind);
            if (r < 0)
                return r;
            /* A hole to the segment's end may go on: the segments wholly
             * inside it are skipped. */
            if (skippable(e, kind) && off + len >= seg_end && seg_end < e->size &&
                (r = skip_beyond(e, seg_end)) < 0)
                return r;
        }
        uint64_t end = len > seg_end - off ? seg_end : off + len;
        if (kind != EXTENT_DATA) {
            /* Whole granules of the hole are holes; a partial one is data. */
            uint64_t hole_end = end == seg_end ? end : end & ~mask;
            if (hole_end > off) {
                plan_add(p, off, hole_end, kind);
                off = hole_end;
                continue;
            }
            end = (off + e->gran) & ~mask;
        } else {
            end = (end + mask) & ~mask;
        }
        if (end > seg_end)
            end = seg_end;
        plan_add(p, off, end, EXTENT_DATA);
        off = end;
    }
    return 0;
}

/* ---- reading and writing a segment ----------------------------------------- */

/* Read the data stretches of a planned segment into BUF. */
static int read_segment(struct engine *e, uint64_t seg_off, uint8_t *buf, const struct plan *p)
{
    for (unsigned i = 0; i < p->n; i++) {
        const struct stretch *st = &p->s[i];
        if (st->kind != EXTENT_DATA)
            continue;
        size_t io = (st->end - st->off + BLK_ALIGN - 1) & ~(size_t)(BLK_ALIGN - 1);
        int r = e->src->ops->pread(e->src, buf + (st->off - seg_off), io, st->off);
        if (r < 0)
            return r;
    }
    return 0;
}

/* Copy [OFF, END) cluster by cluster: clusters the source holds compressed
 * as the destination wants them go across untouched, the others are read
 * into BUF and written. */
static int copy_range(struct engine *e, uint64_t off, uint64_t end, uint8_t *buf, uint8_t *cbuf)
{
    struct dest *d = e->dst;
    for (uint64_t c = off; c < end; c += d->cluster_size) {
        int n = e->src->ops->read_compressed(e->src, c, d->compression_type, d->cluster_size, cbuf,
                                             CHUNK_BUF_BYTES(d->cluster_size));
        if (n < 0)
            return n;
        int r;
        if (n > 0) {
            if ((r = d->ops->write_compressed(d, c, cbuf, (size_t)n)) < 0)
                return r;
            atomic_fetch_add(&e->n_copied, 1);
            continue;
        }
        uint64_t len = end - c < d->cluster_size ? end - c : d->cluster_size;
        size_t io = (len + BLK_ALIGN - 1) & ~(size_t)(BLK_ALIGN - 1);
        if ((r = e->src->ops->pread(e->src, buf, io, c)) < 0 ||
            (r = d->ops->write(d, c, buf, (size_t)len)) < 0)
            return r;
    }
    return 0;
}

/* The digest tap: what the stretch ST (its bytes at AT) makes of the
 * disk.  Stretches are in whole granules, and granules in whole digest
 * blocks. */
static int tap(struct engine *e, const struct stretch *st, const uint8_t *at)
{
    if (st->kind == EXTENT_DATA)
        return digest_data(e->digest, st->off, at, (size_t)(st->end - st->off));
    if (st->kind == EXTENT_ZERO)
        return digest_zero(e->digest, st->off, st->end - st->off);
    return 0;
}

/* Write a planned segment read into SLOT's buffer (in copy mode, read and
 * copy its data now, cluster by cluster). */
static int write_segment(struct engine *e, struct slot *slot)
{
    struct dest *d = e->dst;
    uint64_t seg_off = slot->index * e->segment;
    for (unsigned i = 0; i < slot->plan.n; i++) {
        const struct stretch *st = &slot->plan.s[i];
        uint8_t *at = slot->buf + (st->off - seg_off);
        int r = e->digest && st->off < digest_size(e->digest) ? tap(e, st, at) : 0;
        if (r < 0)
            return r;
        if (st->kind == EXTENT_ZERO && !d->unwritten_is_zero)
            r = d->ops->zero(d, st->off, st->end - st->off);
        else if (st->kind == EXTENT_DATA && e->copy)
            r = copy_range(e, st->off, st->end, at, slot->cbuf);
        else if (st->kind == EXTENT_DATA)
            r = d->ops->write(d, st->off, at, (size_t)(st->end - st->off));
        if (r < 0)
            return r;
    }
    return 0;
}

static uint64_t segment_bytes(const struct engine *e, uint64_t index)
{
    uint64_t off = index * e->segment;
    return e->size - off < e->segment ? e->size - off : e->segment;
}

/* ---- jobs --------------------------------------------------------------------- */

static pool_fn read_job, segment_job;

/* Give SLOT the next segment and queue its job, or free it when none is
 * left (or a failure stops the run).  Lock held: segments are then queued
 * in the order they are numbered, so one reader reads them in order.  The
 * queues hold a job per slot: pool_add never waits here. */
static void hand_out(struct engine *e, struct slot *slot)
{
    uint64_t s = zerr_failed(&e->first) ? e->n_segments : atomic_fetch_add(&e->next_segment, 1);
    if (s >= e->n_segments) {
        slot->state = SLOT_FREE;
        pthread_cond_signal(&e->freed);
        return;
    }
    slot->state = SLOT_READING;
    slot->index = s;
    if (e->readers)
        pool_add(e->readers, read_job, e, (uint64_t)(slot - e->slots));
    else
        pool_add(e->writers, segment_job, e, (uint64_t)(slot - e->slots));
}

static void set_state(struct engine *e, struct slot *slot, enum slot_state state)
{
    pthread_mutex_lock(&e->lock);
    slot->state = state;
    pthread_mutex_unlock(&e->lock);
}

/* SLOT's segment is done (R: how it went): on to the next one. */
static void finish(struct engine *e, struct slot *slot, int r)
{
    if (r < 0)
        zerr_keep(&e->first, r);
    else if (!zerr_failed(&e->first))
        atomic_fetch_add(&e->done_bytes, segment_bytes(e, slot->index));
    pthread_mutex_lock(&e->lock);
    hand_out(e, slot);
    pthread_mutex_unlock(&e->lock);
}

/* Read-ahead, on a writer: write the lowest segment read so far.  There is
 * one: each read job queues one write job once its slot is READY. */
static void write_job(void *arg, uint64_t n, unsigned worker)
{
    (void)n, (void)worker;
    struct engine *e = arg;
    struct slot *slot = NULL;
    pthread_mutex_lock(&e->lock);
    for (unsigned i = 0; i < e->n_slots; i++) {
        struct slot *s = &e->slots[i];
        if (s->state == SLOT_READY && (!slot || s->index < slot->index))
            slot = s;
    }
    slot->state = SLOT_WRITING;
    pthread_mutex_unlock(&e->lock);
    int r = zerr_failed(&e->first) ? 0 : write_segment(e, slot);
    finish(e, slot, r);
}

/* Read-ahead, on a reader: plan and read slot N's segment. */
static void read_job(void *arg, uint64_t n, unsigned worker)
{
    (void)worker;
    struct engine *e = arg;
    struct slot *slot = &e->slots[n];
    if (!zerr_failed(&e->first)) {
        uint64_t off = slot->index * e->segment;
        int r = plan_segment(e, off, &slot->plan);
        if (r == 0)
            r = read_segment(e, off, slot->buf, &slot->plan);
        if (r < 0) {
            zerr_keep(&e->first, r);
            slot->plan.n = 0; /* the write job only frees the slot */
        }
    }
    set_state(e, slot, SLOT_READY);
    /* Never waits: the queue holds a job per slot. */
    pool_add(e->writers, write_job, e, 0);
}

/* Direct, on a writer: plan, read and write slot N's segment. */
static void segment_job(void *arg, uint64_t n, unsigned worker)
{
    (void)worker;
    struct engine *e = arg;
    struct slot *slot = &e->slots[n];
    int r = 0;
    if (!zerr_failed(&e->first)) {
        uint64_t off = slot->index * e->segment;
        r = plan_segment(e, off, &slot->plan);
        if (r == 0 && !e->copy)
            r = read_segment(e, off, slot->buf, &slot->plan);
        if (r == 0)
            r = write_segment(e, slot);
    }
    finish(e, slot, r);
}

/* ---- the calling thread: start the slots, report progress ------------------------ */

static void deadline_after(struct timespec *ts, long ns)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_nsec += ns;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Give every slot its first segment, then wait until every slot is free
 * again (no segment left, or a failure), reporting progress every
 * PROGRESS_INTERVAL_NS meanwhile.  The deadline is absolute: slots freed
 * more often do not put a report off. */
static void run(struct engine *e)
{
    struct timespec next_report;
    deadline_after(&next_report, PROGRESS_INTERVAL_NS);
    pthread_mutex_lock(&e->lock);
    for (unsigned i = 0; i < e->n_slots; i++)
        hand_out(e, &e->slots[i]);
    for (;;) {
        unsigned n_free = 0;
        for (unsigned i = 0; i < e->n_slots; i++)
            n_free += e->slots[i].state == SLOT_FREE;
        if (n_free == e->n_slots)
            break;
        if (pthread_cond_timedwait(&e->freed, &e->lock, &next_report) == ETIMEDOUT) {
            if (e->cfg->progress) {
                pthread_mutex_unlock(&e->lock);
                e->cfg->progress(e->cfg->progress_opaque, atomic_load(&e->done_bytes), e->size);
                pthread_mutex_lock(&e->lock);
            }
            deadline_after(&next_report, PROGRESS_INTERVAL_NS);
        }
    }
    pthread_mutex_unlock(&e->lock);
}

/* ---- set up ---------------------------------------------------------------------- */

static void free_slots(struct engine *e)
{
    for (unsigned i = 0; e->slots && i < e->n_slots; i++) {
        free(e->slots[i].buf);
        free(e->slots[i].cbuf);
        free(e->slots[i].plan.s);
    }
    free(e->slots);
}

static int alloc_slots(struct engine *e, unsigned n)
{
    e->slots = calloc(n, sizeof(*e->slots));
    if (!e->slots)
        return zerr(ENOMEM, "out of memory");
    e->n_slots = n;
    for (unsigned i = 0; i < n; i++) {
        struct slot *s = &e->slots[i];
        s->plan.cap = e->segment / e->gran + 1;
        s->plan.s = malloc(s->plan.cap * sizeof(*s->plan.s));
        s->buf = blk_alloc(e->segment);
        if (e->copy)
            s->cbuf = malloc(CHUNK_BUF_BYTES(e->dst->cluster_size));
        if (!s->plan.s || !s->buf || (e->copy && !s->cbuf))
            return zerr(ENOMEM, "out of memory");
    }
    return 0;
}

int engine_copy(struct source *src, struct dest *dst, const struct engine_config *cfg,
                struct engine_stats *st)
{
    struct engine e = {
        .src = src,
        .dst = dst,
        .cfg = cfg,
        .size = dst->size,
        .segment = cfg->segment,
        .gran = dst->granularity,
        .copy = src->ops->read_compressed && dst->ops->write_compressed && !cfg->digest,
        .digest = cfg->digest,
    };
    memset(st, 0, sizeof(*st));
    /* Whole digest blocks: a block partly data is read whole.  Both are
     * powers of two. */
    if (e.digest && e.gran < DIGEST_BLOCK)
        e.gran = DIGEST_BLOCK;
    if (e.digest && digest_size(e.digest) > e.size)
        return zerr(EINVAL, "copy engine: a digest of %llu bytes, a copy of %llu",
                    (unsigned long long)digest_size(e.digest), (unsigned long long)e.size);
    if (!e.segment || e.segment % e.gran || e.segment % BLK_ALIGN || !cfg->workers)
        return zerr(EINVAL, "copy engine: segment %u, granularity %u, %u workers", e.segment,
                    e.gran, cfg->workers);
    e.n_segments = (e.size + e.segment - 1) / e.segment;
    atomic_init(&e.next_segment, 0);
    atomic_init(&e.done_bytes, 0);
    atomic_init(&e.n_copied, 0);
    unsigned readers = e.copy ? 0 : cfg->readers;
    int r = alloc_slots(&e, cfg->workers + readers);
    if (r == 0 && readers)
        r = pool_create(readers, e.n_slots, &e.readers);
    if (r == 0)
        r = pool_create(cfg->workers, e.n_slots, &e.writers);
    if (r < 0) {
        pool_free(e.readers);
        free_slots(&e);
        return r;
    }
    zerr_first_init(&e.first);
    pthread_mutex_init(&e.lock, NULL);
    pthread_cond_init(&e.freed, NULL);

    run(&e);

    pool_free(e.readers);
    pool_free(e.writers);
    r = zerr_kept(&e.first);
    st->clusters_copied = atomic_load(&e.n_copied);
    zerr_first_destroy(&e.first);
    pthread_mutex_destroy(&e.lock);
    pthread_cond_destroy(&e.freed);
    free_slots(&e);
    return r;
}

void engine_configure(struct engine_config *cfg, const struct source *src, const struct dest *dst,
                      int threads)
{
    memset(cfg, 0, sizeof(*cfg));
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned n = threads > 0 ? (unsigned)threads : cpus > 0 ? (unsigned)cpus : 1;
    uint32_t segment;
    if (dst->compresses) {
        n = n < MAX_WORKERS ? n : MAX_WORKERS;
        segment = SEGMENT_BYTES_MAX;
        while (segment > SEGMENT_BYTES_MIN && segment * (uint64_t)n > SEGMENT_BUDGET)
            segment /= 2;
        /* Read ahead, unless compressed clusters are copied: then the
         * workers read cluster by cluster. */
        bool copy = src->ops->read_compressed && dst->ops->write_compressed;
        cfg->readers = copy ? 0 : n < MAX_READERS ? n : MAX_READERS;
    } else {
        /* Reading (decompression, I/O) is the work: unless told, keep
         * more segments in flight than there are CPUs (measured: 2 CPUs,
         * 8 workers restore 1 GiB ~30% faster than 2 under O_DIRECT). */
        if (threads <= 0)
            n = n * 2 < 4 ? 4 : n * 2;
        n = n < MAX_WORKERS ? n : MAX_WORKERS;
        segment = SEGMENT_BYTES_PLAIN;
        uint64_t n_segments = (dst->size + segment - 1) / segment;
        if (n > n_segments)
            n = n_segments ? (unsigned)n_segments : 1;
    }
    if (segment < dst->granularity)
        segment = dst->granularity;
    cfg->workers = n;
    cfg->segment = segment;
}
