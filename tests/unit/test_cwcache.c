/* test_cwcache.c - the compressed write cache under many threads, on a real
 * file, judged byte for byte.  This test also runs under ThreadSanitizer.
 *
 * The threads play the writer's allocator: under one mutex each takes the
 * next byte range (1 .. cluster_size-1 bytes, straddling into the next
 * cluster when it falls so; sometimes abandoning the rest of a cluster),
 * appends bytes derived from their offset, unlocks, and writes the runs of
 * finished clusters its append handed out.  Others flush and read back
 * meanwhile.  At the end every handed-out byte must be in the file, every
 * other byte zero.
 *
 * Also: back-pressure (never more than max_clusters cached, writers wait),
 * runs (contiguous clusters, only the last one not full, at most run_max),
 * one aligned write per run (counted with ZCOW_FAULT_STATS in a child
 * process), read-your-writes, flush of an open cluster, and sticky errors
 * (a read-only descriptor; ZCOW_FAULT=write:3:EIO in a child process). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "blockio.h"
#include "cwcache.h"
#include "unit.h"
#include "zcow.h"

static char tmpdir[4096];
/* What runs now, for the watchdog's message. */
static char phase[160] = "start";

/* The byte the simulated allocator puts at host offset O: never zero, so a
 * lost byte cannot pass for an unused one. */
static inline uint8_t pattern(uint64_t o)
{
    uint64_t z = (o >> 3) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 29)) * 0xbf58476d1ce4e5b9ull;
    z ^= z >> 32;
    return (uint8_t)(z >> ((o & 7) * 8)) | 1;
}

static void fill_pattern(uint8_t *buf, uint64_t off, uint32_t len)
{
    for (uint32_t i = 0; i < len; i++)
        buf[i] = pattern(off + i);
}

static void make_path(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", tmpdir, name);
}

/* ---- the simulation ------------------------------------------------------ */

struct sim {
    pthread_mutex_t lock;
    struct cwcache c;
    struct blk file;
    unsigned cb;
    uint32_t cs;
    uint64_t base;   /* first byte handed out (a cluster start) */
    uint64_t target; /* stop handing out bytes from here */
    /* Guarded by lock: */
    uint64_t next;  /* the next byte the allocator hands out */
    uint32_t *used; /* per cluster: bytes handed out (a prefix) */
    uint64_t n_used;
    unsigned max_seen; /* the most clusters ever cached */
    long appends, abandons, flushes, cached_reads, disk_reads;
    int seed_stream;
};

struct thread_arg {
    struct sim *s;
    int id;
};

/* What byte O of the file must hold once written: the pattern where it was
 * handed out, zero elsewhere.  Called with the lock held (or at the end). */
static uint8_t expected(const struct sim *s, uint64_t o)
{
    if (o < s->base)
        return 0;
    uint64_t k = (o - s->base) >> s->cb;
    if (k >= s->n_used)
        return 0;
    return (o & (s->cs - 1)) < s->used[k] ? pattern(o) : 0;
}

static void mark_used(struct sim *s, uint64_t off, uint32_t len)
{
    while (len > 0) {
        uint64_t k = (off - s->base) >> s->cb;
        uint32_t at = (uint32_t)(off & (s->cs - 1));
        uint32_t n = s->cs - at < len ? s->cs - at : len;
        s->used[k] = at + n;
        off += n;
        len -= n;
    }
}

/* Read back a random handed-out range: from the cache if it is there,
 * otherwise from the file (a cluster leaves the cache only once written). */
static void read_back(struct sim *s, uint64_t *rs, uint8_t *tmp)
{
    pthread_mutex_lock(&s->lock);
    if (s->next == s->base) {
        pthread_mutex_unlock(&s->lock);
        return;
    }
    /* Half the reads near the allocator's end, where clusters are cached. */
    uint64_t lo = s->base;
    if (unit_rand(rs) % 2 && s->next - s->base > 2ull * s->cs)
        lo = s->next - 2ull * s->cs;
    uint64_t o = unit_range(rs, lo, s->next - 1);
    uint32_t len = (uint32_t)unit_range(rs, 1, s->cs);
    uint32_t n = cw_read_cached(&s->c, o, tmp, len);
    if (n > 0) {
        uint32_t at = (uint32_t)(o & (s->cs - 1));
        uint32_t want_n = s->cs - at < len ? s->cs - at : len;
        CHECKF(n == want_n, "read_cached at %llu len %u: %u bytes, want %u", (unsigned long long)o,
               len, n, want_n);
        for (uint32_t i = 0; i < n; i++)
            if (tmp[i] != expected(s, o + i)) {
                CHECKF(0, "cached byte at %llu is %#x, want %#x", (unsigned long long)(o + i),
                       tmp[i], expected(s, o + i));
                break;
            }
        s->cached_reads++;
        pthread_mutex_unlock(&s->lock);
        return;
    }
    /* Not cached: written for good.  Snapshot what it must hold, then read
     * the aligned block around O without the lock. */
    uint64_t block = o & ~(uint64_t)(BLK_ALIGN - 1);
    uint8_t want[BLK_ALIGN];
    for (uint32_t i = 0; i < BLK_ALIGN; i++)
        want[i] = expected(s, block + i);
    s->disk_reads++;
    pthread_mutex_unlock(&s->lock);
    memset(tmp, 0, BLK_ALIGN);
    int64_t got = blk_pread(&s->file, tmp, BLK_ALIGN, block);
    CHECKF(got >= 0, "pread at %llu: %s", (unsigned long long)block, strerror((int)-got));
    /* Past the end of the file reads as zero. */
    for (uint32_t i = 0; i < BLK_ALIGN; i++)
        if (tmp[i] != want[i]) {
            CHECKF(0, "byte at %llu on disk is %#x, want %#x (block of %llu, got %lld)",
                   (unsigned long long)(block + i), tmp[i], want[i], (unsigned long long)o,
                   (long long)got);
            break;
        }
}

