/* test_qcow2_ext.c - header extensions: the iterator (qcow2_ext_next) on
 * areas laid out by hand from the spec, QEMU's docs/interop/qcow2.txt
 * ("Header extensions": type, length, data padded to 8 bytes; type 0 ends
 * the area) and QEMU's own walk (qcow2_read_extensions: an area with no
 * room for an extension's header, or an extension longer than the area,
 * is "Header extension too large", the end marker included); the feature
 * name table; the extensions zcow writes, read back by an independent
 * parser; and the header cluster of an image qemu-img made. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qcow2_ext.h"
#include "unit.h"

/* An area built by hand: extension headers and data at chosen places. */
static uint8_t area[4096];

static size_t put_ext(size_t at, uint32_t type, uint32_t len, const void *data, size_t stored)
{
    qcow2_put_be32(area + at, type);
    qcow2_put_be32(area + at + 4, len);
    if (stored)
        memcpy(area + at + 8, data, stored);
    return at + 8 + ((stored + 7) & ~(size_t)7);
}

static void test_walk(void)
{
    memset(area, 0xcc, sizeof(area));
    uint8_t names[3 * 48] = { 0 };
    names[0] = 0, names[1] = 5;
    memcpy(names + 2, "five", 4);
    names[48] = 1, names[49] = 5; /* same bit, compatible type */
    memcpy(names + 50, "compat five", 11);
    names[96] = 0, names[97] = 5; /* a second name: the first wins */
    memcpy(names + 98, "later five", 10);
    size_t at = 104;
    at = put_ext(at, QCOW2_EXT_BACKING_FORMAT, 5, "qcow2", 5);
    size_t table_at = at;
    at = put_ext(at, QCOW2_EXT_FEATURE_TABLE, sizeof(names), names, sizeof(names));
    at = put_ext(at, 0x12345678, 0, NULL, 0);
    static const uint8_t odd[13] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13 };
    size_t odd_at = at;
    at = put_ext(at, 0x0badcafe, 13, odd, 13);
    size_t end_at = at;
    at = put_ext(at, QCOW2_EXT_END, 0, NULL, 0);
    put_ext(at, 0x11111111, 8, "ignored!", 8); /* after the end marker */

    struct qcow2_ext_iter it;
    struct qcow2_ext x;
    qcow2_ext_begin(&it, area, 104, sizeof(area));
    CHECK(qcow2_ext_next(&it, &x) == QCOW2_EXT_FOUND);
    CHECK(x.type == QCOW2_EXT_BACKING_FORMAT && x.len == 5 && x.data == area + 112 &&
          !memcmp(x.data, "qcow2", 5));
    CHECK(qcow2_ext_next(&it, &x) == QCOW2_EXT_FOUND);
    CHECK(x.type == QCOW2_EXT_FEATURE_TABLE && x.len == sizeof(names) &&
          x.data == area + table_at + 8);
    char name[QCOW2_FEATURE_NAME_MAX + 1];
    CHECK(qcow2_ext_feature_name(&x, 0, 5, name) && !strcmp(name, "five"));
    CHECK(qcow2_ext_feature_name(&x, 1, 5, name) && !strcmp(name, "compat five"));
    CHECK(!qcow2_ext_feature_name(&x, 0, 6, name));
    CHECK(!qcow2_ext_feature_name(&x, 2, 5, name));
    CHECK(qcow2_ext_next(&it, &x) == QCOW2_EXT_FOUND);
    CHECK(x.type == 0x12345678 && x.len == 0);
    CHECK(qcow2_ext_next(&it, &x) == QCOW2_EXT_FOUND);
    CHECK(x.type == 0x0badcafe && x.len == 13 && x.data == area + odd_at + 8);
    CHECK(qcow2_ext_next(&it, &x) == QCOW2_EXT_DONE);
    CHECK(qcow2_ext_next(&it, &x) == QCOW2_EXT_DONE); /* and stays done */

    /* An area that ends right after the last extension: no end marker
     * needed. */
    qcow2_ext_begin(&it, area, 104, end_at);
    int found = 0;
    enum qcow2_ext_status st;
    while ((st = qcow2_ext_next(&it, &x)) == QCOW2_EXT_FOUND)
        found++;
    CHECK(found == 4 && st == QCOW2_EXT_DONE);

    /* The 13 bytes of data end the area, their padding would not fit. */
    qcow2_ext_begin(&it, area, odd_at, odd_at + 8 + 13);
    CHECK(qcow2_ext_next(&it, &x) == QCOW2_EXT_FOUND && x.len == 13);
    CHECK(qcow2_ext_next(&it, &x) == QCOW2_EXT_DONE);

    /* Fewer than 8 bytes left: no room for a header. */
    qcow2_ext_begin(&it, area, odd_at, end_at + 4);
    CHECK(qcow2_ext_next(&it, &x) == QCOW2_EXT_FOUND);
    CHECK(qcow2_ext_next(&it, &x) == QCOW2_EXT_SHORT);
    qcow2_ext_begin(&it, area, 104, 104 + 7);
    CHECK(qcow2_ext_next(&it, &x) == QCOW2_EXT_SHORT);

    /* Data longer than the area: the type and length are reported. */
    qcow2_ext_begin(&it, area, odd_at, odd_at + 8 + 12);
    CHECK(qcow2_ext_next(&it, &x) == QCOW2_EXT_OVERRUN && x.type == 0x0badcafe && x.len == 13);

    /* An end marker claiming a length past the area is refused too. */
    memset(area, 0, sizeof(area));
    put_ext(200, QCOW2_EXT_END, 100, NULL, 0);
    qcow2_ext_begin(&it, area, 200, 300);
    CHECK(qcow2_ext_next(&it, &x) == QCOW2_EXT_OVERRUN && x.type == QCOW2_EXT_END);
    qcow2_ext_begin(&it, area, 200, 308);
    CHECK(qcow2_ext_next(&it, &x) == QCOW2_EXT_DONE);

    /* An empty area, and a header length past the area's end. */
    qcow2_ext_begin(&it, area, 200, 200);
    CHECK(qcow2_ext_next(&it, &x) == QCOW2_EXT_DONE);
    qcow2_ext_begin(&it, area, 300, 200);
    CHECK(qcow2_ext_next(&it, &x) == QCOW2_EXT_DONE);

    /* A name of the full 46 bytes has no NUL: it gets one. */
    memset(names, 0, sizeof(names));
    memset(names + 2, 'n', 46);
    names[48] = 'X'; /* the next entry's type byte */
    struct qcow2_ext t = { QCOW2_EXT_FEATURE_TABLE, 48, names };
    CHECK(qcow2_ext_feature_name(&t, 0, 0, name) && strlen(name) == 46);
    t.len = 47; /* a partial entry is not an entry */
    t.data = names + 1;
    CHECK(!qcow2_ext_feature_name(&t, 0, 0, name));
}

