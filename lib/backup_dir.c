/* backup_dir.c - the backup directory and its manifest: see backup_dir.h. */
#include "backup_dir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "convert.h"
#include "digest.h"
#include "error.h"
#include "fault.h"
#include "options.h"
#include "qcow2.h"
#include "reader.h"

#define MANIFEST "zcow-backup.json"
#define MANIFEST_TMP ".zcow-backup.json.tmp"
#define FORMAT_NAME "zcow-backup"
#define FORMAT_VERSION 1
/* The most a qcow2 image holds: the largest L1 table of the largest L2
 * tables of the largest clusters (2^61 bytes). */
#define MAX_VIRTUAL_SIZE ((uint64_t)(QCOW2_MAX_L1_BYTES / 8) << (2 * QCOW2_MAX_CLUSTER_BITS - 3))

static char *join(const char *a, const char *b)
{
    char *p;
    return asprintf(&p, "%s/%s", a, b) < 0 ? NULL : p;
}

bool backup_dir_valid_disk_name(const char *name)
{
    if (!name || !*name || name[0] == '.' || strlen(name) > 64)
        return false;
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '_' || *p == '.'))
            return false;
    return true;
}

/* A point's digest and block-hash file, when it has them: the digest
 * "sha256/64k:" and 64 lowercase hex digits, the file "DISK/NNNNNN.blkhash"
 * (which of the disk's points, zcow verify judges). */
static bool digest_ok(const char *disk, json_t *p)
{
    json_t *dg = json_object_get(p, "digest"), *bh = json_object_get(p, "blkhash");
    if (!dg)
        return !bh;
    const char *v = json_string_value(dg);
    size_t n = strlen(BACKUP_DIGEST_PREFIX);
    if (!v || strncmp(v, BACKUP_DIGEST_PREFIX, n) || strlen(v + n) != 64 ||
        strspn(v + n, "0123456789abcdef") != 64)
        return false;
    if (!bh)
        return true;
    const char *f = json_string_value(bh);
    size_t d = strlen(disk);
    return f && !strncmp(f, disk, d) && f[d] == '/' && strlen(f + d + 1) == 14 &&
           strspn(f + d + 1, "0123456789") == 6 && !strcmp(f + d + 7, ".blkhash");
}

/* A point's numbers that no backup writes: a virtual size of no bytes or
 * more than an image holds, a negative time or stored size.  The name of
 * the first such member and *WHY, or NULL. */
static const char *bad_number(json_t *p, const char **why)
{
    json_int_t size = json_integer_value(json_object_get(p, "virtual-size"));
    json_t *stored = json_object_get(p, "stored-bytes");
    *why = "not a size of 1 byte to 2^61 bytes";
    if (size <= 0 || (uint64_t)size > MAX_VIRTUAL_SIZE)
        return "virtual-size";
    *why = "before 1970";
    if (json_integer_value(json_object_get(p, "time")) < 0)
        return "time";
    *why = "not a count of bytes";
    if (stored && (!json_is_integer(stored) || json_integer_value(stored) < 0))
        return "stored-bytes";
    return NULL;
}

/* A manifest we can trust the shape of: every member we read later has
 * its type, so that the rest of zcow may read it without checks. */