/* A run handed out: contiguous clusters, all final, all full but the
 * last, at most run_max of them.  Called without the lock: the run belongs
 * to the caller until it is written. */
static void check_run(const struct cwcache *c, const struct cw_run *run)
{
    CHECKF(run->n >= 1 && run->n <= c->run_max, "run of %u clusters (at most %u)", run->n,
           c->run_max);
    const struct cw_cluster *cl = run->first;
    for (unsigned i = 0; i < run->n && cl; i++, cl = cl->run_next) {
        CHECK(cl->final);
        CHECKF(i + 1 == run->n || cl->end == c->cluster_size,
               "cluster %u of a run of %u holds %u bytes: a write would carry its unused tail", i,
               run->n, cl->end);
        if (i + 1 < run->n)
            CHECKF(cl->run_next && cl->run_next->index == cl->index + 1,
                   "run not contiguous after cluster %llu", (unsigned long long)cl->index);
    }
}

static void write_ready(struct sim *s, struct cw_ready *ready)
{
    CHECK(ready->n <= CW_MAX_RUNS);
    for (unsigned i = 0; i < ready->n; i++) {
        check_run(&s->c, &ready->runs[i]);
        int r = cw_write_run(&s->c, &ready->runs[i]);
        CHECKF(r == 0, "cw_write_run: %s", strerror(-r));
    }
    ready->n = 0;
}

static void *sim_thread(void *arg)
{
    struct thread_arg *ta = arg;
    struct sim *s = ta->s;
    uint64_t rs = unit_stream((uint64_t)(s->seed_stream * 1000 + ta->id));
    uint8_t *buf = malloc(s->cs);
    uint8_t *tmp = blk_alloc(s->cs > BLK_ALIGN ? s->cs : BLK_ALIGN);
    if (!buf || !tmp) {
        CHECK(!"out of memory");
        goto out;
    }
    for (;;) {
        struct cw_ready ready = { .n = 0 };
        /* Mostly small chunks, as compressed clusters are; sometimes up to
         * a whole cluster less one byte. */
        uint32_t len = unit_rand(&rs) % 4 ? (uint32_t)unit_range(&rs, 1, s->cs / 8 + 1)
                                          : (uint32_t)unit_range(&rs, 1, s->cs - 1);

        pthread_mutex_lock(&s->lock);
        cw_wait_for_room(&s->c);
        if (zerr_failed(&s->c.error) || s->next >= s->target) {
            pthread_mutex_unlock(&s->lock);
            break;
        }
        uint32_t at = (uint32_t)(s->next & (s->cs - 1));
        if (at != 0 && unit_rand(&rs) % 16 == 0) {
            /* Abandon the rest of the cluster: explicitly, or by appending
             * at the next cluster's start (which closes the open one). */
            if (unit_rand(&rs) % 2)
                cw_close_open(&s->c, &ready);
            s->next += s->cs - at;
            s->abandons++;
        }
        uint64_t off = s->next;
        fill_pattern(buf, off, len);
        int r = cw_append(&s->c, off, buf, len, &ready);
        CHECKF(r == 0, "cw_append at %llu len %u: %d", (unsigned long long)off, len, r);
        CHECK(ready.n <= 2);
        mark_used(s, off, len);
        s->next += len;
        s->appends++;
        CHECKF(s->c.n_clusters <= s->c.max_clusters, "%u clusters cached, bound %u",
               s->c.n_clusters, s->c.max_clusters);
        if (s->c.n_clusters > s->max_seen)
            s->max_seen = s->c.n_clusters;
        pthread_mutex_unlock(&s->lock);

        write_ready(s, &ready);

        uint64_t dice = unit_rand(&rs) % 64;
        if (dice == 0) {
            r = cw_flush(&s->c);
            CHECKF(r == 0, "cw_flush: %s", strerror(-r));
            pthread_mutex_lock(&s->lock);
            s->flushes++;
            pthread_mutex_unlock(&s->lock);
        } else if (dice < 5) {
            read_back(s, &rs, tmp);
        }
    }
out:
    free(buf);
    free(tmp);
    return NULL;
}

