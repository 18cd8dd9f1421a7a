/* test_engine.c - the copy engine (engine.h) between a memory source and a
 * memory destination made here.
 *
 * The source has extents of every kind (DATA, ZERO, UNCHANGED, long holes
 * over many segments) and optionally compressed clusters; it records
 * every read and every extent question.  The destination records what it
 * receives.  Checked, in read-ahead and direct mode, with 1 to 3 workers:
 * ZERO and UNCHANGED stretches are never read; data arrives exactly once
 * and intact; ZERO reaches the destination only when it does not read as
 * zero by itself, UNCHANGED never; each extent question stays within its
 * segment, but for the look past a segment that skips a long hole (which
 * does skip it); compressed clusters go across as they are; a failure of
 * the source or the destination stops the run with its message kept;
 * memory stays within the slots; progress comes from the calling thread
 * and never goes back. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

#include "blkhash_ref.h"
#include "blockio.h"
#include "dest.h"
#include "digest.h"
#include "engine.h"
#include "error.h"
#include "unit.h"
#include "zcow.h"

#define KiB 1024u
#define MiB (1024u * 1024u)

/* ---- a memory source -------------------------------------------------------- */

struct mextent {
    uint64_t off, end;
    enum extent_kind kind;
};

struct msrc {
    struct source s;
    struct mextent *ext;
    unsigned n_ext;
    uint8_t *data;           /* the bytes (zero in ZERO extents) */
    uint32_t cluster;        /* compressed clusters: their size, 0 for none */
    const uint8_t *ccomp;    /* per cluster: stored compressed */
    uint64_t segment;        /* the engine's, to judge extent questions */
    uint64_t fail_read_at;   /* a read touching this offset fails; UINT64_MAX never */
    uint64_t fail_extent_at; /* likewise for extent questions */
    atomic_ullong reads_bad; /* reads that touched ZERO or UNCHANGED bytes */
    atomic_ullong reads_unaligned;
    atomic_ullong reads, read_bytes;
    atomic_ullong extent_calls, extent_bad, extent_past;
    atomic_ullong extent_in_hole;              /* questions about the long hole */
    uint64_t hole_off, hole_end;               /* the long hole, if any */
    atomic_llong outstanding, max_outstanding; /* bytes read, not yet written */
};

static const struct mextent *find_extent(const struct msrc *m, uint64_t off)
{
    for (unsigned i = 0; i < m->n_ext; i++)
        if (off >= m->ext[i].off && off < m->ext[i].end)
            return &m->ext[i];
    return NULL;
}

static void note_outstanding(struct msrc *m, long long delta)
{
    long long now = atomic_fetch_add(&m->outstanding, delta) + delta;
    long long max = atomic_load(&m->max_outstanding);
    while (now > max && !atomic_compare_exchange_weak(&m->max_outstanding, &max, now))
        ;
}

static int m_pread(struct source *s, void *buf, size_t len, uint64_t off)
{
    struct msrc *m = (struct msrc *)s;
    atomic_fetch_add(&m->reads, 1);
    atomic_fetch_add(&m->read_bytes, len);
    if (off % BLK_ALIGN || len % BLK_ALIGN || (uintptr_t)buf % BLK_ALIGN)
        atomic_fetch_add(&m->reads_unaligned, 1);
    if (m->fail_read_at >= off && m->fail_read_at < off + len)
        return zerr(EIO, "memory source: cannot read at %llu", (unsigned long long)off);
    for (uint64_t o = off; o < off + len && o < s->size; o += 512) {
        const struct mextent *x = find_extent(m, o);
        if (x && x->kind != EXTENT_DATA) {
            atomic_fetch_add(&m->reads_bad, 1);
            break;
        }
    }
    uint64_t n = off >= s->size ? 0 : s->size - off < len ? s->size - off : len;
    memcpy(buf, m->data + off, n);
    memset((uint8_t *)buf + n, 0, len - n);
    note_outstanding(m, (long long)n);
    return 0;
}

