/* fuzz_decompress.c - codec_decompress() of both compression types into
 * a 64 KiB cluster, and the round trip.  The first byte picks the type
 * and the level; the rest is the stream.  Properties: no crash or
 * sanitizer report on any stream; what is compressed decompresses to the
 * same bytes. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "zcow.h"

#define CLUSTER 65536

static uint8_t out[CLUSTER], in[CLUSTER], packed[CLUSTER];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int type = data[0] & 1 ? ZCOW_COMPRESSION_ZSTD : ZCOW_COMPRESSION_ZLIB;
    data++;
    size--;
    codec_decompress(type, data, size, out, CLUSTER);

    /* Round trip: the input as a cluster (repeated to fill it). */
    if (!size)
        return 0;
    for (size_t i = 0; i < CLUSTER; i += size)
        memcpy(in + i, data, CLUSTER - i < size ? CLUSTER - i : size);
    int level = type == ZCOW_COMPRESSION_ZSTD ? 1 + ((data[-1] >> 1) % 5)
                                              : (data[-1] >> 1) % (CODEC_ZLIB_MAX_LEVEL + 1);
    int n = codec_compress(type, level, in, CLUSTER, packed, CLUSTER - 1);
    if (n == -ENOSPC)
        return 0;
    if (n <= 0)
        abort();
    memset(out, 0xa5, CLUSTER);
    if (codec_decompress(type, packed, (size_t)n, out, CLUSTER) != 0 || memcmp(in, out, CLUSTER))
        abort();
    return 0;
}
