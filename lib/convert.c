/* convert.c - the parallel conversion to compressed qcow2.
 *
 * Data flows one way: source -> worker (read, zero check, compress) ->
 * allocator -> write cache -> file.  Workers take fixed segments of the
 * source in order from one atomic counter, so allocation stays nearly
 * sequential; each reads its segment with one large (O_DIRECT) read,
 * skipping holes the source reports, and writes its clusters through the
 * public API.  The calling thread only reports progress. */
#include "convert.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "blockio.h"
#include "error.h"

/* Bytes per read: large reads cost less per byte, but every worker holds
 * one segment, so many workers get smaller ones. */
#define SEGMENT_BYTES_MAX (4u << 20)
#define SEGMENT_BYTES_MIN (1u << 20)
#define SEGMENT_BUDGET (16u << 20)
#define PROGRESS_INTERVAL_NS 100000000L

struct job {
    const struct zcow_convert_options *o;
    struct source *src;
    zcow_image *img;
    uint32_t cluster_size;
    uint32_t segment;
    uint64_t size;               /* virtual size of the output */
    bool zero_clusters;          /* zero stretches over a backing file are
                                    stated as zero clusters, not skipped */
    atomic_ullong next_segment;
    atomic_ullong done_bytes;
    atomic_ullong n_copied;
    atomic_int failed;
    pthread_mutex_t lock;        /* guards running, the ring */
    pthread_cond_t cond;         /* running changed */
    struct zerr_first first;     /* the first worker's failure */
    int running;

    /* Read-ahead: readers fill segments into the ring, workers take the
     * lowest ready one; so reads overlap compression. */
    struct segment *ring;
    unsigned ring_size;
    int readers_left;            /* readers not yet finished */
    pthread_cond_t ring_cond;    /* a slot changed state */
};

enum slot_state { SLOT_FREE, SLOT_READING, SLOT_READY, SLOT_WRITING };

/* A stretch of a segment, cluster aligned: data to read and write, zeros
 * (a hole) to skip or, over a backing file, to state, or unchanged
 * stretches left to the backing file. */
struct stretch {
    uint64_t off, end;
    enum extent_kind kind;
};

/* A segment's plan: its stretches, found once from the source's extents. */
struct plan {
    struct stretch *s;
    unsigned n, cap;             /* cap: one per cluster, the worst case */
};

struct segment {
    enum slot_state state;
    uint64_t index;
    uint8_t *buf;                /* the segment's bytes, aligned */
    struct plan plan;
};

static void job_fail(struct job *j, int err)
{
    zerr_keep(&j->first, err);
    pthread_mutex_lock(&j->lock);
    atomic_store(&j->failed, 1);
    pthread_cond_broadcast(&j->ring_cond);
    pthread_mutex_unlock(&j->lock);
}

/* Copy a cluster stored compressed in the source as it is, if it can be:
 * returns 1 if copied, 0 if the caller must read and compress it. */
static int copy_compressed(struct job *j, uint64_t off, uint8_t *buf)
{
    const struct zcow_create_options *c = &j->o->create;
    int n = j->src->ops->read_compressed(j->src, off, c->compression_type, j->cluster_size, buf,
                                         CHUNK_BUF_BYTES(j->cluster_size));
    if (n <= 0)
        return n;
    int r = zcow_write_compressed(j->img, off, buf, (size_t)n);
    if (r == 0)
        atomic_fetch_add(&j->n_copied, 1);
    return r < 0 ? r : 1;
}

/* Copy [OFF, OFF+LEN) cluster by cluster from a source that stores
 * clusters compressed: those in our type go across untouched. */
static int copy_range(struct job *j, uint64_t off, uint64_t len, uint8_t *buf, uint8_t *cbuf)
{
    uint64_t end = off + len;
    for (uint64_t c = off; c < end; c += j->cluster_size) {
        int r = copy_compressed(j, c, cbuf);
        if (r < 0)
            return r;
        if (r == 0) {
            uint64_t n = end - c < j->cluster_size ? end - c : j->cluster_size;
            size_t io = (n + BLK_ALIGN - 1) & ~(size_t)(BLK_ALIGN - 1);
            if ((r = j->src->ops->pread(j->src, buf, io, c)) < 0 ||
                (r = zcow_write_cluster(j->img, c, buf, n)) < 0)
                return r;
        }
    }
    return 0;
}