static int m_extent(struct source *s, uint64_t off, uint64_t max, uint64_t *len,
                    enum extent_kind *kind)
{
    struct msrc *m = (struct msrc *)s;
    atomic_fetch_add(&m->extent_calls, 1);
    if (off >= m->hole_off && off < m->hole_end)
        atomic_fetch_add(&m->extent_in_hole, 1);
    uint64_t seg_end = (off / m->segment + 1) * m->segment;
    if (off + max > seg_end) {
        /* Only the look past a segment may ask beyond it. */
        if (off % m->segment)
            atomic_fetch_add(&m->extent_bad, 1);
        else
            atomic_fetch_add(&m->extent_past, 1);
    }
    if (m->fail_extent_at >= off && m->fail_extent_at < off + max)
        return zerr(EIO, "memory source: no extents at %llu", (unsigned long long)off);
    const struct mextent *x = find_extent(m, off);
    if (!x) {
        *len = max;
        *kind = EXTENT_ZERO;
        return 0;
    }
    *len = x->end - off < max ? x->end - off : max;
    *kind = x->kind;
    return 0;
}

/* The fake stream of compressed cluster C: its index, then a marker. */
static size_t fake_stream(uint64_t c, uint8_t *buf)
{
    memcpy(buf, &c, sizeof(c));
    memcpy(buf + 8, "COMPRESSED", 10);
    return 18;
}

static int m_read_compressed(struct source *s, uint64_t off, int type, uint32_t cluster_size,
                             void *buf, size_t cap)
{
    struct msrc *m = (struct msrc *)s;
    if (!m->cluster || cluster_size != m->cluster || type != 1 || off % cluster_size ||
        !m->ccomp[off / cluster_size] || cap < 18)
        return 0;
    if (m->fail_read_at >= off && m->fail_read_at < off + cluster_size)
        return zerr(EIO, "memory source: cannot read at %llu", (unsigned long long)off);
    note_outstanding(m, cluster_size);
    return (int)fake_stream(off / cluster_size, buf);
}

static void m_close(struct source *s) { (void)s; }

static const struct source_ops msrc_ops = {
    .name = "memory",
    .pread = m_pread,
    .extent = m_extent,
    .read_compressed = NULL,
    .close = m_close,
};

static const struct source_ops msrc_compressed_ops = {
    .name = "memory-compressed",
    .pread = m_pread,
    .extent = m_extent,
    .read_compressed = m_read_compressed,
    .close = m_close,
};

/* ---- a memory destination ----------------------------------------------------- */

enum { G_NONE, G_DATA, G_ZERO, G_COMPRESSED };

#define SENTINEL 0xa5

struct mdst {
    struct dest d;
    struct msrc *src;      /* to account for outstanding bytes */
    uint8_t *data;         /* SENTINEL where nothing arrived */
    atomic_uchar *granule; /* G_* per granule, set once */
    atomic_ullong twice, misaligned, writes, zeros, compressed, bad_stream;
    uint64_t fail_write_at;
    long write_delay_ns;
};

static void sleep_ns(long ns)
{
    struct timespec ts = { 0, ns };
    if (ns)
        nanosleep(&ts, NULL);
}

/* Mark [OFF, OFF+LEN) as received as KIND; count what came twice. */
static void mark(struct mdst *t, uint64_t off, uint64_t len, unsigned char kind)
{
    uint64_t g = t->d.granularity;
    if (off % g || (len % g && off + len != t->d.size) || off + len > t->d.size)
        atomic_fetch_add(&t->misaligned, 1);
    for (uint64_t o = off; o < off + len && o < t->d.size; o += g) {
        unsigned char none = G_NONE;
        if (!atomic_compare_exchange_strong(&t->granule[o / g], &none, kind))
            atomic_fetch_add(&t->twice, 1);
    }
}

static int d_write(struct dest *d, uint64_t off, const void *buf, size_t len)
{
    struct mdst *t = d->priv;
    atomic_fetch_add(&t->writes, 1);
    note_outstanding(t->src, -(long long)len);
    sleep_ns(t->write_delay_ns);
    if (t->fail_write_at >= off && t->fail_write_at < off + len)
        return zerr(ENOSPC, "cannot write 'memory': No space left on device");
    mark(t, off, len, G_DATA);
    memcpy(t->data + off, buf, len);
    return 0;
}

static int d_zero(struct dest *d, uint64_t off, uint64_t len)
{
    struct mdst *t = d->priv;
    atomic_fetch_add(&t->zeros, 1);
    mark(t, off, len, G_ZERO);
    memset(t->data + off, 0, len);
    return 0;
}

