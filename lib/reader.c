/* reader.c - images opened for reading: qcow2 (v2, v3, extended L2,
 * backing chains) and raw.
 *
 * Every number taken from the file is bounded before it sizes an
 * allocation or a read: header and extensions stay inside the first
 * cluster, the L1 table inside the file and QEMU's 32 MiB limit, each L2
 * table inside the file.  Corrupt metadata met while reading fails that
 * read with -EIO and a message; it never crashes.
 *
 * Reads are thread-safe: pread on one shared descriptor, and the L2 table
 * cache (qcow2_cache.h, read-only) under a mutex; entries are copied out
 * under the lock, so no table is pinned while its data is read or
 * decompressed.
 * Decompression contexts are per thread (codec.c). */
#include "reader.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blockio.h"
#include "codec.h"
#include "error.h"
#include "qcow2.h"
#include "qcow2_cache.h"
#include "qcow2_ext.h"
#include "qcow2_l2.h"

/* The chain depth QEMU would hardly reach in practice; a longer one is
 * almost surely a mistake, and it bounds the recursion of reads. */
#define MAX_CHAIN_DEPTH 64
/* QEMU: "Backing file name too long" beyond 1023 bytes. */
#define MAX_BACKING_NAME 1023
/* Bytes of L2 tables cached per image (qcow2_cache.h bounds the count). */
#define L2_CACHE_BYTES (32u << 20)

struct reader {
    char *path;
    struct blk blk;
    bool qcow2;
    uint64_t size; /* virtual size */
    uint64_t file_size;
    dev_t dev;
    ino_t ino;

    /* qcow2 only */
    struct qcow2_header h;
    unsigned cluster_bits;
    uint32_t cluster_size;
    bool ext_l2;
    unsigned l2_bits; /* log2 of entries per L2 table */
    uint32_t l1_size;
    uint64_t *l1;         /* host byte order */
    char *backing_name;   /* as written in the header */
    char *backing_path;   /* resolved against the image's directory */
    char *backing_format; /* from the extension, NULL if none */
    struct reader *backing;
    bool exact; /* compressed streams end exactly at the cluster's end */

    pthread_mutex_t lock;     /* guards l2 */
    struct qcow2_cache l2;    /* read-only */
    atomic_ullong l2_lookups; /* table walks, for tests that count work */
};

/* One stretch of guest bytes inside one cluster that reads alike. */
struct mapping {
    int kind; /* enum zcow_cluster_kind */
    uint64_t len;
    uint64_t host;  /* NORMAL: host offset of the first byte */
    uint64_t entry; /* COMPRESSED: the descriptor */
};

/* ---- L2 tables ---------------------------------------------------------- */

static int corrupt(struct reader *r, const char *fmt, unsigned long long v)
{
    char what[160];
    snprintf(what, sizeof(what), fmt, v);
    return zerr(EIO, "corrupt image '%s': %s", r->path, what);
}

/* Is a table or cluster of LEN bytes at OFF cluster aligned and inside
 * the file? */
static int check_table(struct reader *r, uint64_t off, uint64_t len, const char *what)
{
    char fmt[96];
    if (off & (r->cluster_size - 1)) {
        snprintf(fmt, sizeof(fmt), "%s offset %%#llx is not cluster aligned", what);
        return corrupt(r, fmt, (unsigned long long)off);
    }
    if (off > r->file_size || len > r->file_size - off) {
        snprintf(fmt, sizeof(fmt), "%s at offset %%#llx is beyond the end of the file", what);
        return corrupt(r, fmt, (unsigned long long)off);
    }
    return 0;
}

/* A stretch whose subcluster bitmap the spec forbids (mapping.kind). */
#define KIND_INVALID (-1)

/* What reading a subcluster of this type does: zcow_cluster_kind. */
static int kind_of(enum qcow2_subcluster_type t)
{
    switch (t) {
    case QCOW2_SUBCLUSTER_NORMAL: return ZCOW_CLUSTER_NORMAL;
    case QCOW2_SUBCLUSTER_ZERO_PLAIN:
    case QCOW2_SUBCLUSTER_ZERO_ALLOC: return ZCOW_CLUSTER_ZERO;
    case QCOW2_SUBCLUSTER_UNALLOCATED_PLAIN:
    case QCOW2_SUBCLUSTER_UNALLOCATED_ALLOC: return ZCOW_CLUSTER_UNALLOCATED;
    case QCOW2_SUBCLUSTER_COMPRESSED: return ZCOW_CLUSTER_COMPRESSED;
    default: return KIND_INVALID;
    }
}

/* The stretch of cluster I of TABLE, from byte IN of it, that reads alike
 * (up to the cluster's end, or a subcluster of another kind). */
static void map_piece(const struct reader *r, const uint8_t *table, uint64_t i, uint64_t in,
                      struct mapping *p)
{
    uint64_t entry, bitmap;
    enum qcow2_subcluster_type type;
    qcow2_l2_get(table, r->ext_l2, i, &entry, &bitmap);
    uint64_t scs = r->cluster_size / QCOW2_SUBCLUSTERS;
    unsigned sc = r->ext_l2 ? (unsigned)(in / scs) : 0;
    unsigned n = qcow2_subcluster_range(entry, bitmap, r->ext_l2, sc, &type);
    memset(p, 0, sizeof(*p));
    p->entry = entry;
    p->kind = kind_of(type);
    p->len = (r->ext_l2 ? (sc + n) * scs : r->cluster_size) - in;
    if (p->kind == ZCOW_CLUSTER_NORMAL)
        p->host = qcow2_l2_host(entry) + in;
}

