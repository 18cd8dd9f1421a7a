/* writer.c - an image being written.
 *
 * The file grows by appending: cluster 0 is the header (written last), and
 * every data cluster, L2 table and refcount block is taken in order from
 * the allocation frontier (the allocator of qcow2_refcount.h).  Because
 * allocation only moves forward, the refcounts of every cluster below the
 * frontier are final; their refcount block is written as soon as the
 * frontier has passed it, so memory stays bounded whatever the image size.
 * L2 tables live in the table cache (qcow2_cache.h, write-back) and are
 * written when evicted.  Compressed streams go through the compressed write
 * cache (cwcache.h).  At close the last L2 tables, the L1 table, the last
 * refcount blocks, the refcount table and the header are written.
 *
 * A guest cluster written again gets new space at the frontier like any
 * other; its old place loses its references (qcow2_alloc_unref()): in
 * memory while its refcount block is, else by a read-modify-write of the
 * written block at close, where clusters left unreferenced are also
 * punched out of the file.  The old space is never handed out again, so
 * a reader or a write still using it harms nothing (QEMU's discard race
 * cannot happen), and the common path - each cluster written once - pays
 * only the look at the old entry it always made.
 *
 * Locking: one mutex (w->lock) guards the allocator, the L1 table, the
 * table cache and the write cache.  It is held only for bookkeeping and the
 * copy of a compressed chunk into the write cache: allocate, set the L2
 * entry, copy.  Compression happens before, and every write to the file
 * after, with the lock dropped (the table cache drops it itself while it
 * reads or writes a table). */
#include "writer.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "blockio.h"
#include "codec.h"
#include "cwcache.h"
#include "error.h"
#include "fault.h"
#include "qcow2.h"
#include "qcow2_cache.h"
#include "qcow2_ext.h"
#include "qcow2_l2.h"
#include "qcow2_refcount.h"
#include "reader.h"
#include "util.h"

#define REFCOUNT_ORDER 4          /* 16-bit refcounts, QEMU's default */
#define L2_CACHE_BYTES (8u << 20) /* L2 tables kept in memory */
#define CACHE_BYTES (16u << 20)   /* compressed write cache bound */

/* Work an operation leaves for after the unlock. */
struct pending {
    struct cw_ready ready;         /* runs of the write cache */
    struct qcow2_refblock *blocks; /* refcount blocks the allocator handed out */
};

struct writer {
    struct blk file;
    char *backing_file, *backing_format;
    unsigned cluster_bits;
    uint32_t cluster_size;
    uint64_t virtual_size;
    int type, level;
    bool compress; /* false: data clusters are written as they are */
    bool use_cache;

    pthread_mutex_t lock;
    struct zerr_first error;  /* sticky: the first failure, with its message */
    struct qcow2_alloc alloc; /* clusters, compressed bytes and refcounts */
    uint32_t l1_size;
    uint64_t *l1;          /* L2 table offsets, host order; 0 = none */
    struct qcow2_cache l2; /* the L2 tables, write-back */
    struct cwcache cache;  /* compressed streams (write cache on) */
    struct blk_rmw rmw;    /* compressed streams written where they land (off) */

    /* The backing file, opened by the first read of a cluster left to it. */
    pthread_mutex_t backing_lock;
    struct reader *backing;

    /* statistics */
    atomic_ullong n_compressed, n_normal, n_zero;
};

/* ---- errors --------------------------------------------------------------- */

/* Keep the first failure; every later call returns it. */
static int fail(struct writer *w, int err) { return zerr_keep(&w->error, err); }

static int sticky(struct writer *w) { return zerr_kept(&w->error); }

/* ---- per-thread buffers ---------------------------------------------------- */

static pthread_key_t tl_key;
static pthread_once_t tl_once = PTHREAD_ONCE_INIT;

struct tl_bufs {
    uint8_t *out;    /* compressed output */
    uint8_t *bounce; /* aligned copy of a cluster */
    size_t cap;
};

static void tl_free(void *p)
{
    struct tl_bufs *t = p;
    if (t) {
        free(t->out);
        free(t->bounce);
        free(t);
    }
}

static void tl_make_key(void) { pthread_key_create(&tl_key, tl_free); }

static struct tl_bufs *thread_bufs(size_t cap)
{
    pthread_once(&tl_once, tl_make_key);
    struct tl_bufs *t = pthread_getspecific(tl_key);
    if (t && t->cap >= cap)
        return t;
    if (!t) {
        t = calloc(1, sizeof(*t));
        if (!t || pthread_setspecific(tl_key, t) != 0) {
            free(t);
            return NULL;
        }
    }
    free(t->out);
    free(t->bounce);
    t->out = malloc(cap);
    t->bounce = blk_alloc(cap);
    t->cap = (t->out && t->bounce) ? cap : 0;
    return t->cap ? t : NULL;
}

