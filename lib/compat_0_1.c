/* compat_0_1.c - the entry points of zcow 0.1 whose structures the
 * program allocated, kept for programs built against the 0.1 header.
 *
 * Each is exported as NAME@ZCOW_0.1 (a .symver alias of NAME_v0_1; the
 * default NAME@@ZCOW_0.2 is the current API), so such a program binds to
 * it by the version its link recorded.  They read and write the
 * structures exactly as 0.1 released them (the layouts frozen below, from
 * the 0.1 header) and never a byte more: the fields that were appended to
 * struct zcow_info and struct zcow_convert_options later, under the same
 * version node, are neither written nor read, since a 0.1 program's
 * structure may end before them.  The work is done by the current entry
 * points on the library's own structures (options.h).
 *
 * A static link (libzcow.a) always uses the current header: these are
 * for the shared library only, but harmless in the archive. */
#include <errno.h>
#include <string.h>

#include "error.h"
#include "options.h"

/* ---- The 0.1 layouts (include/zcow.h of the first release) ---- */

struct zcow_create_options_v0_1 {
    uint64_t virtual_size;
    uint32_t cluster_size;
    int compression_type;
    int level;
    int cache_mode;
    int write_cache;
    int drop_pages;
    unsigned cache_clusters;
    int atomic;
    const char *backing_file;
    const char *backing_format;
};

struct zcow_info_v0_1 {
    const char *format;
    uint64_t virtual_size;
    uint32_t cluster_size;
    int version;
    int compression_type;
    int refcount_bits;
    int corrupt;
    int extended_l2;
    uint64_t file_size;
    uint64_t actual_size;
    uint64_t clusters_allocated, clusters_compressed, clusters_normal, clusters_zero;
    const char *backing_file;
    const char *backing_format;
    /* 0.1 ended here; backing_path, dirty and lazy_refcounts came later. */
};

struct zcow_convert_options_v0_1 {
    const char *src;
    const char *src_format;
    const char *dst;
    const char *dst_format;
    struct zcow_create_options_v0_1 create;
    int threads;
    int src_cache;
    void (*progress)(void *opaque, uint64_t done, uint64_t total);
    void *progress_opaque;
    /* 0.1 ended here; bitmap and nbd_tls came later. */
};

struct zcow_convert_stats_v0_1 {
    uint64_t bytes_in;
    uint64_t bytes_out;
    uint64_t clusters_compressed, clusters_normal, clusters_zero, clusters_copied;
    double seconds;
};

/* As the check and compare functions were exported under ZCOW_0.1. */
struct zcow_check_result_v0_1 {
    uint64_t corruptions;
    uint64_t leaks;
    uint64_t check_errors;
    uint64_t total_clusters;
    uint64_t allocated_clusters;
    uint64_t fragmented_clusters;
    uint64_t compressed_clusters;
    uint64_t image_end_offset;
    uint64_t decompress_failures;
    int marked_corrupt;
    int marked_dirty;
    uint32_t cluster_size;
};

#define COMPAT __attribute__((visibility("default")))
#define SYMVER(name) __asm__(".symver " #name "_v0_1, " #name "@ZCOW_0.1")

COMPAT void zcow_create_options_init_v0_1(struct zcow_create_options_v0_1 *o);
COMPAT int zcow_create_v0_1(const char *path, const struct zcow_create_options_v0_1 *opts,
                            zcow_image **out);
COMPAT int zcow_get_info_v0_1(zcow_image *img, struct zcow_info_v0_1 *info);
COMPAT void zcow_convert_options_init_v0_1(struct zcow_convert_options_v0_1 *o);
COMPAT int zcow_convert_v0_1(const struct zcow_convert_options_v0_1 *o,
                             struct zcow_convert_stats_v0_1 *stats);
COMPAT int zcow_check_v0_1(const char *path, unsigned flags, zcow_check_report_fn *report,
                           void *opaque, struct zcow_check_result_v0_1 *res);
SYMVER(zcow_create_options_init);
SYMVER(zcow_create);
SYMVER(zcow_get_info);
SYMVER(zcow_convert_options_init);
SYMVER(zcow_convert);
SYMVER(zcow_check);

static void create_to_v0_1(const struct zcow_create_options *c, struct zcow_create_options_v0_1 *o)
{
    o->virtual_size = c->virtual_size;
    o->cluster_size = c->cluster_size;
    o->compression_type = c->compression_type;
    o->level = c->level;
    o->cache_mode = c->cache_mode;
    o->write_cache = c->write_cache;
    o->drop_pages = c->drop_pages;
    o->cache_clusters = c->cache_clusters;
    o->atomic = c->atomic;
    o->backing_file = c->backing_file;
    o->backing_format = c->backing_format;
}

