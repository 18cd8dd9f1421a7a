/* backup.c - the backup run every driver shares: see backup.h.
 *
 *   DIR locked, its leftovers removed          backup_dir_open, _clean
 *   the VM reached, its leftovers removed      drv->open
 *   the disks, and each one's level            drv->find_disks, why_not_inc
 *   every disk frozen at one point, exported   drv->start
 *   each disk's block hashes: new, or the last  digest.h
 *   point's (before the freeze: they may take
 *   reading that point)
 *   each disk read into its point, hashed       convert_tapped (NBD source)
 *   on the way; its block hashes saved
 *   the points recorded, all at once           manifest replaced by rename
 *   the freeze undone, tracking settled        drv->finish */
#include "backup.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "backup_dir.h"
#include "convert.h"
#include "digest.h"
#include "error.h"
#include "options.h"

void backup_say(const struct backup_run *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vzsay(r->o->say, r->o->say_opaque, fmt, ap);
    va_end(ap);
}

char *backup_fmt(const char *f, ...)
{
    char *p;
    va_list ap;
    va_start(ap, f);
    int n = vasprintf(&p, f, ap);
    va_end(ap);
    return n < 0 ? NULL : p;
}

bool backup_has_prefix(const char *s, const char *prefix)
{
    return s && !strncmp(s, prefix, strlen(prefix));
}

const char *backup_prefix(const struct backup_run *r) { return r->d->prefix; }
const char *backup_dir_path(const struct backup_run *r) { return r->d->path; }

const char *backup_track(const struct backup_run *r, const char *disk)
{
    return json_string_value(json_object_get(backup_dir_disk(r->d, disk, false), "bitmap"));
}

json_t *backup_tracks(const struct backup_run *r)
{
    json_t *all = json_array();
    const char *name;
    json_t *disk;
    json_object_foreach(json_object_get(r->d->manifest, "disks"), name, disk)
    {
        json_t *t = json_object_get(disk, "bitmap");
        if (json_is_string(t))
            json_array_append(all, t);
    }
    return all;
}

int backup_add_disk(struct backup_run *r, const char *name, uint64_t size, struct backup_disk **out)
{
    if (!backup_dir_valid_disk_name(name))
        return zerr(EINVAL, "disk name '%s' cannot be a file name", name);
    for (size_t i = 0; i < r->n; i++)
        if (!strcmp(r->disks[i].name, name))
            return zerr(EINVAL, "disk '%s' is named twice", name);
    if (r->n == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 8;
        struct backup_disk *d = realloc(r->disks, cap * sizeof(*d));
        if (!d)
            return zerr(ENOMEM, "out of memory");
        r->disks = d;
        r->cap = cap;
    }
    struct backup_disk *k = &r->disks[r->n];
    memset(k, 0, sizeof(*k));
    if (!(k->name = strdup(name)))
        return zerr(ENOMEM, "out of memory");
    k->size = size;
    r->n++;
    if (out)
        *out = k;
    return 0;
}

/* Full or incremental, and why. */
static int choose_level(struct backup_run *r, struct backup_disk *k)
{
    k->entry = backup_dir_disk(r->d, k->name, true);
    if (!k->entry)
        return zerr(ENOMEM, "out of memory");
    json_t *last = backup_dir_last_point(k->entry);
    k->number = last ? (uint64_t)json_integer_value(json_object_get(last, "number")) + 1 : 1;
    const char *why = NULL;
    if (r->o->level == BACKUP_FULL)
        why = "asked for";
    else if (!last)
        why = "no previous point";
    else if ((uint64_t)json_integer_value(json_object_get(last, "virtual-size")) != k->size)
        why = "the disk's size changed";
    else
        why = r->drv->why_not_inc(r, k);
    if (why && r->o->level == BACKUP_INC)
        return zerr(EINVAL, "disk '%s': cannot take an incremental: %s", k->name, why);
    k->inc = !why;
    if (k->inc) {
        if (!(k->track = strdup(backup_track(r, k->name))))
            return zerr(ENOMEM, "out of memory");
        backup_say(r, "%s: incremental over point %" PRIu64, k->name, k->number - 1);
    } else {
        backup_say(r, "%s: full backup: %s", k->name, why);
    }
    return 0;
}

