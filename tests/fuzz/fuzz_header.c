/* fuzz_header.c - the qcow2 header decoder, the header extension parser
 * and the compressed cluster descriptor.  Properties: no crash or
 * sanitizer report on any input; a header that decodes encodes back to
 * bytes that decode to the same fields; what the extension parser accepts
 * obeys QEMU's limits; a descriptor decodes to the range it encodes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "qcow2.h"

static uint8_t cluster[2u << 20]; /* the largest cluster, zero-filled */

static void header_round_trip(const struct qcow2_header *h)
{
    uint8_t buf[QCOW2_HEADER_V3_LEN];
    struct qcow2_header again;
    const char *why;
    qcow2_header_encode(h, buf);
    if (qcow2_header_decode(buf, sizeof(buf), &again, &why) != 0)
        abort();
    if (memcmp(h, &again, sizeof(again)) != 0)
        abort();
}

static void extensions(const uint8_t *data, size_t size, const struct qcow2_header *h)
{
    size_t cs = (size_t)1 << h->cluster_bits;
    size_t n = size < cs ? size : cs;
    memcpy(cluster, data, n);
    memset(cluster + n, 0, cs - n);
    struct check_extensions ext;
    const char *why;
    if (check_parse_extensions(cluster, cs, h, &ext, &why) != 0) {
        if (!why)
            abort();
        return;
    }
    if (ext.nb_bitmaps && (ext.nb_bitmaps > 65535 || ext.bitmap_dir_offset % cs))
        abort();
    if (ext.crypto_length && ext.crypto_offset % cs)
        abort();
}

static void descriptor(const uint8_t *data, size_t size)
{
    if (size < 17)
        return;
    unsigned cb = 9 + data[0] % 13;
    uint64_t cs = 1ull << cb;
    uint64_t off = qcow2_be64(data + 1) & ((1ull << qcow2_csize_shift(cb)) - 1);
    uint64_t len = 1 + qcow2_be64(data + 9) % (cs - 1);
    uint64_t d = qcow2_compressed_descriptor(cb, off, len);
    uint64_t off2, len2;
    qcow2_decode_compressed(cb, d, &off2, &len2);
    /* The reader reads whole sectors: the same start, at least LEN bytes,
     * ending in the sector where the stream ends. */
    if (off2 != off || len2 < len || (off2 + len2 - 1) / 512 != (off + len - 1) / 512)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qcow2_header h;
    const char *why = NULL;
    descriptor(data, size);
    if (qcow2_header_decode(data, size, &h, &why) != 0) {
        if (!why)
            abort();
        return 0;
    }
    header_round_trip(&h);
    if (h.backing_file_offset <= (1ull << h.cluster_bits))
        extensions(data, size, &h);
    return 0;
}
