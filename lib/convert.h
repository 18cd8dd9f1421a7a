/* convert.h - the conversion pipelines behind zcow_convert(): to qcow2
 * (convert.c: read, compress, allocate, write cache, file) and to raw
 * (restore.c: read qcow2, decompress, write sparse raw). */
#ifndef ZCOW_CONVERT_H
#define ZCOW_CONVERT_H

#include "options.h"
#include "source.h"

int convert_to_qcow2(const struct zcow_convert_options *o, struct source *src,
                     struct zcow_convert_stats *st);
int convert_to_raw(const struct zcow_convert_options *o, struct source *src,
                   struct zcow_convert_stats *st);

/* The worker count: o->threads, or the online CPUs. */
int convert_threads(const struct zcow_convert_options *o);

#endif
