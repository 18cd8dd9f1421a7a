/* zcow.h - write compressed qcow2 images fast, through O_DIRECT.
 *
 * Error handling: every call that can fail returns 0 (or a non-negative
 * count) on success and a negative errno on failure.  The message of the
 * last failure in the calling thread, naming the file and the cause, is
 * returned by zcow_get_error().
 *
 * Thread safety: zcow_write_cluster(), zcow_write_compressed(), zcow_read()
 * and zcow_flush() may be called from many threads at once on one handle.
 * zcow_close() and zcow_abort() must not race with any other call on the
 * same handle.  Different handles are independent.
 */
#ifndef ZCOW_H
#define ZCOW_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define ZCOW_API __attribute__((visibility("default")))
#else
#define ZCOW_API
#endif

typedef struct zcow_image zcow_image;

enum zcow_compression {
    ZCOW_COMPRESSION_ZLIB = 0, /* raw deflate, 4 KiB window (QEMU's default) */
    ZCOW_COMPRESSION_ZSTD = 1,
};

enum zcow_cache_mode {
    ZCOW_CACHE_NONE = 0,      /* O_DIRECT (qemu-img -t none) */
    ZCOW_CACHE_WRITEBACK = 1, /* the page cache */
};

#define ZCOW_LEVEL_DEFAULT (-1)

struct zcow_create_options {
    uint64_t virtual_size;    /* bytes, multiple of 512 */
    uint32_t cluster_size;    /* power of two, 4 KiB .. 2 MiB; 0 = 64 KiB */
    int compression_type;     /* enum zcow_compression */
    int level;                /* codec level, ZCOW_LEVEL_DEFAULT = tuned default */
    int cache_mode;           /* enum zcow_cache_mode */
    int write_cache;          /* 1 (default): the compressed write cache;
                                 0: each chunk written where it lands */
    int drop_pages;           /* with ZCOW_CACHE_WRITEBACK: drop each written
                                 host cluster from the page cache */
    unsigned cache_clusters;  /* bound on cached host clusters; 0 = default */
    int atomic;               /* 1: write a temporary file beside the path and
                                 rename it over the path on a successful
                                 zcow_close(); removed by zcow_abort() */
    const char *backing_file; /* NULL: none (unallocated reads as zero) */
    const char *backing_format; /* "qcow2" or "raw", with backing_file */
};

/* Fill OPTS with the defaults: 64 KiB clusters, zlib, default level,
 * O_DIRECT target, write cache on, not atomic.  virtual_size is 0. */
ZCOW_API void zcow_create_options_init(struct zcow_create_options *opts);

/* Create a qcow2 v3 image at PATH for compressed writes.
 * Errors: -EINVAL (bad option), -EFBIG (virtual size beyond the format),
 * file errors from open(2).  Under ZCOW_CACHE_NONE on a file system that
 * refuses O_DIRECT, falls back to the page cache with drop_pages and prints
 * one notice on stderr. */
ZCOW_API int zcow_create(const char *path, const struct zcow_create_options *opts,
                         zcow_image **out);

/* Write one guest cluster at GUEST_OFFSET (cluster aligned).  LEN is the
 * cluster size, or less for the last cluster of the image (the rest reads
 * as zero).  The data is compressed in the calling thread; a cluster that
 * does not shrink is stored uncompressed; an all-zero cluster is left
 * unallocated.  Each guest cluster may be written once: -EEXIST otherwise.
 * After an I/O error every later call returns that error (sticky). */
ZCOW_API int zcow_write_cluster(zcow_image *img, uint64_t guest_offset,
                                const void *buf, size_t len);

/* Write one guest cluster whose data is already compressed in the image's
 * compression type (CLEN <= cluster_size - 1), e.g. copied from another
 * image: stored as it is. */
ZCOW_API int zcow_write_compressed(zcow_image *img, uint64_t guest_offset,
                                   const void *cdata, size_t clen);

/* Read LEN guest bytes at OFFSET, from an image being written (served from
 * the write cache where the bytes are still there) or one opened for
 * reading.  Returns 0 or a negative errno. */
ZCOW_API int zcow_read(zcow_image *img, uint64_t offset, void *buf, size_t len);

/* Write everything cached so far, complete or not, and the metadata known
 * so far is kept in memory; returns the sticky error if any. */
ZCOW_API int zcow_flush(zcow_image *img);

/* Finalise (L2, refcounts, L1, header), fsync, rename when atomic, free.
 * Returns 0 only if every byte written is on disk; frees IMG either way,
 * and on failure removes the temporary file of an atomic image. */
