/* digest.c - content digests of disks (see digest.h). */
#include "digest.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blockio.h"
#include "error.h"
#include "util.h"
#include "zcow.h"

/* The block-hash file: a header of HEADER_BYTES, then DIGEST_HASH bytes
 * per block.  The header (little-endian):
 *     0  magic "ZCOWBLKH"      24  hash size (32), u32
 *     8  version (1), u32      28  entries' offset (4096), u32
 *    12  block size, u32       32  algorithm, NUL padded, 16 bytes
 *    16  disk size, u64        48  the digest, 32 bytes
 * The entries start on a page, so that holes in the file are whole pages
 * of zero entries. */
#define MAGIC "ZCOWBLKH"
#define VERSION 1
#define HEADER_BYTES 4096u
#define PAGE 4096u
#define LOAD_CHUNK (1u << 20)

struct digest {
    uint64_t size;
    uint64_t n_blocks;
    uint8_t *hashes; /* n_blocks entries; all zero: the zero block */
    size_t map_len;
    EVP_MD *md;
    uint8_t zero_hash[DIGEST_HASH]; /* of a zero block */
    uint8_t zero_last[DIGEST_HASH]; /* of the last block, zero (it may be short) */
};

static const uint8_t no_hash[DIGEST_HASH];

static int hash(const struct digest *d, const void *buf, size_t len, uint8_t out[DIGEST_HASH])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned n = 0;
    int ok = ctx && EVP_DigestInit_ex2(ctx, d->md, NULL) && EVP_DigestUpdate(ctx, buf, len) &&
             EVP_DigestFinal_ex(ctx, out, &n) && n == DIGEST_HASH;
    EVP_MD_CTX_free(ctx);
    return ok ? 0 : zerr(ENOMEM, "cannot compute SHA-256 (libcrypto failed)");
}

static bool is_zero_entry(const uint8_t *e) { return !memcmp(e, no_hash, DIGEST_HASH); }

uint64_t digest_size(const struct digest *d) { return d->size; }

static uint64_t block_len(const struct digest *d, uint64_t i)
{
    uint64_t off = i * DIGEST_BLOCK;
    return d->size - off < DIGEST_BLOCK ? d->size - off : DIGEST_BLOCK;
}

