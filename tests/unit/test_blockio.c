/* test_blockio.c - blk_read(), the one read of any alignment: through
 * O_DIRECT and the page cache, at offsets, lengths and buffer addresses
 * around the 4 KiB alignment and the bounce buffer's size, past the end
 * of a file whose size is not aligned.  The expected bytes come from the
 * file's contents as written, zeros past its end. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blockio.h"
#include "unit.h"
#include "zcow.h"

static char dir[] = "/var/tmp/zcow-test-blockio.XXXXXX";

/* 3 MiB + 1000 bytes: three bounce buffers and a tail that is not a
 * whole block. */
#define FILE_LEN ((3u << 20) + 1000)

static void test_reads(const uint8_t *model, const char *path, bool direct)
{
    struct blk b;
    int r = blk_open_read(&b, path, direct);
    CHECKF(r == 0, "open: %s", zcow_get_error());
    if (r)
        return;
    /* clang-format off */
    const uint64_t offs[] = { 0, 1, 511, 512, 4095, 4096, 4097, 65536 + 7, (1u << 20) - 1,
                              FILE_LEN - 4096, FILE_LEN - 1, FILE_LEN, FILE_LEN + 4096 };
    const size_t lens[] = { 0, 1, 7, 512, 4095, 4096, 4097, 8192, BLK_BOUNCE_MAX - 1,
                            BLK_BOUNCE_MAX, BLK_BOUNCE_MAX + 4097, 3u << 20 };
    /* clang-format on */
    size_t cap = (3u << 20) + 2 * BLK_ALIGN;
    uint8_t *raw = blk_alloc(cap), *want = malloc(cap);
    long wrong = 0;
    for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
        for (size_t j = 0; j < sizeof(lens) / sizeof(lens[0]); j++) {
            for (size_t shift = 0; shift <= 1; shift++) { /* aligned, then not */
                uint64_t off = offs[i];
                size_t len = lens[j];
                uint8_t *buf = raw + shift;
                memset(raw, 0xa5, cap);
                for (size_t k = 0; k < len; k++)
                    want[k] = off + k < FILE_LEN ? model[off + k] : 0;
                r = blk_read(&b, buf, len, off);
                if (r != 0 || memcmp(buf, want, len) != 0 || buf[len] != 0xa5 ||
                    (shift && raw[0] != 0xa5)) {
                    if (wrong++ < 5)
                        CHECKF(0, "%s read of %zu at %llu (buffer +%zu): %d %s",
                               direct ? "direct" : "cached", len, (unsigned long long)off, shift, r,
                               r ? zcow_get_error() : "wrong bytes");
                }
            }
        }
    }
    CHECKF(wrong == 0, "%ld wrong reads (%s)", wrong, direct ? "direct" : "cached");
    free(raw);
    free(want);
    blk_close(&b);
}

int main(void)
{
    unit_init("test_blockio");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    char path[512];
    snprintf(path, sizeof(path), "%s/data", dir);
    uint8_t *model = malloc(FILE_LEN);
    uint64_t rs = unit_stream(1);
    unit_fill_random(&rs, model, FILE_LEN);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0 && write(fd, model, FILE_LEN) == (ssize_t)FILE_LEN);
    close(fd);

    /* The direct pass must really be direct, or it tests nothing new. */
    struct blk b;
    CHECK(blk_open_read(&b, path, true) == 0);
    CHECKF(b.direct, "%s refuses O_DIRECT", dir);
    blk_close(&b);

    test_reads(model, path, true);
    test_reads(model, path, false);

    unlink(path);
    rmdir(dir);
    free(model);
    return unit_done();
}