/* Every byte of the file against what it must hold. */
static void verify_file(const struct sim *s, const char *path)
{
    int fd = open(path, O_RDONLY);
    CHECKF(fd >= 0, "open '%s': %s", path, strerror(errno));
    if (fd < 0)
        return;
    struct stat st;
    fstat(fd, &st);
    /* The file ends at the last cluster's used part, rounded up to the I/O
     * alignment: the unused tail of a cluster is never written. */
    uint64_t last = s->n_used;
    while (last > 0 && s->used[last - 1] == 0)
        last--;
    uint64_t want_end = last ? s->base + ((last - 1) << s->cb) +
                                   ((s->used[last - 1] + BLK_ALIGN - 1) & ~(BLK_ALIGN - 1))
                             : 0;
    if (want_end > s->base + (last << s->cb))
        want_end = s->base + (last << s->cb);
    CHECKF((uint64_t)st.st_size == want_end, "file size %llu, want %llu",
           (unsigned long long)st.st_size, (unsigned long long)want_end);
    size_t chunk = 1 << 20;
    uint8_t *buf = malloc(chunk);
    uint64_t off = 0, bad = 0, first_bad = 0;
    while (buf) {
        ssize_t n = pread(fd, buf, chunk, (off_t)off);
        if (n <= 0)
            break;
        for (ssize_t i = 0; i < n; i++)
            if (buf[i] != expected(s, off + (uint64_t)i)) {
                if (!bad)
                    first_bad = off + (uint64_t)i;
                bad++;
            }
        off += (uint64_t)n;
    }
    CHECKF(bad == 0, "%llu bytes of the file are wrong, the first at %llu (holds %s)",
           (unsigned long long)bad, (unsigned long long)first_bad,
           first_bad && expected(s, first_bad) ? "the wrong data" : "data where zero belongs");
    free(buf);
    close(fd);
}

static void run_sim(unsigned cb, unsigned max_clusters, bool direct, int threads, uint64_t bytes,
                    int stream)
{
    struct sim *s = calloc(1, sizeof(*s));
    char path[4200];
    make_path(path, sizeof(path), "sim.img");
    if (!s) {
        CHECK(!"out of memory");
        return;
    }
    s->cb = cb;
    s->cs = 1u << cb;
    s->base = 2ull << cb; /* as in an image: the data starts after metadata */
    s->target = s->base + bytes;
    s->next = s->base;
    s->n_used = (bytes >> cb) + 3;
    s->used = calloc(s->n_used, sizeof(*s->used));
    s->seed_stream = stream;
    snprintf(phase, sizeof(phase), "run_sim(cluster_bits %u, bound %u, %s, %d threads)", cb,
             max_clusters, direct ? "O_DIRECT" : "page cache", threads);
    pthread_mutex_init(&s->lock, NULL);
    int r = blk_create(&s->file, path, direct, false, false);
    CHECKF(r == 0, "blk_create '%s': %d", path, r);
    if (r == 0)
        r = cw_init(&s->c, &s->lock, &s->file, cb, max_clusters);
    CHECKF(r == 0, "cw_init: %d", r);
    if (r != 0 || !s->used)
        goto out;

    double t0 = unit_now();
    pthread_t *t = calloc((size_t)threads, sizeof(*t));
    struct thread_arg *ta = calloc((size_t)threads, sizeof(*ta));
    for (int i = 0; i < threads; i++) {
        ta[i] = (struct thread_arg){ s, i };
        CHECK(pthread_create(&t[i], NULL, sim_thread, &ta[i]) == 0);
    }
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    free(t);
    free(ta);

    /* The end of the image: the open cluster is closed and written. */
    struct cw_ready ready = { .n = 0 };
    pthread_mutex_lock(&s->lock);
    cw_close_open(&s->c, &ready);
    pthread_mutex_unlock(&s->lock);
    write_ready(s, &ready);
    CHECK(cw_flush(&s->c) == 0);
    CHECKF(s->c.n_clusters == 0, "%u clusters still cached at the end", s->c.n_clusters);
    CHECK(s->c.open == NULL);
    CHECK(s->max_seen <= s->c.max_clusters);
    CHECK(zerr_failed(&s->c.error) == 0);
    verify_file(s, path);
    printf("  cluster %u KiB, bound %u, runs of %u, %s, %d threads: %.1f MiB in %ld appends "
           "(%ld abandoned tails), %ld flushes, %ld cached + %ld disk reads, "
           "at most %u cached, %.2f s\n",
           s->cs >> 10, s->c.max_clusters, s->c.run_max, s->file.direct ? "O_DIRECT" : "page cache",
           threads, (double)(s->next - s->base) / (1 << 20), s->appends, s->abandons, s->flushes,
           s->cached_reads, s->disk_reads, s->max_seen, unit_now() - t0);
    fflush(stdout);
    cw_free(&s->c);
out:
    blk_close(&s->file);
    unlink(path);
    pthread_mutex_destroy(&s->lock);
    free(s->used);
    free(s);
}

