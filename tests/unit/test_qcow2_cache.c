/* test_qcow2_cache.c - the table cache (qcow2_cache.h) over a real file:
 * tables read once and served from memory, the least recently used one
 * evicted, dirty tables written when evicted and when flushed (and only
 * they), new tables never read, a table many threads want read once, the
 * contents right under concurrent use, and a failed write-back reported.
 * What a table must hold is known from what the test wrote. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qcow2_cache.h"
#include "unit.h"

#define TS 4096u   /* table size */
#define TABLES 32u /* tables in the file, at 1 .. TABLES clusters */

static char dir[] = "/var/tmp/zcow-test-qcow2-cache.XXXXXX";
static char path[512];

static uint64_t off_of(unsigned t) { return (uint64_t)(t + 1) * TS; }

/* Table T's bytes as written in version V. */
static void pattern(uint8_t *buf, unsigned t, unsigned v)
{
    for (unsigned i = 0; i < TS; i++)
        buf[i] = (uint8_t)(t * 31 + v * 7 + i / 8);
}

static bool holds(const uint8_t *buf, unsigned t, unsigned v)
{
    uint8_t want[TS];
    pattern(want, t, v);
    return memcmp(buf, want, TS) == 0;
}

static void make_file(void)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    uint8_t buf[TS];
    memset(buf, 0, TS);
    CHECK(fd >= 0 && pwrite(fd, buf, TS, 0) == TS);
    for (unsigned t = 0; t < TABLES; t++) {
        pattern(buf, t, 0);
        CHECK(pwrite(fd, buf, TS, (off_t)off_of(t)) == TS);
    }
    close(fd);
}

static bool file_holds(unsigned t, unsigned v)
{
    uint8_t buf[TS];
    int fd = open(path, O_RDONLY);
    bool ok = fd >= 0 && pread(fd, buf, TS, (off_t)off_of(t)) == TS && holds(buf, t, v);
    if (fd >= 0)
        close(fd);
    return ok;
}

/* Read-only: each table read once while it stays; LRU order. */
static void test_read_only(void)
{
    make_file();
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    struct blk b;
    CHECK(blk_open_read(&b, path, true) == 0);
    struct qcow2_cache c;
    CHECK(qcow2_cache_init(&c, &lock, &b, TS, 4) == 0 && c.n_slots == 4);
    uint8_t *t;
    pthread_mutex_lock(&lock);
    for (unsigned k = 0; k < 4; k++)
        CHECK(qcow2_cache_get(&c, off_of(k), &t) == 0 && holds(t, k, 0));
    CHECK(c.reads == 4);
    for (unsigned k = 0; k < 4; k++) /* all four stay */
        CHECK(qcow2_cache_get(&c, off_of(k), &t) == 0 && holds(t, k, 0));
    CHECK(c.reads == 4);
    /* Use 0 again: 1 is now the least recently used, and goes for 4. */
    CHECK(qcow2_cache_get(&c, off_of(0), &t) == 0);
    CHECK(qcow2_cache_get(&c, off_of(4), &t) == 0 && holds(t, 4, 0) && c.reads == 5);
    CHECK(qcow2_cache_get(&c, off_of(0), &t) == 0 && c.reads == 5);
    CHECK(qcow2_cache_get(&c, off_of(2), &t) == 0 && c.reads == 5);
    CHECK(qcow2_cache_get(&c, off_of(1), &t) == 0 && holds(t, 1, 0) && c.reads == 6);
    CHECK(c.writes == 0);
    CHECK(qcow2_cache_get(&c, 0, &t) == -EINVAL); /* no table at the header */
    pthread_mutex_unlock(&lock);
    qcow2_cache_free(&c);
    blk_close(&b);

    /* Clamped to 4 .. 64 slots. */
    CHECK(qcow2_cache_init(&c, &lock, &b, TS, 1) == 0 && c.n_slots == QCOW2_CACHE_MIN_SLOTS);
    qcow2_cache_free(&c);
    CHECK(qcow2_cache_init(&c, &lock, &b, TS, 1000) == 0 && c.n_slots == QCOW2_CACHE_MAX_SLOTS);
    qcow2_cache_free(&c);
}