static int d_write_compressed(struct dest *d, uint64_t off, const void *buf, size_t len)
{
    struct mdst *t = d->priv;
    atomic_fetch_add(&t->compressed, 1);
    note_outstanding(t->src, -(long long)d->cluster_size);
    uint8_t want[32];
    size_t n = fake_stream(off / d->cluster_size, want);
    if (len != n || memcmp(buf, want, n))
        atomic_fetch_add(&t->bad_stream, 1);
    mark(t, off, d->cluster_size, G_COMPRESSED);
    /* Store what the cluster decodes to, for the content check. */
    memcpy(t->data + off, t->src->data + off, d->cluster_size);
    return 0;
}

static int d_commit(struct dest *d, struct zcow_convert_stats *st)
{
    (void)d, (void)st;
    return 0;
}

static void d_close(struct dest *d) { (void)d; }

static const struct dest_ops mdst_ops = {
    .name = "memory",
    .write = d_write,
    .zero = d_zero,
    .write_compressed = NULL,
    .commit = d_commit,
    .close = d_close,
};

static const struct dest_ops mdst_compressed_ops = {
    .name = "memory-compressed",
    .write = d_write,
    .zero = d_zero,
    .write_compressed = d_write_compressed,
    .commit = d_commit,
    .close = d_close,
};

/* ---- set up ---------------------------------------------------------------------- */

struct setup {
    uint64_t size;
    uint32_t gran;
    uint32_t segment;
    unsigned workers, readers;
    bool unwritten_is_zero;
    bool compressed; /* source and destination deal in compressed clusters */
    uint64_t hole;   /* a long hole of this kind: 0 none, else 1 + kind */
};

struct world {
    struct msrc m;
    struct mdst t;
    struct mextent ext[4096];
    uint8_t *ccomp;
};

/* Extents of random kinds and lengths (whole granules), with a long hole
 * of many segments in the middle when asked. */
static void make_world(struct world *w, const struct setup *su, uint64_t *rng)
{
    memset(w, 0, sizeof(*w));
    struct msrc *m = &w->m;
    m->s.ops = su->compressed ? &msrc_compressed_ops : &msrc_ops;
    m->s.name = "memory";
    m->s.size = su->size;
    m->data = blk_alloc(su->size);
    m->ext = w->ext;
    m->segment = su->segment;
    m->fail_read_at = m->fail_extent_at = UINT64_MAX;
    m->hole_off = m->hole_end = UINT64_MAX;
    uint64_t off = 0;
    uint64_t hole_at = su->hole ? (su->size / 4) & ~(uint64_t)(su->segment - 1) : UINT64_MAX;
    while (off < su->size && m->n_ext < 4096) {
        struct mextent x;
        x.off = off;
        if (off == hole_at) {
            x.kind = (enum extent_kind)(su->hole - 1);
            x.end = off + su->size / 2 + su->gran * 3; /* ends inside a segment */
            m->hole_off = x.off + su->segment;         /* from the first whole segment */
            m->hole_end = x.end - su->segment;
        } else {
            uint64_t r = unit_range(rng, 0, 9);
            x.kind = r < 5 ? EXTENT_DATA : r < 8 ? EXTENT_ZERO : EXTENT_UNCHANGED;
            x.end = off + su->gran * unit_range(rng, 1, r == 9 ? 40 : 12);
            if (hole_at != UINT64_MAX && off < hole_at && x.end > hole_at)
                x.end = hole_at;
        }
        if (x.end > su->size)
            x.end = su->size;
        /* Neighbours of one kind are one extent, as sources report them. */
        if (m->n_ext && m->ext[m->n_ext - 1].kind == x.kind)
            m->ext[m->n_ext - 1].end = x.end;
        else
            m->ext[m->n_ext++] = x;
        off = x.end;
    }
    for (unsigned i = 0; i < m->n_ext; i++) {
        const struct mextent *x = &m->ext[i];
        if (x->kind == EXTENT_ZERO)
            memset(m->data + x->off, 0, x->end - x->off);
        else
            unit_fill_random(rng, m->data + x->off, x->end - x->off);
    }
    if (su->compressed) {
        m->cluster = su->gran;
        w->ccomp = calloc(su->size / su->gran + 1, 1);
        for (uint64_t c = 0; c < su->size / su->gran; c++)
            w->ccomp[c] = unit_range(rng, 0, 2) == 0;
        m->ccomp = w->ccomp;
    }

    struct mdst *t = &w->t;
    t->d.ops = su->compressed ? &mdst_compressed_ops : &mdst_ops;
    t->d.name = "memory";
    t->d.size = su->size;
    t->d.granularity = su->gran;
    t->d.unwritten_is_zero = su->unwritten_is_zero;
    t->d.compresses = true;
    t->d.compression_type = 1;
    t->d.cluster_size = su->gran;
    t->d.priv = t;
    t->src = m;
    t->data = malloc(su->size);
    memset(t->data, SENTINEL, su->size);
    t->granule = calloc(su->size / su->gran + 1, sizeof(*t->granule));
    t->fail_write_at = UINT64_MAX;
}