static int check_manifest(const char *path, json_t *m)
{
    const char *fmt = json_string_value(json_object_get(m, "format"));
    json_t *ver = json_object_get(m, "version");
    const char *prefix = json_string_value(json_object_get(m, "prefix"));
    json_t *disks = json_object_get(m, "disks");
    if (!fmt || strcmp(fmt, FORMAT_NAME) || !json_is_integer(ver) || !prefix ||
        !json_is_object(disks))
        return zerr(EINVAL, "'%s' is not a zcow backup manifest", path);
    if (json_integer_value(ver) != FORMAT_VERSION)
        return zerr(ENOTSUP, "'%s': manifest version %" JSON_INTEGER_FORMAT " is not supported",
                    path, json_integer_value(ver));
    const char *name;
    json_t *disk;
    json_object_foreach(disks, name, disk)
    {
        json_t *points = json_object_get(disk, "points");
        json_t *bitmap = json_object_get(disk, "bitmap");
        if (!backup_dir_valid_disk_name(name) || !json_is_array(points) ||
            !(json_is_null(bitmap) || json_is_string(bitmap) || !bitmap))
            return zerr(EINVAL, "'%s': disk '%s' is malformed", path, name);
        size_t i;
        json_t *p;
        json_array_foreach(points, i, p)
        {
            json_t *n = json_object_get(p, "number");
            const char *level = json_string_value(json_object_get(p, "level"));
            if (!json_is_integer(n) || json_integer_value(n) <= 0 ||
                !json_is_string(json_object_get(p, "file")) ||
                !json_is_integer(json_object_get(p, "virtual-size")) ||
                !json_is_integer(json_object_get(p, "time")) || !level ||
                (strcmp(level, "full") && strcmp(level, "inc")) || !digest_ok(name, p))
                return zerr(EINVAL, "'%s': point %zu of disk '%s' is malformed", path, i, name);
            const char *why, *bad = bad_number(p, &why);
            if (bad) {
                char *v = json_dumps(json_object_get(p, bad), JSON_ENCODE_ANY);
                int e =
                    zerr(EINVAL, "'%s': point %" JSON_INTEGER_FORMAT " of disk '%s' has %s %s: %s",
                         path, json_integer_value(n), name, bad, v ? v : "(?)", why);
                free(v);
                return e;
            }
            if (i > 0 && json_integer_value(n) <= json_integer_value(json_object_get(
                                                      json_array_get(points, i - 1), "number")))
                return zerr(EINVAL, "'%s': the points of disk '%s' are out of order", path, name);
        }
    }
    return 0;
}

static bool is_xml(const char *name)
{
    size_t n = strlen(name);
    return n > 4 && !strcmp(name + n - 4, ".xml");
}

/* Is NAME an image of a point ("000007.qcow2"), its block-hash file
 * ("000007.blkhash") or a temporary file of a point being written? */
static bool point_file(const char *name)
{
    size_t n = strlen(name);
    bool image = n == 12 && strspn(name, "0123456789") == 6 && !strcmp(name + 6, ".qcow2");
    bool hashes = n == 14 && strspn(name, "0123456789") == 6 && !strcmp(name + 6, ".blkhash");
    return image || hashes || strstr(name, ".zcow-tmp-") != NULL;
}

/* Does DIR/SUB hold only files for which KEEP says yes? */
static bool dir_only(const char *dir, const char *sub, bool (*keep)(const char *))
{
    char *path = join(dir, sub);
    DIR *d = path ? opendir(path) : NULL;
    bool ok = d != NULL;
    struct dirent *de;
    while (ok && (de = readdir(d)))
        ok = !strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") || keep(de->d_name);
    if (d)
        closedir(d);
    free(path);
    return ok;
}

/* DIR holds nothing but what a first backup that failed may leave: the
 * lock, scratch images, disk directories of point images and temporary
 * files, saved checkpoints. */
static bool only_ours(const char *dir)
{
    DIR *d = opendir(dir);
    bool ok = d != NULL;
    struct dirent *de;
    while (ok && (de = readdir(d))) {
        const char *n = de->d_name;
        if (!strcmp(n, ".") || !strcmp(n, "..") || !strcmp(n, ".lock") ||
            !strcmp(n, MANIFEST_TMP) || !strncmp(n, ".scratch-", 9))
            continue;
        if (!strcmp(n, "checkpoints"))
            ok = dir_only(dir, n, is_xml);
        else
            ok = backup_dir_valid_disk_name(n) && dir_only(dir, n, point_file);
    }
    if (d)
        closedir(d);
    return ok;
}

static int new_manifest(json_t **out)
{
    uint8_t r[4];
    if (getrandom(r, sizeof(r), 0) != sizeof(r))
        return zerr_sys(errno, "cannot make a random prefix");
    char prefix[32];
    snprintf(prefix, sizeof(prefix), "zcow-%02x%02x%02x%02x", r[0], r[1], r[2], r[3]);
    *out = json_pack("{s:s, s:i, s:s, s:{}}", "format", FORMAT_NAME, "version", FORMAT_VERSION,
                     "prefix", prefix, "disks");
    return *out ? 0 : zerr(ENOMEM, "out of memory");
}

void backup_dir_close(struct backup_dir *d)
{
    if (!d)
        return;
    if (d->lock_fd >= 0)
        close(d->lock_fd); /* drops the lock */
    json_decref(d->manifest);
    free(d->path);
    free(d);
}

