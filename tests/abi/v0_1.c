/* v0_1.c - a program written for zcow 0.1, built against the 0.1 header
 * (tests/abi/zcow-0.1.h) by tests/abi/old-header.sh and run against the
 * library of today: every entry point of 0.1, with the structures 0.1's
 * programs allocate.
 *
 * Each structure the library fills or reads is followed by GUARD bytes of
 * 0xA5: a library that writes past the 0.1 size (a memset of a grown
 * struct) breaks them, and one that reads past it (a field added since)
 * reads 0xA5A5... as a pointer or a count and fails.
 *
 * usage: v0_1 DIR
 * Writes in DIR: a.qcow2 (created, written cluster by cluster) and a.raw,
 * its contents; b.qcow2 (one cluster copied compressed from a.qcow2);
 * src.raw and c.qcow2 (zcow_convert of it).  The script judges them with
 * qemu-img.  Prints one line per failure and "v0_1: N checks, N failed". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zcow.h>

#define GUARD 256
#define CLUSTER 65536
#define SIZE (4 * 1024 * 1024 + 3584) /* a partial last cluster */

static int checks, failed;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            failed++;                                                                              \
            printf("FAIL: v0_1: line %d: ", __LINE__);                                             \
            printf(__VA_ARGS__);                                                                   \
            printf(" (%s)\n", zcow_get_error());                                                   \
        }                                                                                          \
    } while (0)

/* A structure of the 0.1 size, then the guard. */
#define GUARDED(type)                                                                              \
    struct {                                                                                       \
        type s;                                                                                    \
        unsigned char guard[GUARD];                                                                \
    }

static void guard_set(void *all, size_t size) { memset(all, 0xA5, size); }

static int guard_intact(const unsigned char *g)
{
    for (int i = 0; i < GUARD; i++)
        if (g[i] != 0xA5)
            return 0;
    return 1;
}

static void path(char *out, const char *dir, const char *name)
{
    snprintf(out, 4096, "%s/%s", dir, name);
}

/* Guest data: text, zeros, bytes that do not compress, a partial tail. */
static void fill(unsigned char *buf, size_t len)
{
    unsigned seed = 12345;
    for (size_t i = 0; i < len; i++) {
        size_t c = i / CLUSTER;
        if (c % 4 == 1)
            buf[i] = 0;
        else if (c % 4 == 3) {
            seed = seed * 1103515245u + 12345u;
            buf[i] = (unsigned char)(seed >> 16);
        } else
            buf[i] = (unsigned char)("zcow 0.1 program "[i % 17]);
    }
}

static int write_file(const char *name, const void *buf, size_t len)
{
    FILE *f = fopen(name, "wb");
    if (!f)
        return -1;
    size_t n = fwrite(buf, 1, len, f);
    return fclose(f) == 0 && n == len ? 0 : -1;
}

