/* fuzz_reader.c - zcow_open() and zcow_read() of every cluster (up to a
 * bound) of any bytes, through the public API only.  The input is written
 * to a memfd opened through /proc/self/fd.  The backing file name is
 * cleared first, so that a fuzzed image never opens files of the host.
 * Properties: no crash or sanitizer report, bounded time and memory;
 * failures come with a message. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "zcow.h"

#define MAX_CLUSTERS 1024 /* guest clusters read per input */

static int fd = -1;
static char path[64];
static uint8_t *buf, *cbuf;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fd < 0) {
        fd = memfd_create("fuzz_reader", 0);
        buf = malloc(2u << 20);
        cbuf = malloc(4u << 20);
        if (fd < 0 || !buf || !cbuf)
            abort();
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0 || (size && pwrite(fd, data, size, 0) != (ssize_t)size))
        abort();
    if (size >= 20 && !memcmp(data, "QFI\xfb", 4)) {
        static const uint8_t zero[12];
        if (pwrite(fd, zero, sizeof(zero), 8) != (ssize_t)sizeof(zero)) /* backing file */
            abort();
    }
    zcow_image *img;
    if (zcow_open(path, NULL, 0, &img) < 0) {
        if (!zcow_get_error()[0])
            abort();
        return 0;
    }
    static zcow_info *info;
    if (!info && !(info = zcow_info_new()))
        abort();
    if (zcow_get_info(img, info) == 0) {
        uint64_t vsize = zcow_info_get_virtual_size(info);
        uint32_t cluster_size = zcow_info_get_cluster_size(info);
        uint64_t cs = cluster_size ? cluster_size : 65536;
        uint64_t n = (vsize + cs - 1) / cs;
        if (n > MAX_CLUSTERS)
            n = MAX_CLUSTERS;
        for (uint64_t i = 0; i < n; i++) {
            uint64_t off = i * cs;
            size_t len = (size_t)(vsize - off < cs ? vsize - off : cs);
            zcow_read(img, off, buf, len);
            struct zcow_cluster_info ci;
            if (cluster_size && zcow_cluster_info(img, off, &ci) == 0 &&
                ci.kind == ZCOW_CLUSTER_COMPRESSED)
                zcow_read_compressed(img, &ci, cbuf, 4u << 20);
        }
        /* The last bytes of a large image, and a read across its end. */
        if (vsize > 4096) {
            zcow_read(img, vsize - 4096, buf, 4096);
            zcow_read(img, vsize - 512, buf, 4096);
        }
    }
    zcow_close(img);
    return 0;
}