/* ---- allocation ------------------------------------------------------------ */

/* What an allocator call left for the write cache: the allocator left the
 * open compressed cluster, so the cache closes it too. */
static void closed_compressed(struct writer *w, bool closed, struct pending *p)
{
    if (closed && w->use_cache)
        cw_close_open(&w->cache, &p->ready);
}

/* Hand the refcount blocks that are final to P, to be written. */
static int retire_refblocks(struct writer *w, struct pending *p)
{
    bool closed;
    int r = qcow2_alloc_retire(&w->alloc, &p->blocks, &closed);
    closed_compressed(w, closed, p);
    return r;
}

/* ---- L2 tables --------------------------------------------------------------- */

/* The L2 table for L1_INDEX, with the lock held: from the table cache, or
 * with CREATE a new one, allocated at the frontier (else *TABLE is NULL
 * where there is none).  May drop and retake the lock (to wait for a busy
 * table, to read one back or to write one out), so it runs before
 * anything is allocated in a critical section. */
static int get_l2(struct writer *w, uint32_t l1_index, bool create, uint8_t **table)
{
    *table = NULL;
    for (;;) {
        if (w->l1[l1_index])
            return qcow2_cache_get(&w->l2, w->l1[l1_index], table);
        if (!create)
            return 0;
        int r = qcow2_cache_make_room(&w->l2);
        if (r < 0)
            return r;
        if (w->l1[l1_index])
            continue; /* made by another writer while the lock was dropped */
        if ((r = qcow2_alloc_cluster(&w->alloc, &w->l1[l1_index])) < 0)
            return r;
        *table = qcow2_cache_get_empty(&w->l2, w->l1[l1_index]);
        return *table ? 0 : zerr(EIO, "internal error: no room for a new L2 table");
    }
}

/* ---- writes after the unlock ------------------------------------------------ */

/* Write what an operation left: finished write cache runs, retired
 * refcount blocks.  Called without the lock. */
static int run_pending(struct writer *w, struct pending *p)
{
    int err = 0;
    for (unsigned i = 0; i < p->ready.n; i++) {
        int r = cw_write_run(&w->cache, &p->ready.runs[i]);
        if (r < 0 && !err)
            err = r;
    }
    p->ready.n = 0;
    for (struct qcow2_refblock *b = p->blocks; b && !err; b = b->next) {
        err = blk_pwrite(&w->file, b->buf, w->cluster_size, b->offset);
        if (err == 0)
            blk_drop_range(&w->file, b->offset, w->cluster_size);
    }
    qcow2_refblocks_free(p->blocks);
    p->blocks = NULL;
    return err ? fail(w, err) : 0;
}

/* ---- the write path ----------------------------------------------------------- */

static int check_guest_offset(struct writer *w, uint64_t off, size_t len)
{
    if (off & (w->cluster_size - 1))
        return zerr(EINVAL, "'%s': guest offset %llu is not cluster aligned", w->file.path,
                    (unsigned long long)off);
    if (off >= w->virtual_size || len == 0 || len > w->virtual_size - off ||
        (len % w->cluster_size && off + len != w->virtual_size))
        return zerr(EINVAL, "'%s': write of %zu bytes at %llu is outside the image", w->file.path,
                    len, (unsigned long long)off);
    return 0;
}

enum store_kind { STORE_COMPRESSED, STORE_NORMAL, STORE_ZERO, STORE_HOLE };

/* The L2 table of guest cluster GCI for a store, with the lock held and,
 * for a compressed store, room in the write cache (back-pressure), both
 * true at once: waiting for one may undo the other. */
static int table_for_store(struct writer *w, uint32_t l1_index, bool compressed, uint8_t **table)
{
    bool wait = compressed && w->use_cache;
    for (;;) {
        if (wait)
            cw_wait_for_room(&w->cache);
        int r = get_l2(w, l1_index, true, table);
        if (r < 0 || !wait || cw_has_room(&w->cache))
            return r;
    }
}

/* OLD, an L2 entry just replaced, no longer holds its host clusters (the
 * lock held), nor counts in the statistics: a data cluster, or the one or
 * two clusters its compressed stream touches - the same ones for its bytes and for the sectors the
 * descriptor records, as clusters are whole sectors. */
