/* qcow2_cache.c - the table cache (see qcow2_cache.h). */
#include "qcow2_cache.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

int qcow2_cache_init(struct qcow2_cache *c, pthread_mutex_t *lock, struct blk *file,
                     uint32_t table_size, unsigned n_slots)
{
    memset(c, 0, sizeof(*c));
    if (n_slots < QCOW2_CACHE_MIN_SLOTS)
        n_slots = QCOW2_CACHE_MIN_SLOTS;
    if (n_slots > QCOW2_CACHE_MAX_SLOTS)
        n_slots = QCOW2_CACHE_MAX_SLOTS;
    c->slots = calloc(n_slots, sizeof(*c->slots));
    if (!c->slots)
        return zerr(ENOMEM, "out of memory");
    c->lock = lock;
    c->file = file;
    c->table_size = table_size;
    c->n_slots = n_slots;
    pthread_cond_init(&c->cond, NULL);
    return 0;
}

void qcow2_cache_free(struct qcow2_cache *c)
{
    if (!c->slots)
        return;
    for (unsigned i = 0; i < c->n_slots; i++)
        free(c->slots[i].buf);
    free(c->slots);
    pthread_cond_destroy(&c->cond);
    c->slots = NULL;
}

static struct qcow2_cache_slot *find(struct qcow2_cache *c, uint64_t offset)
{
    for (unsigned i = 0; i < c->n_slots; i++)
        if (c->slots[i].offset == offset)
            return &c->slots[i];
    return NULL;
}

/* Write slot S's table, the lock dropped meanwhile (S busy). */
static int write_back(struct qcow2_cache *c, struct qcow2_cache_slot *s)
{
    s->busy = true;
    uint64_t offset = s->offset;
    pthread_mutex_unlock(c->lock);
    int r = blk_pwrite(c->file, s->buf, c->table_size, offset);
    if (r == 0)
        blk_drop_range(c->file, offset, c->table_size);
    pthread_mutex_lock(c->lock);
    s->busy = false;
    c->writes++;
    pthread_cond_broadcast(&c->cond);
    return r;
}

/* A free slot with its buffer, or 1 when the lock was dropped (to wait
 * for a busy slot or to write a victim back): look again. */
static int take_slot(struct qcow2_cache *c, struct qcow2_cache_slot **slot)
{
    struct qcow2_cache_slot *victim = NULL;
    *slot = NULL;
    for (unsigned i = 0; i < c->n_slots; i++) {
        struct qcow2_cache_slot *s = &c->slots[i];
        if (s->busy)
            continue;
        if (!s->offset) {
            victim = s;
            break;
        }
        if (!victim || s->last_use < victim->last_use)
            victim = s;
    }
    if (!victim) { /* every slot busy: wait for one */
        pthread_cond_wait(&c->cond, c->lock);
        return 1;
    }
    if (victim->offset && victim->dirty) {
        int r = write_back(c, victim);
        /* Written or lost: either way it leaves (a failure is the
         * caller's to keep). */
        victim->dirty = false;
        victim->offset = 0;
        return r < 0 ? r : 1;
    }
    victim->offset = 0;
    if (!victim->buf && !(victim->buf = blk_alloc(c->table_size)))
        return zerr(ENOMEM, "out of memory");
    *slot = victim;
    return 0;
}

int qcow2_cache_make_room(struct qcow2_cache *c)
{
    struct qcow2_cache_slot *s;
    int r;
    while ((r = take_slot(c, &s)) > 0)
        ;
    return r;
}

int qcow2_cache_get(struct qcow2_cache *c, uint64_t offset, uint8_t **table)
{
    *table = NULL;
    if (!offset)
        return zerr(EINVAL, "internal error: a table at offset 0");
    for (;;) {
        struct qcow2_cache_slot *s = find(c, offset);
        if (s && s->busy) {
            pthread_cond_wait(&c->cond, c->lock);
            continue;
        }
        if (s) {
            s->last_use = ++c->tick;
            *table = s->buf;
            return 0;
        }
        int r = take_slot(c, &s);
        if (r > 0)
            continue;
        if (r < 0)
            return r;
        s->offset = offset;
        s->dirty = false;
        s->busy = true;
        pthread_mutex_unlock(c->lock);
        r = blk_read(c->file, s->buf, c->table_size, offset);
        pthread_mutex_lock(c->lock);
        s->busy = false;
        c->reads++;
        pthread_cond_broadcast(&c->cond);
        if (r < 0) {
            s->offset = 0;
            return r;
        }
        s->last_use = ++c->tick;
        *table = s->buf;
        return 0;
    }
}

uint8_t *qcow2_cache_get_empty(struct qcow2_cache *c, uint64_t offset)
{
    for (unsigned i = 0; i < c->n_slots; i++) {
        struct qcow2_cache_slot *s = &c->slots[i];
        if (!s->offset && !s->busy && s->buf) {
            memset(s->buf, 0, c->table_size);
            s->offset = offset;
            s->dirty = true;
            s->last_use = ++c->tick;
            return s->buf;
        }
    }
    return NULL; /* no qcow2_cache_make_room() before: a bug */
}

void qcow2_cache_mark_dirty(struct qcow2_cache *c, const uint8_t *table)
{
    for (unsigned i = 0; i < c->n_slots; i++)
        if (c->slots[i].buf == table && c->slots[i].offset)
            c->slots[i].dirty = true;
}

int qcow2_cache_flush(struct qcow2_cache *c)
{
    for (unsigned i = 0; i < c->n_slots; i++) {
        struct qcow2_cache_slot *s = &c->slots[i];
        while (s->busy)
            pthread_cond_wait(&c->cond, c->lock);
        if (!s->offset || !s->dirty)
            continue;
        /* Clean from now: a change made while it is written marks it
         * dirty again. */
        s->dirty = false;
        int r = write_back(c, s);
        if (r < 0) {
            s->dirty = true;
            return r;
        }
    }
    return 0;
}