/* A stretch no valid image has: a forbidden bitmap, or data at an offset
 * that is not a cluster's. */
static bool piece_corrupt(const struct reader *r, const struct mapping *p)
{
    return p->kind == KIND_INVALID ||
           (p->kind == ZCOW_CLUSTER_NORMAL && (qcow2_l2_host(p->entry) & (r->cluster_size - 1)));
}

/* Data, zero or unallocated: all a walk through the chain asks. */
static int kind_class(int kind)
{
    return kind == ZCOW_CLUSTER_COMPRESSED ? ZCOW_CLUSTER_NORMAL : kind;
}

/* A walk over one L2 table: from entry I, byte IN of its cluster, at most
 * MAX bytes, the longest run that reads alike.  Exact runs (for reads)
 * are one kind, normal ones contiguous on the host, compressed ones one
 * cluster each; class runs (for extents) only tell data from zero from
 * unallocated.  ENTRY and BITMAP: the first entry as stored. */
struct walk {
    uint64_t i, in, max;
    bool by_class;
    struct mapping m;
    uint64_t entry, bitmap;
    bool corrupt; /* the first stretch is (then it is alone) */
};

/* Entries looked at per walk: bounds the time the cache lock is held and
 * what a later call looks at again. */
#define WALK_MAX_ENTRIES 4096

static bool joins(const struct reader *r, const struct walk *w, const struct mapping *p)
{
    if (piece_corrupt(r, p))
        return false;
    if (w->by_class)
        return kind_class(p->kind) == kind_class(w->m.kind);
    if (p->kind != w->m.kind || p->kind == ZCOW_CLUSTER_COMPRESSED)
        return false;
    return p->kind != ZCOW_CLUSTER_NORMAL || p->host == w->m.host + w->m.len;
}

/* Called with the cache lock held: TABLE may be evicted once it is
 * dropped. */
static void walk_table(const struct reader *r, const uint8_t *table, struct walk *w)
{
    uint64_t entries = 1ull << r->l2_bits;
    qcow2_l2_get(table, r->ext_l2, w->i, &w->entry, &w->bitmap);
    map_piece(r, table, w->i, w->in, &w->m);
    uint64_t i = w->i, in = w->in + w->m.len;
    w->corrupt = piece_corrupt(r, &w->m);
    bool alone = w->corrupt || (!w->by_class && w->m.kind == ZCOW_CLUSTER_COMPRESSED);
    for (unsigned looked = 1; !alone && w->m.len < w->max && looked < WALK_MAX_ENTRIES;) {
        if (in == r->cluster_size) {
            if (++i == entries)
                break;
            in = 0;
            looked++;
        }
        struct mapping p;
        map_piece(r, table, i, in, &p);
        if (!joins(r, w, &p))
            break;
        w->m.len += p.len;
        in += p.len;
    }
    if (w->by_class)
        w->m.kind = kind_class(w->m.kind);
    if (w->m.len > w->max)
        w->m.len = w->max;
}

/* Walk the L2 table at host offset OFF, read into the cache first if it
 * is not there (the lock is dropped while it is read). */
static int l2_walk(struct reader *r, uint64_t off, struct walk *w)
{
    atomic_fetch_add_explicit(&r->l2_lookups, 1, memory_order_relaxed);
    int e = check_table(r, off, r->cluster_size, "l2 table");
    if (e < 0)
        return e;
    uint8_t *table;
    pthread_mutex_lock(&r->lock);
    e = qcow2_cache_get(&r->l2, off, &table);
    if (e == 0)
        walk_table(r, table, w);
    pthread_mutex_unlock(&r->lock);
    return e;
}

/* Map guest bytes [OFF, OFF+MAX) of a qcow2 image: the longest run from
 * OFF that reads alike, exact or by class (struct walk).  A run stays
 * inside one L2 table, so it costs at most one table lookup. */
static int map_run(struct reader *r, uint64_t off, uint64_t max, bool by_class, struct mapping *m)
{
    uint64_t ci = off >> r->cluster_bits;
    uint64_t l1i = ci >> r->l2_bits;
    memset(m, 0, sizeof(*m));
    if (l1i >= r->l1_size || !(r->l1[l1i] & QCOW2_OFFSET_MASK)) {
        /* No L2 table: the whole range it would map is unallocated, and so
         * are those of the next L1 entries without one. */
        uint64_t span = (uint64_t)r->cluster_size << r->l2_bits;
        uint64_t left = span - (off & (span - 1));
        for (uint64_t i = l1i + 1; left < max && i < l1i + WALK_MAX_ENTRIES; i++) {
            if (i < r->l1_size && (r->l1[i] & QCOW2_OFFSET_MASK))
                break;
            left += span;
        }
        m->kind = ZCOW_CLUSTER_UNALLOCATED;
        m->len = left < max ? left : max;
        return 0;
    }
    struct walk w = {
        .i = ci & ((1ull << r->l2_bits) - 1),
        .in = off & (r->cluster_size - 1),
        .max = max,
        .by_class = by_class,
    };
    int e = l2_walk(r, r->l1[l1i] & QCOW2_OFFSET_MASK, &w);
    if (e < 0)
        return e;
    if (w.corrupt) {
        uint64_t host = qcow2_l2_host(w.m.entry);
        if (w.m.kind == KIND_INVALID && !host)
            return corrupt(r, "subcluster allocated in an unallocated cluster (guest offset %#llx)",
                           (unsigned long long)off);
        if (w.m.kind == KIND_INVALID)
            return corrupt(r, "subcluster both allocated and zero (guest offset %#llx)",
                           (unsigned long long)off);
        return corrupt(r, "data cluster offset %#llx is not cluster aligned",
                       (unsigned long long)host);
    }
    *m = w.m;
    return 0;
}

