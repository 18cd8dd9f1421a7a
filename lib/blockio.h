/* blockio.h - file I/O for images and sources: O_DIRECT with a fallback,
 * full reads and writes, page dropping, fsync, temporary files.
 * Every failure sets the thread's message naming the file and operation.
 * Every system call that touches data goes through here, so that fault
 * injection (fault.h) sees them all. */
#ifndef ZCOW_BLOCKIO_H
#define ZCOW_BLOCKIO_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* O_DIRECT alignment of buffers, offsets and lengths.  4 KiB suits every
 * device we know of (512e and 4Kn disks). */
#define BLK_ALIGN 4096u

struct blk {
    int fd;
    char *path;      /* the name the user knows the file by (for messages) */
    char *temp_path; /* set while an atomic file has its temporary name */
    bool direct;     /* opened with O_DIRECT */
    bool drop_pages; /* drop written ranges from the page cache */
    bool is_blockdev;
};

/* Open PATH for reading; DIRECT asks for O_DIRECT, silently dropped where
 * the file system refuses it. */
int blk_open_read(struct blk *b, const char *path, bool direct);

/* Create PATH for writing (truncating it), or with ATOMIC a temporary file
 * beside it (named PATH.zcow-tmp-XXXXXX) to be renamed by blk_commit().
 * DIRECT asks for O_DIRECT; where refused, the file is opened through the
 * page cache with drop_pages set, and one notice is printed on stderr. */
int blk_create(struct blk *b, const char *path, bool direct, bool drop_pages, bool atomic);

/* Write all of LEN bytes at OFF (retrying short writes and EINTR). */
int blk_pwrite(struct blk *b, const void *buf, size_t len, uint64_t off);

/* Write the IOVCNT buffers of IOV back to back at OFF, all of them. */
struct iovec;
int blk_pwritev(struct blk *b, struct iovec *iov, int iovcnt, uint64_t off);

/* Read up to LEN bytes at OFF; returns the count (short only at end of
 * file) or a negative errno.  Under O_DIRECT, BUF, OFF and LEN must be
 * aligned to BLK_ALIGN: see blk_read() for any other request. */
int64_t blk_pread(struct blk *b, void *buf, size_t len, uint64_t off);

/* Read all of LEN bytes at OFF, of any alignment; bytes past the end of
 * the file read as zero.  Under O_DIRECT, a request whose buffer, offset or
 * length is not aligned goes through an aligned bounce buffer (at most
 * BLK_BOUNCE_MAX bytes, reused piece by piece); an aligned one is read in
 * place.  Returns 0 or a negative errno. */
#define BLK_BOUNCE_MAX (1u << 20)
int blk_read(struct blk *b, void *buf, size_t len, uint64_t off);

/* Writes of any alignment: under O_DIRECT, a read-modify-write of the
 * aligned blocks around the bytes, serialised against the overlapping ones
 * in flight (two read-modify-writes of one block at once would lose one of
 * them), as QEMU's block layer does; without O_DIRECT a plain write, its
 * pages dropped (when drop_pages).  One struct blk_rmw per file written so;
 * thread-safe. */
struct blk_range;
struct blk_rmw {
    pthread_mutex_t lock;     /* guards ranges */
    pthread_cond_t cond;      /* a range left */
    struct blk_range *ranges; /* the aligned ranges being rewritten */
};
void blk_rmw_init(struct blk_rmw *m);
void blk_rmw_destroy(struct blk_rmw *m);
int blk_pwrite_rmw(struct blk *b, struct blk_rmw *m, const void *buf, size_t len, uint64_t off);

/* Write back and drop [OFF, OFF+LEN) from the page cache (when drop_pages). */
void blk_drop_range(struct blk *b, uint64_t off, uint64_t len);

/* Give [OFF, OFF+LEN) of a regular file back to the file system (a hole;
 * the size stays).  Best effort: where holes cannot be made, nothing. */
void blk_punch(struct blk *b, uint64_t off, uint64_t len);

int blk_fsync(struct blk *b);
int64_t blk_size(struct blk *b);

/* fsync, rename the temporary file over the path, fsync the directory. */
int blk_commit(struct blk *b);

/* Close; a temporary file not committed is removed. */
void blk_close(struct blk *b);

/* Buffers aligned for O_DIRECT (free with free()). */
void *blk_alloc(size_t len);
void *blk_zalloc(size_t len);

/* Remove every temporary file still registered; async-signal-safe. */
void blk_remove_temp_files(void);

#endif