/* Read the frozen disk K into its point; *POINT gets its manifest entry. */
static int copy_disk(struct backup_run *r, struct backup_disk *k, json_t **point)
{
    char *sub = backup_fmt("%s/%s", r->d->path, k->name);
    char *dst = backup_dir_point_path(r->d, k->name, k->number);
    char *prev = k->inc ? backup_dir_point_name(k->number - 1) : NULL;
    int e = 0;
    if (!sub || !dst || (k->inc && !prev)) {
        e = zerr(ENOMEM, "out of memory");
        goto out;
    }
    if (mkdir(sub, 0755) < 0 && errno != EEXIST) {
        e = zerr_sys(errno, "cannot create '%s'", sub);
        goto out;
    }
    struct zcow_convert_options c = *r->o->convert;
    c.src = k->uri;
    c.src_format = NULL;
    c.dst = dst;
    c.dst_format = "qcow2";
    c.bitmap = k->inc ? k->export_bitmap : NULL;
    c.create.backing_file = prev;
    c.create.backing_format = prev ? "qcow2" : NULL;
    struct zcow_convert_stats st;
    struct convert_tap tap = { .digest = k->digest };
    if ((e = convert_tapped(&c, &tap, &st)) < 0)
        goto out;
    struct stat sb;
    uint64_t stored = stat(dst, &sb) == 0 ? (uint64_t)sb.st_size : 0;
    *point = json_pack("{s:I, s:I, s:s, s:s++, s:I, s:I}", "number", (json_int_t)k->number, "time",
                       (json_int_t)time(NULL), "level", k->inc ? "inc" : "full", "file", k->name,
                       "/", strrchr(dst, '/') + 1, "virtual-size", (json_int_t)k->size,
                       "stored-bytes", (json_int_t)stored);
    if (!*point) {
        e = zerr(ENOMEM, "out of memory");
        goto out;
    }
    /* The block hashes beside the image, before the manifest names it. */
    char hex[DIGEST_HEX_SIZE];
    digest_final(k->digest, hex);
    char *name = backup_dir_blkhash_name(json_string_value(json_object_get(*point, "file")));
    char *hashes = name ? backup_fmt("%s/%s", r->d->path, name) : NULL;
    if (!hashes)
        e = zerr(ENOMEM, "out of memory");
    else if ((e = digest_save(k->digest, hashes)) == 0 &&
             (json_object_set_new(*point, "digest", json_pack("s+", BACKUP_DIGEST_PREFIX, hex)) <
                  0 ||
              json_object_set_new(*point, "blkhash", json_string(name)) < 0))
        e = zerr(ENOMEM, "out of memory");
    free(name);
    free(hashes);
out:
    free(sub);
    free(dst);
    free(prev);
    return e;
}

/* The block hashes of the previous point of K, for its incremental: its
 * block-hash file, checked against its digest; else (a point made before
 * digests, a file missing or damaged) read from its images.  A point
 * whose images do not give the digest it records is no base for an
 * incremental. */
static int prepare_digest(struct backup_run *r, struct backup_disk *k)
{
    if (!k->inc)
        return digest_new(k->size, &k->digest);
    json_t *prev = backup_dir_last_point(k->entry);
    uint64_t n = (uint64_t)json_integer_value(json_object_get(prev, "number"));
    const char *want = backup_dir_point_digest(prev);
    char *path = backup_dir_blkhash_path(r->d, prev);
    char hex[DIGEST_HEX_SIZE];
    int e = 0;
    if (want && path && (e = digest_load(path, k->size, &k->digest)) == 0) {
        digest_final(k->digest, hex);
        if (!strcmp(hex, want)) {
            free(path);
            return 0;
        }
        e = zerr(EINVAL, "'%s' does not give the digest point %" PRIu64 " records", path, n);
        digest_free(k->digest);
        k->digest = NULL;
    }
    free(path);
    if (e < 0)
        backup_say(r, "%s: %s: reading point %" PRIu64 " for its block hashes", k->name,
                   zcow_get_error(), n);
    else
        backup_say(r, "%s: point %" PRIu64 " has no digest: reading it for its block hashes",
                   k->name, n);
    struct zcow_convert_options c = *r->o->convert;
    char *image = backup_dir_file(r->d, prev);
    if (!image)
        return zerr(ENOMEM, "out of memory");
    c.src = image;
    c.src_format = "qcow2";
    c.bitmap = NULL;
    c.progress = NULL;
    c.nbd_tls = (struct zcow_nbd_tls){ NULL, NULL, NULL };
    e = convert_digest(&c, &k->digest);
    free(image);
    if (e < 0)
        return e;
    digest_final(k->digest, hex);
    if (want && strcmp(hex, want))
        return zerr(EILSEQ,
                    "disk '%s': point %" PRIu64 " does not hold what its digest says (%s%s, read "
                    "%s%s): take a full backup (--level full)",
                    k->name, n, BACKUP_DIGEST_PREFIX, want, BACKUP_DIGEST_PREFIX, hex);
    return 0;
}