static int dir_open(const char *path, bool create, int lock, struct backup_dir **out)
{
    *out = NULL;
    struct backup_dir *d = calloc(1, sizeof(*d));
    if (!d || !(d->path = strdup(path))) {
        free(d);
        return zerr(ENOMEM, "out of memory");
    }
    d->lock_fd = -1;
    int e = 0;
    char *lock_path = NULL, *mpath = NULL;
    if (create && mkdir(path, 0755) < 0 && errno != EEXIST) {
        e = zerr_sys(errno, "cannot create the backup directory '%s'", path);
        goto out;
    }
    /* Absolute: QEMU opens the scratch images, from its own directory. */
    char *abs = realpath(path, NULL);
    if (!abs) {
        e = zerr_sys(errno, "cannot open the backup directory '%s'", path);
        goto out;
    }
    free(d->path);
    d->path = abs;
    if (!(lock_path = join(path, ".lock")) || !(mpath = join(path, MANIFEST))) {
        e = zerr(ENOMEM, "out of memory");
        goto out;
    }
    struct stat st;
    if (stat(path, &st) < 0) {
        e = zerr_sys(errno, "cannot open the backup directory '%s'", path);
        goto out;
    }
    if (!S_ISDIR(st.st_mode)) {
        e = zerr(ENOTDIR, "'%s' is not a directory", path);
        goto out;
    }
    /* A directory without a manifest becomes one only when it holds
     * nothing but what a first, failed backup may have left. */
    if (create && access(mpath, F_OK) != 0 && !only_ours(path)) {
        e = zerr(EEXIST, "'%s' holds other files and is not a zcow backup directory (no %s)", path,
                 MANIFEST);
        goto out;
    }
    /* A directory that is not a backup directory is left as it was: no
     * lock file made in it. */
    if (!create && access(mpath, F_OK) != 0) {
        e = zerr(ENOENT, "'%s' is not a zcow backup directory (no %s)", path, MANIFEST);
        goto out;
    }
    /* Reading only (LOCK 0): the manifest is replaced by rename, so it is
     * always whole, and no lock is needed. */
    d->lock_fd = lock ? open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644) : -2;
    if (d->lock_fd == -1 && lock == LOCK_SH && (errno == EROFS || errno == EACCES)) {
        /* A reader (verify, restore) of a DIR it may not write, as on
         * read-only media (an off-site copy): a shared lock needs no
         * write access; with no .lock to lock, nothing writes DIR. */
        d->lock_fd = open(lock_path, O_RDONLY | O_CLOEXEC);
        if (d->lock_fd == -1 && errno == ENOENT)
            d->lock_fd = -2, lock = 0;
    }
    if (d->lock_fd == -1) {
        e = zerr_sys(errno, "cannot lock the backup directory '%s'", path);
        goto out;
    }
    if (lock && flock(d->lock_fd, lock | LOCK_NB) < 0) {
        e = errno == EWOULDBLOCK
                ? zerr(EBUSY, "the backup directory '%s' is in use by another zcow", path)
                : zerr_sys(errno, "cannot lock the backup directory '%s'", path);
        goto out;
    }
    json_error_t jerr;
    d->manifest = json_load_file(mpath, JSON_REJECT_DUPLICATES, &jerr);
    if (!d->manifest) {
        if (access(mpath, F_OK) == 0) {
            e = zerr(EINVAL, "cannot read '%s': %s (line %d)", mpath, jerr.text, jerr.line);
            goto out;
        }
        if (!create) {
            e = zerr(ENOENT, "'%s' is not a zcow backup directory (no %s)", path, MANIFEST);
            goto out;
        }
        if ((e = new_manifest(&d->manifest)) < 0)
            goto out;
    } else if ((e = check_manifest(mpath, d->manifest)) < 0) {
        goto out;
    }
    d->prefix = json_string_value(json_object_get(d->manifest, "prefix"));
out:
    free(lock_path);
    free(mpath);
    if (e < 0) {
        backup_dir_close(d);
        return e;
    }
    *out = d;
    return 0;
}

/* Make PATH durable, and leave none of it in the page cache: a backup
 * leaves no pages behind, its manifest's neither. */
static int fsync_path(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int r = fault_fsync(fd) < 0 ? -errno : 0;
    if (r == 0)
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
    return r;
}

