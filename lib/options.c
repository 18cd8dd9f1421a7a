/* options.c - the public API's options and result objects: allocation,
 * setters that check each value as it is set (the message names the
 * option and the value), getters.  The layouts are in options.h. */
#include "options.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

/* Bounds with their reasons (MAX_CACHE_CLUSTERS's is in options.h). */
#define MIN_CLUSTER_SIZE 4096u      /* zcow's smallest: one O_DIRECT block */
#define MAX_CLUSTER_SIZE (2u << 20) /* qcow2's largest (cluster_bits 21) */
#define MAX_LEVEL 19                /* zstd's; zlib's is 9 */
#define MAX_BACKING_NAME 1023       /* QEMU refuses longer names */
#define MAX_THREADS 256             /* what convert.c runs at most */

void create_options_defaults(struct zcow_create_options *o)
{
    memset(o, 0, sizeof(*o));
    o->cluster_size = 65536;
    o->compression_type = ZCOW_COMPRESSION_ZLIB;
    o->level = ZCOW_LEVEL_DEFAULT;
    o->cache_mode = ZCOW_CACHE_NONE;
    o->write_cache = 1;
}

void convert_options_defaults(struct zcow_convert_options *o)
{
    memset(o, 0, sizeof(*o));
    create_options_defaults(&o->create);
    o->dst_format = "qcow2";
    o->src_cache = ZCOW_CACHE_NONE;
}

static void *new_object(size_t size)
{
    void *p = calloc(1, size);
    if (!p)
        zerr(ENOMEM, "out of memory");
    return p;
}

/* Replace the owned string *FIELD by a copy of VALUE (NULL clears it). */
static int set_string(const char **field, const char *value)
{
    char *copy = NULL;
    if (value && !(copy = strdup(value)))
        return zerr(ENOMEM, "out of memory");
    free((char *)*field);
    *field = copy;
    return 0;
}

/* NULL, or a name of 1..MAX bytes; quoted (cut short) in the message. */
static int check_name(const char *option, const char *value, size_t max)
{
    if (!value)
        return 0;
    size_t len = strlen(value);
    if (len == 0)
        return zerr(EINVAL, "%s '' must not be empty", option);
    if (len > max)
        return zerr(EINVAL, "%s '%.40s...' is longer than %zu bytes", option, value, max);
    return 0;
}

static int check_cache_mode(const char *option, int mode)
{
    if (mode != ZCOW_CACHE_NONE && mode != ZCOW_CACHE_WRITEBACK)
        return zerr(EINVAL, "%s '%d' must be %d (none: O_DIRECT) or %d (writeback)", option, mode,
                    ZCOW_CACHE_NONE, ZCOW_CACHE_WRITEBACK);
    return 0;
}

/* One of NAMES (NULL-terminated), as the library's own literal; a NULL
 * VALUE is allowed when NULL_OK. */
static int pick_format(const char *option, const char *value, const char *const *names, int null_ok,
                       const char **out)
{
    if (!value && null_ok) {
        *out = NULL;
        return 0;
    }
    for (int i = 0; value && names[i]; i++)
        if (!strcmp(value, names[i])) {
            *out = names[i];
            return 0;
        }
    if (!value)
        return zerr(EINVAL, "%s must be %s or %s, not NULL", option, names[0], names[1]);
    return zerr(EINVAL, "%s '%s' must be %s or %s", option, value, names[0], names[1]);
}

static const char *const qcow2_or_raw[] = { "qcow2", "raw", NULL };
static const char *const raw_or_qcow2[] = { "raw", "qcow2", NULL };

#define MISSING(o)                                                                                 \
    do {                                                                                           \
        if (!(o))                                                                                  \
            return zerr(EINVAL, "%s: no options object", __func__);                                \
    } while (0)

/* ---- zcow_create_opts ---------------------------------------------------------------- */

zcow_create_opts *zcow_create_opts_new(void)
{
    zcow_create_opts *o = new_object(sizeof(*o));
    if (o)
        create_options_defaults(o);
    return o;
}

