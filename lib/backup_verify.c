/* backup_verify.c - zcow verify: is every point of a backup directory what
 * the backup wrote?
 *
 * Per point, in this order (each finding is a cause on the point's line):
 *   the manifest    its shape (backup_dir_open_shared refuses a manifest
 *                   it cannot trust), the image's name;
 *   the image       there, and its structure as zcow check sees it (no
 *                   corruption, leak or check error);
 *   the links       a full has no backing file; an incremental names the
 *                   point before it ("000002.qcow2", format qcow2); the
 *                   virtual size is the manifest's, the same along a chain;
 *   the content     every cluster the image holds is read, and every
 *                   compressed one decompresses to exactly a cluster
 *                   (codec_decompress_exact);
 *   the digest      the point's digest (digest.h) recomputed from the
 *                   images equals the one the manifest records, and so
 *                   does the digest of its block-hash file; a point made
 *                   before digests says "no digest".
 *
 * Cost: the images' metadata is checked first, all images at once on a
 * pool (it is small: the L1, L2 and refcount tables).  The content is
 * then read point by point, oldest first, each image read once: point k's
 * source is its chain with what k leaves to its backing file reported
 * UNCHANGED (SOURCE_QCOW2_TOP), so the copy engine reads only the
 * clusters k holds, into a destination that keeps nothing, through its
 * digest tap: the block hashes of point k are those of point k-1 as
 * recomputed (not as recorded: that is what is checked) with the blocks
 * k holds hashed anew.  A 64 KiB block k holds only part of is read whole
 * through the chain.
 *
 * A point whose image is missing, unreadable, structurally bad or wrongly
 * linked makes every later point of its chain bad too ("rests on point
 * 2"): their restore reads through it.  A digest that differs does not:
 * each later point's own digest says whether its content is right. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backup_dir.h"
#include "dest.h"
#include "digest.h"
#include "engine.h"
#include "error.h"
#include "pool.h"
#include "reader.h"
#include "source.h"

#define MAX_CAUSES 1024

struct vpoint {
    json_t *j; /* in the manifest */
    const char *disk;
    uint64_t number;
    bool full;
    const char *file;    /* in the manifest, relative to DIR */
    uint64_t vsize;      /* in the manifest */
    char *path;          /* DIR/file */
    bool report;         /* printed (all points, or the one asked for) */
    struct vpoint *prev; /* the point before it of its disk, or NULL */
    /* Findings. */
    char causes[MAX_CAUSES];
    bool bad;
    bool breaks; /* later points of its chain cannot be trusted either */
    bool alone;  /* "inc" without a backing file: a chain starts here */
    bool no_digest; /* made before digests: its content is read, not proved */
};

static void cause(struct vpoint *p, bool breaks, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Add a cause to P's line ("; " between them; the first ones win when
 * they do not all fit). */
static void cause(struct vpoint *p, bool breaks, const char *fmt, ...)
{
    size_t n = strlen(p->causes);
    if (n && n + 2 < sizeof(p->causes)) {
        strcpy(p->causes + n, "; ");
        n += 2;
    }
    va_list ap;
    va_start(ap, fmt);
    if (n + 1 < sizeof(p->causes))
        vsnprintf(p->causes + n, sizeof(p->causes) - n, fmt, ap);
    va_end(ap);
    p->bad = true;
    p->breaks |= breaks;
}

/* ---- structure and links (one job per image, on a pool) ---------------------- */

struct check_notes {
    char first[256]; /* the first finding, as zcow check words it */
};

static void check_note(void *opaque, const char *line)
{
    struct check_notes *n = opaque;
    if (!n->first[0])
        snprintf(n->first, sizeof(n->first), "%s", line);
}

static void check_structure(struct vpoint *p)
{
    zcow_check_result *res = zcow_check_result_new();
    struct check_notes notes = { "" };
    int e = res ? zcow_check(p->path, 0, check_note, &notes, res) : -ENOMEM;
    if (e < 0) {
        cause(p, true, "cannot check its structure: %s", zcow_get_error());
    } else {
        uint64_t c = zcow_check_result_get_corruptions(res);
        uint64_t l = zcow_check_result_get_leaks(res);
        uint64_t x = zcow_check_result_get_check_errors(res);
        if (c || l || x)
            cause(p, true,
                  "structure: %" PRIu64 " corruptions, %" PRIu64 " leaked clusters, %" PRIu64
                  " check errors (%s)",
                  c, l, x, notes.first[0] ? notes.first : "zcow check says more");
        else if (zcow_check_result_get_marked_corrupt(res))
            cause(p, true, "the image is marked corrupt");
    }
    zcow_check_result_free(res);
}