int backup_dir_save(struct backup_dir *d)
{
    char *tmp = join(d->path, MANIFEST_TMP), *final = join(d->path, MANIFEST);
    int e = 0;
    if (!tmp || !final) {
        e = zerr(ENOMEM, "out of memory");
        goto out;
    }
    if (json_dump_file(d->manifest, tmp, JSON_INDENT(2) | JSON_SORT_KEYS) < 0) {
        e = zerr(EIO, "cannot write '%s'", tmp);
        goto out;
    }
    if ((e = fsync_path(tmp)) < 0 || fault_rename(tmp, final) < 0 ||
        (e = fsync_path(d->path)) < 0) {
        e = zerr_sys(e < 0 ? -e : errno, "cannot write '%s'", final);
        unlink(tmp);
    }
out:
    free(tmp);
    free(final);
    return e;
}

json_t *backup_dir_disk(struct backup_dir *d, const char *disk, bool create)
{
    json_t *disks = json_object_get(d->manifest, "disks");
    json_t *e = json_object_get(disks, disk);
    if (!e && create) {
        e = json_pack("{s:n, s:[]}", "bitmap", "points");
        if (!e || json_object_set_new(disks, disk, e) < 0)
            return NULL;
    }
    return e;
}

json_t *backup_dir_last_point(json_t *disk)
{
    json_t *points = json_object_get(disk, "points");
    size_t n = json_array_size(points);
    return n ? json_array_get(points, n - 1) : NULL;
}

json_t *backup_dir_point(json_t *disk, uint64_t n)
{
    if (n == 0)
        return backup_dir_last_point(disk);
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(disk, "points"), i, p)
    {
        if ((uint64_t)json_integer_value(json_object_get(p, "number")) == n)
            return p;
    }
    return NULL;
}

char *backup_dir_point_name(uint64_t n)
{
    char *p;
    return asprintf(&p, "%06" PRIu64 ".qcow2", n) < 0 ? NULL : p;
}

char *backup_dir_point_path(const struct backup_dir *d, const char *disk, uint64_t n)
{
    char *p;
    return asprintf(&p, "%s/%s/%06" PRIu64 ".qcow2", d->path, disk, n) < 0 ? NULL : p;
}

/* Does FILE ("vda/000007.qcow2") name NAME ("000007.qcow2")? */
static bool names(const char *file, const char *name)
{
    const char *slash = file ? strrchr(file, '/') : NULL;
    return slash && !strcmp(slash + 1, name);
}

/* Is NAME ("000007.qcow2", "000007.blkhash") a file of a point of DISK? */
static bool named_point(json_t *disk, const char *name)
{
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(disk, "points"), i, p)
    {
        if (names(json_string_value(json_object_get(p, "file")), name) ||
            names(json_string_value(json_object_get(p, "blkhash")), name))
            return true;
    }
    return false;
}

/* Remove the temporary and unnamed images in DIR/NAME. */
static int clean_disk(struct backup_dir *d, const char *name, json_t *disk)
{
    char *sub = join(d->path, name);
    if (!sub)
        return zerr(ENOMEM, "out of memory");
    DIR *dir = opendir(sub);
    struct dirent *de;
    while (dir && (de = readdir(dir))) {
        const char *f = de->d_name;
        bool temp = strstr(f, ".zcow-tmp-") != NULL;
        if (temp || (point_file(f) && !named_point(disk, f))) {
            char *p = join(sub, f);
            if (p)
                unlink(p);
            free(p);
        }
    }
    if (dir)
        closedir(dir);
    free(sub);
    return 0;
}

int backup_dir_clean(struct backup_dir *d)
{
    DIR *dir = opendir(d->path);
    if (!dir)
        return zerr_sys(errno, "cannot read the backup directory '%s'", d->path);
    struct dirent *de;
    int e = 0;
    while (e == 0 && (de = readdir(dir))) {
        if (de->d_type != DT_DIR || !backup_dir_valid_disk_name(de->d_name))
            continue;
        e = clean_disk(d, de->d_name, backup_dir_disk(d, de->d_name, false));
    }
    closedir(dir);
    return e;
}

int backup_dir_open(const char *path, bool create, struct backup_dir **out)
{
    return dir_open(path, create, LOCK_EX, out);
}

int backup_dir_open_shared(const char *path, struct backup_dir **out)
{
    return dir_open(path, false, LOCK_SH, out);
}

/* ---- Reading a backup directory ------------------------------------------ */