/* The L2 entry (and subcluster bitmap) of guest cluster CI. */
static int l2_entry(struct reader *r, uint64_t ci, uint64_t *entry, uint64_t *bitmap)
{
    *entry = *bitmap = 0;
    uint64_t l1i = ci >> r->l2_bits;
    if (l1i >= r->l1_size || !(r->l1[l1i] & QCOW2_OFFSET_MASK))
        return 0;
    struct walk w = { .i = ci & ((1ull << r->l2_bits) - 1), .max = 1 };
    int e = l2_walk(r, r->l1[l1i] & QCOW2_OFFSET_MASK, &w);
    *entry = w.entry;
    *bitmap = w.bitmap;
    return e;
}

/* Compressed clusters that follow one another in the guest mostly lie
 * packed together on the host (that is how writers place them), though
 * parallel writers shuffle them a little.  A run of them is read with one
 * large read instead of one small read each, which matters under O_DIRECT:
 * a cluster joins the run while the run's host span stays within
 * RUN_MAX_BYTES and the cluster lies within RUN_MAX_GAP of it. */
#define RUN_MAX_CLUSTERS 256
#define RUN_MAX_BYTES (4u << 20)
#define RUN_MAX_GAP (32u << 10)

struct run_item {
    uint64_t coff, clen; /* stored bytes, clipped at the end of the file */
    uint64_t len;        /* guest bytes wanted from this cluster */
};

static int compressed_item(struct reader *r, uint64_t entry, uint64_t len, struct run_item *it)
{
    qcow2_decode_compressed(r->cluster_bits, entry, &it->coff, &it->clen);
    if (it->coff >= r->file_size)
        return corrupt(r, "compressed cluster at offset %#llx is beyond the end of the file",
                       (unsigned long long)it->coff);
    /* The recorded sectors may run past the end of the file: the stream
     * itself does not. */
    if (it->clen > r->file_size - it->coff)
        it->clen = r->file_size - it->coff;
    it->len = len;
    return 0;
}

/* Read guest bytes from OFF (FIRST maps the first, compressed, stretch) up
 * to N bytes into P; FIRST->len becomes the count done.  *CLUSTER is a
 * scratch cluster, allocated on first need. */
static int read_compressed_run(struct reader *r, uint64_t off, uint64_t n, uint8_t *p,
                               struct mapping *first, uint8_t **cluster)
{
    struct run_item run[RUN_MAX_CLUSTERS];
    int e = compressed_item(r, first->entry, first->len, &run[0]);
    if (e < 0)
        return e;
    unsigned count = 1;
    uint64_t done = first->len;
    uint64_t start = run[0].coff, end = run[0].coff + run[0].clen;
    while (done < n && count < RUN_MAX_CLUSTERS) {
        struct mapping m;
        if ((e = map_run(r, off + done, n - done, false, &m)) < 0)
            return e;
        if (m.kind != ZCOW_CLUSTER_COMPRESSED)
            break;
        struct run_item it;
        if ((e = compressed_item(r, m.entry, m.len, &it)) < 0)
            return e;
        uint64_t s = it.coff < start ? it.coff : start;
        uint64_t t = it.coff + it.clen > end ? it.coff + it.clen : end;
        if (it.coff + it.clen + RUN_MAX_GAP < start || it.coff > end + RUN_MAX_GAP ||
            t - s > RUN_MAX_BYTES)
            break;
        run[count++] = it;
        start = s, end = t;
        done += m.len;
    }

    /* One aligned read: no bounce buffer under O_DIRECT. */
    uint64_t astart = start & ~(uint64_t)(BLK_ALIGN - 1);
    size_t alen = (size_t)((end - astart + BLK_ALIGN - 1) & ~(uint64_t)(BLK_ALIGN - 1));
    uint8_t *buf = blk_alloc(alen);
    if (!buf)
        return zerr(ENOMEM, "out of memory");
    if ((e = blk_read(&r->blk, buf, alen, astart)) < 0)
        goto out;
    uint64_t g = off;
    for (unsigned i = 0; i < count; i++) {
        uint64_t in = g & (r->cluster_size - 1);
        bool whole = in == 0 && run[i].len == r->cluster_size;
        if (!whole && !*cluster && !(*cluster = malloc(r->cluster_size))) {
            e = zerr(ENOMEM, "out of memory");
            goto out;
        }
        uint8_t *dst = whole ? p + (g - off) : *cluster;
        int (*decode)(int, const void *, size_t, void *, size_t) =
            r->exact ? codec_decompress_exact : codec_decompress;
        if (decode(r->h.compression_type, buf + (run[i].coff - astart), run[i].clen, dst,
                   r->cluster_size) < 0) {
            e = corrupt(r, "cannot decompress the cluster at offset %#llx",
                        (unsigned long long)run[i].coff);
            goto out;
        }
        if (!whole)
            memcpy(p + (g - off), *cluster + in, run[i].len);
        g += run[i].len;
    }
    first->len = done;
out:
    free(buf);
    return e;
}

/* ---- Reading ------------------------------------------------------------ */