/* Free the strings a create options object owns (inside a convert
 * options object too). */
static void create_options_release(struct zcow_create_options *o)
{
    free((char *)o->backing_file);
    o->backing_file = NULL;
}

void zcow_create_opts_free(zcow_create_opts *o)
{
    if (!o)
        return;
    create_options_release(o);
    free(o);
}

int zcow_create_opts_set_virtual_size(zcow_create_opts *o, uint64_t bytes)
{
    MISSING(o);
    if (bytes == 0 || bytes % 512)
        return zerr(EINVAL, "virtual_size '%llu' must be a positive multiple of 512",
                    (unsigned long long)bytes);
    o->virtual_size = bytes;
    return 0;
}

int zcow_create_opts_set_cluster_size(zcow_create_opts *o, uint32_t bytes)
{
    MISSING(o);
    if (bytes < MIN_CLUSTER_SIZE || bytes > MAX_CLUSTER_SIZE || (bytes & (bytes - 1)))
        return zerr(EINVAL, "cluster_size '%u' must be a power of two from 4k to 2M", bytes);
    o->cluster_size = bytes;
    return 0;
}

int zcow_create_opts_set_compression_type(zcow_create_opts *o, int type)
{
    MISSING(o);
    if (type != ZCOW_COMPRESSION_ZLIB && type != ZCOW_COMPRESSION_ZSTD)
        return zerr(EINVAL, "compression_type '%d' must be %d (zlib) or %d (zstd)", type,
                    ZCOW_COMPRESSION_ZLIB, ZCOW_COMPRESSION_ZSTD);
    o->compression_type = type;
    return 0;
}

int zcow_create_opts_set_level(zcow_create_opts *o, int level)
{
    MISSING(o);
    if (level != ZCOW_LEVEL_DEFAULT && (level < 0 || level > MAX_LEVEL))
        return zerr(EINVAL, "level '%d' must be %d (the default) or from 0 to %d", level,
                    ZCOW_LEVEL_DEFAULT, MAX_LEVEL);
    o->level = level;
    return 0;
}

int zcow_create_opts_set_cache_mode(zcow_create_opts *o, int mode)
{
    MISSING(o);
    int r = check_cache_mode("cache_mode", mode);
    if (r == 0)
        o->cache_mode = mode;
    return r;
}

int zcow_create_opts_set_write_cache(zcow_create_opts *o, bool on)
{
    MISSING(o);
    o->write_cache = on;
    return 0;
}

int zcow_create_opts_set_drop_pages(zcow_create_opts *o, bool on)
{
    MISSING(o);
    o->drop_pages = on;
    return 0;
}

int zcow_create_opts_set_compress(zcow_create_opts *o, bool on)
{
    MISSING(o);
    o->uncompressed = !on;
    return 0;
}

bool zcow_create_opts_get_compress(const zcow_create_opts *o) { return !o->uncompressed; }

int zcow_convert_opts_set_target_is_zero(zcow_convert_opts *o, bool on)
{
    MISSING(o);
    o->target_is_zero = on;
    return 0;
}

bool zcow_convert_opts_get_target_is_zero(const zcow_convert_opts *o)
{
    return o->target_is_zero != 0;
}

int zcow_convert_opts_set_verify(zcow_convert_opts *o, bool on)
{
    MISSING(o);
    o->no_verify = !on;
    return 0;
}

bool zcow_convert_opts_get_verify(const zcow_convert_opts *o) { return !o->no_verify; }

int create_options_check_cache_clusters(unsigned clusters)
{
    if (clusters > MAX_CACHE_CLUSTERS)
        return zerr(EINVAL, "cache_clusters '%u' must be from 0 (the default) to %u", clusters,
                    MAX_CACHE_CLUSTERS);
    return 0;
}

int zcow_create_opts_set_cache_clusters(zcow_create_opts *o, unsigned clusters)
{
    MISSING(o);
    int r = create_options_check_cache_clusters(clusters);
    if (r == 0)
        o->cache_clusters = clusters;
    return r;
}