ZCOW_API int zcow_close(zcow_image *img);

/* Free IMG without finalising; an atomic image's temporary file is removed. */
ZCOW_API void zcow_abort(zcow_image *img);

/* Remove the temporary files of every atomic image still open in this
 * process.  Async-signal-safe: meant for SIGINT/SIGTERM handlers. */
ZCOW_API void zcow_remove_temp_files(void);

/* The message of the last failure in this thread ("" if none). */
ZCOW_API const char *zcow_get_error(void);

/* ---- Reading images ---------------------------------------------------- */

/* Open an existing qcow2 (versions 2 and 3) or raw image read-only.
 * FORMAT is "qcow2", "raw" or NULL to probe.  DIRECT: 1 for O_DIRECT reads
 * (falls back silently where refused).  Backing files are opened too. */
ZCOW_API int zcow_open(const char *path, const char *format, int direct,
                       zcow_image **out);

enum zcow_cluster_kind {
    ZCOW_CLUSTER_UNALLOCATED = 0, /* reads from the backing file, or zero */
    ZCOW_CLUSTER_ZERO = 1,        /* reads as zero */
    ZCOW_CLUSTER_NORMAL = 2,
    ZCOW_CLUSTER_COMPRESSED = 3,
};

/* Describe the guest cluster at GUEST_OFFSET of the top image (no backing
 * lookup): its kind, and for compressed clusters the host offset and the
 * byte count that holds the compressed stream (it may include a few bytes
 * of the next stream, as qcow2 records sectors, not bytes). */
struct zcow_cluster_info {
    int kind;             /* enum zcow_cluster_kind */
    uint64_t host_offset;
    uint32_t compressed_len;
};
ZCOW_API int zcow_cluster_info(zcow_image *img, uint64_t guest_offset,
                               struct zcow_cluster_info *info);

/* Read the stored bytes of a compressed cluster into BUF (CAP bytes at
 * least compressed_len); returns the byte count or a negative errno. */
ZCOW_API int zcow_read_compressed(zcow_image *img, const struct zcow_cluster_info *info,
                                  void *buf, size_t cap);

struct zcow_info {
    const char *format;        /* "qcow2" or "raw" */
    uint64_t virtual_size;
    uint32_t cluster_size;     /* 0 for raw */
    int version;               /* 2 or 3 for qcow2 */
    int compression_type;
    int refcount_bits;
    int corrupt;               /* incompatible feature bit 1 */
    int extended_l2;
    uint64_t file_size;        /* bytes the file holds */
    uint64_t actual_size;      /* bytes allocated on disk (st_blocks) */
    uint64_t clusters_allocated, clusters_compressed, clusters_normal, clusters_zero;
    const char *backing_file;  /* NULL if none */
    const char *backing_format;
};
/* Fill INFO; the cluster counts walk the L2 tables (top image only). */
ZCOW_API int zcow_get_info(zcow_image *img, struct zcow_info *info);

/* ---- Conversion --------------------------------------------------------- */

struct zcow_convert_options {
    const char *src;              /* file, block device or qcow2 image */
    const char *src_format;       /* "raw", "qcow2", NULL to probe */
    const char *dst;
    const char *dst_format;       /* "qcow2" (default, compressed) or "raw" */
    struct zcow_create_options create; /* for qcow2 output; virtual_size and
                                          atomic are set by the conversion */
    int threads;                  /* 0: the online CPUs */
    int src_cache;                /* enum zcow_cache_mode; NONE = O_DIRECT */
    /* Called from one thread at a time, often, with bytes done so far. */
    void (*progress)(void *opaque, uint64_t done, uint64_t total);
    void *progress_opaque;
};

struct zcow_convert_stats {
    uint64_t bytes_in;            /* virtual size of the source */
    uint64_t bytes_out;           /* size of the destination file */
    uint64_t clusters_compressed, clusters_normal, clusters_zero, clusters_copied;
    double seconds;
};

/* Fill OPTS with the defaults (see zcow_create_options_init). */
ZCOW_API void zcow_convert_options_init(struct zcow_convert_options *opts);

/* Convert SRC to DST with THREADS workers.  The output is written to a
 * temporary file beside DST and renamed over DST only after it is complete
 * and on disk; on failure DST is untouched and the temporary file removed. */
ZCOW_API int zcow_convert(const struct zcow_convert_options *opts,
                          struct zcow_convert_stats *stats);

#ifdef __cplusplus
}
#endif
#endif
