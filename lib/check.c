/* check.c - `zcow check`: rebuild the refcounts of a qcow2 image from what
 * references each cluster and compare them with the stored ones, counting
 * what `qemu-img check` counts (QEMU block/qcow2-refcount.c,
 * qcow2_check_refcounts; block/qcow2-snapshot.c; block/qcow2-bitmap.c).
 *
 * Nothing read from the file is trusted: every offset and size is checked
 * before use, bytes past the end of the file read as zero (as QEMU's block
 * layer returns them), memory is bounded by the file size, and time too:
 * an L2 table referenced many times (by the active L1 table and by
 * snapshots, or by a hostile L1 table pointing at one cluster again and
 * again) is read and walked once, with its references multiplied. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blockio.h"
#include "check.h"
#include "codec.h"
#include "error.h"
#include "options.h"
#include "qcow2.h"
#include "qcow2_ext.h"
#include "qcow2_l2.h"
#include "qcow2_refcount.h"
#include "zcow.h"

/* QEMU's limits (block/qcow2.h, block/qcow2-bitmap.c); an image beyond
 * them does not open in QEMU, so it cannot be checked there either. */
#define MAX_L1_ENTRIES (QCOW2_MAX_L1_BYTES / 8)
#define MAX_SNAPSHOTS 65536u
#define SNAPSHOT_HEADER_LEN 40u
#define MAX_SNAPSHOT_EXTRA 1024u
#define MAX_SNAPSHOTS_SIZE (1024ull * MAX_SNAPSHOTS)
#define MAX_BITMAPS 65535u
#define MAX_BITMAP_DIR_SIZE (1024ull * MAX_BITMAPS)
#define BITMAP_DIR_ENTRY_LEN 24u
#define BME_MAX_TABLE_SIZE 0x8000000ull
#define BME_MAX_PHYS_SIZE 0x20000000ull
#define BME_MAX_NAME_SIZE 1023u
#define BME_RESERVED_FLAGS 0xfffffffcu
#define BME_FLAG_IN_USE 1u
#define BME_TABLE_RESERVED 0xff000000000001feull
#define BME_TABLE_ALL_ONES 1ull
#define REFT_OFFSET_MASK 0xfffffffffffffe00ull
#define REFT_RESERVED_MASK 0x1ffull

/* QEMU's block layer fails any request reaching past this offset
 * (BDRV_MAX_LENGTH: INT64_MAX aligned down to 1 GiB). */
#define QEMU_MAX_LENGTH 0x7fffffffc0000000ull

/* The computed refcounts take at most this much memory (uint16_t or
 * uint32_t per host cluster): about 512 M clusters, a 32 TiB file of
 * 64 KiB clusters. */
#define MAX_COUNTER_BYTES (1ull << 30)

/* Distinct L2 tables we keep track of; each covers at least 32 KiB of
 * guest space, so no sane image comes close. */
#define MAX_L2_TABLES (1u << 24)

/* Stored refcounts are read through a small direct-mapped cache of 4 KiB
 * pieces of refcount blocks: sequential lookups hit, random ones cost one
 * small read, whatever the cluster size. */
#define RC_PAGE 4096u
#define RC_PAGES 64u

/* Table entries read per chunk when walking an L1 table. */
#define L1_CHUNK 8192u

struct l2ref {
    uint64_t key;    /* L2 table offset + 1; 0: free slot */
    uint64_t refs;   /* references from every L1 table */
    uint64_t active; /* of them, from the active L1 table */
};

struct snap {
    uint64_t l1_offset;
    uint64_t l1_size;
};

struct check {
    struct blk b;
    bool open;
    unsigned flags;
    zcow_check_report_fn *report;
    void *opaque;
    struct zcow_check_result *res;

    struct qcow2_header h;
    struct check_extensions ext;
    uint64_t file_len;
    unsigned cb; /* cluster_bits */
    uint64_t cs; /* cluster size */
    bool ext_l2;
    unsigned l2_esize;   /* bytes per L2 entry: 8, or 16 with extended L2 */
    uint64_t l2_entries; /* entries per L2 table */
    unsigned order;      /* refcount_order */
    unsigned rb_bits;    /* log2 of the entries per refcount block */

    uint64_t *reftable;
    uint64_t reftable_len;

    /* Computed refcounts, saturating at counter_max (refcount_max, or the
     * counter's own maximum for 64-bit refcounts). */
    uint16_t *rc16;
    uint32_t *rc32;
    uint64_t counter_max;
    uint64_t nb_clusters; /* ceil(file_len / cs): the clusters compared */
    uint64_t used;        /* nb_clusters, or one more if a tail past EOF
                             was counted */

    struct l2ref *l2map;
    uint64_t l2map_cap, l2map_n;

    struct snap *snaps;
    uint32_t nsnaps;
    uint64_t snapshots_size;

    uint8_t *rc_pages;
    uint64_t rc_tag[RC_PAGES]; /* page offset + 1; 0: empty */

    uint8_t *cluster_buf;
    uint8_t *cdata, *cout; /* for ZCOW_CHECK_DECOMPRESS */
};