/* Write-back: new tables are not read; a dirty table evicted is written,
 * a clean one is not; flush writes the dirty ones once. */
static void test_write_back(void)
{
    make_file();
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    struct blk b;
    CHECK(blk_create(&b, path, true, false, false) == 0);
    make_file(); /* blk_create truncated it */
    struct qcow2_cache c;
    CHECK(qcow2_cache_init(&c, &lock, &b, TS, 4) == 0);
    uint8_t *t;
    pthread_mutex_lock(&lock);
    /* Tables 0..3 new (their old contents are not read), 1 and 3 changed
     * after being made, 0 and 2 left as made (zeros, dirty). */
    for (unsigned k = 0; k < 4; k++) {
        CHECK(qcow2_cache_make_room(&c) == 0);
        t = qcow2_cache_get_empty(&c, off_of(k));
        CHECK(t != NULL);
        if (t && k % 2) {
            pattern(t, k, 1);
            qcow2_cache_mark_dirty(&c, t);
        }
    }
    CHECK(c.reads == 0 && c.writes == 0);
    /* Table 4 read clean; evicts table 0 (least recent), written as zeros. */
    CHECK(qcow2_cache_get(&c, off_of(4), &t) == 0 && holds(t, 4, 0));
    CHECK(c.reads == 1 && c.writes == 1);
    pthread_mutex_unlock(&lock);
    uint8_t zero[TS] = { 0 }, buf[TS];
    int fd = open(path, O_RDONLY);
    CHECK(pread(fd, buf, TS, (off_t)off_of(0)) == TS && !memcmp(buf, zero, TS));
    close(fd);
    pthread_mutex_lock(&lock);
    /* Table 0 again: read back as written, evicting 1 (dirty: written).
     * Then 5..10 evict 2 and 3 (dirty: written), 4 and 0 (clean: dropped),
     * then 5 and 6 (clean). */
    unsigned writes = (unsigned)c.writes;
    CHECK(qcow2_cache_get(&c, off_of(0), &t) == 0 && !memcmp(t, zero, TS) && c.reads == 2);
    CHECK(c.writes == writes + 1);
    for (unsigned k = 5; k < 11; k++)
        CHECK(qcow2_cache_get(&c, off_of(k), &t) == 0 && holds(t, k, 0));
    CHECKF(c.writes == writes + 3, "%llu writes, want %u", (unsigned long long)c.writes,
           writes + 3);
    pthread_mutex_unlock(&lock);
    CHECK(file_holds(1, 1) && file_holds(3, 1) && file_holds(5, 0));

    /* Change two cached tables; flush writes exactly those two, once. */
    pthread_mutex_lock(&lock);
    CHECK(qcow2_cache_get(&c, off_of(9), &t) == 0);
    pattern(t, 9, 2);
    qcow2_cache_mark_dirty(&c, t);
    CHECK(qcow2_cache_get(&c, off_of(10), &t) == 0);
    pattern(t, 10, 2);
    qcow2_cache_mark_dirty(&c, t);
    writes = (unsigned)c.writes;
    CHECK(qcow2_cache_flush(&c) == 0 && c.writes == writes + 2);
    CHECK(qcow2_cache_flush(&c) == 0 && c.writes == writes + 2);
    pthread_mutex_unlock(&lock);
    CHECK(file_holds(9, 2) && file_holds(10, 2) && file_holds(8, 0));
    qcow2_cache_free(&c);
    blk_close(&b);
}

/* Many threads: every table's contents right, whatever is evicted under
 * whom; and a table all of them want at once is read once. */
struct shared {
    pthread_mutex_t lock;
    struct qcow2_cache c;
    pthread_barrier_t start;
    atomic_long wrong;
    atomic_uint next_id;
    int rounds; /* random gets after the first, common one */
};

