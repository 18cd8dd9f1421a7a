/* zcow.h - write compressed qcow2 images fast, through O_DIRECT; read,
 * check and compare qcow2 and raw images.
 *
 * Link with -lzcow (pkg-config zcow).  Everything here has the zcow_
 * prefix; nothing else is exported.
 *
 * Objects.  Every structure the library reads or fills is allocated by
 * the library and reached through functions: options are set with
 * zcow_*_opts_set_*() and read back with zcow_*_opts_get_*(); results
 * (image information, check results, conversion statistics) are read with
 * getters.  The caller never sees a layout, so a later version can add
 * options and results without breaking a program built against this
 * header: an option added later is a new function (under a new symbol
 * version), and its default is what the library did before.  Each
 * zcow_X_new() returns NULL when out of memory (zcow_get_error() says so);
 * each zcow_X_free() accepts NULL.
 *
 * Why setters, not a string interface (zcow_opts_set(o, "cluster_size",
 * "64k")) and not caller-sized structures: a typed setter is checked by
 * the compiler, documents its range here, refuses a bad value at the
 * line that sets it (-EINVAL, naming the option and the value), and is a
 * symbol the build's ABI check sees; a structure whose first member is
 * the caller's sizeof can only grow at its end and checks nothing until
 * it is used.  A program that reads options as text (a command line, an
 * nbdkit plugin's key=value) parses the few it knows and calls the
 * setters.
 *
 * Error handling: every call that can fail returns 0 (or a non-negative
 * count) on success and a negative errno on failure.  The message of the
 * last failure in the calling thread, naming the file or the option and
 * the cause, is returned by zcow_get_error().  Nothing is printed, but
 * one notice when O_DIRECT is refused (see zcow_create()).
 *
 * Thread safety: zcow_write_cluster(), zcow_write(), zcow_write_compressed(),
 * zcow_read() and zcow_flush() may be called from many threads at once on
 * one image handle.  zcow_close() and zcow_abort() must not race with any
 * other call on the same handle.  Different handles are independent.  An
 * options or result object belongs to one thread at a time: do not set
 * (or fill) it while another thread uses it; reading its getters from many
 * threads at once is safe.
 *
 * ABI versions: the symbols of the first release carry the version node
 * ZCOW_0.1, those added or changed in 0.2 carry ZCOW_0.2, those of 0.3
 * ZCOW_0.3 (lib/libzcow.map; the soname stays libzcow.so.0).  A program built against the 0.1 header,
 * whose structures (struct zcow_create_options, struct zcow_info, ...)
 * were allocated by the program, keeps running with this library: its
 * calls bind to the ZCOW_0.1 versions, which read and write only the
 * structures as 0.1 released them.  The fields added to them later under
 * the same node (zcow_info's backing_path, dirty and lazy_refcounts;
 * zcow_convert_options' bitmap and nbd_tls) are not served there, since
 * the library cannot know whether the program's structure has them: they
 * are left as the program set them and ignored.  Rebuild against this
 * header to use them.
 */
#ifndef ZCOW_H
#define ZCOW_H

#include <stdbool.h>
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

/* An image being written (zcow_create()) or open for reading (zcow_open()). */
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

/* The message of the last failure in this thread ("" if none). */
ZCOW_API const char *zcow_get_error(void);

/* ---- Options of a new image ----------------------------------------------------------- */

/* How zcow_create() makes an image.  New options hold the defaults: no
 * virtual size (it must be set), 64 KiB clusters, zlib, the tuned default
 * level, O_DIRECT, the write cache on, no page dropping, the default cache
 * bound, not atomic, no backing file.  zcow_create() reads the object
 * only during the call: it may be changed or freed afterwards. */
typedef struct zcow_create_options zcow_create_opts;

ZCOW_API zcow_create_opts *zcow_create_opts_new(void);
ZCOW_API void zcow_create_opts_free(zcow_create_opts *o);

/* The guest size in bytes: a positive multiple of 512.  zcow_create()
 * refuses a size beyond qcow2's limit for the cluster size (-EFBIG). */
ZCOW_API int zcow_create_opts_set_virtual_size(zcow_create_opts *o, uint64_t bytes);
ZCOW_API uint64_t zcow_create_opts_get_virtual_size(const zcow_create_opts *o);

/* A power of two from 4096 to 2097152 (4k to 2M); default 65536. */
ZCOW_API int zcow_create_opts_set_cluster_size(zcow_create_opts *o, uint32_t bytes);
ZCOW_API uint32_t zcow_create_opts_get_cluster_size(const zcow_create_opts *o);

/* enum zcow_compression; default ZCOW_COMPRESSION_ZLIB. */
ZCOW_API int zcow_create_opts_set_compression_type(zcow_create_opts *o, int type);
ZCOW_API int zcow_create_opts_get_compression_type(const zcow_create_opts *o);

