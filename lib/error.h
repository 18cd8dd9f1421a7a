/* error.h - the per-thread error message behind zcow_get_error(). */
#ifndef ZCOW_ERROR_H
#define ZCOW_ERROR_H

/* Record "FMT..." as this thread's message and return -ERR (ERR > 0).
 * Messages follow git's style: lowercase, no full stop, the file in quotes
 * ("cannot open 'x.raw': No such file or directory"). */
int zerr(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The same, appending ": strerror(ERR)". */
int zerr_sys(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The first failure among worker threads, kept with its message so that
 * the thread that reports it can say what failed.  Callers serialise
 * access with their own lock. */
struct zerr_first {
    int err;            /* negative errno, or 0 */
    char msg[512];
};

/* Keep ERR and the calling thread's message, unless one is kept. */
void zerr_keep(struct zerr_first *f, int err);

/* The kept error (0 if none), its message made the calling thread's. */
int zerr_kept(const struct zerr_first *f);

/* Has this thread's message been set since zerr_clear()? */
int zerr_is_set(void);
void zerr_clear(void);

#endif
