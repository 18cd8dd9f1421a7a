/* qcow2.c - encode and decode the on-disk structures of qcow2. */
#include "qcow2.h"

#include <errno.h>
#include <string.h>

void qcow2_header_encode(const struct qcow2_header *h, void *buf)
{
    uint8_t *p = buf;
    memset(p, 0, QCOW2_HEADER_V3_LEN);
    qcow2_put_be32(p + 0, h->magic);
    qcow2_put_be32(p + 4, h->version);
    qcow2_put_be64(p + 8, h->backing_file_offset);
    qcow2_put_be32(p + 16, h->backing_file_size);
    qcow2_put_be32(p + 20, h->cluster_bits);
    qcow2_put_be64(p + 24, h->size);
    qcow2_put_be32(p + 32, h->crypt_method);
    qcow2_put_be32(p + 36, h->l1_size);
    qcow2_put_be64(p + 40, h->l1_table_offset);
    qcow2_put_be64(p + 48, h->refcount_table_offset);
    qcow2_put_be32(p + 56, h->refcount_table_clusters);
    qcow2_put_be32(p + 60, h->nb_snapshots);
    qcow2_put_be64(p + 64, h->snapshots_offset);
    qcow2_put_be64(p + 72, h->incompatible_features);
    qcow2_put_be64(p + 80, h->compatible_features);
    qcow2_put_be64(p + 88, h->autoclear_features);
    qcow2_put_be32(p + 96, h->refcount_order);
    qcow2_put_be32(p + 100, h->header_length);
    p[104] = h->compression_type;
}

int qcow2_header_decode(const void *buf, size_t len, struct qcow2_header *h, const char **why)
{
    const uint8_t *p = buf;
    memset(h, 0, sizeof(*h));
    if (len < QCOW2_HEADER_V2_LEN) {
        *why = "file too short for a qcow2 header";
        return -EINVAL;
    }
    h->magic = qcow2_be32(p + 0);
    if (h->magic != QCOW2_MAGIC) {
        *why = "not a qcow2 image (bad magic)";
        return -EINVAL;
    }
    h->version = qcow2_be32(p + 4);
    h->backing_file_offset = qcow2_be64(p + 8);
    h->backing_file_size = qcow2_be32(p + 16);
    h->cluster_bits = qcow2_be32(p + 20);
    h->size = qcow2_be64(p + 24);
    h->crypt_method = qcow2_be32(p + 32);
    h->l1_size = qcow2_be32(p + 36);
    h->l1_table_offset = qcow2_be64(p + 40);
    h->refcount_table_offset = qcow2_be64(p + 48);
    h->refcount_table_clusters = qcow2_be32(p + 56);
    h->nb_snapshots = qcow2_be32(p + 60);
    h->snapshots_offset = qcow2_be64(p + 64);
    if (h->version == 2) {
        h->refcount_order = 4;
        h->header_length = QCOW2_HEADER_V2_LEN;
    } else if (h->version == 3) {
        if (len < 104) {
            *why = "file too short for a version 3 header";
            return -EINVAL;
        }
        h->incompatible_features = qcow2_be64(p + 72);
        h->compatible_features = qcow2_be64(p + 80);
        h->autoclear_features = qcow2_be64(p + 88);
        h->refcount_order = qcow2_be32(p + 96);
        h->header_length = qcow2_be32(p + 100);
        if (h->header_length < 104 || h->header_length % 8 != 0) {
            *why = "bad header length";
            return -EINVAL;
        }
        if (h->header_length > 104 && len >= 105)
            h->compression_type = p[104];
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
