/* test_api.c - the public API's objects (include/zcow.h): the defaults of
 * new options, every setter's range (the edges accepted, one past them
 * refused with -EINVAL and a message naming the option and the value, the
 * old value kept), strings copied, getters of the results checked against
 * what was written and against qemu-img's own view of the image, the
 * check by path and by handle, and the ZCOW_0.1 entry points of the
 * shared library on structures laid out as the 0.1 header laid them out,
 * with guard bytes after them that must stay untouched.  Every object is
 * freed: the ASan stage's leak check (and valgrind) hold it to that. */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "unit.h"
#include "zcow.h"

static char dir[] = "/var/tmp/zcow-test-api.XXXXXX";

static const char *tpath(int slot, const char *name)
{
    static char paths[8][4200];
    snprintf(paths[slot], sizeof(paths[slot]), "%s/%s", dir, name);
    return paths[slot];
}

/* R must be -EINVAL with a message holding WANT. */
#define REFUSED(r, want)                                                                           \
    CHECKF((r) == -EINVAL && strstr(zcow_get_error(), (want)), "%s: %d '%s', want -EINVAL '%s'",   \
           #r, (r), zcow_get_error(), (want))

static int same(const char *a, const char *b) { return a && b && !strcmp(a, b); }

/* ---- options ------------------------------------------------------------------------ */

static void test_create_opts(void)
{
    zcow_create_opts *o = zcow_create_opts_new();
    CHECK(o != NULL);
    if (!o)
        return;
    /* The defaults, as the header states them. */
    CHECK(zcow_create_opts_get_virtual_size(o) == 0);
    CHECK(zcow_create_opts_get_cluster_size(o) == 65536);
    CHECK(zcow_create_opts_get_compression_type(o) == ZCOW_COMPRESSION_ZLIB);
    CHECK(zcow_create_opts_get_level(o) == ZCOW_LEVEL_DEFAULT);
    CHECK(zcow_create_opts_get_cache_mode(o) == ZCOW_CACHE_NONE);
    CHECK(zcow_create_opts_get_write_cache(o) == true);
    CHECK(zcow_create_opts_get_drop_pages(o) == false);
    CHECK(zcow_create_opts_get_compress(o) == true);
    CHECK(zcow_create_opts_get_cache_clusters(o) == 0);
    CHECK(zcow_create_opts_get_atomic(o) == false);
    CHECK(zcow_create_opts_get_backing_file(o) == NULL);
    CHECK(zcow_create_opts_get_backing_format(o) == NULL);

    /* virtual_size: positive multiples of 512. */
    CHECK(zcow_create_opts_set_virtual_size(o, 512) == 0);
    CHECK(zcow_create_opts_get_virtual_size(o) == 512);
    CHECK(zcow_create_opts_set_virtual_size(o, 1ull << 50) == 0);
    REFUSED(zcow_create_opts_set_virtual_size(o, 0), "virtual_size '0'");
    REFUSED(zcow_create_opts_set_virtual_size(o, 513),
            "virtual_size '513' must be a positive multiple of 512");
    REFUSED(zcow_create_opts_set_virtual_size(o, UINT64_MAX), "virtual_size");
    CHECK(zcow_create_opts_get_virtual_size(o) == 1ull << 50);

    /* cluster_size: powers of two from 4k to 2M (qcow2's limit is 2M;
     * zcow's floor is 4k, one O_DIRECT block). */
    CHECK(zcow_create_opts_set_cluster_size(o, 4096) == 0);
    CHECK(zcow_create_opts_get_cluster_size(o) == 4096);
    CHECK(zcow_create_opts_set_cluster_size(o, 2u << 20) == 0);
    CHECK(zcow_create_opts_get_cluster_size(o) == 2u << 20);
    REFUSED(zcow_create_opts_set_cluster_size(o, 1000),
            "cluster_size '1000' must be a power of two from 4k to 2M");
    REFUSED(zcow_create_opts_set_cluster_size(o, 2048), "cluster_size '2048'");
    REFUSED(zcow_create_opts_set_cluster_size(o, 4u << 20), "cluster_size '4194304'");
    REFUSED(zcow_create_opts_set_cluster_size(o, 3 * 4096), "cluster_size '12288'");
    REFUSED(zcow_create_opts_set_cluster_size(o, 0), "cluster_size '0'");
    CHECK(zcow_create_opts_get_cluster_size(o) == 2u << 20);

    CHECK(zcow_create_opts_set_compression_type(o, ZCOW_COMPRESSION_ZSTD) == 0);
    CHECK(zcow_create_opts_get_compression_type(o) == ZCOW_COMPRESSION_ZSTD);
    CHECK(zcow_create_opts_set_compression_type(o, ZCOW_COMPRESSION_ZLIB) == 0);
    REFUSED(zcow_create_opts_set_compression_type(o, 2), "compression_type '2'");
    REFUSED(zcow_create_opts_set_compression_type(o, -1), "compression_type '-1'");
    CHECK(zcow_create_opts_get_compression_type(o) == ZCOW_COMPRESSION_ZLIB);

    /* level: the default, or 0 (zlib's lowest) to 19 (zstd's highest). */
    CHECK(zcow_create_opts_set_level(o, 0) == 0 && zcow_create_opts_get_level(o) == 0);
    CHECK(zcow_create_opts_set_level(o, 19) == 0 && zcow_create_opts_get_level(o) == 19);
    CHECK(zcow_create_opts_set_level(o, ZCOW_LEVEL_DEFAULT) == 0);
    REFUSED(zcow_create_opts_set_level(o, 20), "level '20'");
    REFUSED(zcow_create_opts_set_level(o, -2), "level '-2'");
    CHECK(zcow_create_opts_get_level(o) == ZCOW_LEVEL_DEFAULT);

    CHECK(zcow_create_opts_set_cache_mode(o, ZCOW_CACHE_WRITEBACK) == 0);
    CHECK(zcow_create_opts_get_cache_mode(o) == ZCOW_CACHE_WRITEBACK);
    REFUSED(zcow_create_opts_set_cache_mode(o, 2), "cache_mode '2'");
    REFUSED(zcow_create_opts_set_cache_mode(o, -1), "cache_mode '-1'");
    CHECK(zcow_create_opts_get_cache_mode(o) == ZCOW_CACHE_WRITEBACK);

    CHECK(zcow_create_opts_set_write_cache(o, false) == 0 && !zcow_create_opts_get_write_cache(o));
    CHECK(zcow_create_opts_set_drop_pages(o, true) == 0 && zcow_create_opts_get_drop_pages(o));
    CHECK(zcow_create_opts_set_atomic(o, true) == 0 && zcow_create_opts_get_atomic(o));
    CHECK(zcow_create_opts_set_compress(o, false) == 0 && !zcow_create_opts_get_compress(o));

    /* cache_clusters: bounded, as the cache's hash table is sized from it. */
    CHECK(zcow_create_opts_set_cache_clusters(o, 1u << 20) == 0);
    CHECK(zcow_create_opts_get_cache_clusters(o) == 1u << 20);
    CHECK(zcow_create_opts_set_cache_clusters(o, 1) == 0);
    REFUSED(zcow_create_opts_set_cache_clusters(o, (1u << 20) + 1), "cache_clusters '1048577'");
    REFUSED(zcow_create_opts_set_cache_clusters(o, UINT_MAX), "cache_clusters");
    CHECK(zcow_create_opts_get_cache_clusters(o) == 1);

    /* backing_file: 1 to 1023 bytes (QEMU's limit), copied. */
    char name[1100];
    memset(name, 'b', sizeof(name));
    name[1023] = 0;
    CHECK(zcow_create_opts_set_backing_file(o, name) == 0);
    CHECK(same(zcow_create_opts_get_backing_file(o), name));
    name[1023] = 'b';
    name[1024] = 0;
    REFUSED(zcow_create_opts_set_backing_file(o, name), "backing_file 'bbbb");
    REFUSED(zcow_create_opts_set_backing_file(o, ""), "backing_file ''");
    snprintf(name, sizeof(name), "base.qcow2");
    CHECK(zcow_create_opts_set_backing_file(o, name) == 0);
    name[0] = 'X';
    CHECK(same(zcow_create_opts_get_backing_file(o), "base.qcow2"));
    CHECK(zcow_create_opts_set_backing_file(o, NULL) == 0);
    CHECK(zcow_create_opts_get_backing_file(o) == NULL);
    CHECK(zcow_create_opts_set_backing_file(o, "base.qcow2") == 0);

    CHECK(zcow_create_opts_set_backing_format(o, "raw") == 0);
    CHECK(same(zcow_create_opts_get_backing_format(o), "raw"));
    CHECK(zcow_create_opts_set_backing_format(o, "qcow2") == 0);
    REFUSED(zcow_create_opts_set_backing_format(o, "vmdk"),
            "backing_format 'vmdk' must be qcow2 or raw");
    CHECK(same(zcow_create_opts_get_backing_format(o), "qcow2"));
    CHECK(zcow_create_opts_set_backing_format(o, NULL) == 0);
    CHECK(zcow_create_opts_get_backing_format(o) == NULL);

    /* No object: refused, not a crash. */
    CHECK(zcow_create_opts_set_cluster_size(NULL, 65536) == -EINVAL);
    zcow_create_opts_free(o);
    zcow_create_opts_free(NULL);
}

static void test_convert_opts(void)
{
    zcow_convert_opts *o = zcow_convert_opts_new();
    CHECK(o != NULL);
    if (!o)
        return;
    CHECK(zcow_convert_opts_get_src(o) == NULL && zcow_convert_opts_get_dst(o) == NULL);
    CHECK(zcow_convert_opts_get_src_format(o) == NULL);
    CHECK(same(zcow_convert_opts_get_dst_format(o), "qcow2"));
    CHECK(zcow_convert_opts_get_threads(o) == 0);
    CHECK(zcow_convert_opts_get_src_cache(o) == ZCOW_CACHE_NONE);
    CHECK(zcow_convert_opts_get_bitmap(o) == NULL);
    CHECK(zcow_convert_opts_get_target_is_zero(o) == false);
    CHECK(zcow_convert_opts_get_tls_certificates(o) == NULL);
    CHECK(zcow_convert_opts_get_tls_psk_file(o) == NULL);
    CHECK(zcow_convert_opts_get_tls_username(o) == NULL);
    const zcow_create_opts *c = zcow_convert_opts_get_create(o);
    CHECK(zcow_create_opts_get_cluster_size(c) == 65536 && !zcow_create_opts_get_backing_file(c));

    char buf[64];
    snprintf(buf, sizeof(buf), "in.raw");
    CHECK(zcow_convert_opts_set_src(o, buf) == 0);
    buf[0] = 'X';
    CHECK(same(zcow_convert_opts_get_src(o), "in.raw"));
    REFUSED(zcow_convert_opts_set_src(o, ""), "src '' must not be empty");
    REFUSED(zcow_convert_opts_set_src(o, NULL), "src must be set");
    CHECK(same(zcow_convert_opts_get_src(o), "in.raw"));
    CHECK(zcow_convert_opts_set_dst(o, "out.qcow2") == 0);
    REFUSED(zcow_convert_opts_set_dst(o, ""), "dst ''");
    CHECK(same(zcow_convert_opts_get_dst(o), "out.qcow2"));

    CHECK(zcow_convert_opts_set_src_format(o, "qcow2") == 0);
    CHECK(zcow_convert_opts_set_src_format(o, "raw") == 0);
    REFUSED(zcow_convert_opts_set_src_format(o, "vmdk"), "src_format 'vmdk' must be raw or qcow2");
    CHECK(same(zcow_convert_opts_get_src_format(o), "raw"));
    CHECK(zcow_convert_opts_set_src_format(o, NULL) == 0);
    CHECK(zcow_convert_opts_get_src_format(o) == NULL);

    CHECK(zcow_convert_opts_set_dst_format(o, "raw") == 0);
    REFUSED(zcow_convert_opts_set_dst_format(o, "vmdk"), "dst_format 'vmdk'");
    REFUSED(zcow_convert_opts_set_dst_format(o, NULL), "dst_format must be qcow2 or raw");
    CHECK(same(zcow_convert_opts_get_dst_format(o), "raw"));

    CHECK(zcow_convert_opts_set_threads(o, 256) == 0 && zcow_convert_opts_get_threads(o) == 256);
    CHECK(zcow_convert_opts_set_threads(o, 1) == 0);
    CHECK(zcow_convert_opts_set_threads(o, 0) == 0);
    REFUSED(zcow_convert_opts_set_threads(o, 257), "threads '257'");
    REFUSED(zcow_convert_opts_set_threads(o, -1), "threads '-1'");
    CHECK(zcow_convert_opts_get_threads(o) == 0);

    CHECK(zcow_convert_opts_set_src_cache(o, ZCOW_CACHE_WRITEBACK) == 0);
    REFUSED(zcow_convert_opts_set_src_cache(o, 7), "src_cache '7'");
    CHECK(zcow_convert_opts_get_src_cache(o) == ZCOW_CACHE_WRITEBACK);

    CHECK(zcow_convert_opts_set_bitmap(o, "b0") == 0);
    CHECK(same(zcow_convert_opts_get_bitmap(o), "b0"));
    REFUSED(zcow_convert_opts_set_bitmap(o, ""), "bitmap ''");
    CHECK(zcow_convert_opts_set_bitmap(o, NULL) == 0 && !zcow_convert_opts_get_bitmap(o));
    CHECK(zcow_convert_opts_set_target_is_zero(o, true) == 0 &&
          zcow_convert_opts_get_target_is_zero(o));
    CHECK(zcow_convert_opts_set_tls_certificates(o, "/etc/pki/x") == 0);
    CHECK(zcow_convert_opts_set_tls_psk_file(o, "/etc/x.psk") == 0);
    CHECK(zcow_convert_opts_set_tls_username(o, "alice") == 0);
    REFUSED(zcow_convert_opts_set_tls_certificates(o, ""), "tls_certificates ''");
    REFUSED(zcow_convert_opts_set_tls_psk_file(o, ""), "tls_psk_file ''");
    REFUSED(zcow_convert_opts_set_tls_username(o, ""), "tls_username ''");
    CHECK(same(zcow_convert_opts_get_tls_certificates(o), "/etc/pki/x"));
    CHECK(same(zcow_convert_opts_get_tls_psk_file(o), "/etc/x.psk"));
    CHECK(same(zcow_convert_opts_get_tls_username(o), "alice"));
    CHECK(zcow_convert_opts_set_progress(o, NULL, NULL) == 0);

    /* The create options are copied in, strings too: the source object
     * may change or go. */
    zcow_create_opts *co = zcow_create_opts_new();
    CHECK(zcow_create_opts_set_cluster_size(co, 4096) == 0);
    CHECK(zcow_create_opts_set_backing_file(co, "prev.qcow2") == 0);
    CHECK(zcow_convert_opts_set_create(o, co) == 0);
    CHECK(zcow_create_opts_set_backing_file(co, "other.qcow2") == 0);
    CHECK(zcow_create_opts_set_cluster_size(co, 8192) == 0);
    zcow_create_opts_free(co);
    c = zcow_convert_opts_get_create(o);
    CHECK(zcow_create_opts_get_cluster_size(c) == 4096);
    CHECK(same(zcow_create_opts_get_backing_file(c), "prev.qcow2"));
    CHECK(zcow_convert_opts_set_create(o, c) == 0); /* its own: a no-op */
    CHECK(same(zcow_create_opts_get_backing_file(zcow_convert_opts_get_create(o)), "prev.qcow2"));
    REFUSED(zcow_convert_opts_set_create(o, NULL), "no create options");
    zcow_convert_opts_free(o);
    zcow_convert_opts_free(NULL);
}

/* ---- results -------------------------------------------------------------------------- */

/* The number after "KEY": in qemu-img's JSON output (-1 if absent). */
static long long json_number(const char *json, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\": ", key);
    const char *p = strstr(json, pat);
    return p ? strtoll(p + strlen(pat), NULL, 10) : -1;
}