/* Random areas: the walk never reads outside [start, end), every
 * extension it yields lies inside, and it ends. */
static void test_random(void)
{
    uint64_t rs = unit_stream(2);
    for (int round = 0; round < 20000; round++) {
        size_t end = (size_t)unit_range(&rs, 0, 512);
        size_t start = (size_t)unit_range(&rs, 0, 520);
        uint8_t *buf = malloc(end ? end : 1);
        unit_fill_random(&rs, buf, end);
        for (size_t at = start & ~(size_t)7; at + 8 <= end; at += 8)
            if (unit_rand(&rs) % 2) /* plausible lengths */
                qcow2_put_be32(buf + at + 4, (uint32_t)unit_range(&rs, 0, 64));
        struct qcow2_ext_iter it;
        struct qcow2_ext x;
        qcow2_ext_begin(&it, buf, start, end);
        int steps = 0;
        enum qcow2_ext_status st;
        while ((st = qcow2_ext_next(&it, &x)) == QCOW2_EXT_FOUND && steps++ < 1000)
            CHECK(x.data >= buf + start + 8 && x.data + x.len <= buf + end);
        CHECK(steps < 1000);
        free(buf);
    }
}

/* ---- the extensions zcow writes ------------------------------------------ */

struct ext_seen {
    int n_feature_tables, n_backing_format, end;
    char backing_format[64];
    int has_feature[3][64];
    size_t used;
};

static int parse_extensions(const uint8_t *buf, size_t len, struct ext_seen *s)
{
    memset(s, 0, sizeof(*s));
    size_t at = 0;
    while (at + 8 <= len) {
        uint32_t type = qcow2_be32(buf + at), elen = qcow2_be32(buf + at + 4);
        at += 8;
        if (type == QCOW2_EXT_END) {
            CHECKF(elen == 0, "end marker with length %u", elen);
            s->end = 1;
            s->used = at;
            return 0;
        }
        if (at + elen > len)
            return -1;
        if (type == QCOW2_EXT_FEATURE_TABLE) {
            s->n_feature_tables++;
            CHECKF(elen % 48 == 0, "feature table length %u", elen);
            for (uint32_t i = 0; i + 48 <= elen; i += 48) {
                const uint8_t *f = buf + at + i;
                CHECKF(f[0] <= 2, "feature type %u", f[0]);
                CHECKF(memchr(f + 2, 0, 46) != NULL, "feature name not terminated");
                if (f[0] <= 2 && f[1] < 64)
                    s->has_feature[f[0]][f[1]] = 1;
            }
        } else if (type == QCOW2_EXT_BACKING_FORMAT) {
            s->n_backing_format++;
            if (elen < sizeof(s->backing_format)) {
                memcpy(s->backing_format, buf + at, elen);
                s->backing_format[elen] = 0;
            }
        } else {
            CHECKF(0, "unexpected extension %#x", type);
        }
        /* Extension data is padded to a multiple of 8 bytes. */
        at += (elen + 7) & ~7u;
    }
    return -1;
}