/* ZCOW_LEVEL_DEFAULT (zlib: ISA-L level 3, or 2 for clusters whose first
 * 4 KiB are highly repetitive or incompressible; zstd: 3), or from 0 to
 * 19.  zlib takes 0-3 (ISA-L) and 4-9 (zlib), zstd 1-19; the level is
 * checked against the compression type by zcow_create(), since either may
 * be set first. */
ZCOW_API int zcow_create_opts_set_level(zcow_create_opts *o, int level);
ZCOW_API int zcow_create_opts_get_level(const zcow_create_opts *o);

/* enum zcow_cache_mode for the image file; default ZCOW_CACHE_NONE. */
ZCOW_API int zcow_create_opts_set_cache_mode(zcow_create_opts *o, int mode);
ZCOW_API int zcow_create_opts_get_cache_mode(const zcow_create_opts *o);

/* The compressed write cache (default on): host clusters are filled in
 * aligned buffers and written whole.  Off: each compressed chunk is
 * written where it lands (as QEMU does; slow under O_DIRECT). */
ZCOW_API int zcow_create_opts_set_write_cache(zcow_create_opts *o, bool on);
ZCOW_API bool zcow_create_opts_get_write_cache(const zcow_create_opts *o);

/* With ZCOW_CACHE_WRITEBACK: drop each written host cluster from the page
 * cache (default off). */
ZCOW_API int zcow_create_opts_set_drop_pages(zcow_create_opts *o, bool on);
ZCOW_API bool zcow_create_opts_get_drop_pages(const zcow_create_opts *o);

/* The bound on host clusters held by the write cache: 0 (the default:
 * 16 MiB worth) or from 1 to 1048576 (the cache's hash table is sized
 * from it); a bound below what one write run needs is raised to it. */
ZCOW_API int zcow_create_opts_set_cache_clusters(zcow_create_opts *o, unsigned clusters);
ZCOW_API unsigned zcow_create_opts_get_cache_clusters(const zcow_create_opts *o);

/* Atomic (default off): write a temporary file beside the path and rename
 * it over the path on a successful zcow_close(); zcow_abort(), a failed
 * zcow_close() and zcow_remove_temp_files() remove it. */
ZCOW_API int zcow_create_opts_set_atomic(zcow_create_opts *o, bool on);
ZCOW_API bool zcow_create_opts_get_atomic(const zcow_create_opts *o);

/* The backing file, stored in the image as given (1 to 1023 bytes); NULL
 * (the default): none, unallocated clusters read as zero.  Copied. */
ZCOW_API int zcow_create_opts_set_backing_file(zcow_create_opts *o, const char *name);
ZCOW_API const char *zcow_create_opts_get_backing_file(const zcow_create_opts *o);

/* The backing file's format, "qcow2" or "raw"; NULL (the default): qcow2
 * for zcow_create(), probed by zcow_convert(). */
ZCOW_API int zcow_create_opts_set_backing_format(zcow_create_opts *o, const char *format);
ZCOW_API const char *zcow_create_opts_get_backing_format(const zcow_create_opts *o);

/* Compress data clusters (the default), or (false) write them as they
 * are: an image to run a VM from, whose data clusters QEMU rewrites in
 * place; all-zero clusters are still left unallocated (zero clusters over
 * a backing file).  Since 0.3. */
ZCOW_API int zcow_create_opts_set_compress(zcow_create_opts *o, bool on);
ZCOW_API bool zcow_create_opts_get_compress(const zcow_create_opts *o);

/* ---- Writing images --------------------------------------------------------------------- */

/* Create a qcow2 v3 image at PATH for compressed writes, as OPTS says.
 * Errors: -EINVAL (no virtual size; a level out of range for the
 * compression type), -EFBIG (virtual size beyond the format), file errors
 * from open(2).  Under ZCOW_CACHE_NONE on a file system that refuses
 * O_DIRECT, falls back to the page cache with drop_pages and prints one
 * notice on stderr. */
ZCOW_API int zcow_create(const char *path, const zcow_create_opts *opts, zcow_image **out);

/* Write one guest cluster at GUEST_OFFSET (cluster aligned).  LEN is the
 * cluster size, or less for the last cluster of the image (the rest reads
 * as zero).  The data is compressed in the calling thread; a cluster that
 * does not shrink is stored uncompressed; an all-zero cluster is left
 * unallocated (a zero cluster over a backing file).  A cluster written
 * again (by this call, zcow_write() or zcow_write_compressed()) replaces
 * the first version, whose space is freed: refcounts counted down, whole
 * clusters given back to the file system at close, never reused (before
 * 0.3: -EEXIST).
 * After an I/O error every later call returns that error (sticky). */
ZCOW_API int zcow_write_cluster(zcow_image *img, uint64_t guest_offset, const void *buf,
                                size_t len);

/* Write LEN bytes of guest data at GUEST_OFFSET (cluster aligned), cluster
 * by cluster as zcow_write_cluster() does; LEN is a multiple of the
 * cluster size, or reaches the end of the image.  Runs of incompressible
 * clusters are stored with one write (straight from BUF when BUF is
 * 4 KiB aligned). */
ZCOW_API int zcow_write(zcow_image *img, uint64_t guest_offset, const void *buf, size_t len);