static void note(struct check *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void note(struct check *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vzsay(c->report, c->opaque, fmt, ap);
    va_end(ap);
}

/* Read LEN bytes at OFF; bytes past the end of the file read as zero
 * (and offsets past it, which pread may not take, are not read). */
static int read_at(struct check *c, void *buf, size_t len, uint64_t off)
{
    if (off >= c->file_len) {
        memset(buf, 0, len);
        return 0;
    }
    return blk_read(&c->b, buf, len, off);
}

/* Can QEMU read [OFF, OFF+LEN)?  Its block layer fails requests past
 * QEMU_MAX_LENGTH, so a table there stops QEMU's open or check. */
static bool reachable(uint64_t off, uint64_t len)
{
    return off <= QEMU_MAX_LENGTH && len <= QEMU_MAX_LENGTH - off;
}

static uint64_t rc_get(const struct check *c, uint64_t k)
{
    return c->rc16 ? c->rc16[k] : c->rc32[k];
}

static void rc_set(struct check *c, uint64_t k, uint64_t v)
{
    if (c->rc16)
        c->rc16[k] = (uint16_t)v;
    else
        c->rc32[k] = (uint32_t)v;
}

/* Add MULT references to every cluster that [OFF, OFF+LEN) touches.  A
 * range that ends one cluster or more past the end of the file is an
 * error and counts nothing; a shorter tail is fine, as the last cluster
 * may be partly written (QEMU: qcow2_inc_refcounts_imrt).  Returns false
 * if the range was refused. */
static bool count_range(struct check *c, uint64_t off, uint64_t len, uint64_t mult)
{
    if (len == 0 || mult == 0)
        return true;
    uint64_t end;
    if (__builtin_add_overflow(off, len, &end) ||
        (end > c->file_len && end - c->file_len >= c->cs)) {
        note(c,
             "ERROR: counting reference for region exceeding the end of the file by one "
             "cluster or more: offset 0x%" PRIx64 " size 0x%" PRIx64,
             off, len);
        c->res->corruptions += mult;
        return false;
    }
    /* end < file_len + cs, so every k below is within the counters. */
    for (uint64_t k = off >> c->cb, last = (end - 1) >> c->cb; k <= last; k++) {
        uint64_t cur = rc_get(c, k);
        uint64_t room = c->counter_max - cur;
        if (mult > room) {
            note(c, "ERROR: overflow cluster offset=0x%" PRIx64, k << c->cb);
            c->res->corruptions += mult - room;
            cur = c->counter_max;
        } else {
            cur += mult;
        }
        rc_set(c, k, cur);
        if (k >= c->used)
            c->used = k + 1;
    }
    return true;
}

/* The stored refcount of host cluster K: 0 where no refcount block covers
 * it; -EIO when the block's offset is not cluster aligned or beyond what
 * QEMU can read, as QEMU's qcow2_get_refcount fails then. */
static int stored_refcount(struct check *c, uint64_t k, uint64_t *out)
{
    *out = 0;
    uint64_t idx, index;
    qcow2_refcount_locate(c->cb, c->order, k, &idx, &index);
    if (idx >= c->reftable_len)
        return 0;
    uint64_t rb = c->reftable[idx] & REFT_OFFSET_MASK;
    if (!rb)
        return 0;
    if (rb & (c->cs - 1))
        return -EIO;
    if (rb > QEMU_MAX_LENGTH - c->cs)
        return -EIO; /* QEMU's block layer refuses the read */
    if (rb >= c->file_len)
        return 0;                     /* reads as zero */
    uint64_t bit = index << c->order; /* < 8 * cs */
    uint64_t byte = rb + (bit >> 3);
    uint64_t page = byte & ~(uint64_t)(RC_PAGE - 1);
    unsigned slot = (unsigned)((page / RC_PAGE) % RC_PAGES);
    uint8_t *p = c->rc_pages + (size_t)slot * RC_PAGE;
    if (c->rc_tag[slot] != page + 1) {
        c->rc_tag[slot] = 0;
        int r = read_at(c, p, RC_PAGE, page);
        if (r < 0)
            return r;
        c->rc_tag[slot] = page + 1;
    }
    uint64_t rel = (byte - page) * 8 + (bit & 7);
    *out = qcow2_refcount_get(p, c->order, rel >> c->order);
    return 0;
}

/* ---- Header -------------------------------------------------------------- */

int check_parse_extensions(const uint8_t *hdr, size_t len, const struct qcow2_header *h,
                           struct check_extensions *ext, const char **why)
{
    uint64_t cs = 1ull << h->cluster_bits;
    uint64_t end = h->backing_file_offset ? h->backing_file_offset : cs;
    memset(ext, 0, sizeof(*ext));
    *why = NULL;
    if (end > len) {
        *why = "header extensions past the data given";
        return -EINVAL;
    }
    struct qcow2_ext_iter it;
    struct qcow2_ext x;
    enum qcow2_ext_status st;
    qcow2_ext_begin(&it, hdr, h->header_length, (size_t)end);
    while ((st = qcow2_ext_next(&it, &x)) == QCOW2_EXT_FOUND) {
        uint32_t elen = x.len;
        const uint8_t *d = x.data;
        switch (x.type) {
        case QCOW2_EXT_BACKING_FORMAT:
            if (elen >= 16) { /* QEMU keeps it in a char[16] */
                *why = "backing format name too long";
                return -EINVAL;
            }
            break;
        case QCOW2_EXT_CRYPTO:
            if (h->crypt_method != 2) {
                *why = "crypto header extension without LUKS encryption";
                return -EINVAL;
            }
            if (elen != 16) {
                *why = "bad crypto header extension size";
                return -EINVAL;
            }
            ext->has_crypto = 1;
            ext->crypto_offset = qcow2_be64(d);
            ext->crypto_length = qcow2_be64(d + 8);
            if (ext->crypto_offset % cs) {
                *why = "crypto header offset not cluster aligned";
                return -EINVAL;
            }
            break;
        case QCOW2_EXT_BITMAPS: {
            if (elen != 24) {
                *why = "bad bitmaps extension size";
                return -EINVAL;
            }
            if (!(h->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
                /* A program without bitmap support wrote the image:
                 * QEMU ignores the bitmaps, and so do we. */
                ext->bitmaps_ignored = 1;
                break;
            }
            uint32_t nb = qcow2_be32(d);
            uint64_t dir_size = qcow2_be64(d + 8), dir_off = qcow2_be64(d + 16);
            if (qcow2_be32(d + 4) != 0) {
                *why = "bitmaps extension reserved field is not zero";
                return -EINVAL;
            }
            if (nb > MAX_BITMAPS) {
                *why = "too many bitmaps";
                return -EINVAL;
            }
            if (nb == 0) {
                *why = "bitmaps extension with zero bitmaps";
                return -EINVAL;
            }
            if (dir_off % cs) {
                *why = "bitmap directory offset not cluster aligned";
                return -EINVAL;
            }
            if (dir_size > MAX_BITMAP_DIR_SIZE) {
                *why = "bitmap directory too large";
                return -EINVAL;
            }
            ext->nb_bitmaps = nb;
            ext->bitmap_dir_offset = dir_off;
            ext->bitmap_dir_size = dir_size;
            break;
        }
        case QCOW2_EXT_DATA_FILE: ext->has_data_file = 1; break;
        default: break; /* the feature table and unknown extensions */
        }
    }
    if (st != QCOW2_EXT_DONE) {
        *why = "header extension too large";
        return -EINVAL;
    }
    return 0;
}

/* QEMU's qcow2_validate_table: at most MAX_BYTES, cluster aligned, and
 * offset + size representable. */
static bool table_ok(const struct check *c, uint64_t off, uint64_t entries, uint64_t esize,
                     uint64_t max_bytes, const char **why, const char *too_large,
                     const char *bad_offset)
{
    if (entries > max_bytes / esize) {
        *why = too_large;
        return false;
    }
    if ((uint64_t)INT64_MAX - entries * esize < off || (off & (c->cs - 1))) {
        *why = bad_offset;
        return false;
    }
    return true;
}

static int open_header(struct check *c, const char *path)
{
    uint8_t first[QCOW2_HEADER_V3_LEN];
    size_t n = c->file_len < sizeof(first) ? (size_t)c->file_len : sizeof(first);
    int r = read_at(c, first, sizeof(first), 0);
    if (r < 0)
        return r;
    const char *why;
    /* The spec wants a version 3 header length that is a multiple of 8,
     * and our decoder insists; QEMU does not, so neither does its check:
     * decode with the length rounded up, then keep the real one. */
    uint32_t hlen = n >= 104 ? qcow2_be32(first + 100) : 0;
    bool odd_len = qcow2_be32(first + 4) == 3 && hlen > 104 && hlen % 8;
    if (odd_len)
        qcow2_put_be32(first + 100, (hlen + 7) & ~7u);
    if (qcow2_header_decode(first, n, &c->h, &why) < 0)
        return zerr(EINVAL, "cannot check '%s': %s", path, why);
    struct qcow2_header *h = &c->h;
    if (odd_len) {
        h->header_length = hlen;
        note(c, "note: header length %" PRIu32 " is not a multiple of 8", hlen);
    }
    c->cb = h->cluster_bits;
    c->cs = 1ull << c->cb;
    c->order = h->refcount_order;
    c->ext_l2 = h->incompatible_features & QCOW2_INCOMPAT_EXTL2;
    c->l2_esize = qcow2_l2_entry_bytes(c->ext_l2);
    c->l2_entries = c->cs / c->l2_esize;
    c->rb_bits = qcow2_refblock_bits(c->cb, c->order);
    c->res->cluster_size = (uint32_t)c->cs;
    c->res->marked_corrupt = !!(h->incompatible_features & QCOW2_INCOMPAT_CORRUPT);
    c->res->marked_dirty = !!(h->incompatible_features & QCOW2_INCOMPAT_DIRTY);

    uint64_t unknown = h->incompatible_features & ~(uint64_t)QCOW2_INCOMPAT_MASK;
    if (unknown)
        return zerr(ENOTSUP, "cannot check '%s': unsupported qcow2 feature(s) 0x%" PRIx64, path,
                    unknown);
    if (h->incompatible_features & QCOW2_INCOMPAT_DATA_FILE)
        return zerr(ENOTSUP, "cannot check '%s': external data files are not supported", path);
    if (h->crypt_method > 2)
        return zerr(EINVAL, "cannot check '%s': unsupported encryption method %" PRIu32, path,
                    h->crypt_method);
    if (c->ext_l2 && c->cb < 14) /* subclusters of at least 512 bytes */
        return zerr(EINVAL, "cannot check '%s': unsupported subcluster size %" PRIu64, path,
                    c->cs / 32);
    if (h->backing_file_offset > c->cs)
        return zerr(EINVAL, "cannot check '%s': invalid backing file offset", path);
    if (h->backing_file_offset &&
        (h->backing_file_size > 1023 || h->backing_file_size > c->cs - h->backing_file_offset))
        return zerr(EINVAL, "cannot check '%s': backing file name too long", path);
    /* No refcount table at all is allowed in check mode: every refcount
     * then reads as zero. */
    if (!table_ok(c, h->refcount_table_offset, h->refcount_table_clusters, c->cs,
                  QCOW2_MAX_REFTABLE_BYTES, &why, "reference count table too large",
                  "reference count table offset invalid"))
        return zerr(EINVAL, "cannot check '%s': %s", path, why);
    if (!table_ok(c, h->l1_table_offset, h->l1_size, 8, QCOW2_MAX_L1_BYTES, &why,
                  "active L1 table too large", "active L1 table offset invalid"))
        return zerr(EINVAL, "cannot check '%s': %s", path, why);
    unsigned shift = c->cb + (c->cb - (c->ext_l2 ? 4 : 3)); /* bytes one L2 table maps */
    uint64_t need = (h->size >> shift) + ((h->size & ((1ull << shift) - 1)) != 0);
    if (need > INT32_MAX)
        return zerr(EFBIG, "cannot check '%s': image is too big", path);
    if (h->l1_size < need)
        return zerr(EINVAL, "cannot check '%s': L1 table is too small", path);
    if (h->autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW)
        return zerr(EINVAL, "cannot check '%s': data-file-raw requires a data file", path);

    c->cluster_buf = blk_alloc(c->cs);
    if (!c->cluster_buf)
        return zerr(ENOMEM, "out of memory");
    r = read_at(c, c->cluster_buf, c->cs, 0);
    if (r < 0)
        return r;
    if (check_parse_extensions(c->cluster_buf, c->cs, h, &c->ext, &why) < 0)
        return zerr(EINVAL, "cannot check '%s': %s", path, why);
    /* An AES image is checked without its key (QEMU wants the key to
     * open it); a LUKS image needs its header. */
    if (h->crypt_method == 2 && !c->ext.has_crypto)
        return zerr(EINVAL, "cannot check '%s': missing crypto header for crypt method 2", path);
    if (c->ext.has_data_file)
        note(c, "note: data file extension without the external data file bit ignored");
    if (c->ext.bitmaps_ignored)
        note(c, "note: bitmaps extension ignored: the autoclear bit is clear, bitmaps are "
                "inconsistent and their clusters count as leaked");

    /* total-clusters counts the virtual size QEMU sees: whole sectors. */
    uint64_t vsize = h->size & ~511ull;
    c->res->total_clusters = (vsize >> c->cb) + ((vsize & (c->cs - 1)) != 0);

    if (h->l1_size && !reachable(h->l1_table_offset, h->l1_size * 8ull))
        return zerr(EIO, "cannot check '%s': cannot read the L1 table", path);
    c->reftable_len = (uint64_t)h->refcount_table_clusters << (c->cb - 3);
    if (c->reftable_len && !reachable(h->refcount_table_offset, c->reftable_len * 8))
        return zerr(EIO, "cannot check '%s': cannot read the refcount table", path);
    c->reftable = malloc(c->reftable_len ? c->reftable_len * 8 : 1);
    if (!c->reftable)
        return zerr(ENOMEM, "out of memory");
    r = read_at(c, c->reftable, c->reftable_len * 8, h->refcount_table_offset);
    if (r < 0)
        return r;
    for (uint64_t i = 0; i < c->reftable_len; i++)
        c->reftable[i] = qcow2_be64(&c->reftable[i]);
    return 0;
}

/* The snapshot table (QEMU: qcow2_check_read_snapshot_table and
 * qcow2_do_read_snapshots without repair): any problem stops the check. */
static int read_snapshot_table(struct check *c, const char *path)
{
    uint32_t nb = c->h.nb_snapshots;
    uint64_t base = c->h.snapshots_offset;
    const char *why;
    if (!table_ok(c, base, nb, SNAPSHOT_HEADER_LEN, SNAPSHOT_HEADER_LEN * (uint64_t)MAX_SNAPSHOTS,
                  &why, "snapshot table too large", "snapshot table offset invalid")) {
        c->res->check_errors++;
        return zerr(EINVAL, "cannot check '%s': %s", path, why);
    }
    if (!nb)
        return 0;
    c->snaps = calloc(nb, sizeof(*c->snaps));
    if (!c->snaps)
        return zerr(ENOMEM, "out of memory");
    uint64_t off = base;
    for (uint32_t i = 0; i < nb; i++) {
        uint8_t sh[SNAPSHOT_HEADER_LEN];
        off = (off + 7) & ~7ull;
        int r = read_at(c, sh, sizeof(sh), off);
        if (r < 0)
            return r;
        c->snaps[i].l1_offset = qcow2_be64(sh);
        c->snaps[i].l1_size = qcow2_be32(sh + 8);
        uint32_t id_len = qcow2_be16(sh + 12), name_len = qcow2_be16(sh + 14);
        uint32_t extra = qcow2_be32(sh + 36);
        if (extra > MAX_SNAPSHOT_EXTRA) {
            c->res->check_errors++;
            return zerr(EFBIG,
                        "cannot check '%s': too much extra metadata in snapshot table "
                        "entry %" PRIu32,
                        path, i);
        }
        /* Version 3 entries carry at least the 64-bit VM state size and
         * the disk size (QEMU: qcow2_check_read_snapshot_table). */
        if (c->h.version >= 3 && extra < 16) {
            note(c, "ERROR snapshot table entry %" PRIu32 " is incomplete", i);
            c->res->corruptions++;
        }
        off += SNAPSHOT_HEADER_LEN + (uint64_t)extra + id_len + name_len;
        if (!reachable(off, 0)) {
            c->res->check_errors++;
            return zerr(EIO, "cannot check '%s': cannot read the snapshot table", path);
        }
        if (off - base > MAX_SNAPSHOTS_SIZE) {
            c->res->check_errors++;
            return zerr(EFBIG, "cannot check '%s': snapshot table is too big", path);
        }
    }
    c->nsnaps = nb;
    c->snapshots_size = off - base;
    return 0;
}

static int alloc_counters(struct check *c, const char *path)
{
    c->nb_clusters = (c->file_len >> c->cb) + ((c->file_len & (c->cs - 1)) != 0);
    c->used = c->nb_clusters;
    /* One more: a range may reach less than a cluster past the end. */
    uint64_t n = c->nb_clusters + 1;
    bool wide = c->order > 4;
    if (n > MAX_COUNTER_BYTES / (wide ? 4 : 2))
        return zerr(EFBIG,
                    "cannot check '%s': %" PRIu64 " clusters would need more than 1 GiB "
                    "of counters",
                    path, n);
    if (wide) {
        c->rc32 = calloc(n, 4);
        /* Exact for 32-bit refcounts; 64-bit ones saturate here at 2^32 - 1,
         * far more references than any image can hold. */
        c->counter_max = UINT32_MAX;
    } else {
        c->rc16 = calloc(n, 2);
        c->counter_max = qcow2_refcount_max(c->order);
    }
    c->rc_pages = malloc((size_t)RC_PAGES * RC_PAGE);
    if ((!c->rc16 && !c->rc32) || !c->rc_pages)
        return zerr(ENOMEM, "out of memory");
    return 0;
}

/* ---- L1 and L2 tables ------------------------------------------------------ */

static uint64_t hash64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

/* Record REFS references (ACTIVE of them from the active L1) to the L2
 * table at OFF. */
static int l2map_add(struct check *c, uint64_t off, uint64_t refs, uint64_t active)
{
    if ((c->l2map_n + 1) * 2 > c->l2map_cap) {
        if (c->l2map_n >= MAX_L2_TABLES)
            return zerr(EFBIG, "too many distinct L2 tables to check");
        uint64_t cap = c->l2map_cap ? c->l2map_cap * 2 : 1024;
        struct l2ref *m = calloc(cap, sizeof(*m));
        if (!m)
            return zerr(ENOMEM, "out of memory");
        for (uint64_t i = 0; i < c->l2map_cap; i++) {
            if (!c->l2map[i].key)
                continue;
            uint64_t j = hash64(c->l2map[i].key) & (cap - 1);
            while (m[j].key)
                j = (j + 1) & (cap - 1);
            m[j] = c->l2map[i];
        }
        free(c->l2map);
        c->l2map = m;
        c->l2map_cap = cap;
    }
    uint64_t key = off + 1; /* offsets are multiples of 512: no wrap */
    uint64_t j = hash64(key) & (c->l2map_cap - 1);
    while (c->l2map[j].key && c->l2map[j].key != key)
        j = (j + 1) & (c->l2map_cap - 1);
    if (!c->l2map[j].key) {
        c->l2map[j].key = key;
        c->l2map_n++;
    }
    c->l2map[j].refs += refs;
    c->l2map[j].active += active;
    return 0;
}

/* The 8-byte big-endian entries of a table (L1, bitmap) read a chunk at a
 * time.  Entries past the end of the file read as zero and count nothing:
 * they are not visited. */
struct entries {
    struct check *c;
    uint64_t off, count; /* the table, its entries inside the file */
    uint64_t base, n, i; /* the chunk: entries [base, base + n), the next i */
    uint64_t *chunk;
    int err;
};

static int entries_open(struct entries *t, struct check *c, uint64_t off, uint64_t count)
{
    memset(t, 0, sizeof(*t));
    t->c = c;
    t->off = off;
    if (off < c->file_len)
        t->count = (c->file_len - off + 7) / 8 < count ? (c->file_len - off + 7) / 8 : count;
    t->chunk = malloc(L1_CHUNK * 8);
    return t->chunk ? 0 : zerr(ENOMEM, "out of memory");
}

/* The next entry and its index; false at the end or on a read error. */
static bool entries_next(struct entries *t, uint64_t *index, uint64_t *e)
{
    if (t->i == t->n) {
        t->base += t->n;
        if (t->base >= t->count || t->err)
            return false;
        t->n = t->count - t->base < L1_CHUNK ? t->count - t->base : L1_CHUNK;
        t->i = 0;
        if ((t->err = read_at(t->c, t->chunk, t->n * 8, t->off + t->base * 8)) < 0)
            return false;
    }
    *index = t->base + t->i;
    *e = qcow2_be64(&t->chunk[t->i++]);
    return true;
}

/* Free, and the read error if there was one. */
static int entries_close(struct entries *t)
{
    free(t->chunk);
    return t->err;
}

/* Count the L1 table at L1_OFF of L1_SIZE entries and the L2 tables it
 * points at, MULT times (identical snapshot tables are walked once).  The
 * active table also has its COPIED flags checked against the stored
 * refcounts (QEMU: check_refcounts_l1, check_oflag_copied). */
static int walk_l1(struct check *c, uint64_t l1_off, uint64_t l1_size, bool active, uint64_t mult)
{
    if (!l1_size)
        return 0;
    count_range(c, l1_off, l1_size * 8, mult);
    if (!reachable(l1_off, l1_size * 8)) {
        c->res->check_errors++;
        return zerr(EIO, "cannot read the L1 table at offset 0x%" PRIx64, l1_off);
    }
    struct entries t;
    int r = entries_open(&t, c, l1_off, l1_size);
    uint64_t i, e;
    while (r == 0 && entries_next(&t, &i, &e)) {
        if (!e)
            continue;
        if (e & QCOW2_L1E_RESERVED) {
            note(c, "ERROR found L1 entry with reserved bits set: %" PRIx64, e);
            c->res->corruptions += mult;
        }
        uint64_t l2 = e & QCOW2_OFFSET_MASK;
        count_range(c, l2, c->cs, mult);
        if (l2 & (c->cs - 1)) {
            note(c,
                 "ERROR l2_offset=%" PRIx64 ": Table is not cluster aligned; L1 entry "
                 "corrupted",
                 l2);
            c->res->corruptions += mult;
        }
        r = l2map_add(c, l2, mult, active ? mult : 0);
        if (active && l2) {
            uint64_t rc;
            if (stored_refcount(c, l2 >> c->cb, &rc) == 0 &&
                (rc == 1) != !!(e & QCOW2_OFLAG_COPIED)) {
                note(c,
                     "ERROR OFLAG_COPIED L2 cluster: l1_index=%" PRIu64 " l1_entry=%" PRIx64
                     " refcount=%" PRIu64,
                     i, e, rc);
                c->res->corruptions++;
            }
        }
    }
    int r2 = entries_close(&t);
    return r < 0 ? r : r2;
}

static int try_decompress(struct check *c, uint64_t l2_off, uint64_t i, uint64_t coff,
                          uint64_t clen)
{
    if (!c->cdata) {
        /* The descriptor's sector count covers at most 2 clusters. */
        c->cdata = malloc(2 * c->cs);
        c->cout = malloc(c->cs);
        if (!c->cdata || !c->cout)
            return zerr(ENOMEM, "out of memory");
    }
    if (clen > 2 * c->cs)
        clen = 2 * c->cs;
    int r = read_at(c, c->cdata, clen, coff);
    if (r < 0)
        return r;
    if (codec_decompress(c->h.compression_type, c->cdata, clen, c->cout, c->cs) < 0) {
        note(c,
             "ERROR compressed cluster at host offset 0x%" PRIx64 " (L2 table 0x%" PRIx64
             " entry %" PRIu64 ") does not decompress",
             coff, l2_off, i);
        c->res->corruptions++;
        c->res->decompress_failures++;
    }
    return 0;
}

/* Count the references of one L2 table, once for all its references
 * (QEMU: check_refcounts_l2, and the L2 half of check_oflag_copied). */
static int walk_l2(struct check *c, const struct l2ref *t)
{
    uint64_t l2_off = t->key - 1;
    uint64_t refs = t->refs, act = t->active;
    if (l2_off >= c->file_len)
        return 0; /* reads as zero: nothing allocated */
    /* Entries past the end of the file read as zero: skip them. */
    uint64_t n = (c->file_len - l2_off + c->l2_esize - 1) / c->l2_esize;
    if (n > c->l2_entries)
        n = c->l2_entries;
    int r = read_at(c, c->cluster_buf, n * c->l2_esize, l2_off);
    if (r < 0)
        return r;
    struct zcow_check_result *res = c->res;
    uint64_t next_contiguous = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t e, bm;
        qcow2_l2_get(c->cluster_buf, c->ext_l2, i, &e, &bm);
        if (!e && !bm)
            continue;
        enum qcow2_cluster_type type = qcow2_cluster_type(e, c->ext_l2);
        if (type != QCOW2_CLUSTER_COMPRESSED && (e & QCOW2_L2E_RESERVED)) {
            note(c, "ERROR found l2 entry with reserved bits set: %" PRIx64, e);
            res->corruptions += refs;
        }
        switch (type) {
        case QCOW2_CLUSTER_COMPRESSED: {
            if (e & QCOW2_OFLAG_COPIED) {
                uint64_t coff_mask = (1ull << qcow2_csize_shift(c->cb)) - 1;
                note(c,
                     "ERROR: coffset=0x%" PRIx64 ": copied flag must never be set for "
                     "compressed clusters",
                     (uint64_t)(e & coff_mask));
                res->corruptions += refs;
                e &= ~QCOW2_OFLAG_COPIED;
            }
            if (bm) {
                note(c,
                     "ERROR compressed cluster %" PRIu64 " with non-zero subcluster "
                     "allocation bitmap, entry=0x%" PRIx64,
                     i, e);
                res->corruptions += refs;
                break;
            }
            uint64_t coff, clen;
            qcow2_decode_compressed(c->cb, e, &coff, &clen);
            bool counted = count_range(c, coff, clen, refs);
            res->allocated_clusters += act;
            res->compressed_clusters += act;
            res->fragmented_clusters += act; /* by nature, as QEMU counts them */
            if (counted && (c->flags & ZCOW_CHECK_DECOMPRESS)) {
                r = try_decompress(c, l2_off, i, coff, clen);
                if (r < 0)
                    return r;
            }
            break;
        }
        case QCOW2_CLUSTER_ZERO_ALLOC:
        case QCOW2_CLUSTER_NORMAL: {
            uint64_t off = e & QCOW2_OFFSET_MASK;
            if (qcow2_subcluster_type(e, bm, c->ext_l2, 0) == QCOW2_SUBCLUSTER_INVALID) {
                note(c,
                     "ERROR offset=%" PRIx64 ": Allocated cluster has corrupted subcluster "
                     "allocation bitmap",
                     off);
                res->corruptions += refs;
            }
            if (off & (c->cs - 1)) {
                bool data = c->ext_l2 ? (bm & QCOW2_L2_BITMAP_ALL_ALLOC) : !(e & QCOW2_OFLAG_ZERO);
                if (data)
                    note(c,
                         "ERROR offset=%" PRIx64 ": Data cluster is not properly aligned; "
                         "L2 entry corrupted.",
                         off);
                else
                    note(c,
                         "ERROR offset=%" PRIx64 ": Preallocated cluster is not properly "
                         "aligned; L2 entry corrupted.",
                         off);
                res->corruptions += refs;
            }
            if (act) {
                res->allocated_clusters += act;
                if (next_contiguous && off != next_contiguous)
                    res->fragmented_clusters += act;
                next_contiguous = off + c->cs;
            }
            count_range(c, off, c->cs, refs);
            /* QEMU skips the table at offset 0 here (check_oflag_copied). */
            if (act && l2_off) {
                uint64_t rc;
                if (stored_refcount(c, off >> c->cb, &rc) == 0 &&
                    (rc == 1) != !!(e & QCOW2_OFLAG_COPIED)) {
                    note(c,
                         "ERROR OFLAG_COPIED data cluster: l2_entry=%" PRIx64 " refcount=%" PRIu64,
                         e, rc);
                    res->corruptions += act;
                }
            }
            break;
        }
        case QCOW2_CLUSTER_ZERO_PLAIN: break;
        case QCOW2_CLUSTER_UNALLOCATED:
            if (qcow2_subcluster_type(e, bm, c->ext_l2, 0) == QCOW2_SUBCLUSTER_INVALID) {
                note(c, "ERROR: Unallocated cluster has non-zero subcluster allocation map");
                res->corruptions += refs;
            }
            break;
        }
    }
    return 0;
}

static int cmp_l2ref(const void *a, const void *b)
{
    uint64_t x = ((const struct l2ref *)a)->key, y = ((const struct l2ref *)b)->key;
    return x < y ? -1 : x > y;
}

static int cmp_snap(const void *a, const void *b)
{
    const struct snap *x = a, *y = b;
    if (x->l1_offset != y->l1_offset)
        return x->l1_offset < y->l1_offset ? -1 : 1;
    return x->l1_size < y->l1_size ? -1 : x->l1_size > y->l1_size;
}

static int walk_snapshots(struct check *c)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < c->nsnaps; i++) {
        struct snap s = c->snaps[i];
        if (s.l1_offset & (c->cs - 1)) {
            note(c,
                 "ERROR snapshot %" PRIu32 " l1_offset=%#" PRIx64 ": L1 table is not cluster "
                 "aligned; snapshot table entry corrupted",
                 i, s.l1_offset);
            c->res->corruptions++;
            continue;
        }
        if (s.l1_size > MAX_L1_ENTRIES) {
            note(c,
                 "ERROR snapshot %" PRIu32 " l1_size=%#" PRIx64 ": L1 table is too large; "
                 "snapshot table entry corrupted",
                 i, s.l1_size);
            c->res->corruptions++;
            continue;
        }
        c->snaps[n++] = s;
    }
    if (n > 1)
        qsort(c->snaps, n, sizeof(*c->snaps), cmp_snap);
    for (uint32_t i = 0; i < n;) {
        uint32_t j = i + 1;
        while (j < n && !cmp_snap(&c->snaps[i], &c->snaps[j]))
            j++;
        int r = walk_l1(c, c->snaps[i].l1_offset, c->snaps[i].l1_size, false, j - i);
        if (r < 0)
            return r;
        i = j;
    }
    return 0;
}

