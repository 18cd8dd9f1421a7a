/* backup.h - backups of running VMs into a backup directory
 * (backup_dir.h): the run common to every way of reaching a VM
 * (backup.c), and the drivers that reach it: QMP (backup_qmp.c) and
 * libvirt (backup_libvirt.c).
 *
 * A backup takes one point in time for all the disks it covers: the
 * driver freezes every disk at once (fleecing: a scratch image whose
 * backing file is the active disk, filled by copy-before-write) and starts
 * the dirty bitmaps (libvirt: a checkpoint) of the next incremental; zcow
 * then reads each frozen disk over NBD and writes it as a compressed qcow2
 * point, an incremental over the disk's previous point holding only what
 * its bitmap marks.
 *
 * Failure leaves DIR as it was: a point appears only when complete, and
 * the bitmap that records changes since the last good point is kept, with
 * the changes of the failed attempt merged into it.  Whatever a failed or
 * killed attempt left in the VM (jobs, exports, nodes, bitmaps,
 * checkpoints named with the DIR's prefix) and in DIR is removed by the
 * next run. */
#ifndef ZCOW_BACKUP_H
#define ZCOW_BACKUP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "zcow.h"

enum backup_level { BACKUP_AUTO, BACKUP_FULL, BACKUP_INC };

struct backup_options {
    const char *dir;
    /* The VM: a QMP socket, or a libvirt domain (and connection URI). */
    const char *qmp;
    const char *domain;
    const char *connect;            /* NULL: libvirt's default */
    const char *const *disks;       /* QMP: block nodes; libvirt: disk
                                       targets (vda); none: every writable
                                       disk of the VM */
    size_t n_disks;
    int level;                      /* enum backup_level */
    /* Compression, cluster size, threads, progress, NBD TLS: src, dst,
     * bitmap and backing file are the backup's own. */
    const struct zcow_convert_options *convert;
    /* One line for the user per decision ("vda: full backup: no previous
     * point"). */
    void (*say)(void *opaque, const char *line);
    void *say_opaque;
};

int backup_run(const struct backup_options *o);

/* ---- For the drivers ------------------------------------------------------ */

struct backup_run;
struct backup_dir;
struct digest;

/* A disk of the run.  The driver fills name and size (find_disks), says
 * whether the disk's tracking (bitmap, checkpoint) allows an incremental
 * (why_not_inc), and after start: uri and export_bitmap.  The run fills
 * the rest. */
struct backup_disk {
    char *name;          /* in DIR: the device id (vda) or node name */
    uint64_t size;       /* virtual size */
    json_t *entry;       /* the disk in the manifest */
    bool inc;            /* this point is an incremental */
    uint64_t number;     /* of the new point */
    char *track;         /* the manifest's bitmap/checkpoint (inc only) */
    char *new_track;     /* the driver's, for the next point */
    char *uri;           /* the frozen disk, over NBD */
    char *export_bitmap; /* its dirty bitmap on the export (inc only) */
    struct digest *digest; /* the point's block hashes: new for a full, the
                              previous point's for an incremental */
    void *priv;          /* the driver's */
};

struct backup_driver {
    const char *name; /* "qmp", "libvirt": recorded in the manifest */
    size_t priv_size; /* of the run's driver state */
    /* Connect; remove what a failed attempt left in the VM, merging its
     * bitmaps back into the ones the manifest names. */
    int (*open)(struct backup_run *r);
    /* Add the disks with backup_add_disk(). */
    int (*find_disks)(struct backup_run *r);
    /* NULL when the disk's tracking allows an incremental, else why not. */
    const char *(*why_not_inc)(struct backup_run *r, struct backup_disk *k);
    /* Freeze every disk at one point, start new_track, export each disk:
     * set uri and, for an incremental, export_bitmap. */
    int (*start)(struct backup_run *r);
    /* Undo start; COMMITTED: the points are in the manifest (the new
     * tracking stays), else the new tracking's changes go back into the
     * old.  Returns the first failure, which does not undo the points. */
    int (*finish)(struct backup_run *r, bool committed);
    void (*close)(struct backup_run *r);
};

struct backup_run {
    const struct backup_options *o;
    const struct backup_driver *drv;
    struct backup_dir *d;
    struct backup_disk *disks;
    size_t n, cap;
    uint64_t next_point; /* the number the points of this run get */
    void *priv;          /* the driver's run state */
};

void backup_say(const struct backup_run *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* A new disk in the run (name copied; an invalid or repeated name fails). */
int backup_add_disk(struct backup_run *r, const char *name, uint64_t size,
                    struct backup_disk **out);
/* asprintf() that returns the string (NULL: out of memory). */
char *backup_fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
bool backup_has_prefix(const char *s, const char *prefix);
/* The manifest's prefix of this DIR ("zcow-1a2b3c4d"). */
const char *backup_prefix(const struct backup_run *r);
/* The tracking (bitmap, checkpoint) the manifest names for DISK, or NULL. */
const char *backup_track(const struct backup_run *r, const char *disk);
/* Every tracking the manifest names (for drivers that share one between
 * disks), as a JSON array of strings. */
json_t *backup_tracks(const struct backup_run *r);
/* The backup directory's absolute path. */
const char *backup_dir_path(const struct backup_run *r);

extern const struct backup_driver backup_driver_qmp;
extern const struct backup_driver backup_driver_libvirt;

#endif
