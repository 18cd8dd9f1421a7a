/* fuzz_blkhash.c - digest_load() on any bytes: the block-hash files that
 * incremental backups start from are read from the backup directory, so
 * they are untrusted.  The input is written to a memfd and loaded for the
 * disk size its header claims (so that a load can get past the header)
 * and for 1 MiB.  Properties: no crash or sanitizer report, bounded time
 * and memory; a failed load has a message and gives no digest; a load
 * that succeeds gives the digest the file records (the loader checks it:
 * here it is recomputed and compared again). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "digest.h"
#include "zcow.h"

static int fd = -1;
static char path[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void load(uint64_t disk, const uint8_t *data, size_t size)
{
    struct digest *d = (struct digest *)&d;
    int r = digest_load(path, disk, &d);
    if (r < 0) {
        if (d || !zcow_get_error()[0])
            abort();
        return;
    }
    if (size < 80)
        abort();
    /* The recorded digest, as hex, is what the loaded hashes give. */
    char hex[DIGEST_HEX_SIZE], want[DIGEST_HEX_SIZE];
    digest_final(d, hex);
    for (int i = 0; i < DIGEST_HASH; i++)
        snprintf(want + 2 * i, 3, "%02x", data[48 + i]);
    if (strcmp(hex, want))
        abort();
    digest_free(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fd < 0) {
        fd = memfd_create("fuzz_blkhash", 0);
        if (fd < 0) {
            perror("memfd_create");
            abort();
        }
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0 || (size && pwrite(fd, data, size, 0) != (ssize_t)size))
        abort();
    uint64_t claimed = 0;
    if (size >= 24)
        memcpy(&claimed, data + 16, 8); /* little-endian hosts only: a fuzzer's */
    /* Within the file's reach: 32 bytes of entries per 64 KiB. */
    if (claimed / DIGEST_BLOCK * DIGEST_HASH <= (uint64_t)size)
        load(claimed, data, size);
    load(1u << 20, data, size);
    return 0;
}
