/* test_reader.c - the read side: images built here byte by byte from the
 * spec (QEMU docs/interop/qcow2.txt), read back through the reader and the
 * qcow2 source and compared with a model of their contents.  Covers every
 * cluster kind, extended L2 subclusters, compressed streams packed into
 * shared sectors and running past the end of the file, backing chains,
 * parallel reads with a thrashing L2 cache, O_DIRECT with unaligned
 * requests, the exact stream length of copied clusters, hostile
 * headers that must fail with a message instead of crashing, and data
 * clusters past the end of the file. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>

#include "codec.h"
#include "qcow2.h"
#include "qcow2_ext.h"
#include "reader.h"
#include "source.h"
#include "unit.h"
#include "zcow.h"

static char dir[] = "/tmp/zcow-test-reader-XXXXXX";
static char path_buf[8][512];

static const char *tpath(int slot, const char *name)
{
    snprintf(path_buf[slot], sizeof(path_buf[slot]), "%s/%s", dir, name);
    return path_buf[slot];
}

/* ---- An image builder that follows the spec, not lib/ ------------------ */

struct builder {
    int fd;
    unsigned cb;
    uint64_t cs;
    bool ext;      /* extended L2 entries */
    int ctype;     /* compression type */
    uint64_t size; /* virtual */
    uint64_t l1_off;
    uint32_t l1_size;
    uint64_t *l1;   /* host order */
    uint64_t next;  /* next free host cluster */
    uint64_t cbyte; /* next byte for packed compressed data; 0 = none */
    uint64_t cend;  /* end of the clusters that hold it */
    uint8_t *model; /* expected guest contents */
};

static void bwrite(struct builder *b, const void *p, size_t len, uint64_t off)
{
    ssize_t n = pwrite(b->fd, p, len, (off_t)off);
    if (n != (ssize_t)len) {
        perror("pwrite");
        exit(1);
    }
}

static void b_init(struct builder *b, const char *path, unsigned cb, bool ext, int ctype,
                   uint64_t size)
{
    memset(b, 0, sizeof(*b));
    b->fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (b->fd < 0) {
        perror(path);
        exit(1);
    }
    b->cb = cb;
    b->cs = 1ull << cb;
    b->ext = ext;
    b->ctype = ctype;
    b->size = size;
    uint64_t per_l1 = b->cs * (b->cs / (ext ? 16 : 8));
    b->l1_size = (uint32_t)((size + per_l1 - 1) / per_l1);
    b->l1 = calloc(b->l1_size + 1, 8);
    b->l1_off = 3 * b->cs; /* header, reftable, refblock: as QEMU lays out */
    b->next = b->l1_off + ((b->l1_size * 8 + b->cs - 1) / b->cs) * b->cs;
    if (b->next == b->l1_off)
        b->next += b->cs;
    b->model = calloc(1, size);
}

static uint64_t b_alloc(struct builder *b)
{
    uint64_t off = b->next;
    b->next += b->cs;
    uint8_t *z = calloc(1, b->cs);
    bwrite(b, z, b->cs, off);
    free(z);
    return off;
}

static uint64_t b_l2(struct builder *b, uint64_t guest)
{
    uint64_t l1i = (guest >> b->cb) / (b->cs / (b->ext ? 16 : 8));
    if (!b->l1[l1i])
        b->l1[l1i] = b_alloc(b) | QCOW2_OFLAG_COPIED;
    return b->l1[l1i] & QCOW2_OFFSET_MASK;
}

static void b_entry(struct builder *b, uint64_t guest, uint64_t entry, uint64_t bitmap)
{
    uint64_t per = b->cs / (b->ext ? 16 : 8);
    uint64_t i = (guest >> b->cb) % per;
    uint8_t e[16];
    qcow2_put_be64(e, entry);
    qcow2_put_be64(e + 8, bitmap);
    bwrite(b, e, b->ext ? 16 : 8, b_l2(b, guest) + i * (b->ext ? 16 : 8));
}

static uint64_t b_normal(struct builder *b, uint64_t guest, const uint8_t *data)
{
    b_l2(b, guest);
    uint64_t host = b_alloc(b);
    bwrite(b, data, b->cs, host);
    b_entry(b, guest, host | QCOW2_OFLAG_COPIED, b->ext ? 0xffffffffull : 0);
    uint64_t n = b->size - guest < b->cs ? b->size - guest : b->cs;
    memcpy(b->model + guest, data, n);
    return host;
}

/* Compress DATA and pack it right after the previous stream; returns the
 * stream length. */