int backup_dir_list(const char *path, json_t **out)
{
    *out = NULL;
    struct backup_dir *d;
    int e = dir_open(path, false, 0, &d);
    if (e < 0)
        return e;
    json_t *list = json_array();
    const char *name;
    json_t *disk;
    json_object_foreach(json_object_get(d->manifest, "disks"), name, disk)
    {
        size_t i;
        json_t *p;
        json_array_foreach(json_object_get(disk, "points"), i, p)
        {
            json_t *row = json_deep_copy(p);
            json_object_set_new(row, "disk", json_string(name));
            json_array_append_new(list, row);
        }
    }
    backup_dir_close(d);
    *out = list;
    return 0;
}

int backup_dir_find(struct backup_dir *d, const char *user_path, const char **disk, uint64_t point,
                    json_t **out)
{
    json_t *disks = json_object_get(d->manifest, "disks");
    if (!*disk) {
        if (json_object_size(disks) != 1)
            return zerr(EINVAL, "'%s' holds %zu disks: name one with --disk", user_path,
                        json_object_size(disks));
        *disk = json_object_iter_key(json_object_iter(disks));
    }
    json_t *entry = json_object_get(disks, *disk);
    if (!entry)
        return zerr(ENOENT, "'%s' holds no disk '%s'", user_path, *disk);
    if (!(*out = backup_dir_point(entry, point)))
        return point
                   ? zerr(ENOENT, "'%s': disk '%s' has no point %" PRIu64, user_path, *disk, point)
                   : zerr(ENOENT, "'%s': disk '%s' has no points", user_path, *disk);
    return 0;
}

char *backup_dir_file(const struct backup_dir *d, json_t *point)
{
    return join(d->path, json_string_value(json_object_get(point, "file")));
}

const char *backup_dir_point_digest(json_t *point)
{
    const char *v = json_string_value(json_object_get(point, "digest"));
    return v ? v + strlen(BACKUP_DIGEST_PREFIX) : NULL;
}

char *backup_dir_blkhash_path(const struct backup_dir *d, json_t *point)
{
    const char *bh = json_string_value(json_object_get(point, "blkhash"));
    return bh ? join(d->path, bh) : NULL;
}

char *backup_dir_blkhash_name(const char *file)
{
    size_t n = file ? strlen(file) : 0;
    char *p;
    if (n < 6 || strcmp(file + n - 6, ".qcow2"))
        return NULL;
    return asprintf(&p, "%.*s.blkhash", (int)(n - 6), file) < 0 ? NULL : p;
}

/* The point's image IMAGE (WHAT) has the virtual size the manifest gives
 * it: its own header read, not its chain. */
static int check_size(const char *image, const char *what, uint64_t vsize)
{
    struct reader *r;
    int e = reader_open_alone(image, 1, &r);
    if (e < 0)
        return e;
    uint64_t size = reader_size(r);
    reader_close(r);
    if (size != vsize)
        return zerr(EINVAL, "'%s' (%s): virtual size %" PRIu64 ", the manifest says %" PRIu64,
                    image, what, size, vsize);
    return 0;
}

int backup_dir_restore(const char *path, const char *disk, uint64_t point,
                       const struct zcow_convert_options *conv)
{
    struct backup_dir *d;
    int e = backup_dir_open_shared(path, &d);
    if (e < 0)
        return e;
    json_t *p;
    if ((e = backup_dir_find(d, path, &disk, point, &p)) < 0)
        goto out;
    char *image = backup_dir_file(d, p);
    if (!image) {
        e = zerr(ENOMEM, "out of memory");
        goto out;
    }
    char what[300];
    snprintf(what, sizeof(what), "point %" JSON_INTEGER_FORMAT " of disk '%s'",
             json_integer_value(json_object_get(p, "number")), disk);
    uint64_t vsize = (uint64_t)json_integer_value(json_object_get(p, "virtual-size"));
    if ((e = check_size(image, what, vsize)) < 0)
        goto out_image;
    struct zcow_convert_options c = *conv;
    c.src = image;
    c.src_format = "qcow2";
    struct zcow_convert_stats st;
    /* What is written is hashed on the way and checked against the
     * point's digest before the destination is put in place. */
    const char *want = conv->no_verify ? NULL : backup_dir_point_digest(p);
    struct digest *dg = NULL;
    struct convert_tap tap = { .expect = want, .what = what };
    if (want && (e = digest_new(vsize, &dg)) < 0)
        goto out_image;
    tap.digest = dg;
    e = convert_tapped(&c, want ? &tap : NULL, &st);
    digest_free(dg);
out_image:
    free(image);
out:
    backup_dir_close(d);
    return e;
}
