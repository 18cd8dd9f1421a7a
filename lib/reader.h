/* reader.h - an image opened for reading: qcow2 (v2, v3, backing chains)
 * or raw.  Thread-safe reads.  See reader.c. */
#ifndef ZCOW_READER_H
#define ZCOW_READER_H

#include <stddef.h>
#include <stdint.h>

#include "zcow.h"

struct reader;

int reader_open(const char *path, const char *format, int direct, struct reader **out);
int reader_read(struct reader *r, uint64_t offset, void *buf, size_t len);
int reader_cluster_info(struct reader *r, uint64_t guest_offset, struct zcow_cluster_info *info);
int reader_read_compressed(struct reader *r, const struct zcow_cluster_info *info, void *buf,
                           size_t cap);
int reader_get_info(struct reader *r, struct zcow_info *info);
void reader_close(struct reader *r);

#endif