static int walk_l2_tables(struct check *c)
{
    uint64_t n = 0;
    for (uint64_t i = 0; i < c->l2map_cap; i++)
        if (c->l2map[i].key)
            c->l2map[n++] = c->l2map[i];
    if (n > 1)
        qsort(c->l2map, n, sizeof(*c->l2map), cmp_l2ref); /* read in file order */
    for (uint64_t i = 0; i < n; i++) {
        int r = walk_l2(c, &c->l2map[i]);
        if (r < 0)
            return r;
    }
    return 0;
}

/* ---- Bitmaps (QEMU: qcow2_check_bitmaps_refcounts, bitmap_list_load) ----- */

/* Count a bitmap table and its data clusters.  QEMU loads the table of
 * every bitmap not marked in use when it opens the image, and refuses to
 * open it when an entry is invalid; in a bitmap in use, an invalid entry
 * is a corruption (qcow2_check_bitmaps_refcounts).  Returns -EINVAL with
 * *WHY set in the first case. */
static int bitmap_table(struct check *c, uint64_t table_off, uint64_t entries, bool in_use,
                        const char **why)
{
    count_range(c, table_off, entries * 8, 1);
    if (!reachable(table_off, entries * 8)) {
        *why = "cannot read a bitmap table";
        return -EINVAL;
    }
    struct entries t;
    int r = entries_open(&t, c, table_off, entries);
    uint64_t i, e;
    while (r == 0 && entries_next(&t, &i, &e)) {
        uint64_t off = e & QCOW2_OFFSET_MASK;
        if ((e & BME_TABLE_RESERVED) ||
            (off && ((e & BME_TABLE_ALL_ONES) || (off & (c->cs - 1))))) {
            if (!in_use) {
                *why = "invalid bitmap table entry";
                r = -EINVAL;
                break;
            }
            note(c,
                 "ERROR bitmap table entry %" PRIu64 " of the table at 0x%" PRIx64
                 " is invalid: %" PRIx64,
                 i, table_off, e);
            c->res->corruptions++;
            continue;
        }
        if (off)
            count_range(c, off, c->cs, 1);
    }
    int r2 = entries_close(&t);
    return r < 0 ? r : r2;
}