/* [OFF, END) reads as zero: over a backing file that must be said, with
 * zero clusters (an all-zero cluster is stored as one). */
static int write_zero_clusters(struct job *j, uint64_t off, uint64_t end, uint8_t *cbuf)
{
    memset(cbuf, 0, j->cluster_size);
    for (; off < end; off += j->cluster_size) {
        uint64_t n = end - off < j->cluster_size ? end - off : j->cluster_size;
        int r = zcow_write_cluster(j->img, off, cbuf, n);
        if (r < 0)
            return r;
    }
    return 0;
}

/* Segments wholly inside a hole that reaches END are skipped by every
 * worker: move the shared counter past them, unless others already did. */
static void skip_hole(struct job *j, uint64_t end)
{
    uint64_t target = end / j->segment;
    unsigned long long cur = atomic_load(&j->next_segment);
    while (cur < target) {
        if (atomic_compare_exchange_weak(&j->next_segment, &cur, target)) {
            atomic_fetch_add(&j->done_bytes, (target - cur) * j->segment);
            return;
        }
    }
}

/* Stretches of KIND need nothing written: unchanged ones, and zeros where
 * no backing file shows through. */
static bool skippable(const struct job *j, enum extent_kind kind)
{
    return kind == EXTENT_UNCHANGED || (kind == EXTENT_ZERO && !j->zero_clusters);
}

/* The segment before AT ends in a skippable stretch: if it goes on past
 * AT, let every worker skip the segments wholly inside it. */
static int skip_beyond(struct job *j, uint64_t at)
{
    uint64_t len;
    enum extent_kind kind = EXTENT_DATA;
    int r = j->src->ops->extent(j->src, at, j->size - at, &len, &kind);
    if (r == 0 && skippable(j, kind) && len >= j->segment)
        skip_hole(j, at + len);
    return r;
}

static void plan_add(struct plan *p, uint64_t off, uint64_t end, enum extent_kind kind)
{
    if (p->n && p->s[p->n - 1].kind == kind && p->s[p->n - 1].end == off)
        p->s[p->n - 1].end = end;
    else
        p->s[p->n++] = (struct stretch){ off, end, kind };
}

/* Split a segment into stretches of each kind at cluster granularity (a
 * cluster with any data in it is data). */
static int plan_segment(struct job *j, uint64_t seg_off, struct plan *p)
{
    uint64_t seg_end = seg_off + j->segment < j->size ? seg_off + j->segment : j->size;
    uint64_t off = seg_off;
    p->n = 0;
    while (off < seg_end) {
        uint64_t len = seg_end - off;
        enum extent_kind kind = EXTENT_DATA;
        if (j->src->ops->extent) {
            int r = j->src->ops->extent(j->src, off, len, &len, &kind);
            if (r < 0)
                return r;
            /* A hole to the segment's end may go on: the segments wholly
             * inside it are skipped.  (Not zeros over a backing file:
             * there they are written.) */
            if (skippable(j, kind) && off + len == seg_end && seg_end < j->size &&
                (r = skip_beyond(j, seg_end)) < 0)
                return r;
        }
        uint64_t end = len > seg_end - off ? seg_end : off + len;
        if (kind != EXTENT_DATA) {
            /* Whole clusters of the hole are zero; a partial one is data. */
            uint64_t zero_end = end == seg_end ? end : end & ~(uint64_t)(j->cluster_size - 1);
            if (zero_end > off) {
                plan_add(p, off, zero_end, kind);
                off = zero_end;
                continue;
            }
            end = (off + j->cluster_size) & ~(uint64_t)(j->cluster_size - 1);
        } else {
            end = (end + j->cluster_size - 1) & ~(uint64_t)(j->cluster_size - 1);
        }
        if (end > seg_end)
            end = seg_end;
        plan_add(p, off, end, EXTENT_DATA);
        off = end;
    }
    return 0;
}