/* ---- deterministic cases --------------------------------------------------- */

struct waiter {
    struct cwcache *c;
    pthread_mutex_t *lock;
    atomic_int passed;
};

static void *wait_for_room_thread(void *arg)
{
    struct waiter *w = arg;
    pthread_mutex_lock(w->lock);
    cw_wait_for_room(w->c);
    atomic_store(&w->passed, 1);
    pthread_mutex_unlock(w->lock);
    return NULL;
}

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };
    nanosleep(&ts, NULL);
}

/* Runs handed out across several calls, kept until written. */
struct held {
    struct cw_run runs[64];
    unsigned n;
};

static void hold(struct held *h, struct cw_ready *ready)
{
    for (unsigned i = 0; i < ready->n && h->n < 64; i++)
        h->runs[h->n++] = ready->runs[i];
    ready->n = 0;
}

struct flusher {
    struct cwcache *c;
    atomic_int done;
    int result;
};

static void *flush_thread(void *arg)
{
    struct flusher *f = arg;
    f->result = cw_flush(f->c);
    atomic_store(&f->done, 1);
    return NULL;
}

/* 1 MiB clusters: a run is one cluster (runs are about 1 MiB), and the
 * cache's smallest bound is three clusters - the cases below count on
 * both, and check them first. */
enum { DET_CB = 20 };

/* A flush returns only once every cluster finished before it is written:
 * a run handed out but still held by its writer makes it wait. */
static void test_flush_waits(void)
{
    char path[4200];
    make_path(path, sizeof(path), "flushwait.img");
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    struct blk file;
    struct cwcache c;
    uint32_t cs = 1u << DET_CB;
    if (blk_create(&file, path, false, false, false) != 0) {
        CHECK(!"blk_create");
        return;
    }
    CHECK(cw_init(&c, &lock, &file, DET_CB, 8) == 0);
    CHECK(c.run_max == 1);
    uint8_t *buf = malloc(2 * cs);
    fill_pattern(buf, cs, 2 * cs);
    struct cw_ready ready = { .n = 0 };
    pthread_mutex_lock(&lock);
    CHECK(cw_append(&c, cs, buf, cs + 100, &ready) == 0 && ready.n == 1);
    pthread_mutex_unlock(&lock);
    struct flusher f = { &c, 0, 0 };
    pthread_t t;
    CHECK(pthread_create(&t, NULL, flush_thread, &f) == 0);
    sleep_ms(150);
    CHECKF(atomic_load(&f.done) == 0, "cw_flush returned before a finished cluster was written");
    CHECK(cw_write_run(&c, &ready.runs[0]) == 0);
    pthread_join(t, NULL);
    CHECK(f.result == 0);
    /* Both the finished cluster and the open one's prefix are on disk. */
    int fd = open(path, O_RDONLY);
    uint8_t *disk = malloc(cs + 100);
    CHECK(fd >= 0 && pread(fd, disk, cs + 100, cs) == (ssize_t)cs + 100);
    CHECK(memcmp(disk, buf, cs + 100) == 0);
    close(fd);
    free(disk);
    free(buf);
    cw_free(&c);
    blk_close(&file);
    unlink(path);
}