static void free_world(struct world *w)
{
    free(w->m.data);
    free(w->ccomp);
    free(w->t.data);
    free((void *)w->t.granule);
}

struct progress {
    pthread_t caller;
    uint64_t last, total;
    unsigned calls, backwards, wrong_thread;
};

static void on_progress(void *opaque, uint64_t done, uint64_t total)
{
    struct progress *p = opaque;
    p->calls++;
    if (done < p->last || done > total || total != p->total)
        p->backwards++;
    if (!pthread_equal(pthread_self(), p->caller))
        p->wrong_thread++;
    p->last = done;
}

static int run_digest(struct world *w, const struct setup *su, struct progress *pr,
                      struct engine_stats *st, struct digest *dg)
{
    struct engine_config cfg = {
        .workers = su->workers,
        .readers = su->readers,
        .segment = su->segment,
        .progress = pr ? on_progress : NULL,
        .progress_opaque = pr,
        .digest = dg,
    };
    if (pr)
        *pr = (struct progress){ .caller = pthread_self(), .total = su->size };
    struct engine_stats dummy;
    return engine_copy(&w->m.s, &w->t.d, &cfg, st ? st : &dummy);
}

static int run(struct world *w, const struct setup *su, struct progress *pr,
               struct engine_stats *st)
{
    return run_digest(w, su, pr, st, NULL);
}

/* ---- tests ---------------------------------------------------------------------- */

/* What arrived is what the kinds say should. */
static void check_delivery(struct world *w, const struct setup *su, const char *what)
{
    const struct msrc *m = &w->m;
    struct mdst *t = &w->t;
    CHECKF(atomic_load(&m->reads_bad) == 0, "%s: %llu reads of ZERO or UNCHANGED bytes", what,
           (unsigned long long)atomic_load(&m->reads_bad));
    CHECKF(atomic_load(&m->reads_unaligned) == 0, "%s: unaligned reads", what);
    CHECKF(atomic_load(&t->twice) == 0, "%s: %llu granules received twice", what,
           (unsigned long long)atomic_load(&t->twice));
    CHECKF(atomic_load(&t->misaligned) == 0, "%s: calls off the granularity", what);
    CHECKF(atomic_load(&m->extent_bad) == 0, "%s: %llu extent questions past their segment", what,
           (unsigned long long)atomic_load(&m->extent_bad));
    if (su->unwritten_is_zero)
        CHECKF(atomic_load(&t->zeros) == 0, "%s: zero called on a destination that reads as zero",
               what);
    unsigned bad = 0;
    for (unsigned i = 0; i < m->n_ext; i++) {
        const struct mextent *x = &m->ext[i];
        for (uint64_t g = x->off / su->gran; g * su->gran < x->end; g++) {
            uint64_t o = g * su->gran;
            size_t n = x->end - o < su->gran ? x->end - o : su->gran;
            unsigned char got = atomic_load(&t->granule[g]);
            bool ok;
            switch (x->kind) {
            case EXTENT_DATA:
                ok = (got == G_DATA || (su->compressed && got == G_COMPRESSED)) &&
                     !memcmp(t->data + o, m->data + o, n);
                break;
            case EXTENT_ZERO: ok = su->unwritten_is_zero ? got == G_NONE : got == G_ZERO; break;
            default: /* UNCHANGED: nothing arrives */
                ok = got == G_NONE && t->data[o] == SENTINEL;
                break;
            }
            if (!ok && bad++ < 5)
                CHECKF(0, "%s: granule %llu of a %s extent: got %d", what, (unsigned long long)g,
                       x->kind == EXTENT_DATA   ? "data"
                       : x->kind == EXTENT_ZERO ? "zero"
                                                : "unchanged",
                       got);
        }
    }
}

