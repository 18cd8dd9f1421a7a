/* compare.c - `zcow compare`: do two images hold the same guest bytes?
 * Reads both through the public reader in 4 MiB blocks on a few threads
 * of a pool (pool.h);
 * the first mismatch, at 512-byte granularity as qemu-img compare reports
 * it, is the smallest any thread found. */
#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "options.h"
#include "pool.h"
#include "zcow.h"

#define CMP_BLOCK (4u << 20)
#define CMP_MAX_THREADS 4
#define SECTOR 512u

struct cmp {
    zcow_image *a, *b;
    uint64_t common;         /* bytes both images have */
    uint64_t total;          /* bytes of the longer one */
    zcow_image *longer;      /* NULL when the sizes are equal */
    _Atomic uint64_t found;  /* smallest mismatch offset; UINT64_MAX none */
    struct zerr_first first; /* the read error of the lowest block */
    struct {
        uint8_t *a, *b;
    } bufs[CMP_MAX_THREADS]; /* per pool thread */
};

static void record_mismatch(struct cmp *c, uint64_t off)
{
    uint64_t cur = atomic_load(&c->found);
    while (off < cur && !atomic_compare_exchange_weak(&c->found, &cur, off))
        ;
}

/* Offset of the first byte where X and Y differ (N if none). */
static size_t first_difference(const uint8_t *x, const uint8_t *y, size_t n)
{
    size_t i = 0;
    /* Narrow down by sectors with memcmp, then by bytes. */
    while (i < n) {
        size_t len = n - i < SECTOR ? n - i : SECTOR;
        if (memcmp(x + i, y + i, len))
            break;
        i += len;
    }
    while (i < n && x[i] == y[i])
        i++;
    return i;
}

static size_t first_nonzero(const uint8_t *x, size_t n)
{
    static const uint8_t zero[SECTOR];
    size_t i = 0;
    while (i < n) {
        size_t len = n - i < SECTOR ? n - i : SECTOR;
        if (memcmp(x + i, zero, len))
            break;
        i += len;
    }
    while (i < n && !x[i])
        i++;
    return i;
}

/* Compare block [OFF, OFF+LEN): both images below c->common, the longer
 * one against zero above it.  Returns a negative errno on a read error. */
static int compare_block(struct cmp *c, uint8_t *ba, uint8_t *bb, uint64_t off, size_t len)
{
    uint64_t end = off + len;
    if (off < c->common) {
        size_t n = (size_t)((end < c->common ? end : c->common) - off);
        int r = zcow_read(c->a, off, ba, n);
        if (r == 0)
            r = zcow_read(c->b, off, bb, n);
        if (r < 0)
            return r;
        size_t d = first_difference(ba, bb, n);
        if (d < n) {
            record_mismatch(c, (off + d) & ~(uint64_t)(SECTOR - 1));
            return 0;
        }
    }
    if (end > c->common) {
        uint64_t from = off > c->common ? off : c->common;
        size_t n = (size_t)(end - from);
        int r = zcow_read(c->longer, from, ba, n);
        if (r < 0)
            return r;
        size_t d = first_nonzero(ba, n);
        if (d < n)
            record_mismatch(c, (from + d) & ~(uint64_t)(SECTOR - 1));
    }
    return 0;
}

/* Is there nothing to learn from the block at OFF: an earlier mismatch
 * or read error is known? */
static bool settled_before(struct cmp *c, uint64_t off)
{
    return off >= atomic_load(&c->found) ||
           (zerr_failed(&c->first) && zerr_kept_at(&c->first) < off);
}

/* A pool job: compare block N with this worker's buffers. */
static void compare_job(void *arg, uint64_t n, unsigned worker)
{
    struct cmp *c = arg;
    uint64_t off = n * CMP_BLOCK;
    if (settled_before(c, off))
        return;
    size_t len = (size_t)(c->total - off < CMP_BLOCK ? c->total - off : CMP_BLOCK);
    int r = compare_block(c, c->bufs[worker].a, c->bufs[worker].b, off, len);
    if (r < 0)
        zerr_keep_at(&c->first, r, off);
}