/* Values are taken as 0.1 took them: checked by zcow_create() (the writer),
 * not by the setters; the strings are borrowed for the call. */
static void create_from_v0_1(const struct zcow_create_options_v0_1 *o,
                             struct zcow_create_options *c)
{
    create_options_defaults(c);
    c->virtual_size = o->virtual_size;
    c->cluster_size = o->cluster_size;
    c->compression_type = o->compression_type;
    c->level = o->level;
    c->cache_mode = o->cache_mode;
    c->write_cache = o->write_cache;
    c->drop_pages = o->drop_pages;
    c->cache_clusters = o->cache_clusters;
    c->atomic = o->atomic;
    c->backing_file = o->backing_file;
    c->backing_format = o->backing_format;
}

void zcow_create_options_init_v0_1(struct zcow_create_options_v0_1 *o)
{
    struct zcow_create_options c;
    create_options_defaults(&c);
    memset(o, 0, sizeof(*o));
    create_to_v0_1(&c, o);
}

int zcow_create_v0_1(const char *path, const struct zcow_create_options_v0_1 *opts,
                     zcow_image **out)
{
    if (!opts) {
        *out = NULL;
        return zerr(EINVAL, "zcow_create: missing path or options");
    }
    struct zcow_create_options c;
    create_from_v0_1(opts, &c);
    return zcow_create(path, &c, out);
}

int zcow_get_info_v0_1(zcow_image *img, struct zcow_info_v0_1 *info)
{
    struct zcow_info in;
    memset(&in, 0, sizeof(in));
    int r = zcow_get_info(img, &in);
    memset(info, 0, sizeof(*info));
    info->format = in.format;
    info->virtual_size = in.virtual_size;
    info->cluster_size = in.cluster_size;
    info->version = in.version;
    info->compression_type = in.compression_type;
    info->refcount_bits = in.refcount_bits;
    info->corrupt = in.corrupt;
    info->extended_l2 = in.extended_l2;
    info->file_size = in.file_size;
    info->actual_size = in.actual_size;
    info->clusters_allocated = in.clusters_allocated;
    info->clusters_compressed = in.clusters_compressed;
    info->clusters_normal = in.clusters_normal;
    info->clusters_zero = in.clusters_zero;
    info->backing_file = in.backing_file;
    info->backing_format = in.backing_format;
    return r;
}

void zcow_convert_options_init_v0_1(struct zcow_convert_options_v0_1 *o)
{
    struct zcow_convert_options c;
    convert_options_defaults(&c);
    memset(o, 0, sizeof(*o));
    o->dst_format = c.dst_format;
    create_to_v0_1(&c.create, &o->create);
    o->threads = c.threads;
    o->src_cache = c.src_cache;
}

int zcow_convert_v0_1(const struct zcow_convert_options_v0_1 *o,
                      struct zcow_convert_stats_v0_1 *stats)
{
    struct zcow_convert_stats st;
    memset(&st, 0, sizeof(st));
    int r;
    if (!o) {
        r = zcow_convert(NULL, &st);
    } else {
        struct zcow_convert_options c;
        convert_options_defaults(&c);
        c.src = o->src;
        c.src_format = o->src_format;
        c.dst = o->dst;
        c.dst_format = o->dst_format;
        create_from_v0_1(&o->create, &c.create);
        c.threads = o->threads;
        c.src_cache = o->src_cache;
        c.progress = o->progress;
        c.progress_opaque = o->progress_opaque;
        r = zcow_convert(&c, &st);
    }
    if (stats) {
        stats->bytes_in = st.bytes_in;
        stats->bytes_out = st.bytes_out;
        stats->clusters_compressed = st.clusters_compressed;
        stats->clusters_normal = st.clusters_normal;
        stats->clusters_zero = st.clusters_zero;
        stats->clusters_copied = st.clusters_copied;
        stats->seconds = st.seconds;
    }
    return r;
}

int zcow_check_v0_1(const char *path, unsigned flags, zcow_check_report_fn *report, void *opaque,
                    struct zcow_check_result_v0_1 *res)
{
    struct zcow_check_result c;
    memset(&c, 0, sizeof(c));
    int r = zcow_check(path, flags, report, opaque, &c);
    if (res) {
        res->corruptions = c.corruptions;
        res->leaks = c.leaks;
        res->check_errors = c.check_errors;
        res->total_clusters = c.total_clusters;
        res->allocated_clusters = c.allocated_clusters;
        res->fragmented_clusters = c.fragmented_clusters;
        res->compressed_clusters = c.compressed_clusters;
        res->image_end_offset = c.image_end_offset;
        res->decompress_failures = c.decompress_failures;
        res->marked_corrupt = c.marked_corrupt;
        res->marked_dirty = c.marked_dirty;
        res->cluster_size = c.cluster_size;
    }
    return r;
}