/* QEMU: bitmap_list_load and qcow2_load_dirty_bitmaps at open, then
 * qcow2_check_bitmaps_refcounts.  A directory QEMU refuses makes the
 * check fail. */
static int count_bitmaps(struct check *c, const char *path)
{
    const struct check_extensions *x = &c->ext;
    if (!x->nb_bitmaps)
        return 0;
    if (x->bitmap_dir_offset > QEMU_MAX_LENGTH - x->bitmap_dir_size)
        return zerr(EINVAL, "cannot check '%s': bitmap directory out of reach", path);
    count_range(c, x->bitmap_dir_offset, x->bitmap_dir_size, 1);
    uint8_t *dir = malloc(x->bitmap_dir_size ? x->bitmap_dir_size : 1);
    if (!dir)
        return zerr(ENOMEM, "out of memory");
    int r = read_at(c, dir, x->bitmap_dir_size, x->bitmap_dir_offset);
    const char *why = NULL;
    uint64_t pos = 0, nb = 0;
    /* Check every entry first, as QEMU reads the whole directory before
     * it loads any bitmap. */
    while (r == 0 && !why && pos < x->bitmap_dir_size) {
        const uint8_t *e = dir + pos;
        if (x->bitmap_dir_size - pos < BITMAP_DIR_ENTRY_LEN) {
            why = "broken bitmap directory";
            break;
        }
        uint64_t table_off = qcow2_be64(e);
        uint32_t table_size = qcow2_be32(e + 8), flags = qcow2_be32(e + 12);
        uint8_t type = e[16], gran = e[17];
        uint16_t name_len = qcow2_be16(e + 18);
        uint32_t extra = qcow2_be32(e + 20);
        uint64_t elen = (BITMAP_DIR_ENTRY_LEN + (uint64_t)extra + name_len + 7) & ~7ull;
        if (++nb > x->nb_bitmaps)
            why = "more bitmaps than the header extension says";
        else if (extra)
            why = "bitmap extra data is not supported";
        else if (elen > x->bitmap_dir_size - pos)
            why = "broken bitmap directory";
        else if (!table_size || !table_off || (table_off & (c->cs - 1)) ||
                 table_size > BME_MAX_TABLE_SIZE || gran > 31 || gran < 9 ||
                 (flags & BME_RESERVED_FLAGS) || name_len > BME_MAX_NAME_SIZE || type != 1 ||
                 (uint64_t)table_size * c->cs > BME_MAX_PHYS_SIZE ||
                 (!(flags & BME_FLAG_IN_USE) &&
                  (c->h.size & ~511ull) > (((uint64_t)table_size * c->cs * 8) << gran)))
            why = "a bitmap does not satisfy the constraints";
        pos += elen;
    }
    if (!why && r == 0 && nb != x->nb_bitmaps)
        why = "fewer bitmaps than the header extension says";

    /* Then load and count them.  Two bitmaps of one name: QEMU does not
     * load a later one in use, and refuses to open the image for any
     * other; it counts the clusters of all. */
    for (pos = 0; r == 0 && !why && pos < x->bitmap_dir_size;) {
        const uint8_t *e = dir + pos;
        uint16_t name_len = qcow2_be16(e + 18);
        bool in_use = qcow2_be32(e + 12) & BME_FLAG_IN_USE;
        bool duplicate = false;
        for (uint64_t p = 0; p < pos && !duplicate;) {
            const uint8_t *o = dir + p;
            uint16_t olen = qcow2_be16(o + 18);
            duplicate = olen == name_len &&
                        !memcmp(o + BITMAP_DIR_ENTRY_LEN, e + BITMAP_DIR_ENTRY_LEN, name_len);
            p += (BITMAP_DIR_ENTRY_LEN + (uint64_t)olen + 7) & ~7ull;
        }
        if (duplicate && !in_use)
            why = "two bitmaps of the same name";
        else
            r = bitmap_table(c, qcow2_be64(e), qcow2_be32(e + 8), in_use, &why);
        pos += (BITMAP_DIR_ENTRY_LEN + (uint64_t)name_len + 7) & ~7ull;
    }
    free(dir);
    if (r < 0 && r != -EINVAL)
        return r;
    if (why) {
        c->res->check_errors++;
        return zerr(EINVAL, "cannot check the bitmaps of '%s': %s", path, why);
    }
    return 0;
}

