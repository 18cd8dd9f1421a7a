/* backup_prune.h - zcow prune and zcow merge: a point of a backup directory
 * made a full image by copying its chain's compressed clusters as they are.
 * See backup_prune.c for the steps and why each instant is safe. */
#ifndef ZCOW_BACKUP_PRUNE_H
#define ZCOW_BACKUP_PRUNE_H

#include <stdint.h>

#include "options.h"
#include "zcow.h"

/* Keep the newest KEEP points of DISK (NULL: of every disk) of DIR; the
 * oldest kept point becomes a full.  FLAGS: ZCOW_PRUNE_*.  SAY (may be
 * NULL) gets one line per disk. */
int backup_prune(const char *dir, const char *disk, uint64_t keep, unsigned flags,
                 zcow_message_fn *say, void *opaque);

/* Point POINT (0: the latest) of DISK (NULL: DIR's only disk) as one
 * compressed qcow2 image at DEST, outside DIR.  CONV gives threads,
 * progress and the level of clusters compressed anew; its source,
 * destination and image settings are the merge's.  ST receives what the
 * copy did. */
int backup_merge(const char *dir, const char *disk, uint64_t point, const char *dest,
                 const struct zcow_convert_options *conv, struct zcow_convert_stats *st);

#endif