/* Is every cluster of the data run M inside the file?  A cluster that
 * starts at or past the end is corrupt (as a compressed one is); the end
 * of a last cluster cut by the end of the file reads as zero, as QEMU
 * reads it.  The size is the one seen at open; only a run past it asks
 * again, for a file that grew since. */
static int check_data_run(struct reader *r, const struct mapping *m)
{
    uint64_t mask = r->cluster_size - 1;
    uint64_t last = (m->host + m->len - 1) & ~mask;
    if (last < r->file_size)
        return 0;
    int64_t now = blk_size(&r->blk);
    if (now > 0 && last < (uint64_t)now)
        return 0;
    uint64_t first = m->host & ~mask, end = (r->file_size + mask) & ~mask;
    return corrupt(r, "data cluster at offset %#llx is beyond the end of the file",
                   (unsigned long long)(first > end ? first : end));
}

int reader_read(struct reader *r, uint64_t off, void *buf, size_t len)
{
    uint8_t *p = buf;
    uint8_t *cluster = NULL;
    int e = 0;
    while (len > 0) {
        if (off >= r->size) {
            /* Past the end: a backing file shorter than its overlay. */
            memset(p, 0, len);
            break;
        }
        uint64_t n = r->size - off < len ? r->size - off : len;
        if (!r->qcow2) {
            if ((e = blk_read(&r->blk, p, n, off)) < 0)
                break;
            p += n, off += n, len -= n;
            continue;
        }
        struct mapping m;
        if ((e = map_run(r, off, n, false, &m)) < 0)
            break;
        switch (m.kind) {
        case ZCOW_CLUSTER_UNALLOCATED:
            if (r->backing)
                e = reader_read(r->backing, off, p, m.len);
            else
                memset(p, 0, m.len);
            break;
        case ZCOW_CLUSTER_ZERO: memset(p, 0, m.len); break;
        case ZCOW_CLUSTER_NORMAL:
            if ((e = check_data_run(r, &m)) == 0)
                e = blk_read(&r->blk, p, m.len, m.host);
            break;
        case ZCOW_CLUSTER_COMPRESSED: e = read_compressed_run(r, off, n, p, &m, &cluster); break;
        }
        if (e < 0)
            break;
        p += m.len, off += m.len, len -= m.len;
    }
    free(cluster);
    return e < 0 ? e : 0;
}

/* From OFF, how many bytes (at most MAX) read alike, as data or as zero.
 * An unallocated run asks the backing file about that run only, so each
 * image of the chain looks at no more than the images above it leave to
 * it: the cost is the runs returned and the L2 tables read, at every
 * depth. */
int reader_extent(struct reader *r, uint64_t off, uint64_t max, uint64_t *len, int *is_zero)
{
    if (max == 0)
        max = 1;
    if (off >= r->size) {
        *len = max;
        *is_zero = 1;
        return 0;
    }
    uint64_t limit = r->size - off < max ? r->size - off : max;
    if (!r->qcow2) {
        /* A sparse raw file reports its holes. */
        *is_zero = 0;
        *len = limit;
        if (r->blk.is_blockdev)
            return 0;
        off_t d = lseek(r->blk.fd, (off_t)off, SEEK_DATA);
        if (d < 0 && errno == ENXIO) {
            *is_zero = 1;
            return 0;
        }
        if (d < 0)
            return 0;
        if ((uint64_t)d > off) {
            *is_zero = 1;
            *len = (uint64_t)d - off < limit ? (uint64_t)d - off : limit;
            return 0;
        }
        off_t h = lseek(r->blk.fd, (off_t)off, SEEK_HOLE);
        if (h > (off_t)off && (uint64_t)h - off < limit)
            *len = (uint64_t)h - off;
        return 0;
    }
    uint64_t done = 0;
    int zero = -1;
    while (done < max) {
        int z;
        uint64_t n, run;
        if (off + done >= r->size) {
            /* Past the end of a backing file shorter than its overlay. */
            z = 1;
            n = run = max - done;
        } else {
            uint64_t want =
                r->size - (off + done) < max - done ? r->size - (off + done) : max - done;
            struct mapping m;
            int e = map_run(r, off + done, want, true, &m);
            if (e < 0)
                return e;
            n = run = m.len;
            if (m.kind == ZCOW_CLUSTER_UNALLOCATED && r->backing) {
                if ((e = reader_extent(r->backing, off + done, run, &n, &z)) < 0)
                    return e;
            } else {
                z = m.kind != ZCOW_CLUSTER_NORMAL;
            }
        }
        if (zero >= 0 && z != zero)
            break;
        zero = z;
        done += n;
        if (n < run)
            break; /* the backing file changes inside the run */
    }
    *len = done;
    *is_zero = zero;
    return 0;
}

/* ---- Cluster info ------------------------------------------------------- */

