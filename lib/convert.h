/* convert.h - zcow_convert() with a digest tap (digest.h), for backups
 * (the digest of the point being written) and restores (checked against
 * the recorded one before the destination is put in place), and
 * zcow_digest()'s digest of a source. */
#ifndef ZCOW_CONVERT_H
#define ZCOW_CONVERT_H

#include "options.h"

struct digest;

struct convert_tap {
    struct digest *digest; /* fed with what is copied; of the source's size */
    const char *expect;    /* NULL, or the hex digest the copy must have:
                              else it fails before the commit, and a new
                              file is not put in place */
    const char *what;      /* what EXPECT is the digest of, for the message
                              ("point 3 of disk 'vda'") */
};

/* zcow_convert(O, ST), the copy also feeding TAP (may be NULL). */
int convert_tapped(const struct zcow_convert_options *o, const struct convert_tap *tap,
                   struct zcow_convert_stats *st);

/* The block hashes of O->src (its format, threads, progress and TLS
 * settings from O) into *DG: a digest of the source's size, or NULL for a
 * new one (freed again on failure). */
int convert_digest(const struct zcow_convert_options *o, struct digest **dg);

#endif