static void test_extensions(void)
{
    uint8_t buf[4096];
    struct ext_seen s;

    memset(buf, 0xee, sizeof(buf));
    int n = qcow2_write_extensions(buf, sizeof(buf), NULL);
    CHECKF(n > 0 && n % 8 == 0, "extensions without backing: %d bytes", n);
    CHECK(parse_extensions(buf, sizeof(buf), &s) == 0);
    CHECK(s.end && s.used == (size_t)n);
    CHECK(s.n_feature_tables == 1 && s.n_backing_format == 0);
    /* The names QEMU writes: every incompatible bit zcow may set or see. */
    for (int bit = 0; bit <= 4; bit++)
        CHECKF(s.has_feature[0][bit], "no name for incompatible bit %d", bit);
    CHECK(s.has_feature[1][0]); /* lazy refcounts */
    CHECK(s.has_feature[2][0]); /* bitmaps */
    CHECKF(buf[n] == 0xee, "wrote past the returned length");

    memset(buf, 0xee, sizeof(buf));
    n = qcow2_write_extensions(buf, sizeof(buf), "qcow2");
    CHECK(n > 0 && n % 8 == 0);
    CHECK(parse_extensions(buf, sizeof(buf), &s) == 0);
    CHECK(s.end && s.used == (size_t)n);
    CHECK(s.n_backing_format == 1 && strcmp(s.backing_format, "qcow2") == 0);
    CHECK(s.n_feature_tables == 1);

    /* Odd-length names are padded with zeros. */
    memset(buf, 0xee, sizeof(buf));
    n = qcow2_write_extensions(buf, sizeof(buf), "raw");
    CHECK(n > 0 && parse_extensions(buf, sizeof(buf), &s) == 0);
    CHECK(strcmp(s.backing_format, "raw") == 0);
    CHECK(buf[8 + 3] == 0 && buf[8 + 7] == 0);

    /* Too small a buffer: -ENOSPC, and nothing written past CAP. */
    int full = qcow2_write_extensions(buf, sizeof(buf), "qcow2");
    for (int cap = 0; cap < full; cap += 7) {
        memset(buf, 0xee, sizeof(buf));
        CHECKF(qcow2_write_extensions(buf, (size_t)cap, "qcow2") == -ENOSPC, "cap %d", cap);
        for (size_t i = (size_t)cap; i < sizeof(buf); i++)
            if (buf[i] != 0xee) {
                CHECKF(0, "cap %d: byte %zu written", cap, i);
                break;
            }
    }
    CHECK(qcow2_write_extensions(buf, (size_t)full, "qcow2") == full);
}

/* ---- an image qemu-img made --------------------------------------------- */

/* qemu-img writes a backing format extension and the feature name table
 * (QEMU's qcow2_update_header); the walk finds both, then the end. */
static void test_qemu_img(void)
{
    char dir[] = "/tmp/zcow-test-qcow2-ext-XXXXXX";
    if (!mkdtemp(dir)) {
        CHECK(0);
        return;
    }
    char cmd[512], path[256];
    snprintf(path, sizeof(path), "%s/top.qcow2", dir);
    snprintf(cmd, sizeof(cmd),
             "cd %s && qemu-img create -q -f qcow2 base.qcow2 1M && "
             "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2",
             dir);
    CHECKF(system(cmd) == 0, "%s", cmd);
    uint8_t hdr[65536] = { 0 };
    FILE *f = fopen(path, "rb");
    size_t n = f ? fread(hdr, 1, sizeof(hdr), f) : 0;
    if (f)
        fclose(f);
    CHECK(n >= 512);
    struct qcow2_header h;
    const char *why;
    CHECK(qcow2_header_decode(hdr, n, &h, &why) == 0);
    CHECK(h.backing_file_offset > h.header_length);
    struct qcow2_ext_iter it;
    struct qcow2_ext x;
    qcow2_ext_begin(&it, hdr, h.header_length, h.backing_file_offset);
    bool format = false, table = false;
    enum qcow2_ext_status st;
    while ((st = qcow2_ext_next(&it, &x)) == QCOW2_EXT_FOUND) {
        if (x.type == QCOW2_EXT_BACKING_FORMAT)
            format = x.len == 5 && !memcmp(x.data, "qcow2", 5);
        char name[QCOW2_FEATURE_NAME_MAX + 1];
        if (x.type == QCOW2_EXT_FEATURE_TABLE)
            table = qcow2_ext_feature_name(&x, 0, 0, name) && !strcmp(name, "dirty bit") &&
                    qcow2_ext_feature_name(&x, 2, 0, name) && !strcmp(name, "bitmaps");
    }
    CHECK(st == QCOW2_EXT_DONE && format && table);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

int main(void)
{
    unit_init("test_qcow2_ext");
    test_walk();
    test_random();
    test_extensions();
    test_qemu_img();
    return unit_done();
}
