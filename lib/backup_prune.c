/* backup_prune.c - zcow prune and zcow merge: see backup_prune.h.
 *
 * A merged image is a copy of a point's whole chain through the copy
 * engine, which takes every compressed cluster as it is from whichever
 * image holds it (source read_compressed -> dest write_compressed): nothing
 * is decompressed or compressed again but clusters stored with another
 * cluster size or compression type than the merged image's (the chain's
 * full image's), or stored uncompressed.  Reads and writes go through
 * O_DIRECT.
 *
 * Prune's steps; the process may die between any two, or inside one, and
 * every point the manifest names stays restorable:
 *   1. DIR locked; the chains to read and keep checked (unless forced);
 *      the leftovers of an earlier run removed (backup_dir_clean);
 *   2. the oldest kept point K's chain copied into K's file name plus
 *      .zcow-tmp-XXXXXX, beside it: nothing names the temporary file;
 *   3. that file renamed over K's own (fsync, rename, fsync of the
 *      directory): the point after K names K's file as its backing file
 *      and reads the same content through it, before and after;
 *   4. the manifest replaced by rename: the points below K dropped, K a
 *      full;
 *   5. the images no point names removed (backup_dir_clean).
 * Killed between 3 and 4, the manifest still lists the points below K,
 * whose images are intact, and K as an incremental though its image is a
 * full with the same content: the next prune finds it full and goes on at
 * 4.  K's manifest entry is kept but for its level and size: its digest
 * and the files beside its image stay valid, the content being the same. */
#include "backup_prune.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backup_dir.h"
#include "convert.h"
#include "digest.h"
#include "error.h"
#include "fault.h"
#include "reader.h"


static uint64_t point_number(json_t *point)
{
    return (uint64_t)json_integer_value(json_object_get(point, "number"));
}

/* Every point of DISK names its image as the backup does, DISK/NNNNNN.qcow2
 * of its number: a prune renames over that file and removes others beside
 * it, so it must be inside DIR, and the point's own.  Even --force does not
 * skip this. */
static int check_names(const char *dir, const char *disk, json_t *points)
{
    size_t i;
    json_t *p;
    json_array_foreach(points, i, p)
    {
        char want[128];
        const char *file = json_string_value(json_object_get(p, "file"));
        snprintf(want, sizeof(want), "%s/%06" PRIu64 ".qcow2", disk, point_number(p));
        if (strcmp(file, want))
            return zerr(EINVAL,
                        "'%s': the manifest names the image of point %" PRIu64
                        " of disk '%s' '%s', not '%s'",
                        dir, point_number(p), disk, file, want);
    }
    return 0;
}

/* "000003.qcow2" of a point whose file is "vda/000003.qcow2" (as
 * check_names made sure). */
static const char *file_name(json_t *point)
{
    return strrchr(json_string_value(json_object_get(point, "file")), '/') + 1;
}

/* The settings of IMAGE's chain that a merged copy takes: those of its
 * bottom image (the full, which holds most clusters), so that its
 * compressed clusters are copied as they are. */
static int chain_settings(const char *image, uint32_t *cluster_size, int *type, bool *backed)
{
    struct reader *top;
    int e = reader_open(image, "qcow2", 1, &top);
    if (e < 0)
        return e;
    struct reader *r = top;
    while (reader_backing(r))
        r = reader_backing(r);
    *cluster_size = reader_cluster_size(r);
    *type = reader_compression_type(r);
    *backed = reader_has_backing(top);
    reader_close(top);
    return 0;
}

/* Make PATH's directory entry durable. */
static int sync_dir_of(const char *path)
{
    char *copy = strdup(path);
    if (!copy)
        return zerr(ENOMEM, "out of memory");
    const char *dir = dirname(copy);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int e = fd < 0 || fault_fsync(fd) < 0 ? zerr_sys(errno, "cannot fsync directory '%s'", dir) : 0;
    if (fd >= 0)
        close(fd);
    free(copy);
    return e;
}

/* The content digest of the image at PATH is WANT (hex), the one recorded
 * for WHAT ("point 8 of disk 'vda'"). */
