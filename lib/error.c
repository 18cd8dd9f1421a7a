/* error.c - per-thread error messages. */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
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

void zerr_keep(struct zerr_first *f, int err)
{
    if (err && !f->err) {
        f->err = err;
        snprintf(f->msg, sizeof(f->msg), "%s", message);
    }
}

int zerr_kept(const struct zerr_first *f)
{
    if (f->err)
        zerr(-f->err, "%s", f->msg);
    return f->err;
}

int zerr_is_set(void) { return message[0] != 0; }
void zerr_clear(void) { message[0] = 0; }

const char *zcow_get_error(void) { return message; }