/* Read the data stretches of a planned segment into BUF. */
static int read_segment(struct job *j, uint64_t seg_off, uint8_t *buf, const struct plan *p)
{
    for (unsigned i = 0; i < p->n; i++) {
        const struct stretch *st = &p->s[i];
        if (st->kind != EXTENT_DATA)
            continue;
        size_t io = (st->end - st->off + BLK_ALIGN - 1) & ~(size_t)(BLK_ALIGN - 1);
        int r = j->src->ops->pread(j->src, buf + (st->off - seg_off), io, st->off);
        if (r < 0)
            return r;
    }
    return 0;
}

/* Write a planned segment read into BUF (or, with a source that stores
 * clusters compressed, read and copy it cluster by cluster now). */
static int write_segment(struct job *j, uint64_t seg_off, uint8_t *buf, uint8_t *cbuf,
                         const struct plan *p)
{
    for (unsigned i = 0; i < p->n; i++) {
        const struct stretch *st = &p->s[i];
        uint8_t *at = buf + (st->off - seg_off);
        int r = 0;
        if (st->kind == EXTENT_UNCHANGED)
            r = 0;
        else if (st->kind == EXTENT_ZERO)
            r = j->zero_clusters ? write_zero_clusters(j, st->off, st->end, cbuf) : 0;
        else if (j->src->ops->read_compressed)
            r = copy_range(j, st->off, st->end - st->off, at, cbuf);
        else
            r = zcow_write(j->img, st->off, at, st->end - st->off);
        if (r < 0)
            return r;
    }
    return 0;
}

static int plan_init(struct job *j, struct plan *p)
{
    p->cap = j->segment / j->cluster_size + 1;
    p->s = malloc(p->cap * sizeof(*p->s));
    return p->s ? 0 : zerr(ENOMEM, "out of memory");
}

static uint64_t n_segments(const struct job *j) { return (j->size + j->segment - 1) / j->segment; }

static uint64_t segment_bytes(const struct job *j, uint64_t index)
{
    uint64_t off = index * j->segment;
    return j->size - off < j->segment ? j->size - off : j->segment;
}

static void thread_done(struct job *j)
{
    pthread_mutex_lock(&j->lock);
    j->running--;
    pthread_cond_broadcast(&j->cond);
    pthread_mutex_unlock(&j->lock);
}

/* Sources that copy compressed clusters across read cluster by cluster:
 * each worker reads and writes its own segments. */
static void *direct_worker(void *arg)
{
    struct job *j = arg;
    uint8_t *buf = blk_alloc(j->segment);
    uint8_t *cbuf = malloc(CHUNK_BUF_BYTES(j->cluster_size));
    struct plan plan = { NULL, 0, 0 };
    if (!buf || !cbuf || plan_init(j, &plan) < 0)
        job_fail(j, zerr(ENOMEM, "out of memory"));
    while (plan.s && buf && cbuf && !atomic_load(&j->failed)) {
        uint64_t s = atomic_fetch_add(&j->next_segment, 1);
        if (s >= n_segments(j))
            break;
        uint64_t off = s * j->segment;
        int r = plan_segment(j, off, &plan);
        if (r == 0)
            r = write_segment(j, off, buf, cbuf, &plan);
        if (r < 0) {
            job_fail(j, r);
            break;
        }
        atomic_fetch_add(&j->done_bytes, segment_bytes(j, s));
    }
    free(plan.s);
    free(buf);
    free(cbuf);
    thread_done(j);
    return NULL;
}