static void run(const char *cmd, char *out, size_t cap)
{
    out[0] = 0;
    FILE *f = popen(cmd, "r");
    if (!f)
        return;
    size_t n = fread(out, 1, cap - 1, f);
    out[n] = 0;
    pclose(f);
}

/* A 1 MiB image of 64 KiB clusters: 0 ones (compresses), 1 random (does
 * not), 2 zero (left unallocated), the rest unwritten. */
static int write_image(const char *path, const char *backing, uint32_t cs)
{
    zcow_create_opts *o = zcow_create_opts_new();
    CHECK(o && zcow_create_opts_set_virtual_size(o, 1 << 20) == 0 &&
          zcow_create_opts_set_cluster_size(o, cs) == 0 &&
          zcow_create_opts_set_cache_mode(o, ZCOW_CACHE_WRITEBACK) == 0 &&
          zcow_create_opts_set_backing_file(o, backing) == 0);
    zcow_image *img;
    int r = zcow_create(path, o, &img);
    zcow_create_opts_free(o);
    CHECKF(r == 0, "create %s: %s", path, zcow_get_error());
    if (r < 0)
        return r;
    uint8_t *buf = malloc(3 * (size_t)cs);
    uint64_t rs = unit_stream(cs);
    memset(buf, 1, cs);
    unit_fill_random(&rs, buf + cs, cs);
    memset(buf + 2 * (size_t)cs, 0, cs);
    CHECK(zcow_write(img, 0, buf, 3 * (size_t)cs) == 0);

    /* Info of an image being written. */
    zcow_info *info = zcow_info_new();
    CHECK(zcow_get_info(img, info) == 0);
    CHECK(same(zcow_info_get_format(info), "qcow2") && zcow_info_get_version(info) == 3);
    CHECK(zcow_info_get_virtual_size(info) == 1 << 20 && zcow_info_get_cluster_size(info) == cs);
    CHECK(zcow_info_get_compression_type(info) == ZCOW_COMPRESSION_ZLIB);
    CHECKF(zcow_info_get_clusters_compressed(info) == 1 && zcow_info_get_clusters_normal(info) == 1,
           "%llu compressed, %llu normal",
           (unsigned long long)zcow_info_get_clusters_compressed(info),
           (unsigned long long)zcow_info_get_clusters_normal(info));
    zcow_info_free(info);
    free(buf);
    /* Checking needs the file finished. */
    zcow_check_result *res = zcow_check_result_new();
    CHECK(zcow_check_image(img, 0, NULL, NULL, res) == -ENOTSUP);
    CHECK(zcow_check_result_get_corruptions(res) == 0);
    zcow_check_result_free(res);
    r = zcow_close(img);
    CHECKF(r == 0, "close %s: %s", path, zcow_get_error());
    return r;
}