int zcow_create_opts_set_atomic(zcow_create_opts *o, bool on)
{
    MISSING(o);
    o->atomic = on;
    return 0;
}

int zcow_create_opts_set_backing_file(zcow_create_opts *o, const char *name)
{
    MISSING(o);
    int r = check_name("backing_file", name, MAX_BACKING_NAME);
    return r < 0 ? r : set_string(&o->backing_file, name);
}

int zcow_create_opts_set_backing_format(zcow_create_opts *o, const char *format)
{
    MISSING(o);
    return pick_format("backing_format", format, qcow2_or_raw, 1, &o->backing_format);
}

uint64_t zcow_create_opts_get_virtual_size(const zcow_create_opts *o) { return o->virtual_size; }
uint32_t zcow_create_opts_get_cluster_size(const zcow_create_opts *o)
{
    return o->cluster_size ? o->cluster_size : 65536;
}
int zcow_create_opts_get_compression_type(const zcow_create_opts *o) { return o->compression_type; }
int zcow_create_opts_get_level(const zcow_create_opts *o) { return o->level; }
int zcow_create_opts_get_cache_mode(const zcow_create_opts *o) { return o->cache_mode; }
bool zcow_create_opts_get_write_cache(const zcow_create_opts *o) { return o->write_cache != 0; }
bool zcow_create_opts_get_drop_pages(const zcow_create_opts *o) { return o->drop_pages != 0; }
unsigned zcow_create_opts_get_cache_clusters(const zcow_create_opts *o)
{
    return o->cache_clusters;
}
bool zcow_create_opts_get_atomic(const zcow_create_opts *o) { return o->atomic != 0; }
const char *zcow_create_opts_get_backing_file(const zcow_create_opts *o) { return o->backing_file; }
const char *zcow_create_opts_get_backing_format(const zcow_create_opts *o)
{
    return o->backing_format;
}

/* ---- zcow_convert_opts --------------------------------------------------------------- */

zcow_convert_opts *zcow_convert_opts_new(void)
{
    zcow_convert_opts *o = new_object(sizeof(*o));
    if (o)
        convert_options_defaults(o);
    return o;
}

void zcow_convert_opts_free(zcow_convert_opts *o)
{
    if (!o)
        return;
    free((char *)o->src);
    free((char *)o->dst);
    free((char *)o->bitmap);
    free((char *)o->nbd_tls.certificates);
    free((char *)o->nbd_tls.psk_file);
    free((char *)o->nbd_tls.username);
    create_options_release(&o->create);
    free(o);
}

/* A string that must be set, and not be empty. */
static int set_required(const char *option, const char **field, const char *value)
{
    if (!value)
        return zerr(EINVAL, "%s must be set, not NULL", option);
    if (!*value)
        return zerr(EINVAL, "%s '' must not be empty", option);
    return set_string(field, value);
}

/* A string that may be NULL (unset), and is not empty otherwise. */
static int set_optional(const char *option, const char **field, const char *value)
{
    if (value && !*value)
        return zerr(EINVAL, "%s '' must not be empty (NULL unsets it)", option);
    return set_string(field, value);
}

int zcow_convert_opts_set_src(zcow_convert_opts *o, const char *src)
{
    MISSING(o);
    return set_required("src", &o->src, src);
}

int zcow_convert_opts_set_src_format(zcow_convert_opts *o, const char *format)
{
    MISSING(o);
    return pick_format("src_format", format, raw_or_qcow2, 1, &o->src_format);
}

int zcow_convert_opts_set_dst(zcow_convert_opts *o, const char *dst)
{
    MISSING(o);
    return set_required("dst", &o->dst, dst);
}

int zcow_convert_opts_set_dst_format(zcow_convert_opts *o, const char *format)
{
    MISSING(o);
    return pick_format("dst_format", format, qcow2_or_raw, 0, &o->dst_format);
}

