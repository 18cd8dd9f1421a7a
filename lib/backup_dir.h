/* backup_dir.h - a backup directory: the chains of a VM's disks, as plain
 * qcow2 images, and the manifest that says what they are.
 *
 *     DIR/zcow-backup.json      the manifest (below)
 *     DIR/.lock                 flock()ed by whoever changes DIR
 *     DIR/DISK/NNNNNN.qcow2     point NNNNNN of DISK; an incremental names
 *                               the point before it as its backing file
 *     DIR/DISK/NNNNNN.blkhash   its block hashes (digest.h), which the next
 *                               incremental starts from
 *
 * The manifest (JSON, read and written with jansson):
 *
 *     { "format": "zcow-backup", "version": 1,
 *       "prefix": "zcow-1a2b3c4d",       names of bitmaps, nodes, jobs in
 *                                        the VM that belong to this DIR
 *       "disks": { "vda": { "bitmap": "zcow-1a2b3c4d-vda-3" or null,
 *                           "points": [ { "number": 3, "time": 1764460800,
 *                                         "level": "full" | "inc",
 *                                         "file": "vda/000003.qcow2",
 *                                         "virtual-size": N,
 *                                         "stored-bytes": N,
 *                                         "digest": "sha256/64k:HEX",
 *                                         "blkhash": "vda/000003.blkhash"
 *                                       }, ... ] } } }
 *
 * "bitmap" is the dirty bitmap (or libvirt checkpoint) that records the
 * disk's changes since its last point: the next incremental reads it.  A
 * point appears only once its image is complete: the image is renamed
 * into place, its block hashes saved beside it, then the manifest is
 * replaced by rename.  "digest" is the content digest of the disk at the
 * point (zcow digest), computed from what the backup read; points made
 * before zcow 0.3 have neither it nor "blkhash". */
#ifndef ZCOW_BACKUP_DIR_H
#define ZCOW_BACKUP_DIR_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "zcow.h"

struct backup_dir {
    char *path;
    int lock_fd;
    json_t *manifest;
    const char *prefix; /* in manifest */
};

/* Open DIR (created when CREATE and missing) and take its lock; a DIR
 * another zcow is changing is -EBUSY.  A new DIR gets a fresh prefix. */
int backup_dir_open(const char *path, bool create, struct backup_dir **out);
void backup_dir_close(struct backup_dir *d);
/* Open DIR to read it: a shared lock, which a backup in progress (which
 * holds it exclusively) refuses with -EBUSY. */
int backup_dir_open_shared(const char *path, struct backup_dir **out);

/* Every point of every disk, oldest first per disk: the manifest's points
 * with their "disk" added (a new JSON array). */
int backup_dir_list(const char *path, json_t **out);

/* Restore point POINT (0: the latest) of DISK (NULL: the only one) as
 * CONV says (its dst, dst_format and the rest; src is the point). */
int backup_dir_restore(const char *path, const char *disk, uint64_t point,
                       const struct zcow_convert_options *conv);

/* zcow verify (backup_verify.c): check the points of DISK (NULL: every
 * disk) in DIR - POINT 0 all of them, UINT64_MAX the latest of each disk,
 * else point POINT (its chain below it is read too, as its content rests
 * on it, but only it is reported) - and say one line per point to FN,
 * then a summary.  -EBADMSG when a point is bad (the message names the
 * first), other errors when DIR cannot be verified. */
int backup_dir_verify(const char *path, const char *disk, uint64_t point, zcow_message_fn *fn,
                      void *opaque);

/* Replace the manifest on disk with d->manifest (temp file, fsync,
 * rename, fsync of DIR). */
int backup_dir_save(struct backup_dir *d);

/* The disk's entry (created when CREATE), NULL when absent. */
json_t *backup_dir_disk(struct backup_dir *d, const char *disk, bool create);
/* The disk's last point, NULL when none. */
json_t *backup_dir_last_point(json_t *disk);
/* The point numbered N (0: the last), NULL when none. */
json_t *backup_dir_point(json_t *disk, uint64_t n);

/* Point POINT (0: the last) of DISK (*DISK NULL: DIR's only disk, whose
 * name *DISK then gets), into *OUT; messages name USER_PATH. */
int backup_dir_find(struct backup_dir *d, const char *user_path, const char **disk, uint64_t point,
                    json_t **out);
/* The path of POINT's image ("DIR/vda/000003.qcow2"), to free(). */
char *backup_dir_file(const struct backup_dir *d, json_t *point);

/* Path of a point's image in DIR ("DIR/vda/000003.qcow2"), and the name
 * of the file relative to its disk's directory ("000003.qcow2"). */
char *backup_dir_point_path(const struct backup_dir *d, const char *disk, uint64_t n);
char *backup_dir_point_name(uint64_t n);

/* The digest POINT records, as hex (NULL: none, a point made before
 * digests), and the path of its block-hash file in D (NULL: none). */
const char *backup_dir_point_digest(json_t *point);
char *backup_dir_blkhash_path(const struct backup_dir *d, json_t *point);
/* The manifest's name of the block-hash file beside the image FILE
 * ("vda/000003.qcow2" -> "vda/000003.blkhash"), to free(). */
char *backup_dir_blkhash_name(const char *file);
#define BACKUP_DIGEST_PREFIX "sha256/64k:"

/* Remove what a failed attempt may have left in DIR: temporary files
 * (*.zcow-tmp-*), and images and block-hash files of points the manifest
 * does not name. */
int backup_dir_clean(struct backup_dir *d);

/* Disk names become file names: letters, digits, '-', '_', '.', not
 * starting with '.'. */
bool backup_dir_valid_disk_name(const char *name);

#endif