static void test_kinds(void)
{
    uint64_t rng = unit_stream(1);
    static struct world w;
    unsigned rounds = UNIT_SANITIZED ? 1 : 3;
    for (unsigned round = 0; round < rounds; round++) {
        for (unsigned mode = 0; mode < 16; mode++) {
            struct setup su = {
                .size = UNIT_SANITIZED ? 8 * MiB : 16 * MiB, /* the hole: 16 segments or more */
                .gran = mode & 1 ? 4 * KiB : 64 * KiB,
                .segment = 256 * KiB,
                .workers = mode & 2 ? 3 : 1,
                .readers = mode & 4 ? 2 : 0,
                .unwritten_is_zero = mode & 8,
                .hole = 1 + (round % 2 ? EXTENT_UNCHANGED : EXTENT_ZERO),
            };
            char what[128];
            snprintf(what, sizeof(what), "gran %u, %u workers, %u readers, %s, %s hole", su.gran,
                     su.workers, su.readers, su.unwritten_is_zero ? "reads zero" : "zeros written",
                     round % 2 ? "unchanged" : "zero");
            make_world(&w, &su, &rng);
            struct progress pr;
            int r = run(&w, &su, &pr, NULL);
            CHECKF(r == 0, "%s: %d %s", what, r, zcow_get_error());
            check_delivery(&w, &su, what);
            CHECKF(pr.backwards == 0 && pr.wrong_thread == 0, "%s: progress %u back, %u off", what,
                   pr.backwards, pr.wrong_thread);
            /* A hole the destination need not hear about is skipped
             * after a look past: not asked about segment by segment (but
             * for the segments in flight when the look was made: each
             * asks about itself and looks past itself). */
            bool skippable = round % 2 || su.unwritten_is_zero;
            unsigned long long in_hole = atomic_load(&w.m.extent_in_hole);
            uint64_t hole_segments = (w.m.hole_end - w.m.hole_off) / su.segment;
            if (skippable)
                CHECKF(in_hole <= 2 * (su.workers + su.readers) + 1 &&
                           atomic_load(&w.m.extent_past),
                       "%s: %llu questions inside a hole of %llu segments", what, in_hole,
                       (unsigned long long)hole_segments);
            else
                CHECKF(in_hole >= hole_segments, "%s: zeros not written: %llu questions", what,
                       in_hole);
            free_world(&w);
        }
    }
}

/* Extents that do not fall on granules: a granule with any data is data,
 * the destination ends up with the source's bytes. */
static void test_partial_granules(void)
{
    uint64_t rng = unit_stream(2);
    static struct world w;
    struct setup su = { .size = 4 * MiB + 12345,
                        .gran = 64 * KiB,
                        .segment = 1 * MiB,
                        .workers = 2,
                        .readers = 1,
                        .unwritten_is_zero = true };
    make_world(&w, &su, &rng);
    /* Cut the extents at odd 512-byte boundaries, DATA and ZERO only. */
    uint64_t off = 0;
    w.m.n_ext = 0;
    while (off < su.size) {
        struct mextent x = { off, off + 512 * unit_range(&rng, 1, 300),
                             w.m.n_ext % 2 ? EXTENT_ZERO : EXTENT_DATA };
        if (x.end > su.size)
            x.end = su.size;
        if (x.kind == EXTENT_ZERO)
            memset(w.m.data + x.off, 0, x.end - x.off);
        else
            unit_fill_random(&rng, w.m.data + x.off, x.end - x.off);
        w.m.ext[w.m.n_ext++] = x;
        off = x.end;
    }
    memset(w.t.data, 0, su.size); /* a destination that reads as zero */
    CHECK(run(&w, &su, NULL, NULL) == 0);
    CHECK(!memcmp(w.t.data, w.m.data, su.size));
    CHECK(atomic_load(&w.t.twice) == 0 && atomic_load(&w.t.misaligned) == 0);
    free_world(&w);
}

/* Clusters stored compressed go across as they are, the others are read;
 * in both modes the engine is asked for (copy mode is direct). */