/* Write one guest cluster whose data is already compressed in the image's
 * compression type (CLEN <= cluster_size - 1), e.g. copied from another
 * image: stored as it is. */
ZCOW_API int zcow_write_compressed(zcow_image *img, uint64_t guest_offset, const void *cdata,
                                   size_t clen);

/* Read LEN guest bytes at OFFSET, from an image being written (served from
 * the write cache where the bytes are still there, from the backing file
 * where a cluster was not written: the last write of each cluster, once
 * its call returned) or one opened for reading.  Returns 0 or a negative
 * errno. */
ZCOW_API int zcow_read(zcow_image *img, uint64_t offset, void *buf, size_t len);

/* Write everything cached so far, complete or not, and the metadata known
 * so far is kept in memory; returns the sticky error if any. */
ZCOW_API int zcow_flush(zcow_image *img);

/* Finalise (L2, refcounts, L1, header), fsync, rename when atomic, free.
 * Returns 0 only if every byte written is on disk; frees IMG either way,
 * and on failure removes the temporary file of an atomic image.  For an
 * image opened for reading: frees it (and its backing chain); returns 0. */
ZCOW_API int zcow_close(zcow_image *img);

/* Free IMG without finalising; an atomic image's temporary file is removed. */
ZCOW_API void zcow_abort(zcow_image *img);

/* Remove the temporary files of every atomic image still open in this
 * process.  Async-signal-safe: meant for SIGINT/SIGTERM handlers. */
ZCOW_API void zcow_remove_temp_files(void);

/* ---- Reading images ------------------------------------------------------------------- */

/* Open an existing qcow2 (versions 2 and 3) or raw image read-only.
 * FORMAT is "qcow2", "raw" or NULL to probe.  DIRECT: 1 for O_DIRECT reads
 * (falls back silently where refused).  Backing files are opened too. */
ZCOW_API int zcow_open(const char *path, const char *format, int direct, zcow_image **out);

/* The backing file of an image opened with zcow_open(), already open as
 * part of IMG's chain; NULL when it has none (or IMG is being written).
 * The handle belongs to IMG: it lives until zcow_close(IMG), and closing
 * it does nothing. */
ZCOW_API zcow_image *zcow_get_backing(zcow_image *img);

enum zcow_cluster_kind {
    ZCOW_CLUSTER_UNALLOCATED = 0, /* reads from the backing file, or zero */
    ZCOW_CLUSTER_ZERO = 1,        /* reads as zero */
    ZCOW_CLUSTER_NORMAL = 2,
    ZCOW_CLUSTER_COMPRESSED = 3,
};

/* Describe the guest cluster at GUEST_OFFSET of the top image (no backing
 * lookup): its kind, and for compressed clusters the host offset and the
 * byte count that holds the compressed stream (it may include a few bytes
 * of the next stream, as qcow2 records sectors, not bytes).
 * This one structure is the caller's (it is filled once per cluster, where
 * an allocation would cost): its layout is fixed for good, and a richer
 * description would be a new structure with a new function. */
struct zcow_cluster_info {
    int kind; /* enum zcow_cluster_kind */
    uint64_t host_offset;
    uint32_t compressed_len;
};
ZCOW_API int zcow_cluster_info(zcow_image *img, uint64_t guest_offset,
                               struct zcow_cluster_info *info);

/* Read the stored bytes of a compressed cluster into BUF (CAP bytes at
 * least compressed_len); returns the byte count or a negative errno. */
ZCOW_API int zcow_read_compressed(zcow_image *img, const struct zcow_cluster_info *info, void *buf,
                                  size_t cap);

/* ---- Image information ---------------------------------------------------------------- */

/* What zcow_get_info() found.  A new object reads as zeros and NULLs. */
typedef struct zcow_info zcow_info;

ZCOW_API zcow_info *zcow_info_new(void);
ZCOW_API void zcow_info_free(zcow_info *info);

/* Fill INFO for IMG (being written, or open for reading); the cluster
 * counts walk the L2 tables of the top image.  The strings INFO returns
 * belong to IMG: they live until zcow_close(IMG). */
ZCOW_API int zcow_get_info(zcow_image *img, zcow_info *info);

ZCOW_API const char *zcow_info_get_format(const zcow_info *info); /* "qcow2" or "raw" */
ZCOW_API uint64_t zcow_info_get_virtual_size(const zcow_info *info);
ZCOW_API uint32_t zcow_info_get_cluster_size(const zcow_info *info); /* 0 for raw */
ZCOW_API int zcow_info_get_version(const zcow_info *info);           /* qcow2: 2 or 3 */
ZCOW_API int zcow_info_get_compression_type(const zcow_info *info);  /* enum zcow_compression */
ZCOW_API int zcow_info_get_refcount_bits(const zcow_info *info);
ZCOW_API bool zcow_info_get_corrupt(const zcow_info *info);        /* incompatible bit 1 */
ZCOW_API bool zcow_info_get_dirty(const zcow_info *info);          /* incompatible bit 0 */
ZCOW_API bool zcow_info_get_extended_l2(const zcow_info *info);    /* incompatible bit 4 */
ZCOW_API bool zcow_info_get_lazy_refcounts(const zcow_info *info); /* compatible bit 0 */
/* Bytes the file holds, and bytes allocated to it on disk (st_blocks). */
ZCOW_API uint64_t zcow_info_get_file_size(const zcow_info *info);
ZCOW_API uint64_t zcow_info_get_actual_size(const zcow_info *info);
/* Guest clusters of the top image: allocated are those with a host
 * cluster (compressed, normal, and zero clusters that keep theirs). */
