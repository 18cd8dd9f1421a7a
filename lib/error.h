/* error.h - the per-thread error message behind zcow_get_error(), and the
 * one keeper of the first failure among threads. */
#ifndef ZCOW_ERROR_H
#define ZCOW_ERROR_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>

/* A line for the caller's message callback FN (nothing when FN is NULL):
 * the one way the library says what it did or found (a backup's
 * decisions, verify's and check's lines). */
void zsay(void (*fn)(void *opaque, const char *line), void *opaque, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void vzsay(void (*fn)(void *opaque, const char *line), void *opaque, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

/* Record "FMT..." as this thread's message and return -ERR (ERR > 0).
 * Messages follow git's style: lowercase, no full stop, the file in quotes
 * ("cannot open 'x.raw': No such file or directory"). */
int zerr(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The same, appending ": strerror(ERR)". */
int zerr_sys(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Has this thread's message been set since zerr_clear()? */
int zerr_is_set(void);
void zerr_clear(void);

/* The first failure among threads, kept with its message, so that any
 * thread returning it (a worker's caller, a later write on a handle whose
 * I/O failed: a sticky error) can still say what failed.  Thread-safe:
 * every function may be called from many threads at once, with or without
 * the caller's own locks held (the keeper's lock is taken last and held
 * for a copy only).  The users: the copy engine and compare (the failure
 * of the lowest offset: zerr_keep_at), the writer and its write cache
 * (sticky I/O errors). */
struct zerr_first {
    atomic_int err;       /* negative errno, or 0; read without the lock */
    pthread_mutex_t lock; /* guards at and msg */
    uint64_t at;          /* zerr_keep_at()'s position of err */
    char msg[512];        /* the message of the thread that failed */
};

void zerr_first_init(struct zerr_first *f);
void zerr_first_destroy(struct zerr_first *f);

/* Keep ERR (negative) with the calling thread's message, unless a failure
 * is kept already; ERR 0 keeps nothing.  Returns ERR, so that a caller can
 * `return zerr_keep(f, r);`. */
int zerr_keep(struct zerr_first *f, int err);

/* Keep ERR, at position AT (an offset), unless a failure at AT or before
 * it is kept already: what is kept is the failure of the lowest position,
 * whichever thread came first.  Returns ERR. */
int zerr_keep_at(struct zerr_first *f, int err, uint64_t at);

/* The kept failure (0 if none), cheaply, without its message: for loops
 * that stop once anything failed. */
static inline int zerr_failed(struct zerr_first *f) { return atomic_load(&f->err); }

/* The kept failure (0 if none), its message made the calling thread's. */
int zerr_kept(struct zerr_first *f);

/* The position given with the kept failure (0 if none, or zerr_keep). */
uint64_t zerr_kept_at(struct zerr_first *f);

#endif