/* Read ahead: fill free slots with the next segments, in order. */
static void *reader(void *arg)
{
    struct job *j = arg;
    pthread_mutex_lock(&j->lock);
    while (!atomic_load(&j->failed)) {
        struct segment *slot = NULL;
        for (unsigned i = 0; i < j->ring_size && !slot; i++)
            if (j->ring[i].state == SLOT_FREE)
                slot = &j->ring[i];
        if (!slot) {
            pthread_cond_wait(&j->ring_cond, &j->lock);
            continue;
        }
        uint64_t s = atomic_fetch_add(&j->next_segment, 1);
        if (s >= n_segments(j))
            break;
        slot->state = SLOT_READING;
        slot->index = s;
        pthread_mutex_unlock(&j->lock);
        int r = plan_segment(j, s * j->segment, &slot->plan);
        if (r == 0)
            r = read_segment(j, s * j->segment, slot->buf, &slot->plan);
        if (r < 0)
            job_fail(j, r);
        pthread_mutex_lock(&j->lock);
        slot->state = SLOT_READY;
        pthread_cond_broadcast(&j->ring_cond);
    }
    j->readers_left--;
    pthread_cond_broadcast(&j->ring_cond);
    pthread_mutex_unlock(&j->lock);
    thread_done(j);
    return NULL;
}

/* Compress and write the lowest segment read so far. */
static void *worker(void *arg)
{
    struct job *j = arg;
    uint8_t *cbuf = malloc(CHUNK_BUF_BYTES(j->cluster_size));
    if (!cbuf)
        job_fail(j, zerr(ENOMEM, "out of memory"));
    pthread_mutex_lock(&j->lock);
    while (cbuf && !atomic_load(&j->failed)) {
        struct segment *slot = NULL;
        bool busy = false;
        for (unsigned i = 0; i < j->ring_size; i++) {
            struct segment *g = &j->ring[i];
            busy |= g->state == SLOT_READING;
            if (g->state == SLOT_READY && (!slot || g->index < slot->index))
                slot = g;
        }
        if (!slot) {
            if (!busy && j->readers_left == 0)
                break;
            pthread_cond_wait(&j->ring_cond, &j->lock);
            continue;
        }
        slot->state = SLOT_WRITING;
        pthread_mutex_unlock(&j->lock);
        int r = write_segment(j, slot->index * j->segment, slot->buf, cbuf, &slot->plan);
        if (r < 0)
            job_fail(j, r);
        else
            atomic_fetch_add(&j->done_bytes, segment_bytes(j, slot->index));
        pthread_mutex_lock(&j->lock);
        slot->state = SLOT_FREE;
        pthread_cond_broadcast(&j->ring_cond);
    }
    pthread_mutex_unlock(&j->lock);
    free(cbuf);
    thread_done(j);
    return NULL;
}

/* Wait for the workers, reporting progress every 100 ms. */
static void wait_workers(struct job *j)
{
    pthread_mutex_lock(&j->lock);
    while (j->running > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += PROGRESS_INTERVAL_NS;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&j->cond, &j->lock, &ts);
        if (j->o->progress) {
            pthread_mutex_unlock(&j->lock);
            j->o->progress(j->o->progress_opaque, atomic_load(&j->done_bytes), j->size);
            pthread_mutex_lock(&j->lock);
        }
    }
    pthread_mutex_unlock(&j->lock);
}