int zcow_convert_opts_set_create(zcow_convert_opts *o, const zcow_create_opts *c)
{
    MISSING(o);
    if (!c)
        return zerr(EINVAL, "%s: no create options", __func__);
    if (c == &o->create)
        return 0;
    char *name = NULL;
    if (c->backing_file && !(name = strdup(c->backing_file)))
        return zerr(ENOMEM, "out of memory");
    create_options_release(&o->create);
    o->create = *c;
    o->create.backing_file = name;
    return 0;
}

int zcow_convert_opts_set_threads(zcow_convert_opts *o, int threads)
{
    MISSING(o);
    if (threads < 0 || threads > MAX_THREADS)
        return zerr(EINVAL, "threads '%d' must be from 0 (the online CPUs) to %d", threads,
                    MAX_THREADS);
    o->threads = threads;
    return 0;
}

int zcow_convert_opts_set_src_cache(zcow_convert_opts *o, int mode)
{
    MISSING(o);
    int r = check_cache_mode("src_cache", mode);
    if (r == 0)
        o->src_cache = mode;
    return r;
}

int zcow_convert_opts_set_progress(zcow_convert_opts *o, zcow_progress_fn *fn, void *opaque)
{
    MISSING(o);
    o->progress = fn;
    o->progress_opaque = fn ? opaque : NULL;
    return 0;
}

int zcow_convert_opts_set_bitmap(zcow_convert_opts *o, const char *name)
{
    MISSING(o);
    return set_optional("bitmap", &o->bitmap, name);
}

int zcow_convert_opts_set_tls_certificates(zcow_convert_opts *o, const char *dir)
{
    MISSING(o);
    return set_optional("tls_certificates", &o->nbd_tls.certificates, dir);
}

int zcow_convert_opts_set_tls_psk_file(zcow_convert_opts *o, const char *file)
{
    MISSING(o);
    return set_optional("tls_psk_file", &o->nbd_tls.psk_file, file);
}

int zcow_convert_opts_set_tls_username(zcow_convert_opts *o, const char *name)
{
    MISSING(o);
    return set_optional("tls_username", &o->nbd_tls.username, name);
}

const char *zcow_convert_opts_get_src(const zcow_convert_opts *o) { return o->src; }
const char *zcow_convert_opts_get_src_format(const zcow_convert_opts *o) { return o->src_format; }
const char *zcow_convert_opts_get_dst(const zcow_convert_opts *o) { return o->dst; }
const char *zcow_convert_opts_get_dst_format(const zcow_convert_opts *o) { return o->dst_format; }
const zcow_create_opts *zcow_convert_opts_get_create(const zcow_convert_opts *o)
{
    return &o->create;
}
int zcow_convert_opts_get_threads(const zcow_convert_opts *o) { return o->threads; }
int zcow_convert_opts_get_src_cache(const zcow_convert_opts *o) { return o->src_cache; }
const char *zcow_convert_opts_get_bitmap(const zcow_convert_opts *o) { return o->bitmap; }
const char *zcow_convert_opts_get_tls_certificates(const zcow_convert_opts *o)
{
    return o->nbd_tls.certificates;
}
const char *zcow_convert_opts_get_tls_psk_file(const zcow_convert_opts *o)
{
    return o->nbd_tls.psk_file;
}
const char *zcow_convert_opts_get_tls_username(const zcow_convert_opts *o)
{
    return o->nbd_tls.username;
}

/* ---- Results ----------------------------------------------------------------------------- */

zcow_convert_stats *zcow_convert_stats_new(void) { return new_object(sizeof(zcow_convert_stats)); }
void zcow_convert_stats_free(zcow_convert_stats *st) { free(st); }

uint64_t zcow_convert_stats_get_bytes_in(const zcow_convert_stats *st) { return st->bytes_in; }
uint64_t zcow_convert_stats_get_bytes_out(const zcow_convert_stats *st) { return st->bytes_out; }
uint64_t zcow_convert_stats_get_clusters_compressed(const zcow_convert_stats *st)
{
    return st->clusters_compressed;
}
uint64_t zcow_convert_stats_get_clusters_normal(const zcow_convert_stats *st)
{
    return st->clusters_normal;
}
uint64_t zcow_convert_stats_get_clusters_zero(const zcow_convert_stats *st)
{
    return st->clusters_zero;
}
uint64_t zcow_convert_stats_get_clusters_copied(const zcow_convert_stats *st)
{
    return st->clusters_copied;
}
double zcow_convert_stats_get_seconds(const zcow_convert_stats *st) { return st->seconds; }

