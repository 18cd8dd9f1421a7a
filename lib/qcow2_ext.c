/* qcow2_ext.c - header extensions (see qcow2_ext.h). */
#include "qcow2_ext.h"

#include <errno.h>
#include <string.h>

void qcow2_ext_begin(struct qcow2_ext_iter *it, const void *hdr, size_t start, size_t end)
{
    it->hdr = hdr;
    it->off = start;
    it->end = end;
}

enum qcow2_ext_status qcow2_ext_next(struct qcow2_ext_iter *it, struct qcow2_ext *e)
{
    memset(e, 0, sizeof(*e));
    if (it->off >= it->end)
        return QCOW2_EXT_DONE;
    if (it->end - it->off < 8)
        return QCOW2_EXT_SHORT;
    e->type = qcow2_be32(it->hdr + it->off);
    e->len = qcow2_be32(it->hdr + it->off + 4);
    it->off += 8;
    /* QEMU checks the length before it looks at the type, the end marker
     * included. */
    if (e->len > it->end - it->off)
        return QCOW2_EXT_OVERRUN;
    if (e->type == QCOW2_EXT_END) {
        it->off = it->end;
        return QCOW2_EXT_DONE;
    }
    e->data = it->hdr + it->off;
    it->off += ((size_t)e->len + 7) & ~(size_t)7; /* may pass the end: then done */
    return QCOW2_EXT_FOUND;
}

bool qcow2_ext_feature_name(const struct qcow2_ext *e, unsigned type, unsigned bit,
                            char name[QCOW2_FEATURE_NAME_MAX + 1])
{
    for (uint32_t i = 0; i + QCOW2_FEATURE_ENTRY_LEN <= e->len; i += QCOW2_FEATURE_ENTRY_LEN) {
        const uint8_t *f = e->data + i;
        if (f[0] == type && f[1] == bit) {
            memcpy(name, f + 2, QCOW2_FEATURE_NAME_MAX);
            name[QCOW2_FEATURE_NAME_MAX] = 0;
            return true;
        }
    }
    return false;
}

struct feature_name {
    uint8_t type, bit;
    const char *name;
};

/* The names QEMU writes in the feature name table of every v3 image. */
/* clang-format off */
static const struct feature_name feature_names[] = {
    { 0, 0, "dirty bit" },
    { 0, 1, "corrupt bit" },
    { 0, 2, "external data file" },
    { 0, 3, "compression type" },
    { 0, 4, "extended L2 entries" },
    { 1, 0, "lazy refcounts" },
    { 2, 0, "bitmaps" },
    { 2, 1, "raw external data" },
};
/* clang-format on */

static uint8_t *put_extension_header(uint8_t *p, uint32_t type, uint32_t len)
{
    qcow2_put_be32(p, type);
    qcow2_put_be32(p + 4, len);
    return p + 8;
}

int qcow2_write_extensions(void *buf, size_t cap, const char *backing_format)
{
    size_t n_features = sizeof(feature_names) / sizeof(feature_names[0]);
    size_t fmt_len = backing_format ? strlen(backing_format) : 0;
    size_t need = 8 + n_features * QCOW2_FEATURE_ENTRY_LEN + 8;
    if (fmt_len)
        need += 8 + ((fmt_len + 7) & ~(size_t)7);
    if (need > cap)
        return -ENOSPC;
    uint8_t *p = buf;
    memset(p, 0, need);
    if (fmt_len) {
        p = put_extension_header(p, QCOW2_EXT_BACKING_FORMAT, (uint32_t)fmt_len);
        memcpy(p, backing_format, fmt_len);
        p += (fmt_len + 7) & ~(size_t)7;
    }
    p = put_extension_header(p, QCOW2_EXT_FEATURE_TABLE,
                             (uint32_t)(n_features * QCOW2_FEATURE_ENTRY_LEN));
    for (size_t i = 0; i < n_features; i++, p += QCOW2_FEATURE_ENTRY_LEN) {
        p[0] = feature_names[i].type;
        p[1] = feature_names[i].bit;
        strncpy((char *)p + 2, feature_names[i].name, QCOW2_FEATURE_NAME_MAX);
    }
    put_extension_header(p, QCOW2_EXT_END, 0);
    return (int)need;
}