int reader_cluster_info(struct reader *r, uint64_t guest_offset, struct zcow_cluster_info *info)
{
    memset(info, 0, sizeof(*info));
    if (guest_offset >= r->size)
        return zerr(EINVAL, "offset %llu is beyond the end of '%s'",
                    (unsigned long long)guest_offset, r->path);
    if (!r->qcow2) {
        info->kind = ZCOW_CLUSTER_NORMAL;
        info->host_offset = guest_offset;
        return 0;
    }
    uint64_t ci = guest_offset >> r->cluster_bits;
    uint64_t entry, bitmap;
    int e = l2_entry(r, ci, &entry, &bitmap);
    if (e < 0)
        return e;
    enum qcow2_cluster_type t = qcow2_cluster_type(entry, r->ext_l2);
    if (t == QCOW2_CLUSTER_COMPRESSED) {
        uint64_t off, len;
        qcow2_decode_compressed(r->cluster_bits, entry, &off, &len);
        info->kind = ZCOW_CLUSTER_COMPRESSED;
        info->host_offset = off;
        info->compressed_len = (uint32_t)len;
        return 0;
    }
    if (r->ext_l2) {
        /* Per cluster: any allocated data makes it normal; otherwise all
         * subclusters zero make it zero. */
        if (t == QCOW2_CLUSTER_NORMAL && (bitmap & QCOW2_L2_BITMAP_ALL_ALLOC))
            info->kind = ZCOW_CLUSTER_NORMAL;
        else if ((bitmap & QCOW2_L2_BITMAP_ALL_ZERO) == QCOW2_L2_BITMAP_ALL_ZERO)
            info->kind = ZCOW_CLUSTER_ZERO;
        else
            info->kind = ZCOW_CLUSTER_UNALLOCATED;
    } else {
        info->kind = t == QCOW2_CLUSTER_NORMAL        ? ZCOW_CLUSTER_NORMAL
                     : t == QCOW2_CLUSTER_UNALLOCATED ? ZCOW_CLUSTER_UNALLOCATED
                                                      : ZCOW_CLUSTER_ZERO;
    }
    if (info->kind == ZCOW_CLUSTER_NORMAL)
        info->host_offset = qcow2_l2_host(entry);
    return 0;
}

int reader_read_compressed(struct reader *r, const struct zcow_cluster_info *info, void *buf,
                           size_t cap)
{
    if (info->kind != ZCOW_CLUSTER_COMPRESSED)
        return zerr(EINVAL, "not a compressed cluster");
    uint64_t len = info->compressed_len;
    if (info->host_offset >= r->file_size)
        return corrupt(r, "compressed cluster at offset %#llx is beyond the end of the file",
                       (unsigned long long)info->host_offset);
    if (len > r->file_size - info->host_offset)
        len = r->file_size - info->host_offset;
    if (cap < len)
        return zerr(ENOSPC, "buffer too small for the compressed cluster");
    int e = blk_read(&r->blk, buf, len, info->host_offset);
    return e < 0 ? e : (int)len;
}

int reader_top_extent(struct reader *r, uint64_t off, uint64_t max, uint64_t *len, int *kind)
{
    if (max == 0)
        max = 1;
    if (off >= r->size || !r->qcow2) {
        int zero;
        int e = reader_extent(r, off, max, len, &zero);
        *kind = zero ? READER_ZERO : READER_DATA;
        return e;
    }
    uint64_t want = r->size - off < max ? r->size - off : max;
    struct mapping m;
    int e = map_run(r, off, want, true, &m);
    if (e < 0)
        return e;
    *len = m.len;
    *kind = m.kind == ZCOW_CLUSTER_NORMAL ? READER_DATA
            : m.kind == ZCOW_CLUSTER_ZERO ? READER_ZERO
            : r->backing_name             ? READER_BELOW
                                          : READER_ZERO;
    return 0;
}

void reader_set_exact(struct reader *r)
{
    for (; r; r = r->backing)
        r->exact = true;
}

/* The image of the chain that holds [OFF, OFF+LEN): the first one in
 * which the stretch is not wholly unallocated (NULL when none is). */
int reader_layer_of(struct reader *r, uint64_t off, uint64_t len, struct reader **layer)
{
    for (*layer = r; *layer; *layer = (*layer)->backing) {
        struct reader *l = *layer;
        if (off >= l->size) {
            *layer = NULL; /* past the end of a shorter backing file: zeros */
            return 0;
        }
        if (!l->qcow2 || len > l->size - off)
            return 0;
        struct mapping m;
        int e = map_run(l, off, len, true, &m);
        if (e < 0)
            return e;
        if (m.kind != ZCOW_CLUSTER_UNALLOCATED || m.len < len)
            return 0;
    }
    return 0;
}

uint64_t reader_l2_lookups(const struct reader *r)
{
    uint64_t n = 0;
    for (; r; r = r->backing)
        n += atomic_load(&r->l2_lookups);
    return n;
}

struct reader *reader_backing(struct reader *r) { return r->backing; }
uint64_t reader_size(const struct reader *r) { return r->size; }
uint32_t reader_cluster_size(const struct reader *r) { return r->qcow2 ? r->cluster_size : 0; }
int reader_compression_type(const struct reader *r) { return r->h.compression_type; }
int reader_is_qcow2(const struct reader *r) { return r->qcow2; }
int reader_has_backing(const struct reader *r) { return r->backing != NULL; }
const char *reader_backing_name(const struct reader *r) { return r->backing_name; }
const char *reader_backing_format(const struct reader *r) { return r->backing_format; }

/* ---- Info --------------------------------------------------------------- */