static void test_info(void)
{
    zcow_info *info = zcow_info_new();
    CHECK(info && zcow_info_get_format(info) == NULL && zcow_info_get_virtual_size(info) == 0);
    const char *base = tpath(0, "base.qcow2"), *top = tpath(1, "top.qcow2");
    if (write_image(base, NULL, 4096) < 0 || write_image(top, "base.qcow2", 65536) < 0) {
        zcow_info_free(info);
        return;
    }
    zcow_image *img;
    CHECK(zcow_open(top, NULL, 0, &img) == 0);
    CHECK(zcow_get_info(img, info) == 0);

    /* Against qemu-img info. */
    char cmd[9000], out[8192];
    snprintf(cmd, sizeof(cmd), "qemu-img info --output=json '%s'", top);
    run(cmd, out, sizeof(out));
    CHECKF(json_number(out, "virtual-size") == (long long)zcow_info_get_virtual_size(info), "%s",
           out);
    CHECK(json_number(out, "cluster-size") == zcow_info_get_cluster_size(info));
    CHECK(json_number(out, "refcount-bits") == zcow_info_get_refcount_bits(info));
    CHECK(!zcow_info_get_corrupt(info) && !zcow_info_get_dirty(info));
    CHECK(!zcow_info_get_extended_l2(info) && !zcow_info_get_lazy_refcounts(info));
    CHECK(same(zcow_info_get_backing_file(info), "base.qcow2"));
    CHECK(same(zcow_info_get_backing_format(info), "qcow2"));
    CHECK(same(zcow_info_get_backing_path(info), base));
    CHECK(zcow_info_get_clusters_compressed(info) == 1 && zcow_info_get_clusters_normal(info) == 1);
    /* Over a backing file the zero cluster must be stated (it would read
     * the backing file's data if left unallocated). */
    CHECKF(zcow_info_get_clusters_allocated(info) == 2 && zcow_info_get_clusters_zero(info) == 1,
           "%llu allocated, %llu zero", (unsigned long long)zcow_info_get_clusters_allocated(info),
           (unsigned long long)zcow_info_get_clusters_zero(info));
    CHECK(zcow_info_get_file_size(info) > 2 * 65536 && zcow_info_get_actual_size(info) > 0);

    /* The backing file through its handle. */
    zcow_image *b = zcow_get_backing(img);
    CHECK(b && zcow_get_info(b, info) == 0);
    CHECK(zcow_info_get_cluster_size(info) == 4096 && !zcow_info_get_backing_file(info));
    CHECK(zcow_get_info(NULL, info) == -EINVAL && zcow_get_info(img, NULL) == -EINVAL);
    CHECK(zcow_close(img) == 0);
    zcow_info_free(info);
    zcow_info_free(NULL);
}