ZCOW_API uint64_t zcow_info_get_clusters_allocated(const zcow_info *info);
ZCOW_API uint64_t zcow_info_get_clusters_compressed(const zcow_info *info);
ZCOW_API uint64_t zcow_info_get_clusters_normal(const zcow_info *info);
ZCOW_API uint64_t zcow_info_get_clusters_zero(const zcow_info *info);
/* The backing file as the image names it (NULL if none), its format as
 * the image records it (NULL if it does not), and the name resolved
 * against the image's directory, as it is opened. */
ZCOW_API const char *zcow_info_get_backing_file(const zcow_info *info);
ZCOW_API const char *zcow_info_get_backing_format(const zcow_info *info);
ZCOW_API const char *zcow_info_get_backing_path(const zcow_info *info);

/* ---- Conversion ----------------------------------------------------------------------- */

/* What zcow_convert() does.  New options hold the defaults: no source or
 * destination (both must be set), the source's format probed, qcow2
 * output with the defaults of zcow_create_opts_new(), one worker per
 * online CPU, O_DIRECT source reads, no progress callback, no bitmap, no
 * TLS settings.  zcow_convert() reads the object only during the call. */
typedef struct zcow_convert_options zcow_convert_opts;

ZCOW_API zcow_convert_opts *zcow_convert_opts_new(void);
ZCOW_API void zcow_convert_opts_free(zcow_convert_opts *o);

/* The source: a file, a block device, a qcow2 image (its backing chain is
 * flattened) or an NBD URI: nbd://HOST[:PORT]/EXPORT,
 * nbd+unix:///EXPORT?socket=PATH, nbds://..., nbds+unix://... (read
 * through libnbd).  Not empty; copied. */
ZCOW_API int zcow_convert_opts_set_src(zcow_convert_opts *o, const char *src);
ZCOW_API const char *zcow_convert_opts_get_src(const zcow_convert_opts *o);

/* The source's format: "raw", "qcow2", or NULL (the default) to probe. */
ZCOW_API int zcow_convert_opts_set_src_format(zcow_convert_opts *o, const char *format);
ZCOW_API const char *zcow_convert_opts_get_src_format(const zcow_convert_opts *o);

/* The destination file (not empty; copied). */
ZCOW_API int zcow_convert_opts_set_dst(zcow_convert_opts *o, const char *dst);
ZCOW_API const char *zcow_convert_opts_get_dst(const zcow_convert_opts *o);

/* "qcow2" (the default: compressed unless the create options say
 * otherwise) or "raw" (a restore: a sparse raw file; a block device or an
 * NBD URI, always raw, is written in place: it must hold the whole source,
 * an export is flushed at the end, and a failed conversion leaves either
 * partly written, as its message says). */
ZCOW_API int zcow_convert_opts_set_dst_format(zcow_convert_opts *o, const char *format);
ZCOW_API const char *zcow_convert_opts_get_dst_format(const zcow_convert_opts *o);

/* The options of a qcow2 output, copied from C (the default: those of
 * zcow_create_opts_new()); their virtual size and atomic setting are
 * ignored: the conversion sets them.  The getter's object belongs to O
 * and changes with it. */
ZCOW_API int zcow_convert_opts_set_create(zcow_convert_opts *o, const zcow_create_opts *c);
ZCOW_API const zcow_create_opts *zcow_convert_opts_get_create(const zcow_convert_opts *o);

/* Worker threads: 0 (the default: the online CPUs) or from 1 to 256. */
ZCOW_API int zcow_convert_opts_set_threads(zcow_convert_opts *o, int threads);
ZCOW_API int zcow_convert_opts_get_threads(const zcow_convert_opts *o);

/* enum zcow_cache_mode for reading the source; default ZCOW_CACHE_NONE. */
ZCOW_API int zcow_convert_opts_set_src_cache(zcow_convert_opts *o, int mode);
ZCOW_API int zcow_convert_opts_get_src_cache(const zcow_convert_opts *o);

/* Called from one thread at a time, often, with the bytes done so far and
 * the total; FN NULL (the default): none. */
typedef void zcow_progress_fn(void *opaque, uint64_t done, uint64_t total);
ZCOW_API int zcow_convert_opts_set_progress(zcow_convert_opts *o, zcow_progress_fn *fn,
                                            void *opaque);