/* The image's own header against the manifest and the point before it. */
static void check_links(struct vpoint *p)
{
    struct reader *r;
    if (reader_open_alone(p->path, 1, &r) < 0) {
        cause(p, true, "%s", zcow_get_error());
        return;
    }
    bool size_ok = reader_size(r) == p->vsize;
    if (!size_ok)
        cause(p, true, "virtual size %" PRIu64 ", the manifest says %" PRIu64, reader_size(r),
              p->vsize);
    const char *bname = reader_backing_name(r), *bfmt = reader_backing_format(r);
    if (p->full) {
        if (bname)
            cause(p, true, "a full point with a backing file ('%s')", bname);
    } else if (!bname) {
        /* A full the manifest still calls "inc": what a prune killed
         * after renaming the merged image over this point's, before
         * replacing the manifest, leaves (the next prune finishes it).
         * The content is the point's, as its reading shows. */
        p->alone = true;
    } else if (!p->prev) {
        cause(p, true, "an incremental without a point before it");
    } else {
        const char *want = strrchr(p->prev->file, '/');
        want = want ? want + 1 : p->prev->file;
        if (strcmp(bname, want))
            cause(p, true, "backing file '%s', not point %" PRIu64 "'s '%s'", bname,
                  p->prev->number, want);
        if (bname && (!bfmt || strcmp(bfmt, "qcow2")))
            cause(p, true, "backing format '%s', not qcow2", bfmt ? bfmt : "(none)");
        if (size_ok && p->prev->vsize != p->vsize)
            cause(p, true,
                  "virtual size %" PRIu64 ", the manifest's for point %" PRIu64 " %" PRIu64,
                  p->vsize, p->prev->number, p->prev->vsize);
    }
    reader_close(r);
}

static void check_job(void *arg, uint64_t n, unsigned worker)
{
    (void)worker;
    struct vpoint *p = (struct vpoint *)arg + n;
    struct stat st;
    if (stat(p->path, &st) < 0) {
        cause(p, true, "image '%s' is missing", p->file);
        return;
    }
    check_structure(p);
    check_links(p);
}

/* ---- content: the clusters each image holds, read once ------------------------- */

/* P's block-hash file (DIR/vda/000003.blkhash), which the next
 * incremental starts from: its block hashes, or NULL when P has none or it
 * does not load (a cause then). */
static struct digest *load_blkhash(const struct backup_dir *d, struct vpoint *p)
{
    char *path = backup_dir_blkhash_path(d, p->j);
    struct digest *b = NULL;
    if (path && digest_load(path, p->vsize, &b) < 0) {
        cause(p, false, "%s", zcow_get_error());
        b = NULL;
    }
    free(path);
    return b;
}

/* P's digest: the content's, DG, against the recorded one, WANT, and the
 * block-hash file's (which must give it too, for the next incremental). */
static void check_digest(const struct backup_dir *d, struct vpoint *p, const struct digest *dg,
                         const char *want)
{
    char got[DIGEST_HEX_SIZE], file[DIGEST_HEX_SIZE] = "";
    digest_final(dg, got);
    struct digest *b = load_blkhash(d, p);
    if (b)
        digest_final(b, file);
    const char *name = json_string_value(json_object_get(p->j, "blkhash"));
    if (!strcmp(got, want)) {
        if (b && strcmp(file, want))
            cause(p, false, "its block-hash file '%s' gives the digest %s, not the recorded %s",
                  name, file, want);
    } else if (b && !strcmp(file, got)) {
        cause(p, false,
              "the recorded digest %s is neither its content's nor its block-hash file's, %s", want,
              got);
    } else if (b && !strcmp(file, want)) {
        uint64_t first, n = digest_differences(dg, b, &first);
        cause(p, false,
              "its content's digest is %s, not the recorded %s: %" PRIu64
              " blocks of 64 KiB differ from its block-hash file's, the first at offset %" PRIu64,
              got, want, n, first * DIGEST_BLOCK);
    } else {
        cause(p, false, "its content's digest is %s, not the recorded %s", got, want);
        if (b)
            cause(p, false, "its block-hash file '%s' gives the digest %s", name, file);
    }
    digest_free(b);
}