int convert_threads(const struct zcow_convert_options *o)
{
    if (o->threads > 0)
        return o->threads;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

#define MAX_THREADS 256
#define MAX_READERS 4

static void free_ring(struct job *j)
{
    for (unsigned i = 0; j->ring && i < j->ring_size; i++) {
        free(j->ring[i].buf);
        free(j->ring[i].plan.s);
    }
    free(j->ring);
    j->ring = NULL;
}

int convert_to_qcow2(const struct zcow_convert_options *o, struct source *src,
                     struct zcow_convert_stats *st)
{
    struct zcow_create_options copts = o->create;
    copts.virtual_size = (src->size + 511) & ~(uint64_t)511;
    copts.atomic = 1;
    if (copts.virtual_size == 0)
        return zerr(EINVAL, "'%s': source is empty", src->name);
    struct job j = { .o = o, .src = src, .size = copts.virtual_size };
    j.zero_clusters = copts.backing_file != NULL;
    j.cluster_size = copts.cluster_size ? copts.cluster_size : 65536;
    int n = convert_threads(o);
    if (n > MAX_THREADS)
        n = MAX_THREADS;
    j.segment = SEGMENT_BYTES_MAX;
    while (j.segment > SEGMENT_BYTES_MIN && j.segment * (uint64_t)n > SEGMENT_BUDGET)
        j.segment /= 2;
    if (j.segment < j.cluster_size)
        j.segment = j.cluster_size;
    /* Readers: a few reads in flight keep a disk busy.  Sources that copy
     * compressed clusters across read cluster by cluster, in the workers. */
    bool read_ahead = !src->ops->read_compressed;
    int n_readers = read_ahead ? (n < MAX_READERS ? n : MAX_READERS) : 0;
    if (read_ahead) {
        j.ring_size = (unsigned)(n + n_readers);
        j.ring = calloc(j.ring_size, sizeof(*j.ring));
        for (unsigned i = 0; j.ring && i < j.ring_size; i++)
            if (!(j.ring[i].buf = blk_alloc(j.segment)) || plan_init(&j, &j.ring[i].plan) < 0)
                j.ring_size = i + 1; /* free what was made, then fail */
        if (!j.ring || !j.ring[j.ring_size - 1].plan.s) {
            free_ring(&j);
            return zerr(ENOMEM, "out of memory");
        }
        j.readers_left = n_readers;
    }
    int r = zcow_create(o->dst, &copts, &j.img);
    if (r < 0) {
        free_ring(&j);
        return r;
    }
    pthread_mutex_init(&j.lock, NULL);
    zerr_first_init(&j.first);
    pthread_cond_init(&j.cond, NULL);
    pthread_cond_init(&j.ring_cond, NULL);

    pthread_t tids[MAX_THREADS + MAX_READERS];
    int started = 0;
    for (; started < n + n_readers; started++) {
        void *(*fn)(void *) = !read_ahead ? direct_worker : started < n_readers ? reader : worker;
        pthread_mutex_lock(&j.lock);
        j.running++;
        pthread_mutex_unlock(&j.lock);
        if (pthread_create(&tids[started], NULL, fn, &j) != 0) {
            pthread_mutex_lock(&j.lock);
            j.running--;
            if (fn == reader) /* never started: the workers must not wait for it */
                j.readers_left -= n_readers - started;
            pthread_mutex_unlock(&j.lock);
            job_fail(&j, zerr(EAGAIN, "cannot start a thread"));
            break;
        }
    }
    wait_workers(&j);
    for (int i = 0; i < started; i++)
        pthread_join(tids[i], NULL);

    if (zerr_failed(&j.first)) {
        zcow_abort(j.img);
        r = zerr_kept(&j.first);
    } else {
        struct zcow_info info;
        zcow_get_info(j.img, &info);
        st->clusters_compressed = info.clusters_compressed - atomic_load(&j.n_copied);
        st->clusters_copied = atomic_load(&j.n_copied);
        st->clusters_normal = info.clusters_normal;
        st->clusters_zero = info.clusters_zero;
        r = zcow_close(j.img);
    }
    if (r == 0 && o->progress)
        o->progress(o->progress_opaque, j.size, j.size);
    pthread_mutex_destroy(&j.lock);
    zerr_first_destroy(&j.first);
    pthread_cond_destroy(&j.cond);
    pthread_cond_destroy(&j.ring_cond);
    free_ring(&j);
    return r;
}

/* The backing file and bitmap options: consistent, and the backing file
 * opens (as qemu-img checks), relative to the destination's directory.
 * A missing backing format is probed and set in O. */
static int check_backing(struct zcow_convert_options *o, const char *dst_format)
{
    const char *bf = o->create.backing_file;
    if (o->bitmap) {
        if (!source_is_nbd(o->src))
            return zerr(EINVAL, "'%s': a dirty bitmap needs an NBD source (nbd://...)", o->src);
        if (!bf)
            return zerr(EINVAL, "a dirty bitmap needs a backing file (-B PREVIOUS): the "
                                "clean clusters are read from it");
    }
    if (!bf) {
        if (o->create.backing_format)
            return zerr(EINVAL, "a backing format needs a backing file (-B)");
        return 0;
    }
    if (strcmp(dst_format, "qcow2"))
        return zerr(EINVAL, "a %s output cannot have a backing file", dst_format);
    if (!*bf)
        return zerr(EINVAL, "empty backing file name");
    const char *fmt = o->create.backing_format;
    if (fmt && strcmp(fmt, "qcow2") && strcmp(fmt, "raw"))
        return zerr(EINVAL, "unknown backing format '%s' (qcow2 or raw)", fmt);
    const char *slash = strrchr(o->dst, '/');
    char *path;
    if (bf[0] == '/' || !slash) {
        path = strdup(bf);
    } else {
        size_t dir = (size_t)(slash - o->dst) + 1;
        path = malloc(dir + strlen(bf) + 1);
        if (path) {
            memcpy(path, o->dst, dir);
            strcpy(path + dir, bf);
        }
    }
    if (!path)
        return zerr(ENOMEM, "out of memory");
    /* The new image replaces DST: it cannot be its own backing file. */
    struct stat a, b;
    if (stat(path, &a) == 0 && stat(o->dst, &b) == 0 && a.st_dev == b.st_dev &&
        a.st_ino == b.st_ino) {
        int e = zerr(EINVAL, "backing file '%s' is the destination itself", bf);
        free(path);
        return e;
    }
    zcow_image *img;
    int r = zcow_open(path, fmt, 0, &img);
    if (r < 0) {
        char cause[400];
        snprintf(cause, sizeof(cause), "%s", zcow_get_error());
        if (strcmp(path, bf))
            r = zerr(-r, "cannot open backing file '%s' (as '%s'): %s", bf, path, cause);
        else
            r = zerr(-r, "cannot open backing file '%s': %s", bf, cause);
        free(path);
        return r;
    }
    free(path);
    if (!fmt) {
        struct zcow_info info;
        r = zcow_get_info(img, &info);
        o->create.backing_format = r == 0 && !strcmp(info.format, "raw") ? "raw" : "qcow2";
    }
    zcow_close(img);
    return r < 0 ? r : 0;
}

int zcow_convert(const struct zcow_convert_options *o, struct zcow_convert_stats *st)
{
    struct zcow_convert_stats dummy;
    if (!st)
        st = &dummy;
    memset(st, 0, sizeof(*st));
    if (!o || !o->src || !o->dst)
        return zerr(EINVAL, "zcow_convert: missing source or destination");
    const char *dst_format = o->dst_format ? o->dst_format : "qcow2";
    if (strcmp(dst_format, "qcow2") && strcmp(dst_format, "raw"))
        return zerr(EINVAL, "unknown output format '%s' (qcow2 or raw)", dst_format);
    struct stat dst_st;
    if (stat(o->dst, &dst_st) == 0 && S_ISDIR(dst_st.st_mode))
        return zerr(EISDIR, "cannot write '%s': Is a directory", o->dst);
    struct zcow_convert_options oc = *o;
    int r = check_backing(&oc, dst_format);
    if (r < 0)
        return r;
    o = &oc;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct source *src;
    /* A dirty bitmap and TLS settings are for NBD sources (read as raw). */
    const struct zcow_nbd_tls *tls = &o->nbd_tls;
    bool nbd_only = o->bitmap || tls->certificates || tls->psk_file || tls->username;
    if (nbd_only && !source_is_nbd(o->src))
        return zerr(EINVAL, "'%s': TLS settings need an NBD source (nbds://, nbds+unix://)",
                    o->src);
    if (nbd_only && o->src_format && strcmp(o->src_format, "raw"))
        return zerr(EINVAL, "'%s': an NBD export is read as raw, not '%s'", o->src, o->src_format);
    if (nbd_only)
        r = source_nbd_open(o->src, o->bitmap, tls, &src);
    else
        r = source_open(o->src, o->src_format, o->src_cache == ZCOW_CACHE_NONE, &src);
    if (r < 0)
        return r;
    st->bytes_in = src->size;
    r = !strcmp(dst_format, "raw") ? convert_to_raw(o, src, st) : convert_to_qcow2(o, src, st);
    source_close(src);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    st->seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    struct stat sb;
    if (r == 0 && stat(o->dst, &sb) == 0)
        st->bytes_out = (uint64_t)sb.st_size;
    return r;
}
