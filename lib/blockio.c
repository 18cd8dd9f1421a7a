/* blockio.c - file I/O with O_DIRECT, fallback, page dropping, temp files. */
#include "blockio.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "fault.h"
#include "zcow.h"

/* Temporary files of this process, for removal from signal handlers:
 * slots hold strdup'ed paths, taken and released with atomic exchanges. */
#define MAX_TEMP_FILES 64
static _Atomic(char *) temp_files[MAX_TEMP_FILES];

static void temp_register(char *path)
{
    for (int i = 0; i < MAX_TEMP_FILES; i++) {
        char *expected = NULL;
        if (atomic_compare_exchange_strong(&temp_files[i], &expected, path))
            return;
    }
}

static void temp_unregister(const char *path)
{
    for (int i = 0; i < MAX_TEMP_FILES; i++) {
        char *p = atomic_load(&temp_files[i]);
        if (p == path) {
            atomic_store(&temp_files[i], NULL);
            return;
        }
    }
}

void blk_remove_temp_files(void)
{
    for (int i = 0; i < MAX_TEMP_FILES; i++) {
        char *p = atomic_exchange(&temp_files[i], NULL);
        if (p)
            unlink(p); /* leak the string: we are in a signal handler */
    }
}

void zcow_remove_temp_files(void) { blk_remove_temp_files(); }

void *blk_alloc(size_t len)
{
    if (fault_alloc_fails()) /* ZCOW_FAULT=alloc:N:ENOMEM (tests) */
        return NULL;
    void *p = NULL;
    size_t rounded = (len + BLK_ALIGN - 1) & ~(size_t)(BLK_ALIGN - 1);
    if (posix_memalign(&p, BLK_ALIGN, rounded ? rounded : BLK_ALIGN) != 0)
        return NULL;
    return p;
}

void *blk_zalloc(size_t len)
{
    void *p = blk_alloc(len);
    if (p)
        memset(p, 0, len);
    return p;
}

static void blk_init(struct blk *b)
{
    memset(b, 0, sizeof(*b));
    b->fd = -1;
}

int blk_open_read(struct blk *b, const char *path, bool direct)
{
    blk_init(b);
    int fd = -1;
    if (direct) {
        fd = fault_open(path, O_RDONLY | O_CLOEXEC | O_DIRECT, 0);
        if (fd >= 0)
            b->direct = true;
    }
    if (fd < 0)
        fd = fault_open(path, O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0)
        return zerr_sys(errno, "cannot open '%s'", path);
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        close(fd);
        return zerr(EISDIR, "cannot read '%s': Is a directory", path);
    }
    b->is_blockdev = S_ISBLK(st.st_mode);
    b->fd = fd;
    b->path = strdup(path);
    if (!b->path) {
        close(fd);
        return zerr(ENOMEM, "out of memory");
    }
    return 0;
}

/* Open a new file under NAME exclusively; with O_DIRECT first if asked. */
static int open_new(const char *name, bool atomic, bool *direct)
{
    int flags = O_RDWR | O_CREAT | O_CLOEXEC | (atomic ? O_EXCL : O_TRUNC);
    if (*direct) {
        int fd = fault_open(name, flags | O_DIRECT, 0644);
        if (fd >= 0 || errno != EINVAL)
            return fd;
        *direct = false; /* the file system refuses O_DIRECT (e.g. tmpfs) */
        if (atomic)
            unlink(name); /* O_EXCL: the failed open may have created it */
    }
    return fault_open(name, flags, 0644);
}

int blk_create(struct blk *b, const char *path, bool direct, bool drop_pages, bool atomic)
{
    blk_init(b);
    bool want_direct = direct;
    char *name = NULL;
    int fd = -1;
    if (atomic) {
        size_t n = strlen(path) + 32;
        name = malloc(n);
        if (!name)
            return zerr(ENOMEM, "out of memory");
        unsigned seed = (unsigned)getpid() ^ (unsigned)time(NULL) ^ (unsigned)(uintptr_t)b;
        for (int tries = 0; tries < 100; tries++) {
            seed = seed * 1103515245u + 12345u;
            snprintf(name, n, "%s.zcow-tmp-%06x", path, (seed >> 8) & 0xffffff);
            fd = open_new(name, true, &direct);
            if (fd >= 0 || errno != EEXIST)
                break;
        }
    } else {
        fd = open_new(path, false, &direct);
    }
    if (fd < 0) {
        int e = errno;
        free(name);
        return zerr_sys(e, "cannot create '%s'", path);
    }
    if (want_direct && !direct) {
        static atomic_int noticed;
        if (!atomic_exchange(&noticed, 1))
            fprintf(stderr,
                    "zcow: '%s': file system refuses O_DIRECT; writing through the "
                    "page cache and dropping written pages\n",
                    path);
        drop_pages = true;
    }
    struct stat st;
    if (fstat(fd, &st) == 0)
        b->is_blockdev = S_ISBLK(st.st_mode);
    b->fd = fd;
    b->direct = direct;
    b->drop_pages = drop_pages && !direct;
    b->path = strdup(path);
    b->temp_path = name;
    if (name)
        temp_register(name);
    if (!b->path) {
        blk_close(b);
        return zerr(ENOMEM, "out of memory");
    }
    return 0;
}