int reader_get_info(struct reader *r, struct zcow_info *info)
{
    memset(info, 0, sizeof(*info));
    info->format = r->qcow2 ? "qcow2" : "raw";
    info->virtual_size = r->size;
    info->file_size = r->file_size;
    struct stat st;
    if (fstat(r->blk.fd, &st) == 0)
        info->actual_size = (uint64_t)st.st_blocks * 512;
    if (!r->qcow2)
        return 0;
    info->cluster_size = r->cluster_size;
    info->version = (int)r->h.version;
    info->compression_type = r->h.compression_type;
    info->refcount_bits = 1 << r->h.refcount_order;
    info->corrupt = !!(r->h.incompatible_features & QCOW2_INCOMPAT_CORRUPT);
    info->dirty = !!(r->h.incompatible_features & QCOW2_INCOMPAT_DIRTY);
    info->lazy_refcounts = !!(r->h.compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS);
    info->extended_l2 = r->ext_l2;
    info->backing_file = r->backing_name;
    info->backing_format = r->backing_format;
    info->backing_path = r->backing_path;

    /* Walk the L2 tables one at a time, beside the cache: a walk would
     * only evict what the readers use. */
    uint64_t clusters = (r->size + r->cluster_size - 1) >> r->cluster_bits;
    uint64_t per_table = 1ull << r->l2_bits;
    uint8_t *table = blk_alloc(r->cluster_size);
    if (!table)
        return zerr(ENOMEM, "out of memory");
    int e = 0;
    for (uint64_t l1i = 0; l1i < r->l1_size && l1i * per_table < clusters; l1i++) {
        uint64_t off = r->l1[l1i] & QCOW2_OFFSET_MASK;
        if (!off)
            continue;
        if ((e = check_table(r, off, r->cluster_size, "l2 table")) < 0 ||
            (e = blk_read(&r->blk, table, r->cluster_size, off)) < 0)
            break;
        uint64_t n =
            clusters - l1i * per_table < per_table ? clusters - l1i * per_table : per_table;
        for (uint64_t i = 0; i < n; i++) {
            uint64_t entry, bitmap;
            qcow2_l2_get(table, r->ext_l2, i, &entry, &bitmap);
            /* A zero cluster that keeps its allocation counts as both. */
            switch (qcow2_cluster_type(entry, r->ext_l2)) {
            case QCOW2_CLUSTER_COMPRESSED:
                info->clusters_compressed++;
                info->clusters_allocated++;
                break;
            case QCOW2_CLUSTER_ZERO_ALLOC: info->clusters_allocated++; /* fall through */
            case QCOW2_CLUSTER_ZERO_PLAIN: info->clusters_zero++; break;
            case QCOW2_CLUSTER_NORMAL:
                info->clusters_allocated++;
                info->clusters_normal++;
                break;
            case QCOW2_CLUSTER_UNALLOCATED:
                if (bitmap & QCOW2_L2_BITMAP_ALL_ZERO) /* extended L2 only */
                    info->clusters_zero++;
                break;
            }
        }
    }
    free(table);
    return e;
}

/* ---- Open and close ----------------------------------------------------- */

void reader_close(struct reader *r)
{
    if (!r)
        return;
    reader_close(r->backing);
    if (r->l2.slots) {
        qcow2_cache_free(&r->l2);
        pthread_mutex_destroy(&r->lock);
    }
    if (r->blk.fd >= 0)
        blk_close(&r->blk);
    free(r->l1);
    free(r->backing_name);
    free(r->backing_path);
    free(r->backing_format);
    free(r->path);
    free(r);
}

/* What the open of one image of a chain knows about the ones above it. */
struct chain {
    const char *what; /* prefix of every message: "cannot open 'x'" */
    int depth;
    bool alone; /* the backing file is not opened */
    dev_t dev[MAX_CHAIN_DEPTH + 1];
    ino_t ino[MAX_CHAIN_DEPTH + 1];
};

static int open_image(const char *path, const char *format, int direct, struct chain *c,
                      struct reader **out);