/* Compare every block, in order, on up to CMP_MAX_THREADS threads. */
static int compare_all(struct cmp *c)
{
    uint64_t blocks = (c->total + CMP_BLOCK - 1) / CMP_BLOCK;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned n = cpus > CMP_MAX_THREADS ? CMP_MAX_THREADS : cpus < 1 ? 1 : (unsigned)cpus;
    if (n > blocks)
        n = blocks ? (unsigned)blocks : 1;
    struct pool *p;
    int r = pool_create(n, 2 * n, &p);
    if (r < 0)
        return r;
    n = pool_threads(p);
    for (unsigned i = 0; i < n && r == 0; i++)
        if (posix_memalign((void **)&c->bufs[i].a, 4096, CMP_BLOCK) ||
            posix_memalign((void **)&c->bufs[i].b, 4096, CMP_BLOCK))
            r = zerr(ENOMEM, "out of memory");
    /* Blocks are queued and taken in order: once one settles the answer,
     * no later block can change it. */
    for (uint64_t i = 0; i < blocks && r == 0 && !settled_before(c, i * CMP_BLOCK); i++)
        pool_add(p, compare_job, c, i);
    pool_free(p);
    for (unsigned i = 0; i < n; i++) {
        free(c->bufs[i].a);
        free(c->bufs[i].b);
    }
    return r;
}

static int image_size(zcow_image *img, uint64_t *size)
{
    struct zcow_info info;
    int r = zcow_get_info(img, &info);
    if (r < 0)
        return r;
    *size = info.virtual_size;
    return 0;
}

int zcow_compare_images(zcow_image *a, zcow_image *b, int strict, uint64_t *mismatch_offset)
{
    uint64_t dummy;
    if (!mismatch_offset)
        mismatch_offset = &dummy;
    *mismatch_offset = 0;
    if (!a || !b)
        return zerr(EINVAL, "zcow_compare_images: missing image");
    uint64_t sa = 0, sb = 0;
    int r = image_size(a, &sa);
    if (r == 0)
        r = image_size(b, &sb);
    if (r < 0)
        return r;
    if (strict && sa != sb)
        return ZCOW_COMPARE_SIZE;

    struct cmp c = {
        .a = a,
        .b = b,
        .common = sa < sb ? sa : sb,
        .total = sa > sb ? sa : sb,
        .longer = sa > sb   ? a
                  : sb > sa ? b
                            : NULL,
    };
    atomic_init(&c.found, UINT64_MAX);
    zerr_first_init(&c.first);

    r = compare_all(&c);
    if (r < 0) {
        zerr_first_destroy(&c.first);
        return r;
    }

    /* Every block below the lowest failed or mismatching one was compared
     * (a block is skipped only when an earlier one settled the answer), so
     * whichever of the two comes first decides. */
    uint64_t found = atomic_load(&c.found);
    if (zerr_failed(&c.first) && zerr_kept_at(&c.first) <= found)
        r = zerr_kept(&c.first);
    else if (found != UINT64_MAX)
        r = ZCOW_COMPARE_CONTENT;
    else
        r = ZCOW_COMPARE_IDENTICAL;
    if (r == ZCOW_COMPARE_CONTENT)
        *mismatch_offset = found;
    zerr_first_destroy(&c.first);
    return r;
}

int zcow_compare(const char *a, const char *fa, const char *b, const char *fb, int strict,
                 uint64_t *mismatch_offset)
{
    zcow_image *ia = NULL, *ib = NULL;
    int r = zcow_open(a, fa, 1, &ia);
    if (r == 0)
        r = zcow_open(b, fb, 1, &ib);
    if (r == 0)
        r = zcow_compare_images(ia, ib, strict, mismatch_offset);
    zcow_close(ia);
    zcow_close(ib);
    return r;
}