static int check_digest(const struct zcow_convert_options *conv, const char *path,
                        const char *shown, const char *want, const char *what)
{
    struct zcow_convert_options c = *conv;
    c.src = path;
    c.src_format = "qcow2";
    c.src_cache = ZCOW_CACHE_NONE;
    c.bitmap = NULL;
    c.progress = NULL;
    struct digest *dg = NULL;
    int e = convert_digest(&c, &dg);
    if (e < 0)
        return e;
    char hex[DIGEST_HEX_SIZE];
    digest_final(dg, hex);
    digest_free(dg);
    if (strcmp(hex, want))
        return zerr(EILSEQ,
                    "'%s': the digest of the merged image, %s:%s, is not the one recorded for "
                    "%s, %s:%s: not put in place",
                    shown, DIGEST_NAME, hex, what, DIGEST_NAME, want);
    return 0;
}

/* Copy the chain of the qcow2 image SRC into a new compressed image DST.
 * It is written under a temporary name beside DST; with WANT (the hex
 * digest recorded for WHAT) its digest is checked; then it is renamed over
 * DST, and DST's directory synced. */
static int merge_copy(const char *src, const char *dst, const struct zcow_convert_options *conv,
                      const char *want, const char *what, struct zcow_convert_stats *st)
{
    struct zcow_convert_options c = *conv;
    bool backed;
    int e = chain_settings(src, &c.create.cluster_size, &c.create.compression_type, &backed);
    if (e < 0)
        return e;
    uint8_t r[3];
    if (getrandom(r, sizeof(r), 0) != sizeof(r))
        return zerr_sys(errno, "cannot make a temporary name for '%s'", dst);
    /* ".zcow-tmp-" in the name: backup_dir_clean removes it in DIR, and
     * users know DST.zcow-tmp-* (convert's own temporary file is named
     * after this one, the same way). */
    char *tmp;
    if (asprintf(&tmp, "%s.zcow-tmp-m%02x%02x%02x", dst, r[0], r[1], r[2]) < 0)
        return zerr(ENOMEM, "out of memory");
    c.src = src;
    c.src_format = "qcow2";
    c.src_cache = ZCOW_CACHE_NONE;
    c.dst = tmp;
    c.dst_format = "qcow2";
    c.create.cache_mode = ZCOW_CACHE_NONE;
    c.create.backing_file = NULL;
    c.create.backing_format = NULL;
    c.bitmap = NULL;
    e = zcow_convert(&c, st);
    if (e == 0 && want)
        e = check_digest(conv, tmp, dst, want, what);
    if (e == 0 && fault_rename(tmp, dst) < 0)
        e = zerr_sys(errno, "cannot rename '%s' to '%s'", tmp, dst);
    if (e < 0)
        unlink(tmp);
    else
        e = sync_dir_of(dst);
    free(tmp);
    return e;
}

/* ---- The structural check -------------------------------------------------- */

/* Image R of the chain is point J of POINTS: its metadata checks clean,
 * its size and its backing file are the manifest's. */
static int check_layer(const char *image, json_t *points, size_t j, struct reader *r)
{
    json_t *p = json_array_get(points, j);
    struct zcow_check_result res;
    memset(&res, 0, sizeof(res));
    int e = zcow_check(image, 0, NULL, NULL, &res);
    if (e < 0)
        return e;
    if (res.corruptions || res.leaks || res.check_errors || res.marked_corrupt)
        return zerr(EINVAL,
                    "'%s' does not check clean: %" PRIu64 " errors, %" PRIu64 " leaks, %" PRIu64
                    " parts not checked%s",
                    image, res.corruptions, res.leaks, res.check_errors,
                    res.marked_corrupt ? ", marked corrupt" : "");
    uint64_t vsize = (uint64_t)json_integer_value(json_object_get(p, "virtual-size"));
    /* Exact, as verify and restore check it: a disk's size (QEMU's are
     * multiples of 512) is the size of its images. */
    if (reader_size(r) != vsize)
        return zerr(EINVAL, "'%s': virtual size %" PRIu64 ", the manifest says %" PRIu64, image,
                    reader_size(r), vsize);
    const char *backing = reader_backing_name(r);
    const char *level = json_string_value(json_object_get(p, "level"));
    if (!backing) /* a full; an "inc" too after a prune killed at step 3 */
        return 0;
    if (!strcmp(level, "full"))
        return zerr(EINVAL, "'%s' is a full in the manifest but has a backing file ('%s')", image,
                    backing);
    if (j == 0)
        return zerr(EINVAL, "'%s' has a backing file ('%s') but no point before it", image,
                    backing);
    const char *want = file_name(json_array_get(points, j - 1));
    if (strcmp(backing, want))
        return zerr(EINVAL, "'%s' has backing file '%s', not the point before it ('%s')", image,
                    backing, want);
    return 0;
}