int digest_new(uint64_t size, struct digest **out)
{
    *out = NULL;
    /* Far beyond any disk (qcow2 stops at 2^61), and no overflow below. */
    if (size > (1ull << 62))
        return zerr(EFBIG, "a disk of %llu bytes is too large for a digest",
                    (unsigned long long)size);
    struct digest *d = calloc(1, sizeof(*d));
    if (!d)
        return zerr(ENOMEM, "out of memory");
    d->size = size;
    d->n_blocks = (size + DIGEST_BLOCK - 1) / DIGEST_BLOCK;
    d->map_len = (d->n_blocks * DIGEST_HASH + PAGE - 1) / PAGE * PAGE;
    if (!d->map_len)
        d->map_len = PAGE;
    /* Pages are taken only where an entry is written: a sparse disk's
     * zero blocks cost nothing. */
    d->hashes = mmap(NULL, d->map_len, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (d->hashes == MAP_FAILED) {
        int e = errno;
        free(d);
        return zerr_sys(e, "cannot map the block hashes of a disk of %llu bytes",
                        (unsigned long long)size);
    }
    d->md = EVP_MD_fetch(NULL, "SHA2-256", NULL);
    void *zeros = calloc(1, DIGEST_BLOCK);
    int r = !d->md || !zeros ? zerr(ENOMEM, "cannot set up SHA-256 (libcrypto)") : 0;
    if (r == 0)
        r = hash(d, zeros, DIGEST_BLOCK, d->zero_hash);
    if (r == 0 && d->n_blocks)
        r = hash(d, zeros, block_len(d, d->n_blocks - 1), d->zero_last);
    free(zeros);
    if (r < 0) {
        digest_free(d);
        return r;
    }
    *out = d;
    return 0;
}

void digest_free(struct digest *d)
{
    if (!d)
        return;
    if (d->hashes && d->hashes != MAP_FAILED)
        munmap(d->hashes, d->map_len);
    EVP_MD_free(d->md);
    free(d);
}

/* The blocks [OFF, OFF+LEN) clipped to the disk: first and end index. */
static int blocks(const struct digest *d, const char *what, uint64_t off, uint64_t len,
                  uint64_t *first, uint64_t *end)
{
    uint64_t stop = off + len < off || off + len > d->size ? d->size : off + len;
    if (off % DIGEST_BLOCK || (stop % DIGEST_BLOCK && stop != d->size) || off > d->size)
        return zerr(EINVAL, "%s: [%llu, +%llu) is not a run of %u-byte blocks of a disk of %llu",
                    what, (unsigned long long)off, (unsigned long long)len, DIGEST_BLOCK,
                    (unsigned long long)d->size);
    *first = off / DIGEST_BLOCK;
    *end = (stop + DIGEST_BLOCK - 1) / DIGEST_BLOCK;
    return 0;
}

int digest_data(struct digest *d, uint64_t off, const void *buf, size_t len)
{
    uint64_t i, end;
    int r = blocks(d, "digest_data", off, len, &i, &end);
    const uint8_t *p = buf;
    for (; r == 0 && i < end; i++, p += DIGEST_BLOCK) {
        uint8_t *e = d->hashes + i * DIGEST_HASH;
        uint64_t n = block_len(d, i);
        /* A zero block keeps (or gets) the zero entry: no hash, and no
         * page of entries for a hole read as data. */
        if (buf_is_zero(p, n)) {
            if (!is_zero_entry(e))
                memset(e, 0, DIGEST_HASH);
            continue;
        }
        r = hash(d, p, n, e);
    }
    return r;
}

int digest_zero(struct digest *d, uint64_t off, uint64_t len)
{
    uint64_t i, end;
    int r = blocks(d, "digest_zero", off, len, &i, &end);
    for (; r == 0 && i < end; i++) {
        uint8_t *e = d->hashes + i * DIGEST_HASH;
        if (!is_zero_entry(e))
            memset(e, 0, DIGEST_HASH);
    }
    return r;
}

/* The outer hash over the entries, zero entries replaced by the zero
 * block's hash; fed a batch at a time. */
static int outer(const struct digest *d, uint8_t out[DIGEST_HASH])
{
    enum { BATCH = 2048 };
    uint8_t *buf = malloc(BATCH * DIGEST_HASH);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = buf && ctx && EVP_DigestInit_ex2(ctx, d->md, NULL);
    for (uint64_t i = 0; ok && i < d->n_blocks; i += BATCH) {
        uint64_t n = d->n_blocks - i < BATCH ? d->n_blocks - i : BATCH;
        for (uint64_t j = 0; j < n; j++) {
            const uint8_t *e = d->hashes + (i + j) * DIGEST_HASH;
            if (is_zero_entry(e))
                e = i + j == d->n_blocks - 1 ? d->zero_last : d->zero_hash;
            memcpy(buf + j * DIGEST_HASH, e, DIGEST_HASH);
        }
        ok = EVP_DigestUpdate(ctx, buf, n * DIGEST_HASH);
    }
    unsigned len = 0;
    ok = ok && EVP_DigestFinal_ex(ctx, out, &len) && len == DIGEST_HASH;
    EVP_MD_CTX_free(ctx);
    free(buf);
    return ok ? 0 : zerr(ENOMEM, "cannot compute SHA-256 (libcrypto failed)");
}

uint64_t digest_differences(const struct digest *a, const struct digest *b, uint64_t *first)
{
    uint64_t n = 0, blocks = a->n_blocks < b->n_blocks ? a->n_blocks : b->n_blocks;
    *first = UINT64_MAX;
    /* Zero blocks are zero entries in both (digest_data, the file's
     * holes): entries compare as they are. */
    for (uint64_t i = 0; i < blocks; i++) {
        if (!memcmp(a->hashes + i * DIGEST_HASH, b->hashes + i * DIGEST_HASH, DIGEST_HASH))
            continue;
        if (!n++)
            *first = i;
    }
    return n;
}

static void to_hex(const uint8_t *h, char hex[DIGEST_HEX_SIZE])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < DIGEST_HASH; i++) {
        hex[2 * i] = digits[h[i] >> 4];
        hex[2 * i + 1] = digits[h[i] & 15];
    }
    hex[2 * DIGEST_HASH] = 0;
}