/* Checks of one handle from several threads: each gets the file's
 * findings, and nothing is left behind (the leak check would see a path
 * two threads both made and one kept). */
struct check_thread {
    pthread_t tid;
    pthread_barrier_t *start;
    zcow_image *img;
    int r;
    uint32_t cluster_size;
};

static void *check_thread(void *arg)
{
    struct check_thread *t = arg;
    zcow_check_result *res = zcow_check_result_new();
    pthread_barrier_wait(t->start);
    t->r = zcow_check_image(t->img, 0, NULL, NULL, res);
    t->cluster_size = zcow_check_result_get_cluster_size(res);
    zcow_check_result_free(res);
    return NULL;
}

static void test_check_threads(const char *top)
{
    zcow_image *img;
    CHECK(zcow_open(top, NULL, 0, &img) == 0);
    enum { N = 4 };
    struct check_thread t[N];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, N);
    for (int i = 0; i < N; i++) {
        t[i].img = zcow_get_backing(img); /* checked first here, by all at once */
        t[i].start = &start;
        if (pthread_create(&t[i].tid, NULL, check_thread, &t[i]) != 0)
            abort(); /* the others would wait for it forever */
    }
    for (int i = 0; i < N; i++) {
        pthread_join(t[i].tid, NULL);
        CHECKF(t[i].r == 0 && t[i].cluster_size == 4096, "thread %d: %d, %u", i, t[i].r,
               t[i].cluster_size);
    }
    pthread_barrier_destroy(&start);
    CHECK(zcow_close(img) == 0);
}

