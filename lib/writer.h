/* writer.h - an image being written: allocator, L1/L2, refcounts, and the
 * compressed write cache in front of the file.  See writer.c. */
#ifndef ZCOW_WRITER_H
#define ZCOW_WRITER_H

#include <stddef.h>
#include <stdint.h>

#include "options.h"

struct writer;

int writer_create(const char *path, const struct zcow_create_options *opts, struct writer **out);
int writer_write(struct writer *w, uint64_t guest_offset, const void *buf, size_t len);
uint32_t writer_cluster_size(const struct writer *w);
int writer_write_compressed(struct writer *w, uint64_t guest_offset, const void *cdata, size_t clen);
int writer_read(struct writer *w, uint64_t offset, void *buf, size_t len);
int writer_flush(struct writer *w);
int writer_get_info(struct writer *w, struct zcow_info *info);
/* Finalise and free; returns 0 only if the whole image is on disk. */
int writer_close(struct writer *w);
void writer_abort(struct writer *w);

#endif
