/* error.c - per-thread error messages and the first-failure keeper. */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zcow.h"

static _Thread_local char message[512];

static int vset(int err, int with_errno, const char *fmt, va_list ap)
{
    int n = vsnprintf(message, sizeof(message), fmt, ap);
    if (with_errno && n >= 0 && (size_t)n < sizeof(message))
        snprintf(message + n, sizeof(message) - (size_t)n, ": %s", strerror(err));
    return -err;
}

int zerr(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = vset(err, 0, fmt, ap);
    va_end(ap);
    return r;
}

int zerr_sys(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = vset(err, 1, fmt, ap);
    va_end(ap);
    return r;
}

int zerr_is_set(void) { return message[0] != 0; }
void zerr_clear(void) { message[0] = 0; }

const char *zcow_get_error(void) { return message; }

/* ---- the first-failure keeper -------------------------------------------- */

void zerr_first_init(struct zerr_first *f)
{
    atomic_init(&f->err, 0);
    pthread_mutex_init(&f->lock, NULL);
    f->at = 0;
    f->msg[0] = 0;
}

void zerr_first_destroy(struct zerr_first *f) { pthread_mutex_destroy(&f->lock); }

/* Keep ERR at AT if nothing is kept, or (ORDERED) if AT is before the kept
 * position. */
static int keep(struct zerr_first *f, int err, uint64_t at, int ordered)
{
    if (!err)
        return 0;
    pthread_mutex_lock(&f->lock);
    int cur = atomic_load(&f->err);
    if (!cur || (ordered && at < f->at)) {
        f->at = at;
        snprintf(f->msg, sizeof(f->msg), "%s", message);
        atomic_store(&f->err, err);
    }
    pthread_mutex_unlock(&f->lock);
    return err;
}

int zerr_keep(struct zerr_first *f, int err) { return keep(f, err, 0, 0); }

int zerr_keep_at(struct zerr_first *f, int err, uint64_t at) { return keep(f, err, at, 1); }

int zerr_kept(struct zerr_first *f)
{
    if (!atomic_load(&f->err))
        return 0;
    pthread_mutex_lock(&f->lock);
    int err = atomic_load(&f->err);
    /* A failure without a message still says which errno it was. */
    zerr(-err, "%s", f->msg[0] ? f->msg : strerror(-err));
    pthread_mutex_unlock(&f->lock);
    return err;
}

uint64_t zerr_kept_at(struct zerr_first *f)
{
    pthread_mutex_lock(&f->lock);
    uint64_t at = f->at;
    pthread_mutex_unlock(&f->lock);
    return at;
}

void vzsay(void (*fn)(void *opaque, const char *line), void *opaque, const char *fmt, va_list ap)
{
    if (!fn)
        return;
    char *line = NULL;
    int n = vasprintf(&line, fmt, ap);
    fn(opaque, n < 0 ? "(out of memory)" : line);
    free(line);
}

void zsay(void (*fn)(void *opaque, const char *line), void *opaque, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vzsay(fn, opaque, fmt, ap);
    va_end(ap);
}