/* The manifest knows one way of reaching the VM per DIR: its bitmaps (or
 * checkpoints) mean nothing to another. */
static int check_driver(struct backup_run *r)
{
    json_t *m = r->d->manifest;
    const char *had = json_string_value(json_object_get(m, "driver"));
    if (!had)
        return json_object_set_new(m, "driver", json_string(r->drv->name)) < 0
                   ? zerr(ENOMEM, "out of memory")
                   : 0;
    if (strcmp(had, r->drv->name))
        return zerr(EINVAL, "'%s' holds backups taken through %s, not %s", r->o->dir, had,
                    r->drv->name);
    return 0;
}

static void free_run(struct backup_run *r)
{
    for (size_t i = 0; i < r->n; i++) {
        struct backup_disk *k = &r->disks[i];
        free(k->name);
        free(k->track);
        free(k->new_track);
        free(k->uri);
        free(k->export_bitmap);
        digest_free(k->digest);
    }
    free(r->disks);
    backup_dir_close(r->d);
}

/* The next point's number, the same for every disk of the run's
 * tracking names: one past the highest point of any disk. */
static uint64_t next_point(struct backup_run *r)
{
    uint64_t max = 0;
    const char *name;
    json_t *disk;
    json_object_foreach(json_object_get(r->d->manifest, "disks"), name, disk)
    {
        json_t *last = backup_dir_last_point(disk);
        uint64_t n = last ? (uint64_t)json_integer_value(json_object_get(last, "number")) : 0;
        if (n > max)
            max = n;
    }
    return max + 1;
}

int backup_run(const struct backup_options *o)
{
    const struct backup_driver *drv = o->qmp ? &backup_driver_qmp : &backup_driver_libvirt;
    if ((o->qmp != NULL) == (o->domain != NULL))
        return zerr(EINVAL, "a backup needs the VM: a QMP socket or a libvirt domain");
    struct backup_run r = { .o = o, .drv = drv };
    int e = backup_dir_open(o->dir, true, &r.d);
    if (e < 0)
        return e;
    if ((e = check_driver(&r)) < 0 || (e = backup_dir_clean(r.d)) < 0)
        goto out;
    r.next_point = next_point(&r);
    if (!(r.priv = calloc(1, drv->priv_size))) {
        e = zerr(ENOMEM, "out of memory");
        goto out;
    }
    if ((e = drv->open(&r)) < 0)
        goto out_close;
    if ((e = drv->find_disks(&r)) < 0)
        goto out_close;
    for (size_t i = 0; i < r.n && e == 0; i++)
        e = choose_level(&r, &r.disks[i]);
    for (size_t i = 0; i < r.n && e == 0; i++)
        e = prepare_digest(&r, &r.disks[i]);
    if (e < 0)
        goto out_close;

    e = drv->start(&r);
    json_t *points = json_array();
    for (size_t i = 0; i < r.n && e == 0; i++) {
        json_t *p = NULL;
        if ((e = copy_disk(&r, &r.disks[i], &p)) == 0)
            json_array_append_new(points, p);
    }
    /* The points appear together, each with the tracking that now leads
     * from it. */
    if (e == 0) {
        for (size_t i = 0; i < r.n; i++) {
            struct backup_disk *k = &r.disks[i];
            json_array_append(json_object_get(k->entry, "points"), json_array_get(points, i));
            json_object_set_new(k->entry, "bitmap", json_string(k->new_track));
        }
        e = backup_dir_save(r.d);
    }
    json_decref(points);
    bool committed = e == 0;

    /* Undoing may fail too: the first failure is the one to report. */
    struct zerr_first first;
    zerr_first_init(&first);
    zerr_keep(&first, e);
    int t = drv->finish(&r, committed);
    if (committed) {
        for (size_t i = 0; i < r.n; i++) {
            json_t *p = backup_dir_last_point(r.disks[i].entry);
            backup_say(&r, "%s: point %" PRIu64 " (%s): %" JSON_INTEGER_FORMAT " bytes stored",
                       r.disks[i].name, r.disks[i].number, r.disks[i].inc ? "incremental" : "full",
                       json_integer_value(json_object_get(p, "stored-bytes")));
        }
        /* The points are safe; what could not be undone in the VM is
         * undone by the next run. */
        if (t < 0)
            backup_say(&r, "warning: %s", zcow_get_error());
    } else {
        backup_dir_clean(r.d); /* images that never got into the manifest */
        e = zerr_kept(&first);
    }
    zerr_first_destroy(&first);
out_close:
    drv->close(&r);
    free(r.priv);
out:
    free_run(&r);
    return e;
}