static void test_compressed_copy(void)
{
    uint64_t rng = unit_stream(3);
    static struct world w;
    for (unsigned readers = 0; readers <= 2; readers += 2) {
        struct setup su = { .size = 8 * MiB,
                            .gran = 64 * KiB,
                            .segment = 1 * MiB,
                            .workers = 2,
                            .readers = readers,
                            .unwritten_is_zero = true,
                            .compressed = true };
        make_world(&w, &su, &rng);
        struct engine_stats st;
        CHECK(run(&w, &su, NULL, &st) == 0);
        check_delivery(&w, &su, "compressed copy");
        uint64_t want = 0;
        for (unsigned i = 0; i < w.m.n_ext; i++)
            if (w.m.ext[i].kind == EXTENT_DATA)
                for (uint64_t c = w.m.ext[i].off / su.gran; c * su.gran < w.m.ext[i].end; c++)
                    want += w.ccomp[c];
        CHECKF(st.clusters_copied == want && atomic_load(&w.t.compressed) == want,
               "%llu copied, %llu received, %llu stored compressed",
               (unsigned long long)st.clusters_copied,
               (unsigned long long)atomic_load(&w.t.compressed), (unsigned long long)want);
        CHECK(atomic_load(&w.t.bad_stream) == 0);
        free_world(&w);
    }
}

/* A failure on either side stops the run; its message is the caller's. */
static void test_errors(void)
{
    uint64_t rng = unit_stream(4);
    static struct world w;
    for (unsigned mode = 0; mode < 12; mode++) {
        struct setup su = { .size = UNIT_SANITIZED ? 16 * MiB : 32 * MiB,
                            .gran = 64 * KiB,
                            .segment = 256 * KiB,
                            .workers = mode & 1 ? 3 : 1,
                            .readers = mode & 2 ? 2 : 0,
                            .unwritten_is_zero = true };
        make_world(&w, &su, &rng);
        /* All data: every segment is read and written. */
        w.m.n_ext = 1;
        w.m.ext[0] = (struct mextent){ 0, su.size, EXTENT_DATA };
        unit_fill_random(&rng, w.m.data, su.size);
        uint64_t at = 5 * MiB + 3 * su.gran;
        int want_err;
        const char *want_msg;
        unsigned side = mode / 4;
        if (side == 0) {
            w.m.fail_read_at = at;
            want_err = -EIO;
            want_msg = "memory source: cannot read at";
        } else if (side == 1) {
            w.t.fail_write_at = at;
            want_err = -ENOSPC;
            want_msg = "cannot write 'memory': No space left on device";
        } else {
            w.m.fail_extent_at = at;
            want_err = -EIO;
            want_msg = "memory source: no extents at";
        }
        zerr_clear();
        int r = run(&w, &su, NULL, NULL);
        CHECKF(r == want_err, "side %u mode %u: %d, want %d", side, mode, r, want_err);
        CHECKF(strstr(zcow_get_error(), want_msg), "side %u: message '%s'", side, zcow_get_error());
        /* Stopped: no more than the slots in flight went on after it. */
        uint64_t slots = su.workers + su.readers;
        uint64_t limit = (at / su.segment + 1 + slots) * su.segment;
        CHECKF(atomic_load(&w.m.read_bytes) <= limit, "side %u: %llu bytes read, failure at %llu",
               side, (unsigned long long)atomic_load(&w.m.read_bytes), (unsigned long long)at);
        free_world(&w);
    }

    /* Both sides fail: one failure comes back, with its own message. */
    struct setup su = { .size = 8 * MiB,
                        .gran = 64 * KiB,
                        .segment = 256 * KiB,
                        .workers = 3,
                        .readers = 2,
                        .unwritten_is_zero = true };
    make_world(&w, &su, &rng);
    w.m.n_ext = 1;
    w.m.ext[0] = (struct mextent){ 0, su.size, EXTENT_DATA };
    w.m.fail_read_at = 3 * MiB;
    w.t.fail_write_at = 1 * MiB;
    int r = run(&w, &su, NULL, NULL);
    CHECKF((r == -EIO && strstr(zcow_get_error(), "memory source")) ||
               (r == -ENOSPC && strstr(zcow_get_error(), "No space left")),
           "both fail: %d '%s'", r, zcow_get_error());
    free_world(&w);
}

