/* test_pool.c - the bounded worker pool (pool.h): every job runs once, on
 * a thread of the pool, never more at once than the pool has threads;
 * the queue holds at most its bound (try-add refuses, add waits); join
 * waits for every job. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <time.h>

#include "pool.h"
#include "unit.h"

#define N_JOBS 20000

struct count {
    atomic_int ran[N_JOBS];
    atomic_int running, max_running;
    unsigned threads;
    atomic_int bad_worker;
};

static void count_job(void *arg, uint64_t n, unsigned worker)
{
    struct count *c = arg;
    int now = atomic_fetch_add(&c->running, 1) + 1;
    int max = atomic_load(&c->max_running);
    while (now > max && !atomic_compare_exchange_weak(&c->max_running, &max, now))
        ;
    if (worker >= c->threads)
        atomic_store(&c->bad_worker, 1);
    atomic_fetch_add(&c->ran[n], 1);
    atomic_fetch_sub(&c->running, 1);
}

static void test_every_job_once(void)
{
    static struct count c; /* big: not on the stack */
    for (unsigned threads = 1; threads <= 8; threads *= 2) {
        memset(&c, 0, sizeof(c));
        struct pool *p;
        CHECK(pool_create(threads, 3, &p) == 0);
        c.threads = pool_threads(p);
        CHECKF(c.threads == threads, "%u threads of %u", c.threads, threads);
        for (uint64_t n = 0; n < N_JOBS; n++)
            pool_add(p, count_job, &c, n);
        pool_join(p);
        int missing = 0;
        for (int n = 0; n < N_JOBS; n++)
            missing += atomic_load(&c.ran[n]) != 1;
        CHECKF(missing == 0, "%d jobs not run exactly once, %u threads", missing, threads);
        CHECKF(atomic_load(&c.max_running) <= (int)threads, "%d running at once on %u threads",
               atomic_load(&c.max_running), threads);
        CHECK(!atomic_load(&c.bad_worker));
        pool_free(p);
    }
}

/* Jobs that wait at a gate: the queue's bound is then visible. */
struct gate {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool open;
    atomic_int started, done;
};

static void gate_job(void *arg, uint64_t n, unsigned worker)
{
    (void)n, (void)worker;
    struct gate *g = arg;
    atomic_fetch_add(&g->started, 1);
    pthread_mutex_lock(&g->lock);
    while (!g->open)
        pthread_cond_wait(&g->cond, &g->lock);
    pthread_mutex_unlock(&g->lock);
    atomic_fetch_add(&g->done, 1);
}

struct adder {
    struct pool *p;
    struct gate *g;
    atomic_int returned;
};

static void *add_one(void *arg)
{
    struct adder *a = arg;
    pool_add(a->p, gate_job, a->g, 99);
    atomic_store(&a->returned, 1);
    return NULL;
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

static void test_bounded(void)
{
    struct gate g = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0, 0 };
    struct pool *p;
    CHECK(pool_create(2, 3, &p) == 0);
    /* Two jobs run (and wait at the gate), then three wait in the queue. */
    for (int i = 0; i < 2; i++)
        CHECKF(pool_try_add(p, gate_job, &g, (uint64_t)i), "try-add %d refused", i);
    for (int i = 0; i < 400 && atomic_load(&g.started) < 2; i++)
        sleep_ms(5);
    CHECK(atomic_load(&g.started) == 2);
    for (int i = 2; i < 5; i++)
        CHECKF(pool_try_add(p, gate_job, &g, (uint64_t)i), "try-add %d refused", i);
    CHECK(!pool_try_add(p, gate_job, &g, 5)); /* full */

    /* A blocking add waits for room. */
    struct adder a = { p, &g, 0 };
    pthread_t t;
    pthread_create(&t, NULL, add_one, &a);
    sleep_ms(100);
    CHECKF(!atomic_load(&a.returned), "pool_add returned with the queue full");
    CHECK(atomic_load(&g.started) == 2);

    pthread_mutex_lock(&g.lock);
    g.open = true;
    pthread_cond_broadcast(&g.cond);
    pthread_mutex_unlock(&g.lock);
    pthread_join(t, NULL);
    CHECK(atomic_load(&a.returned));
    pool_join(p);
    CHECKF(atomic_load(&g.done) == 6, "%d of 6 jobs done after join", atomic_load(&g.done));
    pool_free(p);
}

/* Join waits for the jobs running, not only for the queue to empty. */
static void slow_job(void *arg, uint64_t n, unsigned worker)
{
    (void)n, (void)worker;
    sleep_ms(100);
    atomic_fetch_add((atomic_int *)arg, 1);
}

static void test_join_waits(void)
{
    atomic_int done = 0;
    struct pool *p;
    CHECK(pool_create(2, 4, &p) == 0);
    for (uint64_t n = 0; n < 2; n++)
        pool_add(p, slow_job, &done, n);
    sleep_ms(20); /* both taken: the queue is empty, the jobs still run */
    pool_join(p);
    CHECKF(atomic_load(&done) == 2, "join returned with %d of 2 jobs done", atomic_load(&done));
    pool_free(p);
}

/* pool_free finishes what is queued. */
static void test_free_finishes(void)
{
    static struct count c;
    memset(&c, 0, sizeof(c));
    c.threads = 3;
    struct pool *p;
    CHECK(pool_create(3, 100, &p) == 0);
    for (uint64_t n = 0; n < 100; n++)
        pool_add(p, count_job, &c, n);
    pool_free(p);
    int ran = 0;
    for (int n = 0; n < 100; n++)
        ran += atomic_load(&c.ran[n]);
    CHECK(ran == 100);
}

int main(void)
{
    unit_init("test_pool");
    test_every_job_once();
    test_bounded();
    test_join_waits();
    test_free_finishes();
    return unit_done();
}