zcow_info *zcow_info_new(void) { return new_object(sizeof(zcow_info)); }
void zcow_info_free(zcow_info *info) { free(info); }

const char *zcow_info_get_format(const zcow_info *i) { return i->format; }
uint64_t zcow_info_get_virtual_size(const zcow_info *i) { return i->virtual_size; }
uint32_t zcow_info_get_cluster_size(const zcow_info *i) { return i->cluster_size; }
int zcow_info_get_version(const zcow_info *i) { return i->version; }
int zcow_info_get_compression_type(const zcow_info *i) { return i->compression_type; }
int zcow_info_get_refcount_bits(const zcow_info *i) { return i->refcount_bits; }
bool zcow_info_get_corrupt(const zcow_info *i) { return i->corrupt != 0; }
bool zcow_info_get_dirty(const zcow_info *i) { return i->dirty != 0; }
bool zcow_info_get_extended_l2(const zcow_info *i) { return i->extended_l2 != 0; }
bool zcow_info_get_lazy_refcounts(const zcow_info *i) { return i->lazy_refcounts != 0; }
uint64_t zcow_info_get_file_size(const zcow_info *i) { return i->file_size; }
uint64_t zcow_info_get_actual_size(const zcow_info *i) { return i->actual_size; }
uint64_t zcow_info_get_clusters_allocated(const zcow_info *i) { return i->clusters_allocated; }
uint64_t zcow_info_get_clusters_compressed(const zcow_info *i) { return i->clusters_compressed; }
uint64_t zcow_info_get_clusters_normal(const zcow_info *i) { return i->clusters_normal; }
uint64_t zcow_info_get_clusters_zero(const zcow_info *i) { return i->clusters_zero; }
const char *zcow_info_get_backing_file(const zcow_info *i) { return i->backing_file; }
const char *zcow_info_get_backing_format(const zcow_info *i) { return i->backing_format; }
const char *zcow_info_get_backing_path(const zcow_info *i) { return i->backing_path; }

zcow_check_result *zcow_check_result_new(void) { return new_object(sizeof(zcow_check_result)); }
void zcow_check_result_free(zcow_check_result *res) { free(res); }

uint64_t zcow_check_result_get_corruptions(const zcow_check_result *r) { return r->corruptions; }
uint64_t zcow_check_result_get_leaks(const zcow_check_result *r) { return r->leaks; }
uint64_t zcow_check_result_get_check_errors(const zcow_check_result *r) { return r->check_errors; }
uint64_t zcow_check_result_get_total_clusters(const zcow_check_result *r)
{
    return r->total_clusters;
}
uint64_t zcow_check_result_get_allocated_clusters(const zcow_check_result *r)
{
    return r->allocated_clusters;
}
uint64_t zcow_check_result_get_fragmented_clusters(const zcow_check_result *r)
{
    return r->fragmented_clusters;
}
uint64_t zcow_check_result_get_compressed_clusters(const zcow_check_result *r)
{
    return r->compressed_clusters;
}
uint64_t zcow_check_result_get_image_end_offset(const zcow_check_result *r)
{
    return r->image_end_offset;
}
uint64_t zcow_check_result_get_decompress_failures(const zcow_check_result *r)
{
    return r->decompress_failures;
}
bool zcow_check_result_get_marked_corrupt(const zcow_check_result *r)
{
    return r->marked_corrupt != 0;
}
bool zcow_check_result_get_marked_dirty(const zcow_check_result *r) { return r->marked_dirty != 0; }
uint32_t zcow_check_result_get_cluster_size(const zcow_check_result *r) { return r->cluster_size; }