/* The destination, an existing block device or NBD export, already reads
 * as zero (a promise, as qemu-img convert's --target-is-zero): its zero
 * stretches are not written.  Default false: they are zeroed.  zcow_convert()
 * refuses it with -EINVAL for a destination it creates (a file), which
 * reads as zero anyway.  Since 0.3. */
ZCOW_API int zcow_convert_opts_set_target_is_zero(zcow_convert_opts *o, bool on);
ZCOW_API bool zcow_convert_opts_get_target_is_zero(const zcow_convert_opts *o);

/* zcow_backup_restore() compares the digest of what it wrote with the one
 * the point records, and fails when they differ (default true); false
 * skips the digest, and its cost.  zcow_convert() ignores it.  Since 0.3. */
ZCOW_API int zcow_convert_opts_set_verify(zcow_convert_opts *o, bool on);
ZCOW_API bool zcow_convert_opts_get_verify(const zcow_convert_opts *o);

/* Incremental backups: NULL (the default), or the name of a dirty bitmap
 * of the NBD source (meta context "qemu:dirty-bitmap:NAME").  Only its
 * dirty clusters are copied (a cluster partly dirty, whole); the clean
 * ones are left to the backing file, which the create options must name.
 * Copied. */
ZCOW_API int zcow_convert_opts_set_bitmap(zcow_convert_opts *o, const char *name);
ZCOW_API const char *zcow_convert_opts_get_bitmap(const zcow_convert_opts *o);

/* TLS for an NBD source or destination: nbds:// and nbds+unix:// only,
 * where TLS is required and never falls back to plaintext (with no such
 * source or destination these make zcow_convert() fail with -EINVAL; when
 * both are NBD they are for the one with TLS).  NULL (the default) leaves a
 * setting to the URI and libnbd's defaults.  The URI's own values win over
 * these: libnbd applies them on connecting, after these are set
 * (tls-certificates=DIR, tls-psk-file=FILE, the NAME of
 * nbds://NAME@HOST/..., then tls-username=NAME).  Each is copied.
 * Certificates: for X.509, a directory holding ca-cert.pem, and
 * client-cert.pem and client-key.pem for servers that check clients;
 * NULL: libnbd's default directories.  PSK file: pre-shared keys instead of
 * X.509, a file of USERNAME:HEXKEY lines.  User name: the PSK user; NULL:
 * the user running the program. */
ZCOW_API int zcow_convert_opts_set_tls_certificates(zcow_convert_opts *o, const char *dir);
ZCOW_API const char *zcow_convert_opts_get_tls_certificates(const zcow_convert_opts *o);
ZCOW_API int zcow_convert_opts_set_tls_psk_file(zcow_convert_opts *o, const char *file);
ZCOW_API const char *zcow_convert_opts_get_tls_psk_file(const zcow_convert_opts *o);
ZCOW_API int zcow_convert_opts_set_tls_username(zcow_convert_opts *o, const char *name);
ZCOW_API const char *zcow_convert_opts_get_tls_username(const zcow_convert_opts *o);

/* What zcow_convert() did.  A new object reads as zeros. */
typedef struct zcow_convert_stats zcow_convert_stats;

ZCOW_API zcow_convert_stats *zcow_convert_stats_new(void);
ZCOW_API void zcow_convert_stats_free(zcow_convert_stats *st);
ZCOW_API uint64_t zcow_convert_stats_get_bytes_in(const zcow_convert_stats *st);  /* source size */
ZCOW_API uint64_t zcow_convert_stats_get_bytes_out(const zcow_convert_stats *st); /* DST's size */
/* Guest clusters compressed here, stored uncompressed, stated zero, and
 * copied compressed as they were (qcow2 sources of the same type). */
ZCOW_API uint64_t zcow_convert_stats_get_clusters_compressed(const zcow_convert_stats *st);
ZCOW_API uint64_t zcow_convert_stats_get_clusters_normal(const zcow_convert_stats *st);
ZCOW_API uint64_t zcow_convert_stats_get_clusters_zero(const zcow_convert_stats *st);
ZCOW_API uint64_t zcow_convert_stats_get_clusters_copied(const zcow_convert_stats *st);
ZCOW_API double zcow_convert_stats_get_seconds(const zcow_convert_stats *st);

/* Convert the source to the destination as OPTS says; STATS (may be
 * NULL) receives what was done.  The output is written to a temporary
 * file beside DST and renamed over DST only after it is complete and on
 * disk; on failure DST is untouched and the temporary file removed.  A
 * connection that fails (no server, an untrusted certificate, a wrong key,
 * TLS refused or required by the server) fails the conversion before DST
 * is created, naming the URI and the cause.  With a backing file in the
 * create options, the name is stored as given and must open (relative to
 * DST's directory), else -ENOENT or the open's error; a NULL backing
 * format probes it; zero stretches of the source are stored as zero
 * clusters.  Errors for a bitmap: -EINVAL without an NBD source, a backing
 * file or a qcow2 output; -ENOENT when the server does not export it.
 * -EINVAL when the source or the destination is not set. */
ZCOW_API int zcow_convert(const zcow_convert_opts *opts, zcow_convert_stats *stats);

