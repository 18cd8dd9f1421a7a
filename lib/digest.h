/* digest.h - the content digest of a disk: blkhash's construction,
 *
 *     digest = H( H(block 0) || H(block 1) || ... || H(block N-1) )
 *
 * with H = SHA-256 and blocks of 64 KiB (the last one short when the size
 * is not a multiple), named "sha256/64k".  Blocks hash independently (in
 * parallel, in any order), an incremental rehashes only the blocks that
 * changed, and a zero block costs nothing: its hash is known.  The same
 * digest comes from the bytes of the disk read in order
 * (tests/interop/blkhash.py is an independent implementation).
 *
 * Why these: SHA-256 is the fastest hash libcrypto has on CPUs with the
 * SHA extensions (about 1.5 GB/s a core here), and the one every tool
 * has; 64 KiB is qcow2's default cluster size and QEMU's default dirty
 * bitmap granularity, so an incremental backup reads whole blocks anyway,
 * and the block hashes take 1/2048 of the disk.
 *
 * struct digest holds the block hashes of a disk of SIZE bytes in an
 * anonymous mapping that costs memory only where written: an all-zero
 * entry means "the zero block".  A block-hash file (digest_save) keeps
 * them for the next incremental: a 4 KiB header (magic, version, block
 * size, disk size, algorithm, the digest), then 32 bytes per block, zero
 * entries left as holes. */
#ifndef ZCOW_DIGEST_H
#define ZCOW_DIGEST_H

#include <stddef.h>
#include <stdint.h>

#define DIGEST_BLOCK (64u << 10)
#define DIGEST_HASH 32 /* bytes of a block hash and of the digest */
#define DIGEST_NAME "sha256/64k"
#define DIGEST_HEX_SIZE (2 * DIGEST_HASH + 1) /* lowercase hex and its NUL */

struct digest;

/* The digest of a disk of SIZE bytes, every block zero so far. */
int digest_new(uint64_t size, struct digest **out);

/* The block hashes saved in PATH by digest_save, for a disk of SIZE bytes:
 * a file of another size, algorithm or kind, a truncated one, or one whose
 * hashes do not give the digest it records is refused, naming PATH and the
 * cause. */
int digest_load(const char *path, uint64_t size, struct digest **out);

void digest_free(struct digest *d);

uint64_t digest_size(const struct digest *d);

/* The blocks [OFF, OFF+LEN) hold BUF.  OFF is a multiple of DIGEST_BLOCK,
 * LEN too unless [OFF, OFF+LEN) reaches the end of the disk (bytes past it
 * are ignored).  Calls on disjoint blocks may run at once. */
int digest_data(struct digest *d, uint64_t off, const void *buf, size_t len);

/* The blocks [OFF, OFF+LEN) are zero (alignment as digest_data; past the
 * end ignored).  Touches only entries that were not zero already. */
int digest_zero(struct digest *d, uint64_t off, uint64_t len);

/* The digest, as lowercase hex.  D is unchanged: more blocks may be given
 * and digest_final called again. */
void digest_final(const struct digest *d, char hex[DIGEST_HEX_SIZE]);

/* The blocks whose hashes differ between A and B (disks of one size):
 * their count, and the index of the first in *FIRST (UINT64_MAX when
 * none).  Tells where two disks with different digests differ. */
uint64_t digest_differences(const struct digest *a, const struct digest *b, uint64_t *first);

/* Save the block hashes to PATH: a temporary file beside it, made durable
 * and renamed over it; nothing of it left in the page cache. */
int digest_save(const struct digest *d, const char *path);

#endif