/* Back-pressure, read-your-writes, flush of the open cluster. */
static void test_sequential(void)
{
    char path[4200];
    make_path(path, sizeof(path), "seq.img");
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    struct blk file;
    struct cwcache c;
    unsigned cb = DET_CB;
    uint32_t cs = 1u << cb;
    if (blk_create(&file, path, true, false, false) != 0) {
        CHECK(!"blk_create");
        return;
    }
    CHECK(cw_init(&c, &lock, &file, cb, 1) == 0);
    CHECKF(c.max_clusters == 3 && c.run_max == 1, "bound %u, runs of %u", c.max_clusters,
           c.run_max);
    uint8_t *buf = malloc(cs), *rd = blk_alloc(cs);

    /* A partial cluster, flushed: its bytes reach the file, and it stays
     * open for more. */
    struct cw_ready ready = { .n = 0 };
    struct held h = { .n = 0 };
    uint64_t base = 4ull << cb;
    fill_pattern(buf, base, 1000);
    pthread_mutex_lock(&lock);
    CHECK(cw_append(&c, base, buf, 1000, &ready) == 0 && ready.n == 0);
    CHECK(c.n_clusters == 1);
    memset(rd, 0xee, cs);
    CHECK(cw_read_cached(&c, base + 500, rd, 1000) == 1000);
    CHECK(memcmp(rd, buf + 500, 500) == 0);
    CHECKF(rd[500] == 0 && rd[999] == 0, "bytes not handed out must read as zero");
    CHECK(cw_read_cached(&c, base + cs, rd, 10) == 0); /* next cluster: not cached */
    CHECK(cw_read_cached(&c, base - 1, rd, 10) == 0);
    CHECK(cw_read_cached(&c, base + cs - 5, rd, 100) == 5); /* stops at the cluster end */
    pthread_mutex_unlock(&lock);

    CHECK(cw_flush(&c) == 0);
    int fd = open(path, O_RDONLY);
    uint8_t disk[1000];
    CHECK(fd >= 0 && pread(fd, disk, 1000, (off_t)base) == 1000);
    CHECKF(memcmp(disk, buf, 1000) == 0, "flush did not write the open cluster's bytes");
    CHECK(c.n_clusters == 1 && c.open != NULL);

    /* Fill it up, straddling into the next: the first finishes. */
    fill_pattern(buf, base + 1000, cs);
    pthread_mutex_lock(&lock);
    CHECK(cw_append(&c, base + 1000, buf, cs - 1000 + 10, &ready) == 0);
    CHECKF(ready.n == 1 && ready.runs[0].n == 1 && ready.runs[0].first->index == base >> cb &&
               ready.runs[0].first->final && ready.runs[0].first->end == cs,
           "straddling append: %u runs", ready.n);
    CHECK(c.open && c.open->index == (base >> cb) + 1 && c.open->end == 10);
    hold(&h, &ready);
    /* An append that does not continue the open cluster is refused. */
    CHECK(cw_append(&c, base + cs + 11, buf, 5, &ready) < 0);
    CHECK(ready.n == 0 && c.open && c.open->end == 10);
    /* Abandon the second cluster; start a third: three cached, the bound. */
    cw_close_open(&c, &ready);
    CHECK(ready.n == 1 && c.open == NULL);
    hold(&h, &ready);
    fill_pattern(buf, base + 2 * cs, 100);
    CHECK(cw_append(&c, base + 2 * cs, buf, 100, &ready) == 0 && ready.n == 0);
    CHECK(c.n_clusters == 3);
    pthread_mutex_unlock(&lock);

    /* Back-pressure: a writer waits until a cluster leaves the cache. */
    struct waiter w = { &c, &lock, 0 };
    pthread_t t;
    CHECK(pthread_create(&t, NULL, wait_for_room_thread, &w) == 0);
    sleep_ms(150);
    CHECKF(atomic_load(&w.passed) == 0, "cw_wait_for_room did not wait with the cache full");
    CHECK(h.n == 2 && cw_write_run(&c, &h.runs[0]) == 0);
    for (int i = 0; i < 1000 && !atomic_load(&w.passed); i++)
        sleep_ms(10);
    CHECKF(atomic_load(&w.passed) == 1, "cw_wait_for_room still waiting with room free");
    pthread_join(t, NULL);
    CHECK(cw_write_run(&c, &h.runs[1]) == 0);
    CHECK(c.n_clusters == 1);

    /* The first cluster is on disk whole; the second holds its 10 bytes
     * and zeros up to the alignment; nothing else was written there. */
    uint8_t *whole = malloc(cs);
    CHECK(pread(fd, whole, cs, (off_t)base) == (ssize_t)cs);
    long bad = 0;
    for (uint32_t i = 0; i < cs; i++)
        bad += whole[i] != pattern(base + i);
    CHECKF(bad == 0, "%ld bytes of the first cluster wrong on disk", bad);
    CHECK(pread(fd, whole, BLK_ALIGN, (off_t)(base + cs)) == BLK_ALIGN);
    bad = 0;
    for (uint32_t i = 0; i < BLK_ALIGN; i++)
        bad += whole[i] != (i < 10 ? pattern(base + cs + i) : 0);
    CHECKF(bad == 0, "%ld bytes of the abandoned cluster wrong on disk", bad);

    pthread_mutex_lock(&lock);
    cw_close_open(&c, &ready);
    pthread_mutex_unlock(&lock);
    CHECK(ready.n == 1 && cw_write_run(&c, &ready.runs[0]) == 0);
    CHECK(c.n_clusters == 0);
    struct stat st;
    fstat(fd, &st);
    CHECKF((uint64_t)st.st_size == base + 2 * cs + BLK_ALIGN,
           "file ends at %lld: the unused tail of the last cluster was written",
           (long long)st.st_size);
    close(fd);
    free(whole);
    free(buf);
    free(rd);
    cw_free(&c);
    blk_close(&file);
    unlink(path);
}

