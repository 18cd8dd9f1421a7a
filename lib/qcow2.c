/* qcow2.c - encode and decode the on-disk structures of qcow2. */
#include "qcow2.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>

/* The header's fields.  struct qcow2_header is laid out as the header on
 * disk (packed, 112 bytes), so each member's offset in it is the field's
 * position in the header (the spec's "Byte" column): encoding and decoding
 * convert each member's byte order in place. */
struct field {
    uint8_t at, width;
};

#define FIELD(name)                                                                                \
    {                                                                                              \
        offsetof(struct qcow2_header, name), sizeof(((struct qcow2_header *)0)->name)              \
    }

static const struct field fields[] = {
    FIELD(magic),
    FIELD(version),
    FIELD(backing_file_offset),
    FIELD(backing_file_size),
    FIELD(cluster_bits),
    FIELD(size),
    FIELD(crypt_method),
    FIELD(l1_size),
    FIELD(l1_table_offset),
    FIELD(refcount_table_offset),
    FIELD(refcount_table_clusters),
    FIELD(nb_snapshots),
    FIELD(snapshots_offset),
    /* version 3 */
    FIELD(incompatible_features),
    FIELD(compatible_features),
    FIELD(autoclear_features),
    FIELD(refcount_order),
    FIELD(header_length),
    FIELD(compression_type),
};

/* Convert the fields in bytes [FROM, TO) between big-endian (disk) and
 * host order; the conversion is its own inverse. */
static void swap_fields(const uint8_t *in, uint8_t *out, unsigned from, unsigned to)
{
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        unsigned at = fields[i].at;
        if (at < from || at + fields[i].width > to)
            continue;
        switch (fields[i].width) {
        case 1: out[at] = in[at]; break;
        case 4: {
            uint32_t v;
            memcpy(&v, in + at, 4);
            v = htobe32(v);
            memcpy(out + at, &v, 4);
            break;
        }
        default: {
            uint64_t v;
            memcpy(&v, in + at, 8);
            v = htobe64(v);
            memcpy(out + at, &v, 8);
            break;
        }
        }
    }
}

void qcow2_header_encode(const struct qcow2_header *h, void *buf)
{
    memset(buf, 0, QCOW2_HEADER_V3_LEN);
    swap_fields((const uint8_t *)h, buf, 0, QCOW2_HEADER_V3_LEN);
}

int qcow2_header_decode(const void *buf, size_t len, struct qcow2_header *h, const char **why)
{
    const uint8_t *p = buf;
    memset(h, 0, sizeof(*h));
    if (len < QCOW2_HEADER_V2_LEN) {
        *why = "file too short for a qcow2 header";
        return -EINVAL;
    }
    swap_fields(p, (uint8_t *)h, 0, QCOW2_HEADER_V2_LEN);
    if (h->magic != QCOW2_MAGIC) {
        *why = "not a qcow2 image (bad magic)";
        return -EINVAL;
    }
    if (h->version == 2) {
        h->refcount_order = 4;
        h->header_length = QCOW2_HEADER_V2_LEN;
    } else if (h->version == 3) {
        if (len < 104) {
            *why = "file too short for a version 3 header";
            return -EINVAL;
        }
        swap_fields(p, (uint8_t *)h, QCOW2_HEADER_V2_LEN, 104);
        if (h->header_length < 104 || h->header_length % 8 != 0) {
            *why = "bad header length";
            return -EINVAL;
        }
        if (h->header_length > 104 && len >= 105)
            swap_fields(p, (uint8_t *)h, 104, 105); /* the compression type */
    } else {
        *why = "unsupported qcow2 version";
        return -EINVAL;
    }
    if (h->cluster_bits < QCOW2_MIN_CLUSTER_BITS || h->cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
        *why = "cluster size out of range";
        return -EINVAL;
    }
    if (h->header_length > (1u << h->cluster_bits)) {
        *why = "header longer than a cluster";
        return -EINVAL;
    }
    if (h->refcount_order > 6) {
        *why = "refcount width out of range";
        return -EINVAL;
    }
    if (h->compression_type > 1) {
        *why = "unknown compression type";
        return -EINVAL;
    }
    if ((h->compression_type != 0) != !!(h->incompatible_features & QCOW2_INCOMPAT_COMPRESSION)) {
        *why = "compression type and its feature bit disagree";
        return -EINVAL;
    }
    *why = NULL;
    return 0;
}