static int unref_entry(struct writer *w, uint64_t old)
{
    uint64_t host, len;
    switch (qcow2_cluster_type(old, false)) {
    case QCOW2_CLUSTER_ZERO_PLAIN: atomic_fetch_sub(&w->n_zero, 1); return 0;
    case QCOW2_CLUSTER_COMPRESSED:
        atomic_fetch_sub(&w->n_compressed, 1);
        qcow2_decode_compressed(w->cluster_bits, old, &host, &len);
        return qcow2_alloc_unref(&w->alloc, host >> w->cluster_bits,
                                 (host + len - 1) >> w->cluster_bits);
    case QCOW2_CLUSTER_NORMAL:
        atomic_fetch_sub(&w->n_normal, 1);
        /* fall through */
    case QCOW2_CLUSTER_ZERO_ALLOC:
        host = qcow2_l2_host(old) >> w->cluster_bits;
        return qcow2_alloc_unref(&w->alloc, host, host);
    default: return 0;
    }
}

/* Place COUNT guest clusters from GUEST_OFF (all in one L2 table): under
 * the lock, allocate their bytes, set their L2 entries and (compressed,
 * write cache on) copy the stream into the cache; then, unlocked, write
 * what must be written.  Compressed, zero and hole stores are one cluster;
 * a normal store takes COUNT contiguous clusters and writes DATA with one
 * write.  A cluster written before is replaced: its old place loses its
 * reference once the new one is set (after allocating, so that an open
 * compressed cluster the allocator leaves can count as freed). */
static int store(struct writer *w, uint64_t guest_off, enum store_kind kind, const uint8_t *data,
                 uint32_t len, uint32_t count)
{
    uint32_t l2_entries = w->cluster_size / 8;
    uint64_t gci = guest_off >> w->cluster_bits;
    uint32_t l1_index = (uint32_t)(gci / l2_entries);
    uint32_t l2_index = (uint32_t)(gci % l2_entries);
    struct pending p = { .blocks = NULL };
    uint8_t *table;
    uint64_t host = 0;

    pthread_mutex_lock(&w->lock);
    int r = kind == STORE_HOLE ? get_l2(w, l1_index, false, &table) /* no table: a hole already */
                               : table_for_store(w, l1_index, kind == STORE_COMPRESSED, &table);
    if (r == 0 && table) {
        uint64_t entry = kind == STORE_ZERO ? QCOW2_OFLAG_ZERO : 0;
        if (kind == STORE_COMPRESSED) {
            bool closed;
            r = qcow2_alloc_bytes(&w->alloc, len, &host, &closed);
            closed_compressed(w, closed, &p);
            entry = qcow2_compressed_descriptor(w->cluster_bits, host, len);
            if (r == 0 && w->use_cache)
                r = cw_append(&w->cache, host, data, len, &p.ready);
        }
        bool dirty = false;
        for (uint32_t i = 0; r == 0 && i < count; i++) {
            if (kind == STORE_NORMAL) { /* contiguous: nothing else allocates now */
                uint64_t off = 0;
                r = qcow2_alloc_cluster(&w->alloc, &off);
                entry = off | QCOW2_OFLAG_COPIED;
                if (i == 0)
                    host = off;
            }
            uint64_t old = qcow2_be64(table + 8 * (l2_index + i));
            if (r == 0 && old != entry) {
                qcow2_l2_set(table, l2_index + i, entry);
                dirty = true;
                r = unref_entry(w, old);
            }
        }
        if (dirty)
            qcow2_cache_mark_dirty(&w->l2, table);
        if (r == 0)
            r = retire_refblocks(w, &p);
    }
    pthread_mutex_unlock(&w->lock);

    if (r < 0)
        fail(w, r);
    fault_delay();
    int r2 = run_pending(w, &p);
    if (r < 0 || r2 < 0)
        return r < 0 ? r : r2;

    if (kind == STORE_COMPRESSED && !w->use_cache)
        r = blk_pwrite_rmw(&w->file, &w->rmw, data, len, host);
    else if (kind == STORE_NORMAL) {
        size_t bytes = (size_t)count << w->cluster_bits;
        r = blk_pwrite(&w->file, data, bytes, host);
        if (r == 0)
            blk_drop_range(&w->file, host, bytes);
    }
    return r < 0 ? fail(w, r) : 0;
}

/* Incompressible clusters gathered to be stored with one write. */
struct normal_run {
    uint64_t guest_off;
    const uint8_t *data;
    uint32_t count;
};

static int flush_normal_run(struct writer *w, struct normal_run *run)
{
    if (!run->count)
        return 0;
    atomic_fetch_add(&w->n_normal, run->count);
    int r = store(w, run->guest_off, STORE_NORMAL, run->data, 0, run->count);
    run->count = 0;
    return r;
}