int main(int argc, char **argv)
{
    char a[4096], araw[4096], b[4096], src[4096], c[4096], d[4096];
    unsigned char *data = malloc(SIZE), *back = malloc(SIZE), *cbuf = malloc(2 * CLUSTER + 512);
    zcow_image *img = NULL;
    int r;

    if (argc != 2 || !data || !back || !cbuf) {
        fprintf(stderr, "usage: v0_1 DIR\n");
        return 2;
    }
    path(a, argv[1], "a.qcow2");
    path(araw, argv[1], "a.raw");
    path(b, argv[1], "b.qcow2");
    path(src, argv[1], "src.raw");
    path(c, argv[1], "c.qcow2");
    path(d, argv[1], "d.qcow2");
    fill(data, SIZE);

    /* zcow_create_options_init, zcow_create, zcow_write_cluster, zcow_read
     * of an image being written, zcow_flush, zcow_close. */
    GUARDED(struct zcow_create_options) co;
    guard_set(&co, sizeof(co));
    zcow_create_options_init(&co.s);
    CHECK(guard_intact(co.guard), "zcow_create_options_init wrote past the 0.1 struct");
    CHECK(co.s.virtual_size == 0 && co.s.compression_type == ZCOW_COMPRESSION_ZLIB &&
              co.s.level == ZCOW_LEVEL_DEFAULT && co.s.cache_mode == ZCOW_CACHE_NONE &&
              co.s.write_cache == 1 && co.s.atomic == 0 && co.s.backing_file == NULL &&
              (co.s.cluster_size == 0 || co.s.cluster_size == CLUSTER),
          "zcow_create_options_init: not 0.1's defaults");
    co.s.virtual_size = SIZE;
    co.s.cache_mode = ZCOW_CACHE_WRITEBACK;
    r = zcow_create(a, &co.s, &img);
    CHECK(r == 0, "zcow_create '%s': %d", a, r);
    if (r < 0)
        goto out;
    for (size_t off = 0; off < SIZE; off += CLUSTER) {
        size_t len = SIZE - off < CLUSTER ? SIZE - off : CLUSTER;
        r = zcow_write_cluster(img, off, data + off, len);
        CHECK(r == 0, "zcow_write_cluster at %zu: %d", off, r);
    }
    r = zcow_flush(img);
    CHECK(r == 0, "zcow_flush: %d", r);
    r = zcow_read(img, 0, back, SIZE);
    CHECK(r == 0 && !memcmp(back, data, SIZE), "zcow_read of the image being written: %d", r);
    r = zcow_close(img);
    CHECK(r == 0, "zcow_close: %d", r);
    CHECK(write_file(araw, data, SIZE) == 0, "cannot write '%s'", araw);

    /* zcow_open, zcow_get_info, zcow_cluster_info, zcow_read_compressed,
     * zcow_read. */
    r = zcow_open(a, NULL, 1, &img);
    CHECK(r == 0, "zcow_open '%s': %d", a, r);
    if (r < 0)
        goto out;
    GUARDED(struct zcow_info) info;
    guard_set(&info, sizeof(info));
    r = zcow_get_info(img, &info.s);
    CHECK(r == 0, "zcow_get_info: %d", r);
    CHECK(guard_intact(info.guard), "zcow_get_info wrote past the 0.1 struct zcow_info");
    CHECK(r == 0 && info.s.format && !strcmp(info.s.format, "qcow2") &&
              info.s.virtual_size == SIZE && info.s.cluster_size == CLUSTER &&
              info.s.version == 3 && info.s.compression_type == ZCOW_COMPRESSION_ZLIB &&
              info.s.clusters_compressed > 0 && info.s.backing_file == NULL,
          "zcow_get_info: format %s, size %llu, cluster %u, version %d, %llu compressed",
          info.s.format ? info.s.format : "(null)", (unsigned long long)info.s.virtual_size,
          info.s.cluster_size, info.s.version, (unsigned long long)info.s.clusters_compressed);
    GUARDED(struct zcow_cluster_info) ci;
    guard_set(&ci, sizeof(ci));
    r = zcow_cluster_info(img, 0, &ci.s);
    CHECK(r == 0 && ci.s.kind == ZCOW_CLUSTER_COMPRESSED && ci.s.compressed_len > 0,
          "zcow_cluster_info of cluster 0: %d, kind %d", r, ci.s.kind);
    CHECK(guard_intact(ci.guard), "zcow_cluster_info wrote past the struct");
    int clen = zcow_read_compressed(img, &ci.s, cbuf, 2 * CLUSTER + 512);
    CHECK(clen > 0, "zcow_read_compressed: %d", clen);
    memset(back, 0, SIZE);
    r = zcow_read(img, 0, back, SIZE);
    CHECK(r == 0 && !memcmp(back, data, SIZE), "zcow_read: %d", r);
    zcow_close(img);

    /* zcow_write_compressed: cluster 0 of a.qcow2, stored as it is. */
    if (clen > 0) {
        zcow_create_options_init(&co.s);
        co.s.virtual_size = CLUSTER;
        co.s.cache_mode = ZCOW_CACHE_WRITEBACK;
        r = zcow_create(b, &co.s, &img);
        CHECK(r == 0, "zcow_create '%s': %d", b, r);
        if (r == 0) {
            /* qcow2 records whole sectors: the stream may end before them */
            r = zcow_write_compressed(img, 0, cbuf,
                                      (size_t)clen > CLUSTER - 1 ? CLUSTER - 1 : clen);
            CHECK(r == 0, "zcow_write_compressed: %d", r);
            r = zcow_close(img);
            CHECK(r == 0, "zcow_close '%s': %d", b, r);
            r = zcow_open(b, "qcow2", 0, &img);
            CHECK(r == 0, "zcow_open '%s': %d", b, r);
            if (r == 0) {
                r = zcow_read(img, 0, back, CLUSTER);
                CHECK(r == 0 && !memcmp(back, data, CLUSTER),
                      "the cluster copied compressed reads back otherwise: %d", r);
                zcow_close(img);
            }
        }
    }

    /* zcow_convert_options_init, zcow_convert. */
    CHECK(write_file(src, data, SIZE) == 0, "cannot write '%s'", src);
    GUARDED(struct zcow_convert_options) vo;
    guard_set(&vo, sizeof(vo));
    zcow_convert_options_init(&vo.s);
    CHECK(guard_intact(vo.guard), "zcow_convert_options_init wrote past the 0.1 struct");
    CHECK(vo.s.src == NULL && vo.s.dst == NULL && vo.s.threads == 0 && vo.s.progress == NULL &&
              vo.s.create.compression_type == ZCOW_COMPRESSION_ZLIB && vo.s.create.write_cache == 1,
          "zcow_convert_options_init: not 0.1's defaults");
    vo.s.src = src;
    vo.s.dst = c;
    vo.s.threads = 2;
    vo.s.src_cache = ZCOW_CACHE_WRITEBACK;
    vo.s.create.cache_mode = ZCOW_CACHE_WRITEBACK;
    GUARDED(struct zcow_convert_stats) st;
    guard_set(&st, sizeof(st));
    r = zcow_convert(&vo.s, &st.s);
    CHECK(r == 0, "zcow_convert '%s' to '%s': %d", src, c, r);
    CHECK(guard_intact(st.guard), "zcow_convert wrote past struct zcow_convert_stats");
    CHECK(r < 0 || (st.s.bytes_in == SIZE && st.s.bytes_out > 0 && st.s.clusters_compressed > 0),
          "zcow_convert stats: in %llu, out %llu, %llu compressed",
          (unsigned long long)st.s.bytes_in, (unsigned long long)st.s.bytes_out,
          (unsigned long long)st.s.clusters_compressed);

    /* zcow_abort of an atomic image: nothing left; zcow_remove_temp_files. */
    zcow_create_options_init(&co.s);
    co.s.virtual_size = CLUSTER;
    co.s.atomic = 1;
    co.s.cache_mode = ZCOW_CACHE_WRITEBACK;
    r = zcow_create(d, &co.s, &img);
    CHECK(r == 0, "zcow_create atomic '%s': %d", d, r);
    if (r == 0) {
        zcow_write_cluster(img, 0, data, CLUSTER);
        zcow_abort(img);
        CHECK(access(d, F_OK) != 0, "'%s' exists after zcow_abort", d);
    }
    zcow_remove_temp_files();

    /* zcow_get_error after a failure. */
    r = zcow_open("/nonexistent/zcow-0.1.qcow2", NULL, 0, &img);
    CHECK(r < 0 && strstr(zcow_get_error(), "/nonexistent/zcow-0.1.qcow2"),
          "zcow_open of a missing file: %d", r);

out:
    printf("v0_1: %d checks, %d failed\n", checks, failed);
    free(data);
    free(back);
    free(cbuf);
    return failed || checks == 0;
}