static void test_check(void)
{
    const char *top = tpath(1, "top.qcow2"), *base = tpath(0, "base.qcow2");
    zcow_check_result *res = zcow_check_result_new(), *res2 = zcow_check_result_new();
    CHECK(res && zcow_check_result_get_total_clusters(res) == 0);
    CHECK(zcow_check(top, ZCOW_CHECK_DECOMPRESS, NULL, NULL, res) == 0);

    /* Against qemu-img check. */
    char cmd[9000], out[8192];
    snprintf(cmd, sizeof(cmd), "qemu-img check --output=json '%s'", top);
    run(cmd, out, sizeof(out));
    CHECKF(json_number(out, "image-end-offset") ==
               (long long)zcow_check_result_get_image_end_offset(res),
           "%s", out);
    CHECK(json_number(out, "total-clusters") ==
          (long long)zcow_check_result_get_total_clusters(res));
    CHECK(json_number(out, "allocated-clusters") ==
          (long long)zcow_check_result_get_allocated_clusters(res));
    CHECK(json_number(out, "compressed-clusters") ==
          (long long)zcow_check_result_get_compressed_clusters(res));
    CHECK(zcow_check_result_get_total_clusters(res) == 16);
    CHECK(zcow_check_result_get_corruptions(res) == 0 && zcow_check_result_get_leaks(res) == 0);
    CHECK(zcow_check_result_get_check_errors(res) == 0);
    CHECK(zcow_check_result_get_decompress_failures(res) == 0);
    CHECK(!zcow_check_result_get_marked_corrupt(res) && !zcow_check_result_get_marked_dirty(res));
    CHECK(zcow_check_result_get_cluster_size(res) == 65536);
    CHECK(zcow_check_result_get_fragmented_clusters(res) <= 2);

    /* By handle: the same file, the same findings; a backing handle checks
     * the backing file (its 4 KiB clusters tell it apart). */
    zcow_image *img;
    CHECK(zcow_open(top, NULL, 0, &img) == 0);
    CHECK(zcow_check_image(img, ZCOW_CHECK_DECOMPRESS, NULL, NULL, res2) == 0);
    CHECK(zcow_check_result_get_image_end_offset(res2) ==
          zcow_check_result_get_image_end_offset(res));
    CHECK(zcow_check_result_get_allocated_clusters(res2) ==
          zcow_check_result_get_allocated_clusters(res));
    CHECK(zcow_check_result_get_cluster_size(res2) == 65536);
    CHECK(zcow_check_image(zcow_get_backing(img), 0, NULL, NULL, res2) == 0);
    CHECK(zcow_check_result_get_cluster_size(res2) == 4096);
    test_check_threads(top);
    CHECK(zcow_check(base, 0, NULL, NULL, res) == 0);
    CHECK(zcow_check_result_get_image_end_offset(res2) ==
          zcow_check_result_get_image_end_offset(res));
    CHECK(zcow_close(img) == 0);
    CHECK(zcow_check_image(NULL, 0, NULL, NULL, res) == -EINVAL);

    /* A raw image by handle is no qcow2 image, as by path. */
    const char *raw = tpath(2, "plain.raw");
    FILE *f = fopen(raw, "wb");
    for (int i = 0; i < 65536; i++)
        fputc(7, f);
    fclose(f);
    CHECK(zcow_open(raw, "raw", 0, &img) == 0);
    CHECK(zcow_check_image(img, 0, NULL, NULL, res) == -EINVAL);
    CHECK(zcow_check(raw, 0, NULL, NULL, NULL) == -EINVAL);
    CHECK(zcow_close(img) == 0);
    zcow_check_result_free(res);
    zcow_check_result_free(res2);
    zcow_check_result_free(NULL);
}