/* One cluster: zero, compressed, or (returned as 1) left to the caller
 * to store uncompressed (incompressible, or the image is not compressed).
 * IN holds a whole cluster. */
static int store_one(struct writer *w, uint64_t guest_off, const uint8_t *in, struct tl_bufs *t)
{
    if (buf_is_zero(in, w->cluster_size)) {
        atomic_fetch_add(&w->n_zero, 1);
        /* Over a backing file, zeros must be stated; alone, a hole is zero
         * (one written before becomes a hole again). */
        return store(w, guest_off, w->backing_file ? STORE_ZERO : STORE_HOLE, NULL, 0, 1);
    }
    if (!w->compress)
        return 1;
    /* QEMU's rule: compressed data must be smaller than a cluster. */
    int clen = codec_compress(w->type, w->level, in, w->cluster_size, t->out, w->cluster_size - 1);
    if (clen == -ENOSPC)
        return 1;
    if (clen <= 0)
        return zerr(clen ? -clen : EIO, "'%s': compression failed", w->file.path);
    atomic_fetch_add(&w->n_compressed, 1);
    return store(w, guest_off, STORE_COMPRESSED, t->out, (uint32_t)clen, 1);
}

int writer_write(struct writer *w, uint64_t guest_off, const void *buf, size_t len)
{
    int r = sticky(w);
    if (r || (r = check_guest_offset(w, guest_off, len)) < 0)
        return r;
    struct tl_bufs *t = thread_bufs(w->cluster_size);
    if (!t)
        return fail(w, zerr(ENOMEM, "out of memory"));
    uint32_t l2_entries = w->cluster_size / 8;
    /* Writing straight from BUF needs O_DIRECT's alignment. */
    bool direct_ok = !w->file.direct || ((uintptr_t)buf & (BLK_ALIGN - 1)) == 0;
    struct normal_run run = { 0, NULL, 0 };
    const uint8_t *p = buf;
    for (size_t done = 0; done < len && r >= 0; done += w->cluster_size) {
        uint64_t off = guest_off + done;
        const uint8_t *in = p + done;
        bool partial = len - done < w->cluster_size;
        if (partial) { /* the image's last cluster: pad with zeros */
            memcpy(t->bounce, in, len - done);
            memset(t->bounce + (len - done), 0, w->cluster_size - (len - done));
            in = t->bounce;
        }
        r = store_one(w, off, in, t);
        if (r == 0) {
            r = flush_normal_run(w, &run);
            continue;
        }
        if (r < 0)
            break;
        /* Incompressible: extend the run, or store it alone from a copy. */
        bool follows = run.count &&
                       run.guest_off + ((uint64_t)run.count << w->cluster_bits) == off &&
                       (off >> w->cluster_bits) % l2_entries != 0;
        if (!follows && (r = flush_normal_run(w, &run)) < 0)
            break;
        if (partial || !direct_ok) {
            if (in != t->bounce)
                memcpy(t->bounce, in, w->cluster_size);
            atomic_fetch_add(&w->n_normal, 1);
            r = store(w, off, STORE_NORMAL, t->bounce, 0, 1);
            continue;
        }
        if (!run.count) {
            run.guest_off = off;
            run.data = in;
        }
        run.count++;
        r = 0;
    }
    if (r >= 0)
        r = flush_normal_run(w, &run);
    return r < 0 ? fail(w, r) : 0;
}

int writer_write_compressed(struct writer *w, uint64_t guest_off, const void *cdata, size_t clen)
{
    int r = sticky(w);
    if (r)
        return r;
    size_t span = guest_off < w->virtual_size && w->virtual_size - guest_off < w->cluster_size
                      ? (size_t)(w->virtual_size - guest_off)
                      : w->cluster_size;
    if ((r = check_guest_offset(w, guest_off, span)) < 0)
        return r;
    if (clen == 0 || clen > w->cluster_size - 1)
        return zerr(EINVAL, "'%s': compressed length %zu out of range", w->file.path, clen);
    atomic_fetch_add(&w->n_compressed, 1);
    return store(w, guest_off, STORE_COMPRESSED, cdata, (uint32_t)clen, 1);
}

/* ---- reads (read-your-writes) ------------------------------------------------- */

/* Read host bytes: from the write cache where they still are, else from
 * the file. */
static int read_host(struct writer *w, uint64_t off, uint8_t *buf, uint32_t len)
{
    while (len > 0) {
        uint32_t n = 0;
        if (w->use_cache) {
            pthread_mutex_lock(&w->lock);
            n = cw_read_cached(&w->cache, off, buf, len);
            pthread_mutex_unlock(&w->lock);
        }
        if (n == 0) {
            uint64_t cluster_end = ((off >> w->cluster_bits) + 1) << w->cluster_bits;
            n = (uint32_t)(cluster_end - off < len ? cluster_end - off : len);
            int r = blk_read(&w->file, buf, n, off);
            if (r < 0)
                return r;
        }
        off += n;
        buf += n;
        len -= n;
    }
    return 0;
}