/* ---- Content digests (zcow digest) ------------------------------------------------- */

/* The digest every backup point records, "sha256/64k": SHA-256 over the
 * SHA-256 hashes of the disk's 64 KiB blocks in order (the last one short
 * when the size is not a multiple), as blkhash computes it.  Blocks hash
 * in parallel, and zero blocks cost nothing. */
#define ZCOW_DIGEST_NAME "sha256/64k"
/* Room for the digest as lowercase hex, and its NUL. */
#define ZCOW_DIGEST_HEX_SIZE 65

/* The digest of O's source (a raw file or block device, a qcow2 image
 * with its backing chain, an NBD export: what the guest sees), read with
 * O's source format, threads, source cache, progress and TLS settings;
 * the rest of O is ignored, but a bitmap, which is refused (-EINVAL).
 * HEX receives it as lowercase hex (SIZE >= ZCOW_DIGEST_HEX_SIZE, else
 * -ERANGE). */
ZCOW_API int zcow_digest(const zcow_convert_opts *o, char *hex, size_t size);

/* ---- Backups of running VMs (zcow backup, zcow list, zcow restore) ------------------ */

/* A backup directory holds the points of a VM's disks as plain qcow2
 * images: the first point of a disk is a full image, later ones
 * incrementals, each a compressed qcow2 whose backing file is the point
 * before it, holding only what changed; a manifest (zcow-backup.json)
 * lists them.  zcow_backup() takes one point of every disk at one instant
 * while the VM runs: through libvirt (a domain: pull-mode backup and
 * checkpoints) or through QEMU's QMP socket (fleecing and dirty bitmaps).
 * A failed backup leaves the directory as it was, and the next one covers
 * every change since the last good point.  Builds without NBD (make
 * NBD=no) fail every call here with -ENOTSUP. */
enum zcow_backup_level {
    ZCOW_BACKUP_AUTO = 0, /* incremental when the chain and the VM's tracking
                             agree, else full (a message says why) */
    ZCOW_BACKUP_FULL = 1,
    ZCOW_BACKUP_INC = 2, /* fails where auto would take a full */
};

/* What zcow_backup() does.  New options: no directory and no VM (both
 * must be set), every writable disk, ZCOW_BACKUP_AUTO, the conversion
 * defaults of zcow_convert_opts_new(), no messages.  Strings are copied. */
typedef struct zcow_backup_options zcow_backup_opts;

ZCOW_API zcow_backup_opts *zcow_backup_opts_new(void);
ZCOW_API void zcow_backup_opts_free(zcow_backup_opts *o);
/* The backup directory (made when missing). */
ZCOW_API int zcow_backup_opts_set_dir(zcow_backup_opts *o, const char *dir);
/* The VM: a libvirt domain (and libvirt's URI: NULL, the default, is
 * libvirt's default), or the QMP socket of a QEMU without libvirt.  One
 * of domain and qmp, not both. */
ZCOW_API int zcow_backup_opts_set_domain(zcow_backup_opts *o, const char *name);
ZCOW_API int zcow_backup_opts_set_connect(zcow_backup_opts *o, const char *uri);
ZCOW_API int zcow_backup_opts_set_qmp(zcow_backup_opts *o, const char *socket);
/* A disk to back up (repeatable): a libvirt disk target (vda), or a QMP
 * block node name.  None: every writable disk. */
ZCOW_API int zcow_backup_opts_add_disk(zcow_backup_opts *o, const char *name);
/* enum zcow_backup_level. */
ZCOW_API int zcow_backup_opts_set_level(zcow_backup_opts *o, int level);
/* The points' qcow2 options, threads, progress and NBD TLS settings are
 * copied from C; its source, destination and bitmap are the backup's. */
ZCOW_API int zcow_backup_opts_set_convert(zcow_backup_opts *o, const zcow_convert_opts *c);
/* One line for the user per decision and per point made ("vda: full
 * backup: no previous point"); FN NULL (the default): none. */
typedef void zcow_message_fn(void *opaque, const char *line);
ZCOW_API int zcow_backup_opts_set_messages(zcow_backup_opts *o, zcow_message_fn *fn, void *opaque);

/* Take the backup.  Errors name the directory, the VM or the disk and the
 * cause: -EBUSY when another zcow uses the directory, -EINVAL for an
 * incremental that cannot be taken, and the VM's, libvirt's, NBD's and
 * the file system's errors. */
ZCOW_API int zcow_backup(const zcow_backup_opts *o);

/* The points of every disk in DIR, as a JSON array (*JSON, to free()):
 * objects with "disk", "number", "time" (seconds since the epoch),
 * "level" ("full" or "inc"), "virtual-size", "stored-bytes" and "file"
 * (the image, relative to DIR), and since 0.3 "digest" ("sha256/64k:HEX",
 * the disk's content digest at the point, as zcow_digest() computes it)
 * and "blkhash" (its block hashes, relative to DIR); points made before
 * 0.3 have neither.  Members may be added. */
ZCOW_API int zcow_backup_list(const char *dir, char **json);