static void *reader_thread(void *arg)
{
    struct shared *sh = arg;
    uint64_t rs = unit_stream(100 + atomic_fetch_add(&sh->next_id, 1));
    uint8_t *t;
    pthread_barrier_wait(&sh->start);
    pthread_mutex_lock(&sh->lock);
    if (qcow2_cache_get(&sh->c, off_of(TABLES - 1), &t) != 0 || !holds(t, TABLES - 1, 0))
        atomic_fetch_add(&sh->wrong, 1);
    pthread_mutex_unlock(&sh->lock);
    for (int i = 0; i < sh->rounds; i++) {
        unsigned k = (unsigned)unit_range(&rs, 0, TABLES - 1);
        pthread_mutex_lock(&sh->lock);
        if (qcow2_cache_get(&sh->c, off_of(k), &t) != 0 || !holds(t, k, 0))
            atomic_fetch_add(&sh->wrong, 1);
        pthread_mutex_unlock(&sh->lock);
    }
    return NULL;
}

static void run_threads(int rounds, uint64_t *reads)
{
    enum { N = 8 };
    make_file();
    struct shared sh;
    memset(&sh, 0, sizeof(sh));
    sh.rounds = rounds;
    pthread_mutex_init(&sh.lock, NULL);
    pthread_barrier_init(&sh.start, NULL, N);
    struct blk b;
    CHECK(blk_open_read(&b, path, true) == 0);
    CHECK(qcow2_cache_init(&sh.c, &sh.lock, &b, TS, 4) == 0);
    pthread_t th[N];
    for (int i = 0; i < N; i++)
        CHECK(pthread_create(&th[i], NULL, reader_thread, &sh) == 0);
    for (int i = 0; i < N; i++)
        pthread_join(th[i], NULL);
    CHECKF(atomic_load(&sh.wrong) == 0, "%ld wrong tables", atomic_load(&sh.wrong));
    CHECK(sh.c.writes == 0);
    *reads = sh.c.reads;
    qcow2_cache_free(&sh.c);
    blk_close(&b);
    pthread_barrier_destroy(&sh.start);
    pthread_mutex_destroy(&sh.lock);
}

static void test_threads(void)
{
    uint64_t reads;
    run_threads(UNIT_SANITIZED ? 500 : 3000, &reads);
    run_threads(0, &reads);
    CHECKF(reads == 1, "one table wanted by 8 threads at once read %llu times",
           (unsigned long long)reads);
}

/* A dirty table that cannot be written (a read-only descriptor): the
 * eviction and the flush report it. */
static void test_write_error(void)
{
    make_file();
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    struct blk b;
    CHECK(blk_open_read(&b, path, false) == 0);
    struct qcow2_cache c;
    CHECK(qcow2_cache_init(&c, &lock, &b, TS, 4) == 0);
    uint8_t *t;
    pthread_mutex_lock(&lock);
    CHECK(qcow2_cache_get(&c, off_of(0), &t) == 0);
    qcow2_cache_mark_dirty(&c, t);
    CHECK(qcow2_cache_flush(&c) < 0);
    for (unsigned k = 1; k < 4; k++)
        CHECK(qcow2_cache_get(&c, off_of(k), &t) == 0);
    CHECK(qcow2_cache_get(&c, off_of(4), &t) < 0); /* 0, dirty, evicted */
    CHECK(qcow2_cache_get(&c, off_of(4), &t) == 0 && holds(t, 4, 0));
    pthread_mutex_unlock(&lock);
    qcow2_cache_free(&c);
    blk_close(&b);
}

int main(void)
{
    unit_init("test_qcow2_cache");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(path, sizeof(path), "%s/tables", dir);
    test_read_only();
    test_write_back();
    test_threads();
    test_write_error();
    unlink(path);
    rmdir(dir);
    return unit_done();
}