/* A cluster left to the backing file: its bytes there, zeros past its end. */
static int read_backing(struct writer *w, uint64_t off, uint8_t *out)
{
    pthread_mutex_lock(&w->backing_lock);
    int r = 0;
    if (!w->backing) {
        char *path = reader_resolve_backing(w->file.path, w->backing_file);
        r = path ? reader_open(path, w->backing_format, w->file.direct, &w->backing)
                 : zerr(ENOMEM, "out of memory");
        free(path);
    }
    struct reader *b = w->backing;
    pthread_mutex_unlock(&w->backing_lock);
    if (r < 0)
        return r;
    uint64_t size = reader_size(b);
    uint32_t n = off >= size                    ? 0
                 : size - off < w->cluster_size ? (uint32_t)(size - off)
                                                : w->cluster_size;
    memset(out + n, 0, w->cluster_size - n);
    return n ? reader_read(b, off, out, n) : 0;
}

static int read_cluster(struct writer *w, uint64_t gci, uint8_t *out)
{
    uint32_t l2_entries = w->cluster_size / 8;
    uint64_t entry = 0, bitmap;
    uint8_t *table;
    pthread_mutex_lock(&w->lock);
    int r = get_l2(w, (uint32_t)(gci / l2_entries), false, &table);
    if (r == 0 && table)
        qcow2_l2_get(table, false, gci % l2_entries, &entry, &bitmap);
    pthread_mutex_unlock(&w->lock);
    if (r < 0) /* a table written out or read back failed: lost */
        return fail(w, r);

    enum qcow2_cluster_type type = qcow2_cluster_type(entry, false);
    if (type == QCOW2_CLUSTER_NORMAL)
        return read_host(w, qcow2_l2_host(entry), out, w->cluster_size);
    if (type == QCOW2_CLUSTER_UNALLOCATED && w->backing_file)
        return read_backing(w, gci << w->cluster_bits, out);
    if (type != QCOW2_CLUSTER_COMPRESSED) { /* zero, or unallocated without a backing file */
        memset(out, 0, w->cluster_size);
        return 0;
    }
    uint64_t host, clen;
    qcow2_decode_compressed(w->cluster_bits, entry, &host, &clen);
    uint8_t *cbuf = malloc(clen);
    if (!cbuf)
        return zerr(ENOMEM, "out of memory");
    r = read_host(w, host, cbuf, (uint32_t)clen);
    if (r == 0 && codec_decompress(w->type, cbuf, clen, out, w->cluster_size) < 0)
        r = zerr(EIO, "'%s': cannot decompress the cluster at guest offset %llu", w->file.path,
                 (unsigned long long)(gci << w->cluster_bits));
    free(cbuf);
    return r;
}

int writer_read(struct writer *w, uint64_t offset, void *buf, size_t len)
{
    int r = sticky(w);
    if (r)
        return r;
    if (offset > w->virtual_size || len > w->virtual_size - offset)
        return zerr(EINVAL, "'%s': read beyond the end of the image", w->file.path);
    uint8_t *cluster = malloc(w->cluster_size);
    if (!cluster)
        return zerr(ENOMEM, "out of memory");
    uint8_t *p = buf;
    while (len > 0 && r == 0) {
        uint64_t gci = offset >> w->cluster_bits;
        uint32_t at = (uint32_t)(offset & (w->cluster_size - 1));
        size_t n = w->cluster_size - at < len ? w->cluster_size - at : len;
        r = read_cluster(w, gci, cluster);
        memcpy(p, cluster + at, n);
        p += n;
        offset += n;
        len -= n;
    }
    free(cluster);
    return r;
}

int writer_flush(struct writer *w)
{
    int r = sticky(w);
    if (r)
        return r;
    if (w->use_cache && (r = cw_flush(&w->cache)) < 0)
        return fail(w, r);
    if ((r = blk_fsync(&w->file)) < 0)
        return fail(w, r);
    return 0;
}

/* ---- create ------------------------------------------------------------------- */