/* Read every cluster P's image holds (and decompress it, exactly) into DG,
 * the block hashes of the point before it, which become P's; compare
 * P's digest with the recorded one. */
static void check_content(const struct backup_dir *d, struct vpoint *p, struct digest *dg)
{
    struct source *src;
    struct dest *dst = NULL;
    int e = source_qcow2_open_flags(p->path, true, SOURCE_QCOW2_TOP | SOURCE_QCOW2_EXACT, &src);
    if (e == 0)
        e = dest_null_open(p->path, src->size, &dst);
    if (e == 0) {
        struct engine_config cfg;
        struct engine_stats st;
        engine_configure(&cfg, src, dst, 0);
        cfg.digest = dg;
        e = engine_copy(src, dst, &cfg, &st);
    }
    if (e < 0)
        cause(p, true, "%s", zcow_get_error());
    dest_close(dst);
    source_close(src);
    if (e < 0)
        return;
    const char *want = backup_dir_point_digest(p->j);
    if (!want) {
        p->no_digest = true;
        return;
    }
    check_digest(d, p, dg, want);
}

/* Walk the points of one disk, oldest first.  BROKEN: the point of the
 * current chain that later ones cannot rest on, if any; DG: the block
 * hashes of the chain so far, new at each full. */
static int walk_disk(const struct backup_dir *d, struct vpoint *pts, size_t n)
{
    struct vpoint *broken = NULL;
    struct digest *dg = NULL;
    int e = 0;
    for (size_t i = 0; i < n && e == 0; i++) {
        struct vpoint *p = &pts[i];
        if (p->full || p->alone) {
            broken = NULL;
            digest_free(dg);
            if ((e = digest_new(p->vsize, &dg)) < 0)
                dg = NULL;
        }
        if (broken) {
            cause(p, true, "rests on point %" PRIu64 ", which is bad", broken->number);
            continue;
        }
        if (!p->breaks && dg)
            check_content(d, p, dg);
        if (p->breaks)
            broken = p;
    }
    digest_free(dg);
    return e;
}

/* ---- the run ------------------------------------------------------------------- */

struct verify {
    struct backup_dir *d;
    struct vpoint *pts;
    size_t n;
    zcow_message_fn *say;
    void *opaque;
};

static void say(const struct verify *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void say(const struct verify *v, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vzsay(v->say, v->opaque, fmt, ap);
    va_end(ap);
}

/* The points of DISK to read for POINT (0: all; UINT64_MAX: the latest):
 * all, or those of the chain up to it, from its full. */
static int add_disk(struct verify *v, const char *disk, json_t *entry, uint64_t point,
                    size_t *added)
{
    json_t *points = json_object_get(entry, "points");
    size_t count = json_array_size(points), first = 0, last = count;
    *added = 0;
    if (point) {
        json_t *want = backup_dir_point(entry, point == UINT64_MAX ? 0 : point);
        if (!want)
            return 0;
        for (last = 0; json_array_get(points, last) != want; last++)
            ;
        last++;
        for (first = last - 1; first > 0; first--) {
            const char *level =
                json_string_value(json_object_get(json_array_get(points, first), "level"));
            if (!strcmp(level, "full"))
                break;
        }
    }
    for (size_t i = first; i < last; i++) {
        json_t *j = json_array_get(points, i);
        struct vpoint *p = &v->pts[v->n];
        memset(p, 0, sizeof(*p));
        p->j = j;
        p->disk = disk;
        p->number = (uint64_t)json_integer_value(json_object_get(j, "number"));
        p->full = !strcmp(json_string_value(json_object_get(j, "level")), "full");
        p->file = json_string_value(json_object_get(j, "file"));
        p->vsize = (uint64_t)json_integer_value(json_object_get(j, "virtual-size"));
        p->report = !point || i == last - 1;
        p->prev = i > first ? p - 1 : NULL;
        if (asprintf(&p->path, "%s/%s", v->d->path, p->file) < 0) {
            p->path = NULL;
            return zerr(ENOMEM, "out of memory");
        }
        v->n++;
        /* Its name, as the backup makes it: a manifest pointing elsewhere
         * (another disk's image, outside DIR) is not ours. */
        char want[80];
        snprintf(want, sizeof(want), "%s/%06" PRIu64 ".qcow2", disk, p->number);
        if (strcmp(p->file, want))
            cause(p, true, "the manifest names its image '%s', not '%s'", p->file, want);
    }
    *added = last - first;
    return 0;
}

static unsigned cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1;
}