/* ---- Refcount blocks and the comparison ------------------------------------ */

/* QEMU: check_refblocks.  Each block must be referenced exactly once. */
static void count_refblocks(struct check *c)
{
    for (uint64_t i = 0; i < c->reftable_len; i++) {
        uint64_t e = c->reftable[i];
        if (e & REFT_RESERVED_MASK) {
            note(c, "ERROR refcount table entry %" PRIu64 " has reserved bits set", i);
            c->res->corruptions++;
            continue;
        }
        uint64_t off = e & REFT_OFFSET_MASK;
        if (off & (c->cs - 1)) {
            note(c,
                 "ERROR refcount block %" PRIu64 " is not cluster aligned; refcount table "
                 "entry corrupted",
                 i);
            c->res->corruptions++;
            continue;
        }
        uint64_t k = off >> c->cb;
        if (k >= c->used) {
            note(c, "ERROR refcount block %" PRIu64 " is outside image", i);
            c->res->corruptions++;
            continue;
        }
        if (off) {
            count_range(c, off, c->cs, 1);
            if (rc_get(c, k) != 1) {
                note(c, "ERROR refcount block %" PRIu64 " refcount=%" PRIu64, i, rc_get(c, k));
                c->res->corruptions++;
            }
        }
    }
}

/* QEMU: compare_refcounts. */
static int compare_refcounts(struct check *c)
{
    uint64_t highest = 0, bad_block = UINT64_MAX;
    for (uint64_t k = 0; k < c->used; k++) {
        uint64_t stored;
        int r = stored_refcount(c, k, &stored);
        if (r == -EIO) {
            uint64_t blk = k >> c->rb_bits;
            if (blk != bad_block) {
                note(c,
                     "Can't get refcount for cluster %" PRIu64 ": refcount block %" PRIu64
                     " is unaligned or out of reach (its other clusters too)",
                     k, blk);
                bad_block = blk;
            }
            c->res->check_errors++;
            continue;
        }
        if (r < 0)
            return r;
        uint64_t computed = rc_get(c, k);
        if (stored || computed)
            highest = k;
        if (stored != computed) {
            note(c, "%s cluster %" PRIu64 " refcount=%" PRIu64 " reference=%" PRIu64,
                 stored < computed ? "ERROR" : "Leaked", k, stored, computed);
            if (stored < computed)
                c->res->corruptions++;
            else
                c->res->leaks++;
        }
    }
    c->res->image_end_offset = (highest + 1) << c->cb;
    return 0;
}

