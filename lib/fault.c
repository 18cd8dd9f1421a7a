/* fault.c - fault injection for tests (see fault.h); plain system calls
 * unless compiled with ZCOW_FAULT_INJECTION. */
#include "fault.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#ifdef ZCOW_FAULT_INJECTION

enum fault_op { OP_OPEN, OP_READ, OP_WRITE, OP_FSYNC, OP_RENAME, OP_ALLOC, OP_COUNT };
static const char *const op_names[OP_COUNT] = { "open", "read", "write", "fsync", "rename", "alloc" };

#define FAULT_SHORT (-1)
#define FAULT_KILL (-2)

static struct {
    int enabled;        /* counting at all */
    int op;             /* which op fails, -1 none */
    long nth;
    int err;            /* errno, or FAULT_SHORT */
    const char *stats;
} cfg = { 0, -1, 0, 0, NULL };
static atomic_long counts[OP_COUNT];
static pthread_once_t once = PTHREAD_ONCE_INIT;

static int parse_errno(const char *s)
{
    static const struct { const char *name; int value; } names[] = {
        { "EIO", EIO }, { "ENOSPC", ENOSPC }, { "EINTR", EINTR }, { "EDQUOT", EDQUOT },
        { "ENOMEM", ENOMEM }, { "EACCES", EACCES }, { "EROFS", EROFS }, { "EFBIG", EFBIG },
        { "EAGAIN", EAGAIN }, { "ENOENT", ENOENT },
    };
    if (strcmp(s, "short") == 0)
        return FAULT_SHORT;
    if (strcmp(s, "kill") == 0)
        return FAULT_KILL;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(s, names[i].name) == 0)
            return names[i].value;
    return atoi(s) > 0 ? atoi(s) : EIO;
}

static void write_stats(void)
{
    FILE *f = fopen(cfg.stats, "w");
    if (!f)
        return;
    for (int i = 0; i < OP_COUNT; i++)
        fprintf(f, "%s %ld\n", op_names[i], atomic_load(&counts[i]));
    fclose(f);
}

static void configure(void)
{
    const char *spec = getenv("ZCOW_FAULT");
    cfg.stats = getenv("ZCOW_FAULT_STATS");
    if (cfg.stats && *cfg.stats) {
        cfg.enabled = 1;
        atexit(write_stats);
    }
    if (!spec || !*spec)
        return;
    char op[16] = "", err[16] = "";
    long nth = 0;
    if (sscanf(spec, "%15[a-z]:%ld:%15s", op, &nth, err) != 3)
        return;
    for (int i = 0; i < OP_COUNT; i++)
        if (strcmp(op, op_names[i]) == 0)
            cfg.op = i;
    cfg.nth = nth;
    cfg.err = parse_errno(err);
    cfg.enabled = 1;
}

/* Count one call of OP; returns the injected error (or 0). */
static int hit(enum fault_op op)
{
    pthread_once(&once, configure);
    if (!cfg.enabled)
        return 0;
    long n = atomic_fetch_add(&counts[op], 1) + 1;
    if (cfg.op != (int)op || n != cfg.nth)
        return 0;
    if (cfg.err == FAULT_KILL) /* as kill -9 would, before the call */
        raise(SIGKILL);
    return cfg.err;
}

int fault_open(const char *path, int flags, mode_t mode)
{
    int e = hit(OP_OPEN);
    if (e > 0) {
        errno = e;
        return -1;
    }
    return open(path, flags, mode);
}

ssize_t fault_pread(int fd, void *buf, size_t len, off_t off)
{
    int e = hit(OP_READ);
    if (e == FAULT_SHORT && len > 1)
        len /= 2;
    else if (e > 0) {
        errno = e;
        return -1;
    }
    return pread(fd, buf, len, off);
}

ssize_t fault_pwrite(int fd, const void *buf, size_t len, off_t off)
{
    int e = hit(OP_WRITE);
    if (e == FAULT_SHORT && len > 1)
        len /= 2;
    else if (e > 0) {
        errno = e;
        return -1;
    }
    return pwrite(fd, buf, len, off);
}

/* Counted as a write; "short" writes half of the first buffer. */
ssize_t fault_pwritev(int fd, const struct iovec *iov, int iovcnt, off_t off)
{
    int e = hit(OP_WRITE);
    if (e == FAULT_SHORT && iov[0].iov_len > 1)
        return pwrite(fd, iov[0].iov_base, iov[0].iov_len / 2, off);
    if (e > 0) {
        errno = e;
        return -1;
    }
    return pwritev(fd, iov, iovcnt, off);
}

int fault_fsync(int fd)
{
    int e = hit(OP_FSYNC);
    if (e > 0) {
        errno = e;
        return -1;
    }
    return fsync(fd);
}

int fault_rename(const char *from, const char *to)
{
    int e = hit(OP_RENAME);
    if (e > 0) {
        errno = e;
        return -1;
    }
    return rename(from, to);
}

static long delay_us = -1;
static pthread_once_t delay_once = PTHREAD_ONCE_INIT;
static void read_delay(void)
{
    const char *v = getenv("ZCOW_FAULT_DELAY_US");
    delay_us = v ? atol(v) : 0;
}

void fault_delay(void)
{
    pthread_once(&delay_once, read_delay);
    if (delay_us <= 0)
        return;
    static _Thread_local unsigned seed;
    if (!seed)
        seed = (unsigned)(uintptr_t)&seed ^ (unsigned)getpid();
    usleep((useconds_t)(rand_r(&seed) % (delay_us + 1)));
}

int fault_alloc_fails(void) { return hit(OP_ALLOC) != 0; }

#else /* !ZCOW_FAULT_INJECTION: the shipped library */

int fault_open(const char *path, int flags, mode_t mode) { return open(path, flags, mode); }

ssize_t fault_pread(int fd, void *buf, size_t len, off_t off) { return pread(fd, buf, len, off); }

ssize_t fault_pwrite(int fd, const void *buf, size_t len, off_t off)
{
    return pwrite(fd, buf, len, off);
}

ssize_t fault_pwritev(int fd, const struct iovec *iov, int iovcnt, off_t off)
{
    return pwritev(fd, iov, iovcnt, off);
}

int fault_fsync(int fd) { return fsync(fd); }

int fault_rename(const char *from, const char *to) { return rename(from, to); }

void fault_delay(void) {}

int fault_alloc_fails(void) { return 0; }

#endif