static int validate(const char *path, const struct zcow_create_options *o, unsigned *bits)
{
    uint32_t cs = o->cluster_size ? o->cluster_size : 65536;
    if (cs & (cs - 1) || cs < (1u << ZCOW_MIN_CLUSTER_BITS) || cs > (1u << QCOW2_MAX_CLUSTER_BITS))
        return zerr(EINVAL, "'%s': cluster size %u is not a power of two from 4 KiB to 2 MiB", path,
                    cs);
    *bits = (unsigned)__builtin_ctz(cs);
    if (o->compression_type != ZCOW_COMPRESSION_ZLIB &&
        o->compression_type != ZCOW_COMPRESSION_ZSTD)
        return zerr(EINVAL, "'%s': unknown compression type %d", path, o->compression_type);
    if (codec_resolve_level(o->compression_type, o->level) < 0)
        return zerr(EINVAL, "'%s': level %d out of range for %s (%d..%d)", path, o->level,
                    o->compression_type ? "zstd" : "zlib", o->compression_type ? 1 : 0,
                    o->compression_type ? CODEC_ZSTD_MAX_LEVEL : CODEC_ZLIB_MAX_LEVEL);
    if (o->cache_mode != ZCOW_CACHE_NONE && o->cache_mode != ZCOW_CACHE_WRITEBACK)
        return zerr(EINVAL, "'%s': unknown cache mode %d", path, o->cache_mode);
    if (o->virtual_size == 0 || o->virtual_size % 512)
        return zerr(EINVAL, "'%s': virtual size %llu is not a positive multiple of 512", path,
                    (unsigned long long)o->virtual_size);
    uint64_t l2_span = (uint64_t)cs * (cs / 8);
    uint64_t l1_entries = (o->virtual_size + l2_span - 1) / l2_span;
    if (l1_entries > QCOW2_MAX_L1_BYTES / 8)
        return zerr(EFBIG,
                    "'%s': virtual size %llu is beyond qcow2's limit for %u-byte "
                    "clusters (%llu bytes)",
                    path, (unsigned long long)o->virtual_size, cs,
                    (unsigned long long)(QCOW2_MAX_L1_BYTES / 8 * l2_span));
    if (o->backing_file && strlen(o->backing_file) > 1023)
        return zerr(EINVAL, "'%s': backing file name too long", path);
    return 0;
}

static void writer_free(struct writer *w)
{
    cw_free(&w->cache);
    reader_close(w->backing);
    pthread_mutex_destroy(&w->backing_lock);
    qcow2_cache_free(&w->l2);
    qcow2_alloc_free(&w->alloc);
    free(w->l1);
    free(w->backing_file);
    free(w->backing_format);
    blk_close(&w->file);
    pthread_mutex_destroy(&w->lock);
    blk_rmw_destroy(&w->rmw);
    zerr_first_destroy(&w->error);
    free(w);
}

int writer_create(const char *path, const struct zcow_create_options *o, struct writer **out)
{
    unsigned bits = 0;
    *out = NULL;
    int r = validate(path, o, &bits);
    if (r < 0)
        return r;
    struct writer *w = calloc(1, sizeof(*w));
    if (!w)
        return zerr(ENOMEM, "out of memory");
    pthread_mutex_init(&w->lock, NULL);
    pthread_mutex_init(&w->backing_lock, NULL);
    blk_rmw_init(&w->rmw);
    zerr_first_init(&w->error);
    w->file.fd = -1;
    w->cluster_bits = bits;
    w->cluster_size = 1u << bits;
    w->virtual_size = o->virtual_size;
    w->type = o->compression_type;
    w->level = codec_resolve_level(o->compression_type, o->level);
    w->compress = !o->uncompressed;
    w->use_cache = o->write_cache != 0;
    qcow2_alloc_init(&w->alloc, bits, REFCOUNT_ORDER);
    uint64_t l2_span = (uint64_t)w->cluster_size * (w->cluster_size / 8);
    w->l1_size = (uint32_t)((o->virtual_size + l2_span - 1) / l2_span);
    w->l1 = calloc(w->l1_size, sizeof(*w->l1));
    if (!w->l1) {
        writer_free(w);
        return zerr(ENOMEM, "out of memory");
    }
    if (o->backing_file) {
        w->backing_file = strdup(o->backing_file);
        w->backing_format = strdup(o->backing_format ? o->backing_format : "qcow2");
    }
    r = blk_create(&w->file, path, o->cache_mode == ZCOW_CACHE_NONE, o->drop_pages != 0,
                   o->atomic != 0);
    if (r == 0)
        r = qcow2_cache_init(&w->l2, &w->lock, &w->file, w->cluster_size,
                             L2_CACHE_BYTES / w->cluster_size);
    unsigned cache_clusters = o->cache_clusters ? o->cache_clusters : CACHE_BYTES / w->cluster_size;
    if (r == 0 && w->use_cache)
        r = cw_init(&w->cache, &w->lock, &w->file, bits, cache_clusters);
    /* Cluster 0 is the header: counted now, written at close. */
    uint64_t header;
    if (r == 0)
        r = qcow2_alloc_cluster(&w->alloc, &header);
    if (r < 0) {
        writer_free(w);
        return r;
    }
    *out = w;
    return 0;
}