static void test_convert(void)
{
    const char *src = tpath(2, "plain.raw"), *dst = tpath(3, "conv.qcow2");
    zcow_convert_opts *o = zcow_convert_opts_new();
    zcow_convert_stats *st = zcow_convert_stats_new();
    CHECK(st && zcow_convert_stats_get_bytes_in(st) == 0 &&
          zcow_convert_stats_get_seconds(st) == 0);
    REFUSED(zcow_convert(o, st), "missing source or destination");
    CHECK(zcow_convert_opts_set_src(o, src) == 0 && zcow_convert_opts_set_dst(o, dst) == 0);
    CHECK(zcow_convert_opts_set_threads(o, 2) == 0);
    int r = zcow_convert(o, st);
    CHECKF(r == 0, "%s", zcow_get_error());
    CHECK(zcow_convert_stats_get_bytes_in(st) == 65536);
    char cmd[9000], out[8192];
    snprintf(cmd, sizeof(cmd), "stat -c %%s '%s'", dst);
    run(cmd, out, sizeof(out));
    CHECKF(zcow_convert_stats_get_bytes_out(st) == (uint64_t)strtoull(out, NULL, 10), "%s", out);
    CHECK(zcow_convert_stats_get_clusters_compressed(st) == 1);
    CHECK(zcow_convert_stats_get_clusters_normal(st) == 0);
    CHECK(zcow_convert_stats_get_clusters_zero(st) == 0);
    CHECK(zcow_convert_stats_get_clusters_copied(st) == 0);
    CHECK(zcow_convert_stats_get_seconds(st) > 0);
    snprintf(cmd, sizeof(cmd), "qemu-img compare -q -f raw -F qcow2 '%s' '%s'", src, dst);
    CHECK(system(cmd) == 0);
    CHECK(zcow_convert(o, NULL) == 0); /* no statistics wanted */
    zcow_convert_stats_free(st);
    zcow_convert_stats_free(NULL);
    zcow_convert_opts_free(o);
}

