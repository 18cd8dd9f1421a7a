/* blkhash_ref.h - blkhash's construction straight from its definition,
 * for the unit tests of digests (test_digest.c, test_engine.c): SHA-256
 * over the SHA-256 of each 64 KiB block of LEN bytes at P (the last one
 * short), as lowercase hex.  Independent of lib/digest.c: no zero blocks
 * known in advance, no mapping, one pass. */
#ifndef ZCOW_BLKHASH_REF_H
#define ZCOW_BLKHASH_REF_H

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <stdio.h>

static inline void blkhash_ref(const uint8_t *p, uint64_t len, char hex[65])
{
    const uint64_t block = 65536;
    EVP_MD_CTX *outer = EVP_MD_CTX_new();
    EVP_DigestInit_ex(outer, EVP_sha256(), NULL);
    for (uint64_t off = 0; off < len; off += block) {
        uint8_t h[32];
        SHA256(p + off, len - off < block ? (size_t)(len - off) : block, h);
        EVP_DigestUpdate(outer, h, 32);
    }
    uint8_t h[32];
    EVP_DigestFinal_ex(outer, h, NULL);
    EVP_MD_CTX_free(outer);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", h[i]);
}

#endif
