/* source.h - what a conversion reads from: a raw file or block device, a
 * qcow2 image (with its backing chain), or an NBD export.
 *
 * One ops table per kind, implemented in source_<kind>.c.  Every member may
 * be called from many threads at once.  Failures return a negative errno
 * and set the thread's message (error.h). */
#ifndef ZCOW_SOURCE_H
#define ZCOW_SOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct source;

/* What a stretch of a source holds, as its extent op says. */
enum extent_kind {
    EXTENT_DATA,      /* bytes to read */
    EXTENT_ZERO,      /* reads as zero; need not be read */
    EXTENT_UNCHANGED, /* unchanged since an earlier copy (clean in an NBD
                         dirty bitmap): not read, and left to what the
                         destination holds there (its backing file) */
};

struct source_ops {
    const char *name; /* "raw", "qcow2", ... */
    /* Read LEN bytes at OFF into BUF.  BUF, OFF and LEN are BLK_ALIGN
     * aligned, except that OFF+LEN may pass the end of the source: the
     * bytes past the end read as zero.  Required. */
    int (*pread)(struct source *s, void *buf, size_t len, uint64_t off);
    /* From OFF, how many bytes (*LEN, at least 1, at most MAX) are of one
     * kind, *KIND.  Past the end of the source all is EXTENT_ZERO.  MAX
     * bounds the work: a call looks no further than it (a qcow2 chain
     * walk costs what it touches).  NULL means everything is data. */
    int (*extent)(struct source *s, uint64_t off, uint64_t max, uint64_t *len,
                  enum extent_kind *kind);
    /* For sources whose clusters are stored compressed (qcow2): if the
     * cluster at OFF is compressed with TYPE in CLUSTER_SIZE clusters, read
     * its stream into BUF (CAP bytes: room for the whole sectors qcow2
     * records, CHUNK_BUF_BYTES) and return the stream's exact length;
     * return 0 when it is not, so the caller reads and compresses it.
     * NULL means never. */
    int (*read_compressed)(struct source *s, uint64_t off, int type, uint32_t cluster_size,
                           void *buf, size_t cap);
    void (*close)(struct source *s);
};

/* A compressed cluster's descriptor counts whole sectors, up to twice the
 * cluster size (cluster_bits - 8 bits of sectors); one more for the first. */
#define CHUNK_BUF_BYTES(cluster_size) (2 * (size_t)(cluster_size) + 512)

struct source {
    const struct source_ops *ops;
    char *name;    /* for messages */
    uint64_t size; /* virtual size in bytes */
    void *priv;
};

/* Open NAME.  FORMAT is "raw", "qcow2" or NULL to probe.  DIRECT asks for
 * O_DIRECT reads (dropped silently where refused). */
int source_open(const char *name, const char *format, bool direct, struct source **out);
void source_close(struct source *s);

/* The kinds (each in its own file). */
int source_raw_open(const char *name, bool direct, struct source **out);
int source_qcow2_open(const char *name, bool direct, struct source **out);
/* The same, with FLAGS:
 *   SOURCE_QCOW2_TOP    the extents of what the image leaves to its backing
 *                       file are EXTENT_UNCHANGED: a copy visits only what
 *                       the image itself holds (reads still go through the
 *                       chain, for a granule the image holds part of);
 *   SOURCE_QCOW2_EXACT  compressed streams must decompress to exactly a
 *                       cluster (reader_set_exact). */
enum { SOURCE_QCOW2_TOP = 1u << 0, SOURCE_QCOW2_EXACT = 1u << 1 };
int source_qcow2_open_flags(const char *name, bool direct, unsigned flags, struct source **out);

/* NBD (source_nbd.c): is NAME an NBD URI (nbd://, nbds://, nbd+unix://,
 * nbds+unix://)?  source_open() sends those to source_nbd_open().
 * With BITMAP (a dirty bitmap the server exports as the meta context
 * "qemu:dirty-bitmap:BITMAP"), the extent op reports the clean stretches
 * as EXTENT_UNCHANGED and the dirty ones as data: a conversion skips the
 * clean stretches, leaving them to the new image's backing file.  Errors:
 * -ENOENT when the server does not export the bitmap; connection errors
 * name the URI and libnbd's cause.  TLS (may be NULL) is set on each
 * connection before the URI, whose own TLS values then win; -EINVAL when
 * it, or a tls* parameter of the URI, comes with a URI without TLS. */
struct zcow_nbd_tls;
bool source_is_nbd(const char *name);
int source_nbd_open(const char *uri, const char *bitmap, const struct zcow_nbd_tls *tls,
                    struct source **out);

#endif