static int fail(const struct chain *c, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(const struct chain *c, int err, const char *fmt, ...)
{
    char what[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    return zerr(err, "%s: %s", c->what, what);
}

char *reader_resolve_backing(const char *image, const char *name)
{
    const char *slash = strrchr(image, '/');
    if (name[0] == '/' || !slash)
        return strdup(name);
    size_t dir = (size_t)(slash - image) + 1;
    char *p = malloc(dir + strlen(name) + 1);
    if (p) {
        memcpy(p, image, dir);
        strcpy(p + dir, name);
    }
    return p;
}

/* Parse the header extensions in HDR[start, end).  The first unknown
 * incompatible feature bit, if any, is UNKNOWN_BIT: its name from the
 * feature name table goes to UNKNOWN_NAME, for the message. */
static int read_extensions(struct reader *r, const struct chain *c, const uint8_t *hdr,
                           size_t start, size_t end, int unknown_bit,
                           char unknown_name[QCOW2_FEATURE_NAME_MAX + 1])
{
    struct qcow2_ext_iter it;
    struct qcow2_ext x;
    enum qcow2_ext_status st;
    qcow2_ext_begin(&it, hdr, start, end);
    while ((st = qcow2_ext_next(&it, &x)) == QCOW2_EXT_FOUND) {
        switch (x.type) {
        case QCOW2_EXT_BACKING_FORMAT:
            if (x.len == 0 || x.len > 63)
                return fail(c, EINVAL, "backing format name of %u bytes is invalid", x.len);
            free(r->backing_format);
            r->backing_format = strndup((const char *)x.data, x.len);
            if (!r->backing_format)
                return zerr(ENOMEM, "out of memory");
            break;
        case QCOW2_EXT_FEATURE_TABLE:
            if (unknown_bit >= 0 && !unknown_name[0])
                qcow2_ext_feature_name(&x, 0, (unsigned)unknown_bit, unknown_name);
            break;
        case QCOW2_EXT_DATA_FILE: return fail(c, ENOTSUP, "external data files are not supported");
        case QCOW2_EXT_CRYPTO: return fail(c, ENOTSUP, "encrypted images are not supported");
        default: break; /* bitmaps and unknown extensions do not change the data */
        }
    }
    /* More lenient than QEMU, as zcow always was: an end marker ends the
     * area whatever length it claims, and so do fewer than 8 bytes. */
    if (st == QCOW2_EXT_OVERRUN && x.type != QCOW2_EXT_END)
        return fail(c, EINVAL, "header extension %#x of %u bytes reaches past the header cluster",
                    x.type, x.len);
    return 0;
}

static int check_features(const struct chain *c, uint64_t incompat, const char *name)
{
    if (incompat & QCOW2_INCOMPAT_DATA_FILE)
        return fail(c, ENOTSUP, "external data files are not supported");
    uint64_t unknown = incompat & ~(uint64_t)QCOW2_INCOMPAT_MASK;
    if (!unknown)
        return 0;
    if (name[0])
        return fail(c, ENOTSUP, "unsupported qcow2 feature '%s'", name);
    return fail(c, ENOTSUP, "unsupported qcow2 feature bits %#llx", (unsigned long long)unknown);
}

static int open_qcow2(struct reader *r, const uint8_t *first, size_t first_len, int direct,
                      struct chain *c)
{
    const char *why;
    struct qcow2_header *h = &r->h;
    if (qcow2_header_decode(first, first_len, h, &why) < 0)
        return fail(c, EINVAL, "%s", why);
    if (h->crypt_method)
        return fail(c, ENOTSUP, "encrypted images are not supported");
    r->cluster_bits = h->cluster_bits;
    r->cluster_size = 1u << h->cluster_bits;
    r->ext_l2 = (h->incompatible_features & QCOW2_INCOMPAT_EXTL2) != 0;
    if (r->ext_l2 && h->cluster_bits < 14)
        return fail(c, EINVAL, "extended l2 entries need clusters of 16 KiB or more");
    r->l2_bits = h->cluster_bits - (r->ext_l2 ? 4 : 3);
    r->size = h->size;

    /* The first cluster holds the header, its extensions and the backing
     * file name. */
    size_t hlen = r->cluster_size < r->file_size ? r->cluster_size : (size_t)r->file_size;
    char *what = NULL;
    uint8_t *hdr = malloc(hlen);
    if (!hdr)
        return zerr(ENOMEM, "out of memory");
    int e = blk_read(&r->blk, hdr, hlen, 0);
    if (e < 0)
        goto out;
    if (h->header_length > hlen) {
        e = fail(c, EINVAL, "file too short for its header");
        goto out;
    }
    size_t ext_end = hlen;
    if (h->backing_file_offset) {
        if (h->backing_file_offset > r->cluster_size || h->backing_file_offset < h->header_length) {
            e = fail(c, EINVAL, "backing file name offset %llu is outside the header cluster",
                     (unsigned long long)h->backing_file_offset);
            goto out;
        }
        if (h->backing_file_offset < ext_end)
            ext_end = (size_t)h->backing_file_offset;
    }
    uint64_t unknown = h->incompatible_features & ~(uint64_t)QCOW2_INCOMPAT_MASK;
    char name[QCOW2_FEATURE_NAME_MAX + 1] = "";
    e = read_extensions(r, c, hdr, h->header_length, ext_end,
                        unknown ? __builtin_ctzll(unknown) : -1, name);
    if (e < 0)
        goto out;
    if ((e = check_features(c, h->incompatible_features, name)) < 0)
        goto out;

    if (h->backing_file_offset && h->backing_file_size) {
        if (h->backing_file_size > MAX_BACKING_NAME) {
            e = fail(c, EINVAL, "backing file name of %u bytes is too long", h->backing_file_size);
            goto out;
        }
        if (h->backing_file_offset + h->backing_file_size > hlen) {
            e = fail(c, EINVAL, "backing file name reaches past the header cluster");
            goto out;
        }
        r->backing_name = strndup((const char *)hdr + h->backing_file_offset, h->backing_file_size);
        if (!r->backing_name) {
            e = zerr(ENOMEM, "out of memory");
            goto out;
        }
        if (!r->backing_name[0]) {
            e = fail(c, EINVAL, "empty backing file name");
            goto out;
        }
    }

    /* L1: bounded by QEMU's limit, at least as long as the virtual size
     * needs, inside the file. */
    uint64_t per_l1 = (uint64_t)r->cluster_size << r->l2_bits; /* bytes per L1 entry */
    uint64_t need = r->size / per_l1 + (r->size % per_l1 != 0);
    if (h->l1_size > QCOW2_MAX_L1_BYTES / 8) {
        e = fail(c, EFBIG, "l1 table of %u entries is too large", h->l1_size);
        goto out;
    }
    if (need > QCOW2_MAX_L1_BYTES / 8) {
        e = fail(c, EFBIG, "virtual size %llu is too large", (unsigned long long)r->size);
        goto out;
    }
    if (h->l1_size < need) {
        e = fail(c, EINVAL, "l1 table is too small for the virtual size");
        goto out;
    }
    r->l1_size = h->l1_size;
    if (r->l1_size) {
        uint64_t bytes = (uint64_t)r->l1_size * 8;
        if (h->l1_table_offset & (r->cluster_size - 1)) {
            e = fail(c, EINVAL, "l1 table offset %#llx is not cluster aligned",
                     (unsigned long long)h->l1_table_offset);
            goto out;
        }
        if (h->l1_table_offset > r->file_size || bytes > r->file_size - h->l1_table_offset) {
            e = fail(c, EINVAL, "l1 table at offset %#llx is beyond the end of the file",
                     (unsigned long long)h->l1_table_offset);
            goto out;
        }
        r->l1 = blk_alloc(bytes);
        if (!r->l1) {
            e = zerr(ENOMEM, "out of memory");
            goto out;
        }
        if ((e = blk_read(&r->blk, r->l1, bytes, h->l1_table_offset)) < 0)
            goto out;
        for (uint32_t i = 0; i < r->l1_size; i++)
            r->l1[i] = qcow2_be64(&r->l1[i]);
    }

    e = qcow2_cache_init(&r->l2, &r->lock, &r->blk, r->cluster_size,
                         L2_CACHE_BYTES / r->cluster_size);
    if (e < 0)
        goto out;
    pthread_mutex_init(&r->lock, NULL);

    if (r->backing_name && !c->alone) {
        if (c->depth + 1 > MAX_CHAIN_DEPTH) {
            e = fail(c, ELOOP, "backing chain is longer than %d images", MAX_CHAIN_DEPTH);
            goto out;
        }
        if (!strncmp(r->backing_name, "json:", 5)) {
            e = fail(c, ENOTSUP, "backing file '%s' is not a file name", r->backing_name);
            goto out;
        }
        r->backing_path = reader_resolve_backing(r->path, r->backing_name);
        if (!r->backing_path) {
            e = zerr(ENOMEM, "out of memory");
            goto out;
        }
        const char *fmt = r->backing_format;
        if (fmt && strcmp(fmt, "qcow2") && strcmp(fmt, "raw")) {
            e = fail(c, ENOTSUP, "backing format '%s' is not supported", fmt);
            goto out;
        }
        if (asprintf(&what, "cannot open backing file '%s' of '%s'", r->backing_path, r->path) <
            0) {
            what = NULL;
            e = zerr(ENOMEM, "out of memory");
            goto out;
        }
        const char *saved = c->what;
        c->what = what;
        c->depth++;
        e = open_image(r->backing_path, fmt, direct, c, &r->backing);
        c->depth--;
        c->what = saved;
    }
out:
    free(what);
    free(hdr);
    return e;
}

static int open_image(const char *path, const char *format, int direct, struct chain *c,
                      struct reader **out)
{
    *out = NULL;
    if (format && strcmp(format, "qcow2") && strcmp(format, "raw"))
        return fail(c, EINVAL, "unknown format '%s'", format);
    struct reader *r = calloc(1, sizeof(*r));
    if (!r)
        return zerr(ENOMEM, "out of memory");
    r->blk.fd = -1;
    r->path = strdup(path);
    if (!r->path) {
        free(r);
        return zerr(ENOMEM, "out of memory");
    }
    int e = blk_open_read(&r->blk, path, direct);
    if (e < 0) {
        e = zerr_sys(-e, "%s", c->what);
        goto fail;
    }
    struct stat st;
    if (fstat(r->blk.fd, &st) < 0) {
        e = zerr_sys(errno, "%s", c->what);
        goto fail;
    }
    for (int i = 0; i < c->depth; i++) {
        if (c->dev[i] == st.st_dev && c->ino[i] == st.st_ino) {
            e = fail(c, ELOOP, "backing chain has a loop");
            goto fail;
        }
    }
    c->dev[c->depth] = st.st_dev;
    c->ino[c->depth] = st.st_ino;
    int64_t fsize = blk_size(&r->blk);
    if (fsize < 0) {
        e = (int)fsize;
        goto fail;
    }
    r->file_size = (uint64_t)fsize;

    uint8_t *first = blk_alloc(BLK_ALIGN);
    if (!first) {
        e = zerr(ENOMEM, "out of memory");
        goto fail;
    }
    size_t first_len = r->file_size < BLK_ALIGN ? (size_t)r->file_size : BLK_ALIGN;
    e = blk_read(&r->blk, first, BLK_ALIGN, 0);
    bool magic = e >= 0 && first_len >= 4 && qcow2_be32(first) == QCOW2_MAGIC;
    if (e >= 0) {
        if (format && !strcmp(format, "qcow2") && !magic) {
            e = fail(c, EINVAL, "not a qcow2 image (bad magic)");
        } else if (format ? !strcmp(format, "qcow2") : magic) {
            r->qcow2 = true;
            e = open_qcow2(r, first, first_len, direct, c);
        } else {
            r->size = r->file_size;
        }
    }
    free(first);
    if (e < 0)
        goto fail;
    *out = r;
    return 0;
fail:
    reader_close(r);
    return e;
}

int reader_open(const char *path, const char *format, int direct, struct reader **out)
{
    *out = NULL;
    if (!path)
        return zerr(EINVAL, "no image name given");
    char what[1100];
    snprintf(what, sizeof(what), "cannot open '%s'", path);
    struct chain c = { .what = what };
    return open_image(path, format, direct, &c, out);
}

int reader_open_alone(const char *path, int direct, struct reader **out)
{
    *out = NULL;
    if (!path)
        return zerr(EINVAL, "no image name given");
    char what[1100];
    snprintf(what, sizeof(what), "cannot open '%s'", path);
    struct chain c = { .what = what, .alone = true };
    return open_image(path, "qcow2", direct, &c, out);
}