static size_t b_compressed(struct builder *b, uint64_t guest, const uint8_t *data)
{
    b_l2(b, guest);
    uint8_t *c = malloc(b->cs);
    int n = codec_compress(b->ctype, codec_resolve_level(b->ctype, ZCOW_LEVEL_DEFAULT), data, b->cs,
                           c, b->cs - 1);
    if (n <= 0) {
        fprintf(stderr, "test data does not compress\n");
        exit(1);
    }
    if (!b->cbyte || b->cbyte + (uint64_t)n > b->cend) {
        /* A new host cluster; a stream straddles only into the next one,
         * allocated here with it. */
        b->cbyte = b->next;
        b->next += b->cs;
        if (b->cbyte + (uint64_t)n > b->next)
            b->next += b->cs;
        b->cend = b->next;
    }
    bwrite(b, c, (size_t)n, b->cbyte);
    b_entry(b, guest, qcow2_compressed_descriptor(b->cb, b->cbyte, (uint64_t)n), 0);
    b->cbyte += (uint64_t)n;
    uint64_t len = b->size - guest < b->cs ? b->size - guest : b->cs;
    memcpy(b->model + guest, data, len);
    free(c);
    return (size_t)n;
}

struct finish {
    const char *backing;
    const char *backing_format;
    uint64_t incompat; /* extra incompatible bits */
    int version;       /* 0 = 3 */
};

static void b_finish(struct builder *b, const struct finish *f)
{
    uint8_t *l1 = calloc(b->l1_size + 1, 8);
    for (uint32_t i = 0; i < b->l1_size; i++)
        qcow2_put_be64(l1 + 8 * i, b->l1[i]);
    if (b->l1_size)
        bwrite(b, l1, b->l1_size * 8, b->l1_off);
    free(l1);

    struct qcow2_header h = { 0 };
    h.magic = QCOW2_MAGIC;
    h.version = f && f->version ? (uint32_t)f->version : 3;
    h.cluster_bits = b->cb;
    h.size = b->size;
    h.l1_size = b->l1_size;
    h.l1_table_offset = b->l1_off;
    h.refcount_table_offset = b->cs;
    h.refcount_table_clusters = 1;
    h.refcount_order = 4;
    h.header_length = h.version == 2 ? QCOW2_HEADER_V2_LEN : QCOW2_HEADER_V3_LEN;
    h.compression_type = (uint8_t)b->ctype;
    h.incompatible_features = (b->ctype ? QCOW2_INCOMPAT_COMPRESSION : 0) |
                              (b->ext ? QCOW2_INCOMPAT_EXTL2 : 0) | (f ? f->incompat : 0);
    uint8_t *hdr = calloc(1, b->cs);
    size_t used = h.header_length;
    int n = qcow2_write_extensions(hdr + used, b->cs - used, f ? f->backing_format : NULL);
    if (n > 0)
        used += (size_t)n;
    if (f && f->backing) {
        h.backing_file_offset = used;
        h.backing_file_size = (uint32_t)strlen(f->backing);
        memcpy(hdr + used, f->backing, strlen(f->backing));
    }
    qcow2_header_encode(&h, hdr);
    bwrite(b, hdr, b->cs < 4096 ? b->cs : 4096, 0);
    free(hdr);
}

static void b_close(struct builder *b)
{
    close(b->fd);
    free(b->l1);
    free(b->model);
}

/* ---- Helpers ------------------------------------------------------------ */

static void fill_compressible(uint64_t *st, uint8_t *p, size_t len)
{
    /* Runs of a random byte: compresses well under both codecs. */
    for (size_t i = 0; i < len;) {
        size_t run = (size_t)unit_range(st, 1, 200);
        uint8_t v = (uint8_t)unit_rand(st);
        for (size_t k = 0; k < run && i < len; k++)
            p[i++] = v;
    }
}

static void check_reads(struct reader *r, const uint8_t *model, uint64_t size, uint64_t *st,
                        int rounds, const char *what)
{
    uint8_t *buf = malloc(size + 8192);
    CHECKF(reader_read(r, 0, buf, size) == 0, "%s: read all: %s", what, zcow_get_error());
    CHECKF(!memcmp(buf, model, size), "%s: whole image differs", what);
    for (int i = 0; i < rounds; i++) {
        uint64_t off = unit_range(st, 0, size - 1);
        /* Mostly a few clusters' worth, sometimes up to the end. */
        uint64_t max = size - off;
        if (i % 16 && max > (256u << 10))
            max = 256u << 10;
        uint64_t len = unit_range(st, 1, max);
        memset(buf, 0xaa, len);
        int e = reader_read(r, off, buf, len);
        CHECKF(e == 0, "%s: read %llu+%llu: %s", what, (unsigned long long)off,
               (unsigned long long)len, zcow_get_error());
        CHECKF(!memcmp(buf, model + off, len), "%s: read %llu+%llu differs", what,
               (unsigned long long)off, (unsigned long long)len);
    }
    free(buf);
}

/* ---- Every cluster kind, both codecs, several cluster sizes ------------- */

