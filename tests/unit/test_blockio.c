/* test_blockio.c - blk_read(), the one read of any alignment: through
 * O_DIRECT and the page cache, at offsets, lengths and buffer addresses
 * around the 4 KiB alignment and the bounce buffer's size, past the end
 * of a file whose size is not aligned.  The expected bytes come from the
 * file's contents as written, zeros past its end.  blk_pwrite_rmw(), the
 * write of any alignment, from threads sharing blocks: no byte lost. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
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

/* blk_pwrite_rmw from 8 threads, each writing its own 100-byte pieces,
 * interleaved with the others' in the same 4 KiB blocks: under O_DIRECT
 * each is a read-modify-write of a whole block, and without the
 * serialisation two of them in one block lose one another's bytes.  The
 * file must hold every piece. */
enum { RMW_THREADS = 8, RMW_PIECE = 100, RMW_ROUNDS = 200 };

struct rmw_arg {
    struct blk *b;
    struct blk_rmw *m;
    int id;
    atomic_int *failed;
};

static uint8_t rmw_byte(int id, int round) { return (uint8_t)(1 + id * 31 + round); }

static void *rmw_thread(void *p)
{
    struct rmw_arg *a = p;
    uint8_t piece[RMW_PIECE];
    for (int round = 0; round < RMW_ROUNDS; round++) {
        memset(piece, rmw_byte(a->id, round), sizeof(piece));
        /* Piece (round, id) at (round * RMW_THREADS + id) * RMW_PIECE. */
        uint64_t off = ((uint64_t)round * RMW_THREADS + (uint64_t)a->id) * RMW_PIECE;
        if (blk_pwrite_rmw(a->b, a->m, piece, sizeof(piece), off) != 0)
            atomic_fetch_add(a->failed, 1);
    }
    return NULL;
}

static void test_rmw(const char *path, bool direct)
{
    struct blk b;
    CHECK(blk_create(&b, path, direct, false, false) == 0);
    CHECKF(b.direct == direct, "%s refuses O_DIRECT", dir);
    struct blk_rmw m;
    blk_rmw_init(&m);
    atomic_int failed = 0;
    struct rmw_arg args[RMW_THREADS];
    pthread_t th[RMW_THREADS];
    for (int i = 0; i < RMW_THREADS; i++) {
        args[i] = (struct rmw_arg){ &b, &m, i, &failed };
        CHECK(pthread_create(&th[i], NULL, rmw_thread, &args[i]) == 0);
    }
    for (int i = 0; i < RMW_THREADS; i++)
        pthread_join(th[i], NULL);
    CHECK(atomic_load(&failed) == 0);
    blk_rmw_destroy(&m);
    blk_close(&b);

    size_t len = (size_t)RMW_ROUNDS * RMW_THREADS * RMW_PIECE;
    uint8_t *got = malloc(len);
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0 && read(fd, got, len) == (ssize_t)len);
    close(fd);
    long lost = 0;
    for (int round = 0; round < RMW_ROUNDS; round++)
        for (int id = 0; id < RMW_THREADS; id++) {
            const uint8_t *p = got + ((size_t)round * RMW_THREADS + (size_t)id) * RMW_PIECE;
            for (int k = 0; k < RMW_PIECE; k++)
                if (p[k] != rmw_byte(id, round)) {
                    lost++;
                    break;
                }
        }
    CHECKF(lost == 0, "%ld of %d pieces lost (%s)", lost, RMW_ROUNDS * RMW_THREADS,
           direct ? "O_DIRECT" : "page cache");
    free(got);
    unlink(path);
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
    char rmw_path[600];
    snprintf(rmw_path, sizeof(rmw_path), "%s/rmw", dir);
    test_rmw(rmw_path, true);
    test_rmw(rmw_path, false);

    unlink(path);
    rmdir(dir);
    free(model);
    return unit_done();
}