/* ---- ZCOW_0.1, through the shared library --------------------------------------------- */

/* The structures of the 0.1 header (commit 85ec5a8, include/zcow.h). */
struct create_options_0_1 {
    uint64_t virtual_size;
    uint32_t cluster_size;
    int compression_type, level, cache_mode, write_cache, drop_pages;
    unsigned cache_clusters;
    int atomic;
    const char *backing_file, *backing_format;
};
struct info_0_1 {
    const char *format;
    uint64_t virtual_size;
    uint32_t cluster_size;
    int version, compression_type, refcount_bits, corrupt, extended_l2;
    uint64_t file_size, actual_size;
    uint64_t clusters_allocated, clusters_compressed, clusters_normal, clusters_zero;
    const char *backing_file, *backing_format;
};
struct convert_options_0_1 {
    const char *src, *src_format, *dst, *dst_format;
    struct create_options_0_1 create;
    int threads, src_cache;
    void (*progress)(void *opaque, uint64_t done, uint64_t total);
    void *progress_opaque;
};
struct convert_stats_0_1 {
    uint64_t bytes_in, bytes_out;
    uint64_t clusters_compressed, clusters_normal, clusters_zero, clusters_copied;
    double seconds;
};
/* As zcow_check() was exported under ZCOW_0.1 (commit 158ff22). */
struct check_result_0_1 {
    uint64_t corruptions, leaks, check_errors, total_clusters, allocated_clusters;
    uint64_t fragmented_clusters, compressed_clusters, image_end_offset, decompress_failures;
    int marked_corrupt, marked_dirty;
    uint32_t cluster_size;
};

/* A 0.1 structure with guard bytes after it, where a later layout goes on. */
#define GUARD 256
#define GUARDED(type)                                                                              \
    struct {                                                                                       \
        type s;                                                                                    \
        unsigned char guard[GUARD];                                                                \
    }

static int guard_intact(const unsigned char *g, unsigned char v)
{
    for (int i = 0; i < GUARD; i++)
        if (g[i] != v)
            return 0;
    return 1;
}

static void *sym(void *h, const char *name, const char *version)
{
    void *p = dlvsym(h, name, version);
    CHECKF(p != NULL, "no %s@%s: %s", name, version, dlerror());
    return p;
}