/* ---- close -------------------------------------------------------------------- */

/* Append the L1 table (at least one cluster) at the frontier. */
static int write_l1(struct writer *w, uint64_t *l1_offset)
{
    size_t l1_bytes = (size_t)w->l1_size * 8;
    size_t l1_clusters = (l1_bytes + w->cluster_size - 1) >> w->cluster_bits;
    if (l1_clusters == 0)
        l1_clusters = 1;
    uint64_t off;
    for (size_t i = 0; i < l1_clusters; i++) {
        int r = qcow2_alloc_cluster(&w->alloc, &off);
        if (r < 0)
            return r;
        if (i == 0)
            *l1_offset = off;
    }
    size_t total = l1_clusters << w->cluster_bits;
    uint8_t *l1 = blk_zalloc(total);
    if (!l1)
        return zerr(ENOMEM, "out of memory");
    for (uint32_t i = 0; i < w->l1_size; i++)
        qcow2_put_be64(l1 + 8 * i, w->l1[i] ? w->l1[i] | QCOW2_OFLAG_COPIED : 0);
    int r = blk_pwrite(&w->file, l1, total, *l1_offset);
    if (r == 0)
        blk_drop_range(&w->file, *l1_offset, total);
    free(l1);
    return r;
}

/* Append the refcount table and the last refcount blocks, which count
 * themselves. */
static int write_refcounts(struct writer *w, uint64_t *table_offset, uint64_t *table_clusters)
{
    struct pending p = { .blocks = NULL };
    uint8_t *table;
    int r = qcow2_alloc_finish(&w->alloc, &p.blocks, table_offset, table_clusters, &table);
    if (r == -EFBIG)
        r = zerr(EFBIG, "'%s': image too large for a refcount table", w->file.path);
    if (r < 0) {
        qcow2_refblocks_free(p.blocks);
        return r;
    }
    r = run_pending(w, &p);
    size_t bytes = *table_clusters << w->cluster_bits;
    if (r == 0 && (r = blk_pwrite(&w->file, table, bytes, *table_offset)) == 0)
        blk_drop_range(&w->file, *table_offset, bytes);
    free(table);
    return r;
}

/* The header and its extensions, last: until now cluster 0 held zeros,
 * not an image. */
static int write_header(struct writer *w, uint64_t l1_offset, uint64_t table_offset,
                        uint64_t table_clusters)
{
    struct qcow2_header h = {
        .magic = QCOW2_MAGIC,
        .version = 3,
        .cluster_bits = w->cluster_bits,
        .size = w->virtual_size,
        .l1_size = w->l1_size,
        .l1_table_offset = l1_offset,
        .refcount_table_offset = table_offset,
        .refcount_table_clusters = (uint32_t)table_clusters,
        .incompatible_features = w->type == ZCOW_COMPRESSION_ZSTD ? QCOW2_INCOMPAT_COMPRESSION : 0,
        .refcount_order = REFCOUNT_ORDER,
        .header_length = QCOW2_HEADER_V3_LEN,
        .compression_type = (uint8_t)w->type,
    };
    uint8_t *hbuf = blk_zalloc(w->cluster_size);
    if (!hbuf)
        return zerr(ENOMEM, "out of memory");
    int ext = qcow2_write_extensions(hbuf + QCOW2_HEADER_V3_LEN,
                                     w->cluster_size - QCOW2_HEADER_V3_LEN, w->backing_format);
    if (ext >= 0 && w->backing_file) {
        size_t name_len = strlen(w->backing_file);
        h.backing_file_offset = QCOW2_HEADER_V3_LEN + (uint64_t)ext;
        h.backing_file_size = (uint32_t)name_len;
        if (h.backing_file_offset + name_len > w->cluster_size)
            ext = -ENOSPC;
        else
            memcpy(hbuf + h.backing_file_offset, w->backing_file, name_len);
    }
    if (ext < 0) {
        free(hbuf);
        return zerr(ENOSPC, "'%s': header does not fit in a cluster", w->file.path);
    }
    qcow2_header_encode(&h, hbuf);
    int r = blk_pwrite(&w->file, hbuf, w->cluster_size, 0);
    if (r == 0)
        blk_drop_range(&w->file, 0, w->cluster_size);
    free(hbuf);
    return r;
}

/* The references dropped by rewrites in refcount blocks already written
 * (qcow2_alloc_unref()): read each such block back, count down, write it
 * again.  Then give the space of the clusters left without a reference
 * back to the file system (they are never handed out again, and every
 * write to them has ended). */