static void check_free(struct check *c)
{
    if (c->open)
        blk_close(&c->b);
    free(c->reftable);
    free(c->rc16);
    free(c->rc32);
    free(c->l2map);
    free(c->snaps);
    free(c->rc_pages);
    free(c->cluster_buf);
    free(c->cdata);
    free(c->cout);
}

int zcow_check(const char *path, unsigned flags, zcow_check_report_fn *report, void *opaque,
               struct zcow_check_result *res)
{
    struct zcow_check_result dummy;
    if (!res)
        res = &dummy;
    memset(res, 0, sizeof(*res));
    if (!path)
        return zerr(EINVAL, "zcow_check: missing path");
    struct check c;
    memset(&c, 0, sizeof(c));
    c.flags = flags;
    c.report = report;
    c.opaque = opaque;
    c.res = res;

    int r = blk_open_read(&c.b, path, false);
    if (r < 0)
        return r;
    c.open = true;
    int64_t len = blk_size(&c.b);
    if (len < 0) {
        r = (int)len;
        goto out;
    }
    /* QEMU sees the file in whole 512-byte sectors (the tail reads as
     * zero), and so do its end-of-file rules. */
    c.file_len = ((uint64_t)len + 511) & ~511ull;
    if ((r = open_header(&c, path)) < 0 || (r = read_snapshot_table(&c, path)) < 0 ||
        (r = alloc_counters(&c, path)) < 0)
        goto out;

    /* The order of QEMU's calculate_refcounts; the refcount blocks come
     * last, as each must then be referenced exactly once. */
    count_range(&c, 0, c.cs, 1);
    if ((r = walk_l1(&c, c.h.l1_table_offset, c.h.l1_size, true, 1)) < 0 ||
        (r = walk_snapshots(&c)) < 0)
        goto out;
    count_range(&c, c.h.snapshots_offset, c.snapshots_size, 1);
    count_range(&c, c.h.refcount_table_offset, c.reftable_len * 8, 1);
    if (c.ext.crypto_length)
        count_range(&c, c.ext.crypto_offset, c.ext.crypto_length, 1);
    if ((r = count_bitmaps(&c, path)) < 0 || (r = walk_l2_tables(&c)) < 0)
        goto out;
    count_refblocks(&c);
    r = compare_refcounts(&c);
out:
    check_free(&c);
    return r;
}