int blk_pwritev(struct blk *b, struct iovec *iov, int iovcnt, uint64_t off)
{
    while (iovcnt > 0) {
        ssize_t n = fault_pwritev(b->fd, iov, iovcnt > IOV_MAX ? IOV_MAX : iovcnt, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return zerr_sys(errno, "cannot write to '%s' at offset %llu", b->path,
                            (unsigned long long)off);
        }
        if (n == 0)
            return zerr(EIO, "cannot write to '%s' at offset %llu: no progress", b->path,
                        (unsigned long long)off);
        off += (uint64_t)n;
        /* Skip what was written; a short write resumes mid-buffer. */
        while (iovcnt > 0 && (size_t)n >= iov->iov_len) {
            n -= (ssize_t)iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt > 0 && n > 0) {
            iov->iov_base = (char *)iov->iov_base + n;
            iov->iov_len -= (size_t)n;
        }
    }
    return 0;
}

int blk_pwrite(struct blk *b, const void *buf, size_t len, uint64_t off)
{
    struct iovec v = { (void *)buf, len };
    return blk_pwritev(b, &v, 1, off);
}

int64_t blk_pread(struct blk *b, void *buf, size_t len, uint64_t off)
{
    char *p = buf;
    size_t done = 0;
    int stuck = 0;
    while (done < len) {
        ssize_t n = fault_pread(b->fd, p + done, len - done, (off_t)(off + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return zerr_sys(errno, "cannot read '%s' at offset %llu", b->path,
                            (unsigned long long)(off + done));
        }
        if (n == 0)
            break;
        done += (size_t)n;
        /* O_DIRECT: a read that ends short of an aligned offset is at the
         * end of the file, or was cut short (a signal, a network or FUSE
         * file system): then read again from the last aligned offset, as
         * O_DIRECT cannot resume in the middle of a block.  Taking it for
         * the end would turn the rest of the request into zeros. */
        if (b->direct && ((off + done) % BLK_ALIGN) != 0) {
            struct stat st;
            if (fstat(b->fd, &st) != 0 || !S_ISREG(st.st_mode) ||
                off + done >= (uint64_t)st.st_size)
                break;
            size_t back = done & ~(size_t)(BLK_ALIGN - 1);
            if (back <= done - (size_t)n && ++stuck > 3)
                return zerr(EIO,
                            "cannot read '%s' at offset %llu: short read before the end "
                            "of the file",
                            b->path, (unsigned long long)(off + done));
            if (back > done - (size_t)n)
                stuck = 0;
            done = back;
        }
    }
    return (int64_t)done;
}

static bool aligned(uint64_t v) { return (v & (BLK_ALIGN - 1)) == 0; }

int blk_read(struct blk *b, void *buf, size_t len, uint64_t off)
{
    uint8_t *p = buf;
    if (!b->direct || (aligned((uintptr_t)buf) && aligned(off) && aligned(len))) {
        int64_t n = blk_pread(b, buf, len, off);
        if (n < 0)
            return (int)n;
        memset(p + n, 0, len - (size_t)n);
        return 0;
    }
    size_t cap = len + 2 * BLK_ALIGN < BLK_BOUNCE_MAX ? len + 2 * BLK_ALIGN : BLK_BOUNCE_MAX;
    uint8_t *bounce = blk_alloc(cap);
    if (!bounce)
        return zerr(ENOMEM, "out of memory");
    while (len > 0) {
        uint64_t start = off & ~(uint64_t)(BLK_ALIGN - 1);
        size_t head = (size_t)(off - start);
        size_t piece = len < cap - head - BLK_ALIGN ? len : cap - head - BLK_ALIGN;
        size_t alen = (head + piece + BLK_ALIGN - 1) & ~(size_t)(BLK_ALIGN - 1);
        int64_t n = blk_pread(b, bounce, alen, start);
        if (n < 0) {
            free(bounce);
            return (int)n;
        }
        size_t have = (size_t)n > head ? (size_t)n - head : 0;
        if (have > piece)
            have = piece;
        memcpy(p, bounce + head, have);
        memset(p + have, 0, piece - have);
        p += piece;
        off += piece;
        len -= piece;
    }
    free(bounce);
    return 0;
}

struct blk_range {
    uint64_t start, end;
    struct blk_range *next;
};

void blk_rmw_init(struct blk_rmw *m)
{
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->cond, NULL);
    m->ranges = NULL;
}