/* Small clusters gather into runs: contiguous full clusters, written with
 * one write; a cluster left part-full ends its run. */
static void test_runs(void)
{
    char path[4200];
    make_path(path, sizeof(path), "runs.img");
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    struct blk file;
    struct cwcache c;
    unsigned cb = 12;
    uint32_t cs = 1u << cb;
    if (blk_create(&file, path, true, false, false) != 0) {
        CHECK(!"blk_create");
        return;
    }
    CHECK(cw_init(&c, &lock, &file, cb, 1) == 0);
    CHECKF(c.run_max > 1 && c.max_clusters >= c.run_max + 2, "bound %u, runs of %u", c.max_clusters,
           c.run_max);
    uint32_t total = 10 * cs + 123;
    uint8_t *buf = malloc(total);
    uint64_t base = 3ull << cb;
    fill_pattern(buf, base, total);
    struct cw_ready ready = { .n = 0 };
    pthread_mutex_lock(&lock);
    /* Chunks straddling cluster boundaries, back to back. */
    for (uint32_t at = 0; at < total;) {
        uint32_t n = total - at < cs - 1 ? total - at : cs - 1;
        CHECK(cw_append(&c, base + at, buf + at, n, &ready) == 0);
        at += n;
    }
    CHECKF(ready.n == 0, "%u runs handed out before the run could grow no more", ready.n);
    /* Gathered but not handed out: still served from the cache. */
    uint8_t rd[64];
    CHECK(cw_read_cached(&c, base + 5 * cs + 7, rd, 64) == 64 &&
          memcmp(rd, buf + 5 * cs + 7, 64) == 0);
    cw_close_open(&c, &ready);
    pthread_mutex_unlock(&lock);
    CHECKF(ready.n == 1 && ready.runs[0].n == 11, "%u runs, the first of %u clusters", ready.n,
           ready.n ? ready.runs[0].n : 0);
    if (ready.n == 1) {
        const struct cw_cluster *cl = ready.runs[0].first;
        for (unsigned i = 0; cl && i < ready.runs[0].n; i++, cl = cl->run_next) {
            CHECK(cl->index == (base >> cb) + i);
            CHECK(cl->end == (i < 10 ? cs : 123));
        }
        CHECK(cw_write_run(&c, &ready.runs[0]) == 0);
    }
    CHECK(c.n_clusters == 0);
    int fd = open(path, O_RDONLY);
    uint8_t *disk = malloc(total);
    CHECK(fd >= 0 && pread(fd, disk, total, (off_t)base) == (ssize_t)total);
    CHECK(memcmp(disk, buf, total) == 0);
    struct stat st;
    fstat(fd, &st);
    CHECK((uint64_t)st.st_size == base + 10 * cs + BLK_ALIGN);
    close(fd);
    free(disk);
    free(buf);
    cw_free(&c);
    blk_close(&file);
    unlink(path);
}

/* A descriptor the writes fail on (read-only): the first failure is
 * returned, and every later write and flush returns it too. */