int backup_dir_verify(const char *path, const char *disk, uint64_t point, zcow_message_fn *fn,
                      void *opaque)
{
    struct verify v = { .say = fn, .opaque = opaque };
    int e = backup_dir_open_shared(path, &v.d);
    if (e < 0)
        return e;
    json_t *disks = json_object_get(v.d->manifest, "disks");
    size_t total = 0, n_disks = 0;
    const char *name;
    json_t *entry;
    json_object_foreach(disks, name, entry)
    {
        total += json_array_size(json_object_get(entry, "points"));
    }
    if (disk && !json_object_get(disks, disk)) {
        e = zerr(ENOENT, "'%s' holds no disk '%s'", path, disk);
        goto out;
    }
    v.pts = calloc(total ? total : 1, sizeof(*v.pts));
    if (!v.pts) {
        e = zerr(ENOMEM, "out of memory");
        goto out;
    }
    /* Each disk's points lie together in PTS, oldest first. */
    size_t *starts = calloc(json_object_size(disks) + 1, sizeof(*starts));
    if (!starts) {
        e = zerr(ENOMEM, "out of memory");
        goto out;
    }
    json_object_foreach(disks, name, entry)
    {
        if (disk && strcmp(name, disk))
            continue;
        size_t added;
        starts[n_disks] = v.n;
        if ((e = add_disk(&v, name, entry, point, &added)) < 0) {
            free(starts);
            goto out;
        }
        n_disks += added > 0;
    }
    starts[n_disks] = v.n;
    if (v.n == 0) {
        free(starts);
        e = point && point != UINT64_MAX
                ? zerr(ENOENT, "'%s': no disk has a point %" PRIu64, path, point)
                : zerr(ENOENT, "'%s' holds no points", path);
        goto out;
    }

    /* Structure and links: every image at once. */
    struct pool *pool;
    unsigned threads = cpu_count();
    if ((e = pool_create(threads < v.n ? threads : (unsigned)v.n, (unsigned)v.n, &pool)) < 0) {
        free(starts);
        goto out;
    }
    for (size_t i = 0; i < v.n; i++)
        if (!v.pts[i].bad)
            pool_add(pool, check_job, v.pts, i);
    pool_free(pool);

    /* Content: disk by disk, point by point (the engine is parallel). */
    for (size_t k = 0; k < n_disks && e == 0; k++)
        e = walk_disk(v.d, v.pts + starts[k], starts[k + 1] - starts[k]);
    free(starts);
    if (e < 0)
        goto out;

    size_t reported = 0, bad = 0;
    const struct vpoint *first_bad = NULL;
    for (size_t i = 0; i < v.n; i++) {
        const struct vpoint *p = &v.pts[i];
        if (!p->report)
            continue;
        reported++;
        const char *level = p->full ? "full" : "inc";
        if (p->bad) {
            bad++;
            if (!first_bad)
                first_bad = p;
            say(&v, "%s %" PRIu64 " %s BAD: %s", p->disk, p->number, level, p->causes);
        } else {
            say(&v, "%s %" PRIu64 " %s ok%s", p->disk, p->number, level,
                p->no_digest ? " (no digest)" : "");
        }
    }
    if (!bad) {
        say(&v, "%zu point%s of %zu disk%s verified: all good", reported, reported == 1 ? "" : "s",
            n_disks, n_disks == 1 ? "" : "s");
        e = 0;
    } else {
        say(&v, "%zu point%s of %zu disk%s verified: %zu bad, the first %s %" PRIu64, reported,
            reported == 1 ? "" : "s", n_disks, n_disks == 1 ? "" : "s", bad, first_bad->disk,
            first_bad->number);
        e = zerr(EBADMSG, "'%s': %s point %" PRIu64 " is bad: %s", path, first_bad->disk,
                 first_bad->number, first_bad->causes);
    }
out:
    for (size_t i = 0; v.pts && i < v.n; i++)
        free(v.pts[i].path);
    free(v.pts);
    backup_dir_close(v.d);
    return e;
}