void blk_rmw_destroy(struct blk_rmw *m)
{
    pthread_mutex_destroy(&m->lock);
    pthread_cond_destroy(&m->cond);
}

/* Wait until nothing in flight overlaps [START, END), then claim it. */
static void range_lock(struct blk_rmw *m, struct blk_range *me, uint64_t start, uint64_t end)
{
    pthread_mutex_lock(&m->lock);
    for (;;) {
        bool overlap = false;
        for (struct blk_range *r = m->ranges; r && !overlap; r = r->next)
            overlap = r->start < end && start < r->end;
        if (!overlap)
            break;
        pthread_cond_wait(&m->cond, &m->lock);
    }
    me->start = start;
    me->end = end;
    me->next = m->ranges;
    m->ranges = me;
    pthread_mutex_unlock(&m->lock);
}

static void range_unlock(struct blk_rmw *m, struct blk_range *me)
{
    pthread_mutex_lock(&m->lock);
    struct blk_range **pp = &m->ranges;
    while (*pp != me)
        pp = &(*pp)->next;
    *pp = me->next;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
}

int blk_pwrite_rmw(struct blk *b, struct blk_rmw *m, const void *buf, size_t len, uint64_t off)
{
    if (!b->direct) {
        int r = blk_pwrite(b, buf, len, off);
        if (r == 0)
            blk_drop_range(b, off, len);
        return r;
    }
    uint64_t start = off & ~(uint64_t)(BLK_ALIGN - 1);
    uint64_t end = (off + len + BLK_ALIGN - 1) & ~(uint64_t)(BLK_ALIGN - 1);
    /* A device whose size is not a multiple of BLK_ALIGN: its last block
     * is cut at its end (a multiple of its logical block size), as writing
     * past it fails. */
    int64_t dev_end = b->is_blockdev ? blk_size(b) : -1;
    if (dev_end > 0 && (uint64_t)dev_end >= off + len && (uint64_t)dev_end < end)
        end = (uint64_t)dev_end;
    uint8_t *block = blk_alloc(end - start);
    if (!block)
        return zerr(ENOMEM, "out of memory");
    struct blk_range me;
    range_lock(m, &me, start, end);
    int r = blk_read(b, block, end - start, start);
    if (r == 0) {
        memcpy(block + (off - start), buf, len);
        r = blk_pwrite(b, block, end - start, start);
    }
    range_unlock(m, &me);
    free(block);
    return r;
}

void blk_drop_range(struct blk *b, uint64_t off, uint64_t len)
{
    if (!b->drop_pages)
        return;
    /* DONTNEED drops clean pages only: write the range back first. */
    sync_file_range(b->fd, (off_t)off, (off_t)len,
                    SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                        SYNC_FILE_RANGE_WAIT_AFTER);
    posix_fadvise(b->fd, (off_t)off, (off_t)len, POSIX_FADV_DONTNEED);
}

void blk_punch(struct blk *b, uint64_t off, uint64_t len)
{
    if (!b->is_blockdev)
        (void)fallocate(b->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len);
}

int blk_fsync(struct blk *b)
{
    if (fault_fsync(b->fd) != 0)
        return zerr_sys(errno, "cannot fsync '%s'", b->path);
    return 0;
}

int64_t blk_size(struct blk *b)
{
    off_t end = lseek(b->fd, 0, SEEK_END);
    if (end < 0)
        return zerr_sys(errno, "cannot seek in '%s'", b->path);
    return end;
}

static int fsync_dir_of(const char *path)
{
    char *copy = strdup(path);
    if (!copy)
        return zerr(ENOMEM, "out of memory");
    const char *dir = dirname(copy);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int r = 0;
    if (fd < 0 || fault_fsync(fd) != 0)
        r = zerr_sys(errno, "cannot fsync directory '%s'", dir);
    if (fd >= 0)
        close(fd);
    free(copy);
    return r;
}

int blk_commit(struct blk *b)
{
    int r = blk_fsync(b);
    if (r < 0 || !b->temp_path)
        return r;
    if (fault_rename(b->temp_path, b->path) != 0)
        return zerr_sys(errno, "cannot rename '%s' to '%s'", b->temp_path, b->path);
    temp_unregister(b->temp_path);
    free(b->temp_path);
    b->temp_path = NULL;
    return fsync_dir_of(b->path);
}

void blk_close(struct blk *b)
{
    if (b->fd >= 0)
        close(b->fd);
    b->fd = -1;
    if (b->temp_path) {
        temp_unregister(b->temp_path);
        unlink(b->temp_path);
        free(b->temp_path);
        b->temp_path = NULL;
    }
    free(b->path);
    b->path = NULL;
}