static void test_sticky_readonly(void)
{
    char path[4200];
    make_path(path, sizeof(path), "ro.img");
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    close(fd);
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    struct blk file;
    CHECK(blk_open_read(&file, path, false) == 0);
    struct cwcache c;
    unsigned cb = DET_CB;
    uint32_t cs = 1u << cb;
    CHECK(cw_init(&c, &lock, &file, cb, 1) == 0);
    uint8_t *buf = malloc(cs);
    fill_pattern(buf, 0, cs);
    struct cw_ready ready = { .n = 0 };
    struct held h = { .n = 0 };

    pthread_mutex_lock(&lock);
    CHECK(cw_append(&c, cs, buf, cs, &ready) == 0 && ready.n == 1);
    pthread_mutex_unlock(&lock);
    int first = ready.n ? cw_write_run(&c, &ready.runs[0]) : 0;
    ready.n = 0;
    CHECKF(first < 0, "a write to a read-only descriptor succeeded (%d)", first);
    CHECK(zerr_failed(&c.error) == first);
    /* Every later call says what failed, not just that something did. */
    char msg[512];
    snprintf(msg, sizeof(msg), "%s", zcow_get_error());
    CHECKF(strstr(msg, "cannot write to") != NULL, "first failure says '%s'", msg);

    for (int round = 0; round < 3; round++) {
        zerr_clear();
        pthread_mutex_lock(&lock);
        cw_wait_for_room(&c); /* must not block on an error */
        CHECK(cw_append(&c, (uint64_t)(2 + round) * cs, buf, 100, &ready) == 0);
        cw_close_open(&c, &ready);
        pthread_mutex_unlock(&lock);
        CHECK(ready.n == 1);
        for (unsigned i = 0; i < ready.n; i++)
            CHECKF(cw_write_run(&c, &ready.runs[i]) == first, "a later write forgot the error");
        ready.n = 0;
        CHECKF(!strcmp(zcow_get_error(), msg), "a later write says '%s'", zcow_get_error());
        zerr_clear();
        CHECKF(cw_flush(&c) == first, "a later flush forgot the error");
        CHECKF(!strcmp(zcow_get_error(), msg), "a later flush says '%s'", zcow_get_error());
    }
    /* A full cache after an error: writers must not wait for room that a
     * failed write will never free. */
    pthread_mutex_lock(&lock);
    for (unsigned k = 0; k < c.max_clusters; k++) {
        CHECK(cw_append(&c, (uint64_t)(20 + k) * cs, buf, 10, &ready) == 0);
        if (k + 1 < c.max_clusters)
            cw_close_open(&c, &ready);
        hold(&h, &ready);
    }
    CHECK(c.n_clusters == c.max_clusters && h.n == c.max_clusters - 1);
    pthread_mutex_unlock(&lock);
    struct waiter w = { &c, &lock, 0 };
    pthread_t t;
    CHECK(pthread_create(&t, NULL, wait_for_room_thread, &w) == 0);
    for (int i = 0; i < 1000 && !atomic_load(&w.passed); i++)
        sleep_ms(10);
    CHECKF(atomic_load(&w.passed) == 1, "cw_wait_for_room blocks after an I/O error");
    for (unsigned i = 0; i < h.n; i++)
        CHECK(cw_write_run(&c, &h.runs[i]) == first);
    pthread_join(t, NULL);
    pthread_mutex_lock(&lock);
    cw_close_open(&c, &ready);
    pthread_mutex_unlock(&lock);
    for (unsigned i = 0; i < ready.n; i++)
        CHECK(cw_write_run(&c, &ready.runs[i]) == first);
    ready.n = 0;

    /* Cached data stays readable after the error. */
    pthread_mutex_lock(&lock);
    CHECK(cw_append(&c, 90ull * cs, buf, 50, &ready) == 0);
    uint8_t rd[50];
    CHECK(cw_read_cached(&c, 90ull * cs, rd, 50) == 50 && memcmp(rd, buf, 50) == 0);
    pthread_mutex_unlock(&lock);
    CHECK(cw_flush(&c) == first);
    free(buf);
    cw_free(&c);
    blk_close(&file);
    unlink(path);
}

/* ---- child processes (fault injection reads its environment once) ------ */

/* CLUSTERS sequential clusters of 64 KiB, no flush, the last one part-full;
 * stores the result of each run's write in RESULTS (room for 64), then the
 * result of a flush.  Returns the number of runs written, or -1. */
static int write_sequential(const char *path, int clusters, int *results)
{
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    struct blk file;
    struct cwcache c;
    unsigned cb = 16;
    uint32_t cs = 1u << cb;
    if (blk_create(&file, path, true, false, false) != 0 || cw_init(&c, &lock, &file, cb, 4) != 0)
        return -1;
    uint8_t *buf = malloc(cs);
    uint64_t off = cs, end = cs + (uint64_t)clusters * cs - cs / 2;
    int runs = 0;
    uint64_t rs = unit_stream(7);
    while (off < end) {
        uint32_t len = (uint32_t)unit_range(&rs, 1, cs - 1);
        if (len > end - off)
            len = (uint32_t)(end - off);
        struct cw_ready ready = { .n = 0 };
        fill_pattern(buf, off, len);
        pthread_mutex_lock(&lock);
        cw_wait_for_room(&c);
        cw_append(&c, off, buf, len, &ready);
        off += len;
        if (off == end) /* the image ends */
            cw_close_open(&c, &ready);
        pthread_mutex_unlock(&lock);
        for (unsigned i = 0; i < ready.n; i++) {
            int r = cw_write_run(&c, &ready.runs[i]);
            if (results && runs < 64)
                results[runs] = r;
            runs++;
        }
    }
    if (results && runs < 64)
        results[runs] = cw_flush(&c);
    free(buf);
    cw_free(&c);
    blk_close(&file);
    return runs;
}

/* Exit status: the number of runs written (the parent compares it with the
 * writes counted), or 255. */
static int child_stats(const char *path)
{
    int n = write_sequential(path, 40, NULL);
    unlink(path);
    return n > 0 && n < 255 ? n : 255;
}