static int apply_late_unrefs(struct writer *w)
{
    struct qcow2_alloc *a = &w->alloc;
    uint8_t *blk = NULL;
    int r = 0;
    qcow2_clusters_sort(&a->late);
    for (uint64_t i = 0; i < a->late.n && r == 0;) {
        uint64_t b = a->late.k[i] / a->rc_entries;
        uint64_t off = b < a->reftable_len ? a->reftable[b] : 0;
        if (!off)
            return zerr(EIO, "internal error: no refcount block for host cluster %llu",
                        (unsigned long long)a->late.k[i]);
        if (!blk && !(blk = blk_alloc(w->cluster_size)))
            return zerr(ENOMEM, "out of memory");
        r = blk_read(&w->file, blk, w->cluster_size, off);
        for (; r == 0 && i < a->late.n && a->late.k[i] / a->rc_entries == b; i++) {
            uint64_t k = a->late.k[i], rc = qcow2_refcount_get(blk, a->order, k % a->rc_entries);
            if (rc == 0)
                r = zerr(EIO, "internal error: host cluster %llu has no reference to drop",
                         (unsigned long long)k);
            else
                qcow2_refcount_set(blk, a->order, k % a->rc_entries, rc - 1);
            if (rc == 1)
                r = qcow2_clusters_add(&a->freed, k);
        }
        if (r == 0 && (r = blk_pwrite(&w->file, blk, w->cluster_size, off)) == 0)
            blk_drop_range(&w->file, off, w->cluster_size);
    }
    free(blk);
    qcow2_clusters_sort(&a->freed);
    for (uint64_t i = 0, n; r == 0 && i < a->freed.n; i += n) {
        for (n = 1; i + n < a->freed.n && a->freed.k[i + n] == a->freed.k[i] + n;)
            n++;
        blk_punch(&w->file, a->freed.k[i] << w->cluster_bits, n << w->cluster_bits);
    }
    return r;
}

/* Write everything still in memory, then the metadata, then the header.
 * Single-threaded: no other call may run now. */
static int finalize(struct writer *w)
{
    struct pending p = { .blocks = NULL };
    pthread_mutex_lock(&w->lock);
    qcow2_alloc_close(&w->alloc);
    closed_compressed(w, true, &p);
    int r = qcow2_cache_flush(&w->l2);
    pthread_mutex_unlock(&w->lock);
    int r2 = run_pending(w, &p);
    if (r < 0 || r2 < 0)
        return r < 0 ? r : r2;
    uint64_t l1_offset = 0, table_offset, table_clusters;
    if ((r = write_l1(w, &l1_offset)) < 0)
        return r;
    pthread_mutex_lock(&w->lock);
    r = retire_refblocks(w, &p);
    pthread_mutex_unlock(&w->lock);
    if (r < 0 || (r = run_pending(w, &p)) < 0)
        return r;
    if ((r = write_refcounts(w, &table_offset, &table_clusters)) < 0 ||
        (r = apply_late_unrefs(w)) < 0)
        return r;
    return write_header(w, l1_offset, table_offset, table_clusters);
}

int writer_close(struct writer *w)
{
    int r = sticky(w);
    if (r == 0)
        r = finalize(w);
    if (r == 0)
        r = blk_commit(&w->file);
    writer_free(w); /* removes an uncommitted temporary file */
    return r;
}

void writer_abort(struct writer *w) { writer_free(w); }

uint32_t writer_cluster_size(const struct writer *w) { return w->cluster_size; }

int writer_get_info(struct writer *w, struct zcow_info *info)
{
    memset(info, 0, sizeof(*info));
    info->format = "qcow2";
    info->virtual_size = w->virtual_size;
    info->cluster_size = w->cluster_size;
    info->version = 3;
    info->compression_type = w->type;
    info->refcount_bits = 1 << REFCOUNT_ORDER;
    info->clusters_compressed = atomic_load(&w->n_compressed);
    info->clusters_normal = atomic_load(&w->n_normal);
    info->clusters_zero = atomic_load(&w->n_zero);
    info->clusters_allocated = info->clusters_compressed + info->clusters_normal;
    pthread_mutex_lock(&w->lock);
    info->file_size = w->alloc.next_cluster << w->cluster_bits;
    pthread_mutex_unlock(&w->lock);
    struct stat st;
    if (fstat(w->file.fd, &st) == 0)
        info->actual_size = (uint64_t)st.st_blocks * 512;
    info->backing_file = w->backing_file;
    info->backing_format = w->backing_format;
    return 0;
}