/* Restore point POINT (0: the latest) of DISK (NULL: DIR's only disk) as
 * C says: its destination and format (raw: a sparse file, a block device
 * or an NBD export; qcow2: an image, uncompressed when C's create options
 * say compress off) and the rest; its source is the point, whose chain is
 * read once, never flattened to an intermediate file.  What is written is
 * hashed on the way; when its digest is not the point's, -EILSEQ (the
 * message names the point), and a file is not put in place (unless C's
 * verify option is off; a point without a digest is not verified). */
ZCOW_API int zcow_backup_restore(const char *dir, const char *disk, uint64_t point,
                                 const zcow_convert_opts *c);

/* Verify the points of DISK (NULL: every disk) in DIR: the manifest, each
 * image's structure (as zcow_check()), the chain's links (backing file
 * names and format, virtual sizes, the order of the points, no image
 * missing), the content (every cluster each image holds is read once and
 * every compressed one must decompress to exactly a cluster) and the
 * digest: each point's, recomputed from the images, must be the one the
 * manifest records ("ok (no digest)" for a point without one).  POINT:
 * ZCOW_VERIFY_ALL (0) every point, ZCOW_VERIFY_LATEST the latest of each
 * disk, else point POINT; for one point its chain below it is read too
 * (its content rests on it) but only it is reported.  FN (may be NULL)
 * gets one line per point ("vda 3 inc ok", "vda 3 inc BAD: CAUSE; ...")
 * and a summary line.  Returns 0 when every point is good, -EBADMSG when
 * one is not (the message names the first bad point and why), and other
 * errors when DIR cannot be verified (-ENOENT no such disk or point,
 * -EINVAL not a backup directory or a manifest that cannot be trusted,
 * -EBUSY a backup is writing it).  Reads only: DIR is not changed. */
#define ZCOW_VERIFY_ALL 0
#define ZCOW_VERIFY_LATEST UINT64_MAX
ZCOW_API int zcow_backup_verify(const char *dir, const char *disk, uint64_t point,
                                zcow_message_fn *fn, void *opaque);

/* Chains that do not grow for ever (zcow prune, zcow merge).  A merged
 * image is a point's whole content as one compressed qcow2 image without a
 * backing file, made by copying the compressed clusters of the point's
 * chain as they are, from whichever image holds them (no recompression;
 * clusters stored uncompressed, or with another cluster size or
 * compression type than the chain's full image, are compressed anew), with
 * O_DIRECT reads and writes. */
enum {
    /* Prune even a chain that does not check clean. */
    ZCOW_PRUNE_FORCE = 1u << 0,
};

/* Keep the newest KEEP (>= 1) points of DISK (NULL: of every disk) of DIR:
 * the oldest kept point becomes a full (its image replaced by a merged one
 * under the same name, by rename: the next point's backing file; the
 * merged image's digest must first be the one the point recorded, else
 * -EILSEQ and nothing changes), the
 * manifest drops the points below it, and their images are removed.
 * Every point the manifest lists stays restorable at every instant: a
 * prune killed anywhere is finished by the next one, and its leftovers
 * are removed by any later zcow that changes DIR.  Before changing
 * anything, the chains to be read and kept are checked (each image as
 * zcow_check(), their sizes and backing files against the manifest), and
 * a failure is -EINVAL naming the image, unless FLAGS has
 * ZCOW_PRUNE_FORCE.  MESSAGES (may be NULL) gets one line per disk and
 * step ("vda: point 8 is now a full: ...", "vda: 3 points, keeping 3:
 * nothing to do").  -EBUSY when another zcow uses DIR; -ENOENT when DIR
 * is not a backup directory or has no DISK; -EINVAL for a damaged
 * manifest.  A point's fields other than its level and stored bytes (its
 * digest) are kept. */
ZCOW_API int zcow_backup_prune(const char *dir, const char *disk, uint64_t keep, unsigned flags,
                               zcow_message_fn *messages, void *opaque);

/* Write point POINT (0: the latest) of DISK (NULL: DIR's only disk) as one
 * merged image at DEST, outside DIR (-EINVAL inside), with the cluster
 * size and compression type of the point's full image: under a temporary
 * name, renamed to DEST once complete and its digest is the one the point
 * recorded (else -EILSEQ).  C (may be NULL: defaults) gives the threads,
 * progress and compression level, and zcow_convert_opts_set_verify(false)
 * skips the digest check; its source, destination and other image
 * settings are ignored.  STATS (may be NULL) gets what the
 * copy did (clusters copied as they were, compressed anew). */
ZCOW_API int zcow_backup_merge(const char *dir, const char *disk, uint64_t point, const char *dest,
                               const zcow_convert_opts *c, zcow_convert_stats *stats);

/* ---- Checking and comparing (zcow check, zcow compare) ---------------------------- */

/* Whole-image operations come in two forms: by path, where the library
 * opens what it needs the way it needs it (zcow_check(), zcow_compare()),
 * and by handle, on an image the program holds open (zcow_check_image(),
 * zcow_compare_images()).  The path form of the check is the one to use on
 * an image that may be damaged: it reads the file's metadata itself, even
 * where zcow_open() refuses the image (or its backing file is missing). */

