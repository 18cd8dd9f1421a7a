/* options.h - the layouts behind the public API's opaque objects.
 *
 * include/zcow.h declares these structures without their members: the
 * library allocates them (options.c) and reaches them through setters and
 * getters, so members may be added, reordered or retyped here without
 * breaking a program built against an older header.  Inside the library
 * they are plain structures: writer.c, reader.c, check.c, convert.c and
 * restore.c read and fill them directly, and may keep copies of them on
 * the stack (a copy does not own its strings: only options.c frees them).
 *
 * Strings of an options object made by zcow_*_opts_new() are owned by it
 * (copied by the setters), except the formats, which point to string
 * literals (every valid format is one of a few names). */
#ifndef ZCOW_OPTIONS_H
#define ZCOW_OPTIONS_H

#include <stdint.h>

#include "zcow.h"

struct zcow_create_options {
    uint64_t virtual_size;      /* bytes, multiple of 512 */
    uint32_t cluster_size;      /* power of two, 4 KiB .. 2 MiB; 0 = 64 KiB */
    int compression_type;       /* enum zcow_compression */
    int level;                  /* codec level, ZCOW_LEVEL_DEFAULT = tuned default */
    int cache_mode;             /* enum zcow_cache_mode */
    int write_cache;            /* 1 (default): the compressed write cache;
                                   0: each chunk written where it lands */
    int drop_pages;             /* with ZCOW_CACHE_WRITEBACK: drop each written
                                   host cluster from the page cache */
    unsigned cache_clusters;    /* bound on cached host clusters; 0 = default */
    int uncompressed;           /* 1: data clusters are written as they are
                                   (an image to run a VM from); 0: compressed */
    int atomic;                 /* 1: write a temporary file beside the path and
                                   rename it over the path on a successful
                                   zcow_close(); removed by zcow_abort() */
    const char *backing_file;   /* NULL: none (unallocated reads as zero) */
    const char *backing_format; /* "qcow2" or "raw", with backing_file */
};

/* TLS settings of an NBD source; NULL leaves one to the URI and libnbd. */
struct zcow_nbd_tls {
    const char *certificates; /* X.509 directory */
    const char *psk_file;     /* USERNAME:HEXKEY lines */
    const char *username;     /* the PSK user */
};

struct zcow_convert_options {
    const char *src;        /* file, block device, qcow2 image, NBD URI */
    const char *src_format; /* "raw", "qcow2", NULL to probe */
    const char *dst;
    const char *dst_format;            /* "qcow2" (default) or "raw" (a file, a
                                          block device or an NBD export) */
    struct zcow_create_options create; /* for qcow2 output; virtual_size and
                                          atomic are set by the conversion */
    int threads;                       /* 0: the online CPUs */
    int src_cache;                     /* enum zcow_cache_mode; NONE = O_DIRECT */
    /* Called from one thread at a time, often, with bytes done so far. */
    void (*progress)(void *opaque, uint64_t done, uint64_t total);
    void *progress_opaque;
    const char *bitmap;          /* NULL, or a dirty bitmap of the NBD source:
                                   only its dirty clusters are copied, the
                                   clean ones are left to the backing file,
                                   which create.backing_file must name */
    struct zcow_nbd_tls nbd_tls; /* for nbds:// and nbds+unix:// (source or
                                    destination) */
    int target_is_zero;          /* an existing destination reads as zero:
                                    its zero stretches are not written */
    int no_verify;               /* zcow_backup_restore(): no digest check */
};

struct zcow_convert_stats {
    uint64_t bytes_in;  /* virtual size of the source */
    uint64_t bytes_out; /* size of the destination file */
    uint64_t clusters_compressed, clusters_normal, clusters_zero, clusters_copied;
    double seconds;
};

/* Filled by reader_get_info() and writer_get_info(); the strings belong to
 * the image. */
struct zcow_info {
    const char *format; /* "qcow2" or "raw" */
    uint64_t virtual_size;
    uint32_t cluster_size; /* 0 for raw */
    int version;           /* 2 or 3 for qcow2 */
    int compression_type;
    int refcount_bits;
    int corrupt; /* incompatible feature bit 1 */
    int extended_l2;
    uint64_t file_size;   /* bytes the file holds */
    uint64_t actual_size; /* bytes allocated on disk (st_blocks) */
    uint64_t clusters_allocated, clusters_compressed, clusters_normal, clusters_zero;
    const char *backing_file; /* NULL if none */
    const char *backing_format;
    const char *backing_path; /* backing_file resolved against the image's
                                 directory, as it is opened */
    int dirty;                /* incompatible feature bit 0 */
    int lazy_refcounts;       /* compatible feature bit 0 */
};

/* What zcow_check() found, counted as `qemu-img check` counts them. */
struct zcow_check_result {
    uint64_t corruptions;        /* errors: exit 2 */
    uint64_t leaks;              /* stored refcount > references: exit 3 */
    uint64_t check_errors;       /* parts that could not be checked: exit 1 */
    uint64_t total_clusters;     /* guest clusters of the virtual size */
    uint64_t allocated_clusters; /* of the active L1 table */
    uint64_t fragmented_clusters;
    uint64_t compressed_clusters;
    uint64_t image_end_offset;    /* end of the last used host cluster */
    uint64_t decompress_failures; /* with ZCOW_CHECK_DECOMPRESS; also
                                     counted in corruptions */
    int marked_corrupt;           /* incompatible feature bit 1 is set */
    int marked_dirty;             /* incompatible feature bit 0 is set */
    uint32_t cluster_size;
};

/* The defaults of zcow_create_opts_new() and zcow_convert_opts_new(), for
 * structures on the stack (which own no strings). */
void create_options_defaults(struct zcow_create_options *o);
void convert_options_defaults(struct zcow_convert_options *o);

/* The write cache's bound: its hash table is sized from it (twice as many
 * slots, doubling from 64), which no longer ends near 2^31 clusters. */
#define MAX_CACHE_CLUSTERS (1u << 20)

/* 0, or -EINVAL with the setter's message when CLUSTERS is beyond
 * MAX_CACHE_CLUSTERS: zcow_create() checks it too, for options that did
 * not come through the setter (the 0.1 entry points'). */
int create_options_check_cache_clusters(unsigned clusters);

#endif