static int child_fault(const char *path)
{
    int results[65];
    int n = write_sequential(path, 60, results);
    CHECKF(n >= 4, "60 clusters of 64 KiB in %d runs", n);
    if (n < 4 || n > 63)
        return unit_done();
    CHECKF(results[0] == 0 && results[1] == 0, "writes before the fault failed: %d %d", results[0],
           results[1]);
    CHECKF(results[2] == -EIO, "the injected fault was not returned: %d", results[2]);
    for (int i = 3; i < n; i++)
        CHECKF(results[i] == -EIO, "write %d after the fault returned %d", i + 1, results[i]);
    CHECKF(results[n] == -EIO, "flush after the fault returned %d", results[n]);
    unlink(path);
    return unit_done();
}

static int run_child(const char *mode, const char *env_name, const char *env_value,
                     const char *path)
{
    pid_t pid = fork();
    if (pid == 0) {
        setenv(env_name, env_value, 1);
        char seed[32];
        snprintf(seed, sizeof(seed), "%llu", (unsigned long long)unit_seed);
        setenv("TEST_SEED", seed, 1);
        execl("/proc/self/exe", "test_cwcache", mode, path, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* One aligned write per run, and fewer writes than clusters. */
static void test_one_write_per_run(void)
{
    char path[4200], stats[4200];
    make_path(path, sizeof(path), "stats.img");
    make_path(stats, sizeof(stats), "stats.txt");
    int runs = run_child("--child-stats", "ZCOW_FAULT_STATS", stats, path);
    CHECKF(runs > 0 && runs < 255, "stats child: exit %d", runs);
    FILE *f = fopen(stats, "r");
    CHECKF(f != NULL, "no stats from the child");
    long writes = -1;
    char op[32];
    long n;
    while (f && fscanf(f, "%31s %ld", op, &n) == 2)
        if (strcmp(op, "write") == 0)
            writes = n;
    if (f)
        fclose(f);
    CHECKF(writes == runs, "%d runs took %ld writes, want one each", runs, writes);
    CHECKF(runs < 40, "40 contiguous clusters of 64 KiB in %d runs: not gathered", runs);
    unlink(stats);
}

static void test_sticky_injected(void)
{
    char path[4200];
    make_path(path, sizeof(path), "fault.img");
    int r = run_child("--child-fault", "ZCOW_FAULT", "write:3:EIO", path);
    CHECKF(r == 0, "child with ZCOW_FAULT=write:3:EIO: exit %d", r);
}

/* A deadlock must end the test, not the test run's timeout. */
static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "test_cwcache: still running after the watchdog's limit "
                              "(a deadlock?) in: ";
    if (write(2, msg, sizeof(msg) - 1) < 0 || write(2, phase, strlen(phase)) < 0 ||
        write(2, "\n", 1) < 0) {
    }
    _exit(1);
}

int main(int argc, char **argv)
{
    signal(SIGALRM, on_alarm);
    alarm(UNIT_SANITIZED ? 180 : 60);
    if (argc == 3 && strcmp(argv[1], "--child-stats") == 0) {
        unit_init("test_cwcache (stats child)");
        return child_stats(argv[2]);
    }
    if (argc == 3 && strcmp(argv[1], "--child-fault") == 0) {
        unit_init("test_cwcache (fault child)");
        return child_fault(argv[2]);
    }
    unit_init("test_cwcache");
    const char *t = getenv("TMPDIR");
    snprintf(tmpdir, sizeof(tmpdir), "%s/zcow-cwcache-XXXXXX", t && *t ? t : "/var/tmp");
    if (!mkdtemp(tmpdir)) {
        fprintf(stderr, "test_cwcache: cannot create '%s': %s\n", tmpdir, strerror(errno));
        return 1;
    }
    snprintf(phase, sizeof(phase), "test_one_write_per_run");
    test_one_write_per_run();
    snprintf(phase, sizeof(phase), "test_sticky_injected");
    test_sticky_injected();
    snprintf(phase, sizeof(phase), "test_sequential");
    test_sequential();
    snprintf(phase, sizeof(phase), "test_runs");
    test_runs();
    snprintf(phase, sizeof(phase), "test_flush_waits");
    test_flush_waits();
    snprintf(phase, sizeof(phase), "test_sticky_readonly");
    test_sticky_readonly();

    /* Many threads, as backup software calls the library.  Bounds from the
     * smallest the cache allows (writers wait often) to roomy; cw_init
     * raises a bound below what a run needs. */
    int threads = 16;
    unsigned scale = UNIT_SANITIZED ? 2 : 0; /* smaller under the sanitizers */
    run_sim(12, 3, true, threads, 4u << 20 >> scale, 1);
    run_sim(16, 3, true, threads, 16u << 20 >> scale, 2);
    run_sim(16, 64, false, threads, 16u << 20 >> scale, 3);
    run_sim(20, 3, true, threads, 16u << 20 >> scale, 4);
    run_sim(21, 3, true, threads, 32u << 20 >> scale, 5);
    run_sim(12, 600, false, threads, 4u << 20 >> scale, 6);

    rmdir(tmpdir);
    return unit_done();
}
