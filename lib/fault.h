/* fault.h - system calls with test-only fault injection.
 *
 * Only in test builds: fault.c compiled with ZCOW_FAULT_INJECTION (the
 * unit tests' library and the test binary tests/zcow-fault, see the
 * Makefile).  The shipped libzcow and zcow get plain calls from fault.c and
 * never read the variables below.
 *
 * In a test build, with ZCOW_FAULT="OP:N:ERR" in the environment, the Nth call of OP in the
 * process fails: OP is open, read, write, fsync, rename or alloc; ERR is an
 * errno name (EIO, ENOSPC, EINTR, ...), "short" (a write or read that
 * transfers half of what was asked) or "kill" (the process is killed with
 * SIGKILL before the call, as kill -9 at that instant would).  With ZCOW_FAULT_STATS=FILE the count
 * of calls of each OP is written to FILE at exit, so that a test can walk N
 * over every call.  Without these variables the wrappers are plain calls. */
#ifndef ZCOW_FAULT_H
#define ZCOW_FAULT_H

#include <stddef.h>
#include <sys/types.h>

int fault_open(const char *path, int flags, mode_t mode);
ssize_t fault_pread(int fd, void *buf, size_t len, off_t off);
ssize_t fault_pwrite(int fd, const void *buf, size_t len, off_t off);
struct iovec;
ssize_t fault_pwritev(int fd, const struct iovec *iov, int iovcnt, off_t off);
int fault_fsync(int fd);
int fault_rename(const char *from, const char *to);
/* With ZCOW_FAULT_DELAY_US=N, sleep a random 0..N microseconds: called
 * between allocation and write, to shake out races in stress tests. */
void fault_delay(void);

/* Returns nonzero when the next allocation of a buffer must fail. */
int fault_alloc_fails(void);

#endif
