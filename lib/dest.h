/* dest.h - what a copy writes to: a qcow2 image, compressed or not
 * (dest_qcow2.c), a raw file or a block device (dest_raw.c), an NBD export
 * (dest_nbd.c).
 *
 * The destination side of the copy engine (engine.h), beside the source
 * ops (source.h).  The engine calls write, zero and write_compressed from
 * many threads at once, on ranges that never overlap; commit and close
 * from the thread that opened the destination, after every other call
 * has returned.  Failures return a negative errno and set the thread's
 * message (error.h), naming the destination as the user knows it. */
#ifndef ZCOW_DEST_H
#define ZCOW_DEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "options.h"

struct dest;

struct dest_ops {
    const char *name; /* "qcow2", "raw", ... */
    /* Write LEN bytes of BUF at OFF.  OFF is a multiple of the
     * granularity, LEN too but at the end of the destination; BUF is
     * BLK_ALIGN aligned and holds zeros from LEN up to the next BLK_ALIGN
     * boundary.  Required. */
    int (*write)(struct dest *d, uint64_t off, const void *buf, size_t len);
    /* Make [OFF, OFF+LEN) read as zero (granularity as for write).  Called
     * only when the destination does not read as zero where it is not
     * written (!unwritten_is_zero), and then required. */
    int (*zero)(struct dest *d, uint64_t off, uint64_t len);
    /* Store the cluster at OFF (cluster aligned) from the stream BUF, LEN
     * (<= cluster_size - 1) bytes, already compressed in compression_type
     * for clusters of cluster_size.  NULL: the destination takes no
     * compressed clusters. */
    int (*write_compressed)(struct dest *d, uint64_t off, const void *buf, size_t len);
    /* Everything is written: make it durable and put it in place under its
     * name; fill ST's output figures (clusters_copied is set already).
     * Called at most once. */
    int (*commit)(struct dest *d, struct zcow_convert_stats *st);
    /* Free D; if it was not committed, discard what was written (a
     * temporary file is removed).  Required. */
    void (*close)(struct dest *d);
};

struct dest {
    const struct dest_ops *ops;
    const char *name;       /* for messages: the name the user gave */
    uint64_t size;          /* the copy writes [0, size) */
    uint32_t granularity;   /* a power of two >= BLK_ALIGN: the engine
                                   plans stretches in these units */
    bool unwritten_is_zero; /* what is not written reads as zero: ZERO
                                   stretches are not passed, and long ones
                                   not even visited */
    bool compresses;        /* writing costs more CPU than reading */
    bool in_place;          /* written in place, not renamed into place: a
                                   failed copy leaves it partly written */
    int compression_type;   /* of write_compressed's streams */
    uint32_t cluster_size;  /* of write_compressed's clusters */
    void *priv;
};

/* Open O->dst as FORMAT ("qcow2" or "raw"; an NBD URI is raw) to hold
 * SIZE bytes.  O->target_is_zero is refused (-EINVAL) for a destination
 * made new (a file), which reads as zero anyway. */
int dest_open(const struct zcow_convert_options *o, const char *format, uint64_t size,
              struct dest **out);
void dest_close(struct dest *d);

/* The kinds (each in its own file). */

/* A qcow2 image of SIZE bytes (rounded up to 512) at O->dst, with
 * O->create's settings (compressed unless create.uncompressed), written to
 * a temporary name and renamed on commit. */
int dest_qcow2_open(const struct zcow_convert_options *o, uint64_t size, struct dest **out);

/* O->dst as raw bytes: a block device is written in place (it must hold
 * SIZE bytes; its zeros are zeroed, BLKZEROOUT, unless O->target_is_zero);
 * a file is made under a temporary name, sparse (zeros left as holes), cut
 * to SIZE and renamed on commit. */
int dest_raw_open(const struct zcow_convert_options *o, uint64_t size, struct dest **out);

/* The NBD export O->dst (an NBD URI; TLS settings O->nbd_tls), written in
 * place: it must be writable and hold SIZE bytes; zero stretches are
 * zeroed where they do not read as zero, unless O->target_is_zero. */
int dest_nbd_open(const struct zcow_convert_options *o, uint64_t size, struct dest **out);

/* Nothing: every write is dropped (a run of the engine for its digest tap,
 * engine.h).  NAME is for messages. */
int dest_null_open(const char *name, uint64_t size, struct dest **out);

#endif