static void test_kinds(unsigned cb, int ctype, bool ext, int version, bool direct)
{
    uint64_t st = unit_stream(cb * 10 + (unsigned)ctype + (ext ? 100 : 0) + (unsigned)version);
    uint64_t cs = 1ull << cb;
    uint64_t size = 43 * cs + cs / 2; /* a partial, compressed last cluster */
    const char *p = tpath(0, "kinds.qcow2");
    struct builder b;
    b_init(&b, p, cb, ext, ctype, size);
    uint8_t *data = malloc(cs);
    size_t lens[64];
    int nc = 0;
    for (uint64_t c = 0; c * cs < size; c++) {
        uint64_t g = c * cs;
        switch (c % 5) {
        case 0: /* unallocated */ break;
        case 1:
            unit_fill_random(&st, data, cs);
            b_normal(&b, g, data);
            break;
        case 2: /* zero: with standard L2 the flag, with extended all zero bits */
            b_entry(&b, g, ext ? 0 : QCOW2_OFLAG_ZERO, ext ? 0xffffffff00000000ull : 0);
            break;
        default:
            fill_compressible(&st, data, cs);
            lens[nc++] = b_compressed(&b, g, data);
            break;
        }
    }
    /* The last stream ends the file mid-sector: its descriptor's sectors
     * reach past EOF, which must be fine. */
    if (b.cend == b.next && ftruncate(b.fd, (off_t)b.cbyte) != 0)
        perror("ftruncate");
    b_finish(&b, &(struct finish){ .version = version });

    char what[96];
    snprintf(what, sizeof(what), "kinds cb %u %s%s v%d%s", cb, ctype ? "zstd" : "zlib",
             ext ? " ext-l2" : "", version, direct ? " direct" : "");
    struct reader *r;
    int e = reader_open(p, NULL, direct, &r);
    CHECKF(e == 0, "%s: open: %s", what, zcow_get_error());
    if (e == 0) {
        check_reads(r, b.model, size, &st, 200, what);
        struct zcow_info info;
        CHECK(reader_get_info(r, &info) == 0);
        CHECKF(info.clusters_compressed == (uint64_t)nc, "%s: %llu compressed, want %d", what,
               (unsigned long long)info.clusters_compressed, nc);
        CHECK(info.cluster_size == cs && info.virtual_size == size);
        CHECK(info.extended_l2 == ext && info.version == (version ? version : 3));
        CHECK(info.compression_type == ctype);
        /* Past the end reads zero. */
        uint8_t z[100];
        memset(z, 1, sizeof(z));
        CHECK(reader_read(r, size - 10, z, sizeof(z)) == 0 && !memcmp(z, b.model + size - 10, 10));
        CHECK(z[10] == 0 && z[99] == 0);
        reader_close(r);
    }

    /* The qcow2 source: compressed clusters copy with their exact length. */
    struct source *s;
    e = source_qcow2_open(p, direct, &s);
    CHECKF(e == 0, "%s: source open: %s", what, zcow_get_error());
    if (e == 0) {
        uint8_t *cbuf = malloc(cs);
        int k = 0;
        for (uint64_t c = 0; c * cs < size; c++) {
            int n = s->ops->read_compressed(s, c * cs, ctype, (uint32_t)cs, cbuf, cs);
            if (c % 5 >= 3) {
                CHECKF(n == (int)lens[k], "%s: cluster %llu: stream length %d, want %zu", what,
                       (unsigned long long)c, n, lens[k]);
                if (n > 0) {
                    /* The copied bytes decode to the cluster on their own. */
                    CHECK(codec_decompress(ctype, cbuf, (size_t)n, data, cs) == 0);
                    uint64_t len = size - c * cs < cs ? size - c * cs : cs;
                    CHECK(!memcmp(data, b.model + c * cs, len));
                }
                k++;
            } else {
                CHECKF(n == 0, "%s: cluster %llu is not compressed, got %d", what,
                       (unsigned long long)c, n);
            }
            /* Another type or cluster size: never copied. */
            CHECK(s->ops->read_compressed(s, c * cs, !ctype, (uint32_t)cs, cbuf, cs) == 0);
        }
        /* Extents: unallocated and zero clusters read as zero. */
        uint64_t off = 0;
        while (off < size) {
            uint64_t len;
            enum extent_kind zero;
            if (s->ops->extent(s, off, size - off, &len, &zero) < 0 || len == 0) {
                CHECKF(0, "%s: extent at %llu failed", what, (unsigned long long)off);
                break;
            }
            uint64_t c = off / cs;
            CHECKF(zero == (c % 5 == 0 || c % 5 == 2 ? EXTENT_ZERO : EXTENT_DATA),
                   "%s: extent at %llu kind %d", what, (unsigned long long)off, (int)zero);
            off += len;
        }
        free(cbuf);
        s->ops->close(s);
    }
    free(data);
    b_close(&b);
}