static void test_v0_1(void)
{
    /* The shared library beside this program's directory (build/tests/). */
    char exe[4096], so[4200];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    CHECK(n > 0);
    if (n <= 0)
        return;
    exe[n] = 0;
    *strrchr(exe, '/') = 0;
    snprintf(so, sizeof(so), "%s/../libzcow.so", exe);
    void *h = dlopen(so, RTLD_NOW | RTLD_LOCAL);
    CHECKF(h != NULL, "dlopen %s: %s", so, dlerror());
    if (!h)
        return;
    void (*create_init)(struct create_options_0_1 *) =
        sym(h, "zcow_create_options_init", "ZCOW_0.1");
    int (*create)(const char *, const struct create_options_0_1 *, zcow_image **) =
        sym(h, "zcow_create", "ZCOW_0.1");
    int (*write_cluster)(zcow_image *, uint64_t, const void *, size_t) =
        sym(h, "zcow_write_cluster", "ZCOW_0.1");
    int (*close_image)(zcow_image *) = sym(h, "zcow_close", "ZCOW_0.1");
    int (*open_image)(const char *, const char *, int, zcow_image **) =
        sym(h, "zcow_open", "ZCOW_0.1");
    int (*get_info)(zcow_image *, struct info_0_1 *) = sym(h, "zcow_get_info", "ZCOW_0.1");
    void (*convert_init)(struct convert_options_0_1 *) =
        sym(h, "zcow_convert_options_init", "ZCOW_0.1");
    int (*convert)(const struct convert_options_0_1 *, struct convert_stats_0_1 *) =
        sym(h, "zcow_convert", "ZCOW_0.1");
    int (*check)(const char *, unsigned, zcow_check_report_fn *, void *,
                 struct check_result_0_1 *) = sym(h, "zcow_check", "ZCOW_0.1");
    const char *(*get_error)(void) = sym(h, "zcow_get_error", "ZCOW_0.1");
    /* The current entry points are the default versions. */
    CHECK(dlvsym(h, "zcow_get_info", "ZCOW_0.2") != (void *)get_info);
    CHECK(dlsym(h, "zcow_create_opts_new") == dlvsym(h, "zcow_create_opts_new", "ZCOW_0.2"));
    if (!create_init || !create || !write_cluster || !close_image || !open_image || !get_info ||
        !convert_init || !convert || !check || !get_error) {
        dlclose(h);
        return;
    }

    /* Create and write as a 0.1 program does. */
    GUARDED(struct create_options_0_1) co;
    memset(&co, 0xa5, sizeof(co));
    create_init(&co.s);
    CHECK(guard_intact(co.guard, 0xa5));
    CHECK(co.s.virtual_size == 0 && co.s.cluster_size == 65536 && co.s.level == -1);
    CHECK(co.s.write_cache == 1 && co.s.atomic == 0 && co.s.backing_file == NULL);
    co.s.virtual_size = 4 * 65536;
    co.s.cache_mode = ZCOW_CACHE_WRITEBACK;
    const char *path = tpath(4, "v01.qcow2");
    zcow_image *img;
    /* 0.1 checked no cache bound: one near 2^31 made the write cache's
     * hash sizing loop forever.  Refused as the setter refuses it. */
    co.s.cache_clusters = 0x7fffffffu;
    int r = create(path, &co.s, &img);
    CHECKF(r == -EINVAL && strstr(get_error(), "cache_clusters '2147483647'"), "%d %s", r,
           get_error());
    co.s.cache_clusters = 0;
    r = create(path, &co.s, &img);
    CHECKF(r == 0, "0.1 create: %s", get_error());
    if (r == 0) {
        static uint8_t ones[65536];
        memset(ones, 1, sizeof(ones));
        CHECK(write_cluster(img, 65536, ones, sizeof(ones)) == 0);
        CHECK(close_image(img) == 0);
    }

    /* Read the info into a 0.1 structure: nothing written past it. */
    GUARDED(struct info_0_1) in;
    memset(&in, 0x5a, sizeof(in));
    CHECK(open_image(path, NULL, 0, &img) == 0);
    CHECK(get_info(img, &in.s) == 0);
    CHECK(guard_intact(in.guard, 0x5a));
    CHECK(same(in.s.format, "qcow2") && in.s.virtual_size == 4 * 65536);
    CHECK(in.s.cluster_size == 65536 && in.s.version == 3 && in.s.refcount_bits == 16);
    CHECK(in.s.clusters_compressed == 1 && in.s.clusters_allocated == 1);
    CHECK(in.s.backing_file == NULL && in.s.backing_format == NULL);
    CHECK(close_image(img) == 0);

    /* Convert with 0.1 options; where later layouts hold the bitmap and TLS
     * pointers, garbage that must not be read. */
    GUARDED(struct convert_options_0_1) cv;
    memset(&cv, 0xc3, sizeof(cv));
    convert_init(&cv.s);
    CHECK(guard_intact(cv.guard, 0xc3));
    CHECK(same(cv.s.dst_format, "qcow2") && cv.s.src == NULL && cv.s.threads == 0);
    CHECK(cv.s.create.cluster_size == 65536 && cv.s.progress == NULL);
    cv.s.src = path;
    cv.s.dst = tpath(5, "v01-conv.raw");
    cv.s.dst_format = "raw";
    GUARDED(struct convert_stats_0_1) cs;
    memset(&cs, 0x3c, sizeof(cs));
    r = convert(&cv.s, &cs.s);
    CHECKF(r == 0, "0.1 convert: %s", get_error());
    CHECK(guard_intact(cs.guard, 0x3c));
    CHECK(cs.s.bytes_in == 4 * 65536 && cs.s.bytes_out == 4 * 65536);

    GUARDED(struct check_result_0_1) ck;
    memset(&ck, 0x99, sizeof(ck));
    CHECK(check(path, 0, NULL, NULL, &ck.s) == 0);
    CHECK(guard_intact(ck.guard, 0x99));
    CHECK(ck.s.corruptions == 0 && ck.s.leaks == 0 && ck.s.total_clusters == 4);
    CHECK(ck.s.cluster_size == 65536 && ck.s.compressed_clusters == 1);
    dlclose(h);
}

int main(void)
{
    unit_init("test_api");
    alarm(300); /* a hang (as a bad cache bound once made) fails, fast */
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_create_opts();
    test_convert_opts();
    test_info();
    test_check();
    test_convert();
    test_v0_1();
    char cmd[200];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
    return unit_done();
}
