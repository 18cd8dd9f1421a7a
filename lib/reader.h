/* reader.h - an image opened for reading: qcow2 (v2, v3, backing chains)
 * or raw.  Thread-safe reads.  See reader.c. */
#ifndef ZCOW_READER_H
#define ZCOW_READER_H

#include <stddef.h>
#include <stdint.h>

#include "options.h"

struct reader;

int reader_open(const char *path, const char *format, int direct, struct reader **out);
/* A qcow2 image alone: its backing file is named (reader_backing_name) but
 * not opened, and what the image leaves to it reads as zero.  For looking
 * at an image's own header and clusters when its chain may be broken. */
int reader_open_alone(const char *path, int direct, struct reader **out);
int reader_read(struct reader *r, uint64_t offset, void *buf, size_t len);
int reader_cluster_info(struct reader *r, uint64_t guest_offset, struct zcow_cluster_info *info);
int reader_read_compressed(struct reader *r, const struct zcow_cluster_info *info, void *buf,
                           size_t cap);
int reader_get_info(struct reader *r, struct zcow_info *info);
void reader_close(struct reader *r);

/* For the qcow2 source (source_qcow2.c).  reader_extent: from OFFSET, how
 * many bytes (*LEN, at most MAX) read alike, as data (*IS_ZERO = 0) or as
 * zero (1), looking through the backing chain; past the virtual size all
 * is zero.  It costs the runs it returns and the L2 tables it reads, in
 * each image of the chain.
 * reader_layer_of: the image of the chain (R or a backing file) whose
 * data [OFFSET, OFFSET+LEN) reads, or NULL where no image holds it; a
 * stretch only partly allocated in an image (or raw) gives that image. */
int reader_extent(struct reader *r, uint64_t offset, uint64_t max, uint64_t *len, int *is_zero);
int reader_layer_of(struct reader *r, uint64_t offset, uint64_t len, struct reader **layer);
/* What R itself holds from OFFSET (*LEN bytes of one *KIND, at most MAX,
 * one L2 table lookup): data (READER_DATA), zeros (READER_ZERO: zero
 * clusters, and unallocated ones of an image without a backing file), or
 * nothing, left to the backing file (READER_BELOW).  Past the virtual
 * size, and for raw, as reader_extent says. */
enum { READER_DATA, READER_ZERO, READER_BELOW };
int reader_top_extent(struct reader *r, uint64_t offset, uint64_t max, uint64_t *len, int *kind);
/* Decompress R's (and its backing files') clusters with
 * codec_decompress_exact: a stream that gives more than a cluster fails
 * the read as corrupt.  Before any read. */
void reader_set_exact(struct reader *r);
/* L2 table lookups made so far by R and its backing files (tests count
 * them to prove a walk's cost). */
uint64_t reader_l2_lookups(const struct reader *r);
/* NAME, a backing file named by the image at IMAGE, resolved as QEMU does:
 * relative to IMAGE's directory (malloc'd; NULL when out of memory). */
char *reader_resolve_backing(const char *image, const char *name);
struct reader *reader_backing(struct reader *r); /* NULL at the chain's end */
uint64_t reader_size(const struct reader *r);
uint32_t reader_cluster_size(const struct reader *r); /* 0 for raw */
int reader_compression_type(const struct reader *r);
int reader_is_qcow2(const struct reader *r);
int reader_has_backing(const struct reader *r);
/* The backing file as the header names it, and its format from the
 * header extension; NULL when there is none. */
const char *reader_backing_name(const struct reader *r);
const char *reader_backing_format(const struct reader *r);

#endif