/* A slow destination: readers run ahead by the slots and no further. */
static void test_bounded_memory(void)
{
    uint64_t rng = unit_stream(5);
    static struct world w;
    struct setup su = { .size = 16 * MiB,
                        .gran = 64 * KiB,
                        .segment = 256 * KiB,
                        .workers = 1,
                        .readers = 4,
                        .unwritten_is_zero = true };
    make_world(&w, &su, &rng);
    w.m.n_ext = 1;
    w.m.ext[0] = (struct mextent){ 0, su.size, EXTENT_DATA };
    w.t.write_delay_ns = 8000000; /* 8 ms a write (a segment): 64 writes, about 0.5 s */
    struct progress pr;
    double t0 = unit_now();
    CHECK(run(&w, &su, &pr, NULL) == 0);
    double secs = unit_now() - t0;
    long long max = atomic_load(&w.m.max_outstanding);
    long long bound = (long long)(su.workers + su.readers) * su.segment;
    CHECKF(max <= bound, "%lld bytes read ahead, bound %lld", max, bound);
    CHECKF(max > 2 * (long long)su.segment, "no read-ahead: %lld bytes", max);
    /* About every 100 ms, though slots free up more often than that. */
    CHECKF(pr.calls >= (unsigned)(secs * 10) / 2 && pr.backwards == 0 && pr.wrong_thread == 0,
           "progress: %u calls in %.2f s, %u back, %u from other threads", pr.calls, secs,
           pr.backwards, pr.wrong_thread);
    CHECK(!memcmp(w.t.data, w.m.data, su.size));
    free_world(&w);
}

/* The digest tap: a digest that held OLD (the previous point) gets the
 * source's digest, whatever the kinds, granules and modes: DATA hashed,
 * ZERO cleared (written, skipped, or in a long hole skipped whole),
 * UNCHANGED left (the source holds there what OLD held).  Compressed
 * clusters are then not copied as they are. */
static void test_digest_tap(void)
{
    uint64_t rng = unit_stream(6);
    static struct world w;
    for (unsigned mode = 0; mode < 64; mode++) {
        struct setup su = {
            .size = 6 * MiB + (mode & 16 ? 5 * KiB : 0),
            .gran = mode & 1 ? 4 * KiB : 64 * KiB,
            .segment = 256 * KiB,
            .workers = mode & 2 ? 3 : 1,
            .readers = mode & 4 ? 2 : 0,
            .unwritten_is_zero = mode & 8,
            .hole = 1 + (mode & 32 ? EXTENT_UNCHANGED : EXTENT_ZERO),
            .compressed = mode % 7 == 0 && !(mode & 16),
        };
        char what[128];
        snprintf(what, sizeof(what), "digest: gran %u, %u workers, %u readers, %s, %s hole%s",
                 su.gran, su.workers, su.readers, su.unwritten_is_zero ? "reads zero" : "zeros",
                 mode & 32 ? "unchanged" : "zero", su.compressed ? ", compressed" : "");
        make_world(&w, &su, &rng);
        /* The previous point: the source's bytes where they are
         * UNCHANGED, other bytes elsewhere. */
        uint8_t *old = malloc(su.size);
        memcpy(old, w.m.data, su.size);
        for (unsigned i = 0; i < w.m.n_ext; i++)
            if (w.m.ext[i].kind != EXTENT_UNCHANGED)
                unit_fill_random(&rng, old + w.m.ext[i].off, w.m.ext[i].end - w.m.ext[i].off);
        struct digest *dg;
        CHECK(digest_new(su.size, &dg) == 0);
        CHECK(digest_data(dg, 0, old, su.size) == 0);
        struct engine_stats st;
        int r = run_digest(&w, &su, NULL, &st, dg);
        CHECKF(r == 0, "%s: %d %s", what, r, zcow_get_error());
        char got[DIGEST_HEX_SIZE], want[DIGEST_HEX_SIZE];
        digest_final(dg, got);
        blkhash_ref(w.m.data, su.size, want);
        CHECKF(!strcmp(got, want), "%s: digest %s, want %s", what, got, want);
        CHECKF(st.clusters_copied == 0 && atomic_load(&w.t.compressed) == 0,
               "%s: %llu clusters copied compressed under a digest", what,
               (unsigned long long)st.clusters_copied);
        digest_free(dg);
        free(old);
        free_world(&w);
    }
}

int main(void)
{
    unit_init("test_engine");
    test_digest_tap();
    test_kinds();
    test_partial_granules();
    test_compressed_copy();
    test_errors();
    test_bounded_memory();
    return unit_done();
}
