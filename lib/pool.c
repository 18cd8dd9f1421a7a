/* pool.c - the bounded worker pool (see pool.h). */
#include "pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "error.h"

struct job {
    pool_fn *fn;
    void *arg;
    uint64_t n;
};

struct worker {
    struct pool *p;
    unsigned index;
    pthread_t tid;
};

struct pool {
    pthread_mutex_t lock; /* guards everything below */
    pthread_cond_t work;  /* a job was queued, or stop was set */
    pthread_cond_t room;  /* a job left the queue */
    pthread_cond_t idle;  /* a job finished */
    struct job *queue;    /* a ring of cap jobs */
    unsigned cap, head, len;
    unsigned running; /* jobs taken and not finished */
    bool stop;
    struct worker *workers;
    unsigned n_workers;
};

static void *run(void *arg)
{
    struct worker *w = arg;
    struct pool *p = w->p;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (!p->len && !p->stop)
            pthread_cond_wait(&p->work, &p->lock);
        if (!p->len)
            break; /* stopping, and nothing is left */
        struct job j = p->queue[p->head];
        p->head = (p->head + 1) % p->cap;
        p->len--;
        p->running++;
        pthread_cond_signal(&p->room);
        pthread_mutex_unlock(&p->lock);
        j.fn(j.arg, j.n, w->index);
        pthread_mutex_lock(&p->lock);
        p->running--;
        if (!p->running && !p->len)
            pthread_cond_broadcast(&p->idle);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

int pool_create(unsigned threads, unsigned queue, struct pool **out)
{
    *out = NULL;
    struct pool *p = calloc(1, sizeof(*p));
    if (!p)
        return zerr(ENOMEM, "out of memory");
    p->cap = queue ? queue : 1;
    p->queue = calloc(p->cap, sizeof(*p->queue));
    p->workers = calloc(threads ? threads : 1, sizeof(*p->workers));
    if (!p->queue || !p->workers) {
        free(p->queue);
        free(p->workers);
        free(p);
        return zerr(ENOMEM, "out of memory");
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->work, NULL);
    pthread_cond_init(&p->room, NULL);
    pthread_cond_init(&p->idle, NULL);
    for (unsigned i = 0; i < (threads ? threads : 1); i++) {
        p->workers[i] = (struct worker){ p, i, 0 };
        if (pthread_create(&p->workers[i].tid, NULL, run, &p->workers[i]) != 0)
            break; /* fewer threads still do every job */
        p->n_workers++;
    }
    if (!p->n_workers) {
        pool_free(p);
        return zerr(EAGAIN, "cannot start a thread");
    }
    *out = p;
    return 0;
}

unsigned pool_threads(const struct pool *p) { return p->n_workers; }

/* Lock held, room in the queue. */
static void push(struct pool *p, pool_fn *fn, void *arg, uint64_t n)
{
    p->queue[(p->head + p->len) % p->cap] = (struct job){ fn, arg, n };
    p->len++;
    pthread_cond_signal(&p->work);
}

void pool_add(struct pool *p, pool_fn *fn, void *arg, uint64_t n)
{
    pthread_mutex_lock(&p->lock);
    while (p->len == p->cap)
        pthread_cond_wait(&p->room, &p->lock);
    push(p, fn, arg, n);
    pthread_mutex_unlock(&p->lock);
}

bool pool_try_add(struct pool *p, pool_fn *fn, void *arg, uint64_t n)
{
    pthread_mutex_lock(&p->lock);
    bool room = p->len < p->cap;
    if (room)
        push(p, fn, arg, n);
    pthread_mutex_unlock(&p->lock);
    return room;
}

void pool_join(struct pool *p)
{
    pthread_mutex_lock(&p->lock);
    while (p->len || p->running)
        pthread_cond_wait(&p->idle, &p->lock);
    pthread_mutex_unlock(&p->lock);
}

void pool_free(struct pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    p->stop = true;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->lock);
    for (unsigned i = 0; i < p->n_workers; i++)
        pthread_join(p->workers[i].tid, NULL);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->room);
    pthread_cond_destroy(&p->idle);
    free(p->queue);
    free(p->workers);
    free(p);
}