/* What a check found, counted as `qemu-img check` counts them.  A new
 * object reads as zeros. */
typedef struct zcow_check_result zcow_check_result;

ZCOW_API zcow_check_result *zcow_check_result_new(void);
ZCOW_API void zcow_check_result_free(zcow_check_result *res);
/* Errors (qemu-img check exits 2), leaks: stored refcount > references
 * (exit 3), and parts that could not be checked (exit 1). */
ZCOW_API uint64_t zcow_check_result_get_corruptions(const zcow_check_result *res);
ZCOW_API uint64_t zcow_check_result_get_leaks(const zcow_check_result *res);
ZCOW_API uint64_t zcow_check_result_get_check_errors(const zcow_check_result *res);
/* Guest clusters of the virtual size; of the active L1 table: allocated,
 * fragmented, compressed. */
ZCOW_API uint64_t zcow_check_result_get_total_clusters(const zcow_check_result *res);
ZCOW_API uint64_t zcow_check_result_get_allocated_clusters(const zcow_check_result *res);
ZCOW_API uint64_t zcow_check_result_get_fragmented_clusters(const zcow_check_result *res);
ZCOW_API uint64_t zcow_check_result_get_compressed_clusters(const zcow_check_result *res);
/* The end of the last used host cluster. */
ZCOW_API uint64_t zcow_check_result_get_image_end_offset(const zcow_check_result *res);
/* With ZCOW_CHECK_DECOMPRESS; also counted in corruptions. */
ZCOW_API uint64_t zcow_check_result_get_decompress_failures(const zcow_check_result *res);
/* Incompatible feature bits 1 (corrupt) and 0 (dirty) are set. */
ZCOW_API bool zcow_check_result_get_marked_corrupt(const zcow_check_result *res);
ZCOW_API bool zcow_check_result_get_marked_dirty(const zcow_check_result *res);
ZCOW_API uint32_t zcow_check_result_get_cluster_size(const zcow_check_result *res);

enum {
    /* Also decompress every compressed cluster; failures are corruptions. */
    ZCOW_CHECK_DECOMPRESS = 1u << 0,
};

/* Called once for every finding, with one line in qemu-img's wording
 * ("ERROR cluster 5 refcount=0 reference=1"), without a newline. */
typedef void zcow_check_report_fn(void *opaque, const char *line);

/* Check the metadata of the qcow2 image at PATH as `qemu-img check` does:
 * rebuild the refcounts from the header, L1/L2 tables (the snapshots'
 * too), refcount structures, snapshot table and bitmaps, and compare them
 * with the stored ones.  REPORT (may be NULL) receives each finding; RES
 * (may be NULL) what was found.  Returns 0 when the check ran (RES says
 * what it found; check_errors may still be nonzero), or a negative errno
 * when it could not run: -EINVAL not a qcow2 image zcow can check,
 * -ENOTSUP unsupported feature, -EFBIG file too large to check in bounded
 * memory, file errors.  The backing file is not opened.  Memory is bounded
 * by the file size (at most about 1 GiB of counters).
 * Thread-safe: independent calls may run at once. */
ZCOW_API int zcow_check(const char *path, unsigned flags, zcow_check_report_fn *report,
                        void *opaque, zcow_check_result *res);

/* The same on the file IMG was opened from (by zcow_open(), or as a
 * backing file by zcow_get_backing()): it is opened again by that name,
 * as the check reads metadata, not guest data.  -ENOTSUP for an image
 * being written: check it after zcow_close().  Calls on one handle may
 * run at once, beside reads of it. */
ZCOW_API int zcow_check_image(zcow_image *img, unsigned flags, zcow_check_report_fn *report,
                              void *opaque, zcow_check_result *res);

/* Results of zcow_compare_images() and zcow_compare(). */
enum {
    ZCOW_COMPARE_IDENTICAL = 0,
    ZCOW_COMPARE_CONTENT = 1, /* *MISMATCH_OFFSET: first differing 512-byte
                                 sector, as qemu-img compare reports it */
    ZCOW_COMPARE_SIZE = 2,    /* strict mode: virtual sizes differ */
};

/* Compare the guest contents of two images opened with zcow_open().
 * Bytes beyond the end of the shorter image must be zero, unless STRICT,
 * where different sizes are a mismatch.  Reads in large blocks on a few
 * threads.  Returns a ZCOW_COMPARE_* value, or a negative errno when a
 * read fails.  The handles may be used by other readers meanwhile. */
ZCOW_API int zcow_compare_images(zcow_image *a, zcow_image *b, int strict,
                                 uint64_t *mismatch_offset);

/* The same, opening A and B (FA, FB: "raw", "qcow2" or NULL to probe). */
ZCOW_API int zcow_compare(const char *a, const char *fa, const char *b, const char *fb, int strict,
                          uint64_t *mismatch_offset);

#ifdef __cplusplus
}
#endif
#endif
