/* fuzz_check.c - zcow_check() on any bytes.  The input is written to a
 * memfd and checked through /proc/self/fd; an odd-sized input is also
 * decompressed (ZCOW_CHECK_DECOMPRESS).  Properties: no crash or
 * sanitizer report, bounded time and memory; a check that ran reports an
 * image end offset, and one that did not, a message. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "zcow.h"

static int fd = -1;
static char path[64];

static void count_line(void *opaque, const char *line)
{
    (void)line;
    ++*(unsigned long *)opaque;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fd < 0) {
        fd = memfd_create("fuzz_check", 0);
        if (fd < 0) {
            perror("memfd_create");
            abort();
        }
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0 || (size && pwrite(fd, data, size, 0) != (ssize_t)size))
        abort();
    static zcow_check_result *res;
    if (!res && !(res = zcow_check_result_new()))
        abort();
    unsigned long lines = 0;
    int r = zcow_check(path, size % 2 ? ZCOW_CHECK_DECOMPRESS : 0, count_line, &lines, res);
    if (r < 0 && !zcow_get_error()[0])
        abort();
    if (r == 0 && (zcow_check_result_get_image_end_offset(res) == 0 ||
                   zcow_check_result_get_cluster_size(res) == 0))
        abort();
    if (r == 0 && !zcow_check_result_get_corruptions(res) && !zcow_check_result_get_leaks(res) &&
        !zcow_check_result_get_check_errors(res) && zcow_check_result_get_decompress_failures(res))
        abort();
    return 0;
}