void digest_final(const struct digest *d, char hex[DIGEST_HEX_SIZE])
{
    uint8_t h[DIGEST_HASH];
    if (outer(d, h) < 0)
        memset(h, 0, sizeof(h)); /* never a real digest: any comparison fails */
    to_hex(h, hex);
}

/* ---- the block-hash file ------------------------------------------------------ */

static void make_header(const struct digest *d, const uint8_t digest[DIGEST_HASH],
                        uint8_t h[HEADER_BYTES])
{
    memset(h, 0, HEADER_BYTES);
    memcpy(h, MAGIC, 8);
    uint32_t v32 = htole32(VERSION);
    memcpy(h + 8, &v32, 4);
    v32 = htole32(DIGEST_BLOCK);
    memcpy(h + 12, &v32, 4);
    uint64_t v64 = htole64(d->size);
    memcpy(h + 16, &v64, 8);
    v32 = htole32(DIGEST_HASH);
    memcpy(h + 24, &v32, 4);
    v32 = htole32(HEADER_BYTES);
    memcpy(h + 28, &v32, 4);
    memcpy(h + 32, DIGEST_NAME, strlen(DIGEST_NAME));
    memcpy(h + 48, digest, DIGEST_HASH);
}

int digest_save(const struct digest *d, const char *path)
{
    uint8_t *header = malloc(HEADER_BYTES);
    uint8_t sum[DIGEST_HASH];
    if (!header)
        return zerr(ENOMEM, "out of memory");
    int r = outer(d, sum);
    if (r < 0) {
        free(header);
        return r;
    }
    make_header(d, sum, header);
    struct blk b;
    r = blk_create(&b, path, false, false, true);
    if (r < 0) {
        free(header);
        return r;
    }
    r = blk_pwrite(&b, header, HEADER_BYTES, 0);
    free(header);
    /* Pages of zero entries stay holes. */
    uint64_t bytes = d->n_blocks * DIGEST_HASH;
    for (uint64_t p = 0; r == 0 && p < bytes;) {
        uint64_t n = bytes - p < PAGE ? bytes - p : PAGE;
        if (buf_is_zero(d->hashes + p, n)) {
            p += n;
            continue;
        }
        uint64_t start = p;
        while (p < bytes && !buf_is_zero(d->hashes + p, bytes - p < PAGE ? bytes - p : PAGE))
            p += bytes - p < PAGE ? bytes - p : PAGE;
        r = blk_pwrite(&b, d->hashes + start, p - start, HEADER_BYTES + start);
    }
    if (r == 0 && ftruncate(b.fd, (off_t)(HEADER_BYTES + bytes)) < 0)
        r = zerr_sys(errno, "cannot write '%s'", path);
    if (r == 0)
        r = blk_commit(&b);
    if (r == 0)
        posix_fadvise(b.fd, 0, 0, POSIX_FADV_DONTNEED);
    blk_close(&b);
    return r;
}

static uint32_t le32_at(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return le32toh(v);
}

static uint64_t le64_at(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return le64toh(v);
}

/* Check the header H of PATH, for D; *SUM gets the digest it records. */
static int check_header(const struct digest *d, const char *path, const uint8_t *h,
                        uint8_t sum[DIGEST_HASH])
{
    char name[17];
    memcpy(name, h + 32, 16);
    name[16] = 0;
    if (memcmp(h, MAGIC, 8))
        return zerr(EINVAL, "'%s' is not a zcow block-hash file", path);
    if (le32_at(h + 8) != VERSION)
        return zerr(ENOTSUP, "'%s': block-hash file version %u is not supported", path,
                    le32_at(h + 8));
    if (le32_at(h + 12) != DIGEST_BLOCK || le32_at(h + 24) != DIGEST_HASH ||
        le32_at(h + 28) != HEADER_BYTES || strcmp(name, DIGEST_NAME))
        return zerr(ENOTSUP, "'%s': block hashes of another kind (%.16s, %u-byte blocks), not %s",
                    path, name, le32_at(h + 12), DIGEST_NAME);
    if (le64_at(h + 16) != d->size)
        return zerr(EINVAL, "'%s' holds the block hashes of a disk of %llu bytes, not %llu", path,
                    (unsigned long long)le64_at(h + 16), (unsigned long long)d->size);
    memcpy(sum, h + 48, DIGEST_HASH);
    return 0;
}