/* ---- Extended L2: subclusters of every kind in one cluster -------------- */

static void test_subclusters(void)
{
    uint64_t st = unit_stream(7);
    unsigned cb = 16;
    uint64_t cs = 1ull << cb, scs = cs / 32;
    uint64_t size = 4 * cs;
    const char *bp = tpath(1, "sub-base.raw");
    const char *p = tpath(0, "sub.qcow2");
    /* A raw backing file, shorter than the overlay. */
    uint8_t *base = malloc(size);
    unit_fill_random(&st, base, size);
    int fd = open(bp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(write(fd, base, 2 * cs + 5 * scs) == (ssize_t)(2 * cs + 5 * scs));
    close(fd);
    memset(base + 2 * cs + 5 * scs, 0, size - 2 * cs - 5 * scs);

    struct builder b;
    b_init(&b, p, cb, true, 0, size);
    memcpy(b.model, base, size);
    uint8_t *data = malloc(cs);
    unit_fill_random(&st, data, cs);
    /* Cluster 0 and 2: alloc bits on even subclusters, zero bits on every
     * third odd one, the rest from the backing file. */
    for (uint64_t c = 0; c < 4; c += 2) {
        uint64_t host = b_alloc(&b);
        bwrite(&b, data, cs, host);
        uint64_t bm = 0;
        for (unsigned i = 0; i < 32; i++) {
            uint64_t g = c * cs + i * scs;
            if (i % 2 == 0) {
                bm |= 1ull << i;
                memcpy(b.model + g, data + i * scs, scs);
            } else if (i % 3 == 0) {
                bm |= 1ull << (32 + i);
                memset(b.model + g, 0, scs);
            }
        }
        b_entry(&b, c * cs, host | QCOW2_OFLAG_COPIED, bm);
    }
    /* Cluster 1: no allocation, zero bits on the first half. */
    b_entry(&b, cs, 0, 0x0000ffff00000000ull);
    memset(b.model + cs, 0, 16 * scs);
    b_finish(&b, &(struct finish){ .backing = "sub-base.raw", .backing_format = "raw" });

    struct reader *r;
    int e = reader_open(p, "qcow2", 0, &r);
    CHECKF(e == 0, "subclusters: open: %s", zcow_get_error());
    if (e == 0) {
        check_reads(r, b.model, size, &st, 300, "subclusters");
        struct zcow_info info;
        CHECK(reader_get_info(r, &info) == 0);
        CHECK(info.backing_file && !strcmp(info.backing_file, "sub-base.raw"));
        CHECK(info.backing_path && !strcmp(info.backing_path, bp));
        CHECK(info.backing_format && !strcmp(info.backing_format, "raw"));
        reader_close(r);
    }
    free(data);
    free(base);
    b_close(&b);
}

/* Bitmaps the spec forbids ("Extended L2 Entries": an allocated
 * subcluster needs a host offset; a zero subcluster must not be allocated
 * too) make the whole entry corrupt, as in QEMU: a read of any part of
 * such a cluster fails, one of the next cluster succeeds. */
static void test_subclusters_invalid(void)
{
    unsigned cb = 16;
    uint64_t cs = 1ull << cb, scs = cs / 32;
    const char *p = tpath(0, "sub-bad.qcow2");
    struct builder b;
    b_init(&b, p, cb, true, 0, 4 * cs);
    uint8_t *data = malloc(cs);
    memset(data, 0x5a, cs);
    b_entry(&b, 0, 0, 1ull << 3); /* allocated, no host cluster */
    uint64_t host = b_alloc(&b);
    bwrite(&b, data, cs, host);
    b_entry(&b, cs, host | QCOW2_OFLAG_COPIED, (1ull << 4) | (1ull << 36)); /* both */
    b_normal(&b, 2 * cs, data);
    b_finish(&b, NULL);

    struct reader *r;
    CHECK(reader_open(p, NULL, 0, &r) == 0);
    if (r) {
        uint8_t buf[512];
        CHECK(reader_read(r, 3 * scs, buf, sizeof(buf)) == -EIO);
        CHECKF(strstr(zcow_get_error(), "subcluster allocated in an unallocated cluster"), "%s",
               zcow_get_error());
        CHECK(reader_read(r, 10 * scs, buf, sizeof(buf)) == -EIO); /* not allocated itself */
        CHECK(reader_read(r, cs + 20 * scs, buf, sizeof(buf)) == -EIO);
        CHECKF(strstr(zcow_get_error(), "both allocated and zero"), "%s", zcow_get_error());
        uint64_t len;
        int zero;
        CHECK(reader_extent(r, cs + 4 * scs, cs, &len, &zero) == -EIO);
        CHECK(reader_read(r, 2 * cs + 7, buf, sizeof(buf)) == 0 && buf[0] == 0x5a);
        reader_close(r);
    }
    free(data);
    b_close(&b);
}

/* ---- A chain of three, the middle one probed ---------------------------- */

static void test_chain(void)
{
    uint64_t st = unit_stream(8);
    unsigned cb = 12;
    uint64_t cs = 1ull << cb;
    uint64_t size = 64 * cs;
    uint8_t *model = calloc(1, size);
    uint8_t *data = malloc(cs);
    const char *names[3] = { "chain0.qcow2", "chain1.qcow2", "chain2.qcow2" };
    for (int layer = 0; layer < 3; layer++) {
        struct builder b;
        uint64_t lsize = size - (uint64_t)(2 - layer) * 8 * cs; /* lower layers shorter */
        b_init(&b, tpath(layer, names[layer]), cb, false, layer == 1, lsize);
        for (uint64_t c = (uint64_t)layer; c * cs < lsize; c += 3) {
            fill_compressible(&st, data, cs);
            if (c % 2)
                b_compressed(&b, c * cs, data);
            else
                b_normal(&b, c * cs, data);
            memcpy(model + c * cs, data, cs);
        }
        if (layer == 2) /* a zero cluster hides what is below */
            b_entry(&b, 4 * cs, QCOW2_OFLAG_ZERO, 0), memset(model + 4 * cs, 0, cs);
        b_finish(&b, &(struct finish){ .backing = layer ? names[layer - 1] : NULL,
                                       .backing_format = layer == 2 ? "qcow2" : NULL });
        b_close(&b);
    }
    struct reader *r;
    int e = reader_open(tpath(2, names[2]), NULL, 0, &r);
    CHECKF(e == 0, "chain: open: %s", zcow_get_error());
    if (e == 0) {
        check_reads(r, model, size, &st, 300, "chain");
        reader_close(r);
    }
    free(model);
    free(data);
}

/* ---- Many threads, an L2 cache far smaller than the tables -------------- */

struct par {
    struct reader *r;
    const uint8_t *model;
    uint64_t size;
    int id;
};

static void *par_reader(void *arg)
{
    struct par *p = arg;
    uint64_t st = unit_stream(1000 + (uint64_t)p->id);
    uint8_t *buf = malloc(1 << 20);
    double end = unit_now() + 1.0;
    while (unit_now() < end) {
        uint64_t off = unit_range(&st, 0, p->size - 1);
        uint64_t max = p->size - off < (1 << 20) ? p->size - off : (1 << 20);
        uint64_t len = unit_range(&st, 1, max);
        int e = reader_read(p->r, off, buf, len);
        CHECKF(e == 0, "parallel: %s", zcow_get_error());
        CHECKF(!memcmp(buf, p->model + off, len), "parallel: read %llu+%llu differs",
               (unsigned long long)off, (unsigned long long)len);
    }
    free(buf);
    return NULL;
}

static void test_parallel(bool direct)
{
    uint64_t st = unit_stream(9);
    unsigned cb = 12; /* 4 KiB clusters: one L2 table maps 2 MiB */
    uint64_t cs = 1ull << cb;
    uint64_t size = 200ull << 20; /* 100 L2 tables > 64 cached */
    struct builder b;
    b_init(&b, tpath(0, "par.qcow2"), cb, false, 0, size);
    uint8_t *data = malloc(cs);
    for (uint64_t g = 0; g < size; g += (uint64_t)unit_range(&st, 1, 300) * cs) {
        fill_compressible(&st, data, cs);
        if (unit_rand(&st) % 2)
            b_compressed(&b, g, data);
        else
            b_normal(&b, g, data);
    }
    b_finish(&b, NULL);
    struct reader *r;
    int e = reader_open(tpath(0, "par.qcow2"), NULL, direct, &r);
    CHECKF(e == 0, "parallel: open: %s", zcow_get_error());
    if (e == 0) {
        pthread_t t[8];
        struct par p[8];
        for (int i = 0; i < 8; i++) {
            p[i] = (struct par){ r, b.model, size, i };
            pthread_create(&t[i], NULL, par_reader, &p[i]);
        }
        for (int i = 0; i < 8; i++)
            pthread_join(t[i], NULL);
        reader_close(r);
    }
    free(data);
    b_close(&b);
}

/* ---- Hostile headers ----------------------------------------------------- */

static void expect_fail(const char *path, const char *format, const char *needle, const char *what)
{
    struct reader *r = NULL;
    int e = reader_open(path, format, 0, &r);
    CHECKF(e < 0, "%s: opened", what);
    if (e == 0) {
        reader_close(r);
        return;
    }
    const char *msg = zcow_get_error();
    CHECKF(strstr(msg, needle) != NULL, "%s: message '%s' lacks '%s'", what, msg, needle);
    CHECKF(strchr(msg, '\n') == NULL, "%s: message has several lines", what);
}

/* A valid small image, then BYTES patched at OFF. */
static void patched(const char *path, uint64_t off, const void *bytes, size_t len)
{
    struct builder b;
    b_init(&b, path, 16, false, 0, 1 << 20);
    uint8_t d[65536];
    memset(d, 7, sizeof(d));
    b_normal(&b, 0, d);
    b_finish(&b, NULL);
    bwrite(&b, bytes, len, off);
    b_close(&b);
}

static void put64(uint8_t *p, uint64_t v) { qcow2_put_be64(p, v); }
static void put32(uint8_t *p, uint32_t v) { qcow2_put_be32(p, v); }

static void test_hostile(void)
{
    const char *p = tpath(0, "bad.qcow2");
    uint8_t v[16];
    int fd;

    fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(write(fd, "this is not an image at all, just text\n", 39) == 39);
    close(fd);
    expect_fail(p, "qcow2", "not a qcow2 image", "text as qcow2");
    struct reader *r;
    CHECK(reader_open(p, NULL, 0, &r) == 0); /* probed: raw */
    if (r) {
        struct zcow_info info;
        CHECK(reader_get_info(r, &info) == 0 && !strcmp(info.format, "raw") &&
              info.virtual_size == 39);
        reader_close(r);
    }
    expect_fail(p, "vmdk", "unknown format", "unknown format");
    expect_fail(tpath(1, "missing.qcow2"), NULL, "No such file", "missing file");

    patched(p, 0, "", 0);
    CHECK(truncate(p, 50) == 0);
    expect_fail(p, NULL, "too short", "truncated header");

    patched(p, 0, "", 0);
    CHECK(truncate(p, 3 * 65536 + 4) == 0);
    expect_fail(p, NULL, "l1 table", "l1 cut by the end of file");

    put64(v, 1ull << 40);
    patched(p, 40, v, 8);
    expect_fail(p, NULL, "beyond the end of the file", "l1 offset beyond EOF");

    put64(v, 3 * 65536 + 512);
    patched(p, 40, v, 8);
    expect_fail(p, NULL, "not cluster aligned", "l1 offset unaligned");

    put32(v, 0xffffffffu);
    patched(p, 36, v, 4);
    expect_fail(p, NULL, "too large", "huge l1_size");

    put32(v, 0);
    patched(p, 36, v, 4);
    expect_fail(p, NULL, "too small", "l1 too small");

    put64(v, ~0ull);
    patched(p, 24, v, 8);
    expect_fail(p, NULL, "too large", "huge virtual size");

    put32(v, 40);
    patched(p, 20, v, 4);
    expect_fail(p, NULL, "cluster size", "cluster bits 40");

    put32(v, 1);
    patched(p, 32, v, 4);
    expect_fail(p, NULL, "encrypted", "encryption");

    put64(v, QCOW2_INCOMPAT_DATA_FILE);
    patched(p, 72, v, 8);
    expect_fail(p, NULL, "external data files are not supported", "data file bit");

    put64(v, 1ull << 5);
    patched(p, 72, v, 8);
    expect_fail(p, NULL, "unsupported qcow2 feature bits 0x20", "unknown incompatible bit");

    /* Named in the feature name table (its first entry, at 120, renamed
     * from bit 0 to bit 5): the message gives the name. */
    patched(p, 72, v, 8);
    {
        struct builder nb = { .fd = open(p, O_RDWR) };
        bwrite(&nb, "\x05", 1, 121);
        close(nb.fd);
    }
    expect_fail(p, NULL, "unsupported qcow2 feature 'dirty bit'", "named incompatible bit");

    /* An extension that claims more bytes than the cluster holds. */
    put32(v, 0x12345678);
    put32(v + 4, 0x7fffffff);
    patched(p, 112, v, 8);
    expect_fail(p, NULL, "header extension", "extension too long");

    /* An end marker (after the feature table, at 112 + 8 + 8 * 48) that
     * claims a length: QEMU refuses it, zcow has always read on. */
    patched(p, 504 + 4, v, 4);
    CHECK(reader_open(p, NULL, 0, &r) == 0);
    if (r)
        reader_close(r);

    /* A backing name too long, and one reaching past the cluster. */
    put64(v, 1024);
    put32(v + 8, 4000);
    patched(p, 8, v, 12);
    expect_fail(p, NULL, "too long", "backing name 4000 bytes");
    put64(v, 65530);
    put32(v + 8, 100);
    patched(p, 8, v, 12);
    expect_fail(p, NULL, "past the header cluster", "backing name past the cluster");

    /* An L2 offset past EOF fails the read, not the open. */
    put64(v, (1ull << 40) | QCOW2_OFLAG_COPIED);
    patched(p, 3 * 65536, v, 8);
    CHECK(reader_open(p, NULL, 0, &r) == 0);
    if (r) {
        uint8_t buf[512];
        CHECK(reader_read(r, 0, buf, sizeof(buf)) == -EIO);
        CHECKF(strstr(zcow_get_error(), "beyond the end of the file") != NULL, "%s",
               zcow_get_error());
        struct zcow_info info;
        CHECK(reader_get_info(r, &info) == -EIO);
        reader_close(r);
    }

    /* A loop a -> b -> a, and a chain of 70. */
    struct builder b;
    b_init(&b, tpath(2, "loop-a.qcow2"), 16, false, 0, 1 << 20);
    b_finish(&b, &(struct finish){ .backing = "loop-b.qcow2" });
    b_close(&b);
    b_init(&b, tpath(3, "loop-b.qcow2"), 16, false, 0, 1 << 20);
    b_finish(&b, &(struct finish){ .backing = "loop-a.qcow2" });
    b_close(&b);
    expect_fail(tpath(2, "loop-a.qcow2"), NULL, "loop", "backing loop");
    b_init(&b, tpath(2, "self.qcow2"), 16, false, 0, 1 << 20);
    b_finish(&b, &(struct finish){ .backing = "self.qcow2" });
    b_close(&b);
    expect_fail(tpath(2, "self.qcow2"), NULL, "loop", "backing self loop");
    for (int i = 0; i < 70; i++) {
        char name[32], next[32];
        snprintf(name, sizeof(name), "deep%d.qcow2", i);
        snprintf(next, sizeof(next), "deep%d.qcow2", i + 1);
        b_init(&b, tpath(2, name), 16, false, 0, 1 << 20);
        b_finish(&b, &(struct finish){ .backing = i < 69 ? next : NULL });
        b_close(&b);
    }
    expect_fail(tpath(2, "deep0.qcow2"), NULL, "longer than 64", "deep chain");
    CHECK(reader_open(tpath(2, "deep10.qcow2"), NULL, 0, &r) == 0); /* 60 deep: fine */
    reader_close(r);

    /* Random bytes over a valid header must never crash. */
    uint64_t st = unit_stream(11);
    for (int i = 0; i < 300; i++) {
        uint8_t junk[8];
        unit_fill_random(&st, junk, sizeof(junk));
        uint64_t at = unit_range(&st, 0, 200);
        patched(p, at, junk, unit_range(&st, 1, 8));
        if (reader_open(p, NULL, 0, &r) == 0) {
            uint8_t *buf = malloc(1 << 20);
            reader_read(r, 0, buf, 1 << 20);
            struct zcow_info info;
            reader_get_info(r, &info);
            free(buf);
            reader_close(r);
        }
    }
}

/* Data clusters past the end of the file: one far beyond (2^55), one
 * right after the last cluster and contiguous with it on the host (a run
 * of both must fail too), and the last cluster cut by the end of the file
 * (its end reads as zero, as QEMU reads it).  The size is the one seen at
 * open, asked again for a file that grew since. */
static void test_data_past_eof(void)
{
    const char *p = tpath(0, "past-eof.qcow2");
    const uint64_t cs = 65536;
    uint8_t *d = malloc(2 * cs), *back = malloc(2 * cs);
    memset(d, 0x5a, cs);
    memset(d + cs, 0x6b, cs);
    struct builder b;
    b_init(&b, p, 16, false, 0, 1 << 20);
    b_normal(&b, 0, d);
    uint64_t last = b_normal(&b, 3 * cs, d); /* the file ends at last + cs */
    b_entry(&b, cs, (1ull << 55) | QCOW2_OFLAG_COPIED, 0);
    b_entry(&b, 4 * cs, (last + cs) | QCOW2_OFLAG_COPIED, 0);
    b_finish(&b, NULL);
    struct reader *r;
    CHECK(reader_open(p, NULL, 0, &r) == 0);
    CHECK(reader_read(r, 0, back, cs) == 0 && !memcmp(back, d, cs));
    CHECK(reader_read(r, cs, back, 512) == -EIO);
    CHECKF(strstr(zcow_get_error(), "data cluster at offset 0x80000000000000 is beyond the end "
                                    "of the file"),
           "%s", zcow_get_error());
    CHECK(reader_read(r, 3 * cs, back, cs) == 0 && !memcmp(back, d, cs));
    CHECK(reader_read(r, 3 * cs, back, 2 * cs) == -EIO);
    char want[96];
    snprintf(want, sizeof(want), "data cluster at offset %#llx is beyond",
             (unsigned long long)(last + cs));
    CHECKF(strstr(zcow_get_error(), want), "%s", zcow_get_error());
    /* The file grows (its writer appends the cluster): now it reads. */
    bwrite(&b, d + cs, cs, last + cs);
    CHECKF(reader_read(r, 3 * cs, back, 2 * cs) == 0 && !memcmp(back, d, 2 * cs), "%s",
           zcow_get_error());
    reader_close(r);
    /* Cut in the middle of the last cluster. */
    CHECK(ftruncate(b.fd, (off_t)(last + cs / 2)) == 0);
    CHECK(reader_open(p, NULL, 1, &r) == 0);
    memset(d + cs / 2, 0, cs / 2);
    CHECKF(reader_read(r, 3 * cs, back, cs) == 0 && !memcmp(back, d, cs), "%s", zcow_get_error());
    reader_close(r);
    b_close(&b);
    free(d);
    free(back);
}

/* ---- The public API over the reader --------------------------------------- */

static void test_public(void)
{
    uint64_t st = unit_stream(12);
    struct builder b;
    const char *p = tpath(0, "pub.qcow2");
    b_init(&b, p, 16, false, 1, 1 << 20);
    uint8_t data[65536];
    fill_compressible(&st, data, sizeof(data));
    size_t n = b_compressed(&b, 65536, data);
    b_finish(&b, NULL);
    zcow_image *img;
    CHECK(zcow_open(p, NULL, 1, &img) == 0);
    if (img) {
        struct zcow_cluster_info ci;
        CHECK(zcow_cluster_info(img, 65536, &ci) == 0 && ci.kind == ZCOW_CLUSTER_COMPRESSED);
        CHECK(ci.compressed_len >= n && ci.compressed_len < n + 512);
        uint8_t c[2 * 65536];
        int got = zcow_read_compressed(img, &ci, c, sizeof(c));
        CHECK(got > 0 && (size_t)got >= n);
        CHECK(zcow_cluster_info(img, 0, &ci) == 0 && ci.kind == ZCOW_CLUSTER_UNALLOCATED);
        uint8_t out[1000];
        CHECK(zcow_read(img, 65536 + 1, out, sizeof(out)) == 0 &&
              !memcmp(out, data + 1, sizeof(out)));
        CHECK(zcow_write_cluster(img, 0, data, 65536) == -EBADF);
        zcow_close(img);
    }
    b_close(&b);
}

/* ---- Runs of compressed clusters, shuffled on the host ----------------- */

static void test_runs(void)
{
    uint64_t st = unit_stream(13);
    unsigned cb = 9; /* many clusters per run: past RUN_MAX_CLUSTERS */
    uint64_t cs = 1ull << cb;
    uint64_t n = 1500, size = n * cs;
    struct builder b;
    b_init(&b, tpath(0, "runs.qcow2"), cb, false, 0, size);
    /* Guest order, locally shuffled (as parallel writers leave it), with
     * a few clusters sent far away and a few left out. */
    uint64_t *order = malloc(n * sizeof(*order));
    for (uint64_t i = 0; i < n; i++)
        order[i] = i;
    for (uint64_t i = 0; i + 8 < n; i += 8)
        for (int k = 0; k < 8; k++) {
            uint64_t a = i + unit_range(&st, 0, 7), c = i + unit_range(&st, 0, 7);
            uint64_t t = order[a];
            order[a] = order[c];
            order[c] = t;
        }
    for (int k = 0; k < 20; k++) {
        uint64_t a = unit_range(&st, 0, n - 1), c = unit_range(&st, 0, n - 1);
        uint64_t t = order[a];
        order[a] = order[c];
        order[c] = t;
    }
    uint8_t data[512];
    for (uint64_t i = 0; i < n; i++) {
        if (unit_range(&st, 0, 50) == 0)
            continue;
        fill_compressible(&st, data, cs);
        b_compressed(&b, order[i] * cs, data);
    }
    b_finish(&b, NULL);
    struct reader *r;
    int e = reader_open(tpath(0, "runs.qcow2"), NULL, 1, &r);
    CHECKF(e == 0, "runs: open: %s", zcow_get_error());
    if (e == 0) {
        check_reads(r, b.model, size, &st, 300, "runs");
        reader_close(r);
    }
    free(order);
    b_close(&b);
}

int main(void)
{
    unit_init("test_reader");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    static const unsigned cbs[] = { 9, 12, 16, 21 };
    for (unsigned i = 0; i < 4; i++)
        for (int ctype = 0; ctype < 2; ctype++)
            test_kinds(cbs[i], ctype, false, 3, false);
    test_kinds(16, 0, false, 2, false);
    test_kinds(14, 0, true, 3, false);
    test_kinds(16, 1, true, 3, false);
    test_kinds(12, 0, false, 3, true);
    test_kinds(16, 1, true, 3, true);
    test_subclusters();
    test_subclusters_invalid();
    test_runs();
    test_chain();
    test_parallel(false);
    test_parallel(true);
    test_hostile();
    test_data_past_eof();
    test_public();
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
    return unit_done();
}