/* The chains of DISK's points from the bottom of point KEEP's chain up to
 * the latest: each image opens with its backing files, checks clean, and
 * links to the point before it as the manifest orders them. */
static int check_chains(struct backup_dir *d, json_t *points, size_t keep)
{
    size_t i = json_array_size(points) - 1;
    for (;;) {
        char *top_path = backup_dir_file(d, json_array_get(points, i));
        if (!top_path)
            return zerr(ENOMEM, "out of memory");
        struct reader *top;
        int e = reader_open(top_path, "qcow2", 1, &top);
        free(top_path);
        if (e < 0)
            return e;
        /* Walk down the chain by its links, each image against its point. */
        size_t j = i;
        for (struct reader *r = top; r && e == 0; r = reader_backing(r)) {
            char *image = backup_dir_file(d, json_array_get(points, j));
            e = image ? check_layer(image, points, j, r) : zerr(ENOMEM, "out of memory");
            free(image);
            if (e == 0 && reader_backing(r))
                j--; /* check_layer made sure there is a point before */
        }
        reader_close(top);
        if (e < 0)
            return e;
        if (j <= keep)
            return 0;
        i = j - 1;
    }
}

/* ---- Prune ------------------------------------------------------------------- */

/* Make point KEEP of DISK a full and drop the points below it. */
static int prune_disk(struct backup_dir *d, const char *name, json_t *entry, size_t keep,
                      zcow_message_fn *fn, void *opaque)
{
    json_t *points = json_object_get(entry, "points");
    json_t *k = json_array_get(points, keep);
    uint64_t kn = point_number(k);
    char *image = backup_dir_file(d, k);
    if (!image)
        return zerr(ENOMEM, "out of memory");
    uint32_t cs;
    int type;
    bool backed;
    int e = chain_settings(image, &cs, &type, &backed);
    if (e < 0)
        goto out;
    if (backed) {
        struct zcow_convert_options conv;
        convert_options_defaults(&conv);
        struct zcow_convert_stats st;
        char what[300];
        snprintf(what, sizeof(what), "point %" PRIu64 " of disk '%s'", kn, name);
        if ((e = merge_copy(image, image, &conv, backup_dir_point_digest(k), what, &st)) < 0)
            goto out;
        zsay(fn, opaque,
            "%s: point %" PRIu64 " is now a full: %" PRIu64 " compressed clusters copied as they "
            "were, %" PRIu64 " compressed anew (held uncompressed, or with another cluster size "
            "or compression type), %" PRIu64 " stored uncompressed (incompressible)",
            name, kn, st.clusters_copied, st.clusters_compressed, st.clusters_normal);
    } else {
        zsay(fn, opaque, "%s: point %" PRIu64 " is a full already", name, kn);
    }
    struct stat sb;
    if (stat(image, &sb) < 0) {
        e = zerr_sys(errno, "cannot stat '%s'", image);
        goto out;
    }
    uint64_t first = point_number(json_array_get(points, 0));
    if (json_object_set_new(k, "level", json_string("full")) < 0 ||
        json_object_set_new(k, "stored-bytes", json_integer((json_int_t)sb.st_size)) < 0) {
        e = zerr(ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < keep; i++)
        json_array_remove(points, 0);
    if ((e = backup_dir_save(d)) < 0)
        goto out;
    e = backup_dir_clean(d);
    uint64_t last = point_number(json_array_get(points, 0)) - 1;
    if (e == 0 && keep == 1)
        zsay(fn, opaque, "%s: dropped point %" PRIu64, name, first);
    else if (e == 0)
        zsay(fn, opaque, "%s: dropped %zu points (%" PRIu64 " to %" PRIu64 ")", name, keep, first,
            last);
out:
    free(image);
    return e;
}

int backup_prune(const char *path, const char *disk, uint64_t keep, unsigned flags,
                 zcow_message_fn *fn, void *opaque)
{
    if (keep == 0)
        return zerr(EINVAL, "keep '0' must be at least 1: the latest point is always kept");
    if (flags & ~(unsigned)ZCOW_PRUNE_FORCE)
        return zerr(EINVAL, "unknown prune flags 0x%x", flags & ~(unsigned)ZCOW_PRUNE_FORCE);
    struct backup_dir *d;
    int e = backup_dir_open(path, false, &d);
    if (e < 0)
        return e;
    json_t *disks = json_object_get(d->manifest, "disks");
    if (disk && !json_object_get(disks, disk)) {
        e = zerr(ENOENT, "'%s' holds no disk '%s'", path, disk);
        goto out;
    }
    /* Every chain is checked before anything changes. */
    const char *name;
    json_t *entry;
    json_object_foreach(disks, name, entry)
    {
        size_t n = json_array_size(json_object_get(entry, "points"));
        if ((disk && strcmp(name, disk)) || n <= keep)
            continue;
        if ((e = check_names(path, name, json_object_get(entry, "points"))) < 0)
            goto out;
        if (flags & ZCOW_PRUNE_FORCE)
            continue;
        if ((e = check_chains(d, json_object_get(entry, "points"), n - keep)) < 0) {
            char cause[512];
            snprintf(cause, sizeof(cause), "%s", zcow_get_error());
            e = zerr(-e,
                     "disk '%s' of '%s' does not verify, not pruned (--force prunes anyway): %s",
                     name, path, cause);
            goto out;
        }
    }
    if ((e = backup_dir_clean(d)) < 0)
        goto out;
    json_object_foreach(disks, name, entry)
    {
        size_t n = json_array_size(json_object_get(entry, "points"));
        if (disk && strcmp(name, disk))
            continue;
        if (n <= keep) {
            zsay(fn, opaque, "%s: %zu point%s, keeping %" PRIu64 ": nothing to do", name, n,
                n == 1 ? "" : "s", keep);
            continue;
        }
        if ((e = prune_disk(d, name, entry, n - keep, fn, opaque)) < 0)
            goto out;
    }
out:
    backup_dir_close(d);
    return e;
}

/* ---- Merge -------------------------------------------------------------------- */

/* Is DEST (which may not exist yet) inside the directory DIR (real path)? */
static int inside(const char *dest, const char *dir, bool *in)
{
    char *copy = strdup(dest);
    if (!copy)
        return zerr(ENOMEM, "out of memory");
    char *parent = realpath(dirname(copy), NULL);
    free(copy);
    if (!parent)
        return zerr_sys(errno, "cannot write '%s'", dest);
    size_t n = strlen(dir);
    *in = !strncmp(parent, dir, n) && (parent[n] == '/' || parent[n] == '\0');
    free(parent);
    return 0;
}

int backup_merge(const char *path, const char *disk, uint64_t point, const char *dest,
                 const struct zcow_convert_options *conv, struct zcow_convert_stats *st)
{
    struct backup_dir *d;
    int e = backup_dir_open_shared(path, &d);
    if (e < 0)
        return e;
    json_t *p;
    bool in = false;
    char *image = NULL;
    if ((e = backup_dir_find(d, path, &disk, point, &p)) < 0 ||
        (e = inside(dest, d->path, &in)) < 0)
        goto out;
    if (in) {
        e = zerr(EINVAL, "'%s' is inside the backup directory '%s': merge writes outside it", dest,
                 path);
        goto out;
    }
    if (!(image = backup_dir_file(d, p))) {
        e = zerr(ENOMEM, "out of memory");
        goto out;
    }
    char what[300];
    snprintf(what, sizeof(what), "point %" PRIu64 " of disk '%s'", point_number(p), disk);
    e = merge_copy(image, dest, conv, conv->no_verify ? NULL : backup_dir_point_digest(p), what,
                   st);
out:
    free(image);
    backup_dir_close(d);
    return e;
}