/* Read the entries of B (SIZE bytes of entries after the header) into D:
 * only its data, and of that only the pages that are not zero, so that
 * the holes of the file stay holes in memory. */
static int read_entries(struct digest *d, struct blk *b, uint64_t bytes)
{
    uint8_t *chunk = malloc(LOAD_CHUNK);
    if (!chunk)
        return zerr(ENOMEM, "out of memory");
    int r = 0;
    uint64_t end = HEADER_BYTES + bytes;
    for (uint64_t at = HEADER_BYTES; r == 0 && at < end;) {
        off_t data = lseek(b->fd, (off_t)at, SEEK_DATA);
        if (data < 0 && errno == ENXIO) /* only a hole from here */
            break;
        if (data < 0) /* no SEEK_DATA here: read it all */
            data = (off_t)at;
        off_t hole = lseek(b->fd, data, SEEK_HOLE);
        uint64_t stop = hole < 0 || (uint64_t)hole > end ? end : (uint64_t)hole;
        for (at = (uint64_t)data; r == 0 && at < stop;) {
            size_t n = stop - at < LOAD_CHUNK ? (size_t)(stop - at) : LOAD_CHUNK;
            int64_t got = blk_pread(b, chunk, n, at);
            if (got < 0) {
                r = (int)got;
                break;
            }
            if ((size_t)got != n) {
                r = zerr(EINVAL, "'%s' is truncated", b->path);
                break;
            }
            /* Pages are whole: entries and file data both start on one. */
            for (size_t p = 0; p < n; p += PAGE) {
                size_t m = n - p < PAGE ? n - p : PAGE;
                if (!buf_is_zero(chunk + p, m))
                    memcpy(d->hashes + (at + p - HEADER_BYTES), chunk + p, m);
            }
            at += n;
        }
        at = stop;
    }
    free(chunk);
    return r;
}

int digest_load(const char *path, uint64_t size, struct digest **out)
{
    *out = NULL;
    struct digest *d;
    int r = digest_new(size, &d);
    if (r < 0) {
        char cause[256];
        snprintf(cause, sizeof(cause), "%s", zcow_get_error());
        return zerr(-r, "cannot load '%s': %s", path, cause);
    }
    struct blk b;
    if ((r = blk_open_read(&b, path, false)) < 0) {
        digest_free(d);
        return r;
    }
    uint8_t *header = malloc(HEADER_BYTES);
    uint8_t sum[DIGEST_HASH], got[DIGEST_HASH];
    uint64_t bytes = d->n_blocks * DIGEST_HASH;
    struct stat st;
    int64_t n;
    if (!header) {
        r = zerr(ENOMEM, "out of memory");
    } else if ((n = blk_pread(&b, header, HEADER_BYTES, 0)) < 0) {
        r = (int)n;
    } else if (n < 8 || memcmp(header, MAGIC, 8)) {
        r = zerr(EINVAL, "'%s' is not a zcow block-hash file", path);
    } else if (n < HEADER_BYTES) {
        r = zerr(EINVAL, "'%s' is truncated (%lld bytes: no whole header)", path, (long long)n);
    } else if ((r = check_header(d, path, header, sum)) < 0) {
    } else if (fstat(b.fd, &st) < 0) {
        r = zerr_sys(errno, "cannot read '%s'", path);
    } else if ((uint64_t)st.st_size != HEADER_BYTES + bytes) {
        r = zerr(EINVAL, "'%s' is %s: %lld bytes, not %llu for a disk of %llu bytes", path,
                 (uint64_t)st.st_size < HEADER_BYTES + bytes ? "truncated" : "too long",
                 (long long)st.st_size, (unsigned long long)(HEADER_BYTES + bytes),
                 (unsigned long long)size);
    } else if ((r = read_entries(d, &b, bytes)) == 0 && (r = outer(d, got)) == 0 &&
               memcmp(got, sum, DIGEST_HASH)) {
        r = zerr(EINVAL, "'%s' is damaged: its block hashes do not give the digest it records",
                 path);
    }
    free(header);
    posix_fadvise(b.fd, 0, 0, POSIX_FADV_DONTNEED);
    blk_close(&b);
    if (r < 0) {
        digest_free(d);
        return r;
    }
    *out = d;
    return 0;
}
