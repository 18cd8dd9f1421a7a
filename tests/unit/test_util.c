/* test_util.c - the helpers of lib/util.h against plain reference
 * versions: buf_is_zero at every length and alignment around its word and
 * block boundaries, with one non-zero byte at every position. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "unit.h"
#include "util.h"

/* The reference: one byte at a time. */
static bool ref_is_zero(const unsigned char *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (p[i])
            return false;
    return true;
}

/* Every start alignment 0..15 and length 0..300 (past the 16-byte head,
 * one 64-byte block and its tail several times), zero and with one set
 * byte at each position: a bit at each end of the byte. */
static void test_small(void)
{
    static unsigned char buf[4096] __attribute__((aligned(64)));
    long wrong = 0;
    for (size_t at = 0; at < 16; at++) {
        for (size_t len = 0; len <= 300; len++) {
            unsigned char *p = buf + at;
            memset(buf, 0, sizeof(buf));
            if (buf_is_zero(p, len) != true)
                wrong++;
            /* Bytes just outside the range do not count. */
            if (at)
                p[-1] = 0xff;
            p[len] = 0xff;
            if (buf_is_zero(p, len) != ref_is_zero(p, len))
                wrong++;
            p[len] = 0;
            for (size_t k = 0; k < len; k++) {
                for (unsigned v = 1; v <= 0x80; v <<= 7) {
                    p[k] = (unsigned char)v;
                    if (buf_is_zero(p, len) != false)
                        wrong++;
                    p[k] = 0;
                }
            }
        }
    }
    CHECKF(wrong == 0, "%ld wrong answers", wrong);
}

/* Cluster-sized buffers (4 KiB .. 2 MiB): zero, one random byte set at a
 * random place, the last byte set, the first byte set. */
static void test_clusters(void)
{
    uint64_t rs = unit_stream(1);
    for (size_t cs = 4096; cs <= (2u << 20); cs <<= 1) {
        unsigned char *p = aligned_alloc(4096, cs);
        memset(p, 0, cs);
        CHECKF(buf_is_zero(p, cs), "cluster of %zu zero bytes", cs);
        for (int i = 0; i < 64; i++) {
            size_t k = (size_t)unit_range(&rs, 0, cs - 1);
            p[k] = (unsigned char)unit_range(&rs, 1, 255);
            CHECKF(!buf_is_zero(p, cs), "byte %zu of %zu set", k, cs);
            CHECKF(buf_is_zero(p, k) && buf_is_zero(p + k + 1, cs - k - 1),
                   "the zeros around byte %zu of %zu", k, cs);
            p[k] = 0;
        }
        p[cs - 1] = 1;
        CHECKF(!buf_is_zero(p, cs), "last byte of %zu set", cs);
        p[cs - 1] = 0;
        p[0] = 1;
        CHECKF(!buf_is_zero(p, cs), "first byte of %zu set", cs);
        free(p);
    }
}

int main(void)
{
    unit_init("test_util");
    test_small();
    test_clusters();
    return unit_done();
}
