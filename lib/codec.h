/* codec.h - compress and decompress one qcow2 cluster.
 *
 * zlib type: raw deflate with at most 4 KiB back-references, because QEMU
 * inflates with windowBits -12.  ISA-L (hist_bits 12) does the fast levels,
 * zlib (windowBits -12) the others.  zstd type: standard zstd frames.
 *
 * Contexts are per thread, created on first use and reused for every
 * cluster after that; they are freed when the thread exits.  All functions
 * are thread-safe. */
#ifndef ZCOW_CODEC_H
#define ZCOW_CODEC_H

#include <stddef.h>

/* Levels of the zlib type: 0..3 are ISA-L's levels (fast), 4..9 zlib's.
 * Levels of the zstd type: zstd's, 1..19.
 *
 * The zlib type's default is CODEC_ZLIB_AUTO, chosen by measurement on a
 * 4 GiB ext4 image of /usr/share (W2 of bench/): ISA-L level 2 gave 1.055x
 * qemu-img's output, level 3 1.035x at 2.6x the CPU - but level 3 is ~20x
 * slower than level 2 on repetitive data (runs, short patterns) and its
 * output is larger there.  So each cluster's first 4 KiB are compressed at
 * level 2 as a probe: a cluster that starts highly compressible (8:1 or
 * better) or hardly compressible goes to level 2, the rest to level 3.
 * W2: 1.037x qemu-img's size at ~2.4x level 2's CPU; ones and random data
 * cost about what level 2 costs. */
#define CODEC_ZLIB_AUTO 10
#define CODEC_ZLIB_DEFAULT_LEVEL CODEC_ZLIB_AUTO
#define CODEC_ZLIB_MAX_LEVEL 9
#define CODEC_ZSTD_DEFAULT_LEVEL 3
#define CODEC_ZSTD_MAX_LEVEL 19

/* Resolve ZCOW_LEVEL_DEFAULT (-1) to the type's default; -EINVAL if the
 * level is out of range for the type. */
int codec_resolve_level(int type, int level);

/* Compress IN_LEN bytes into OUT (OUT_CAP bytes).  Returns the compressed
 * length, -ENOSPC if it does not fit in OUT_CAP (the caller then stores the
 * cluster uncompressed), or -ENOMEM / -EIO. */
int codec_compress(int type, int level, const void *in, size_t in_len,
                   void *out, size_t out_cap);

/* Decompress from IN (IN_LEN bytes, possibly followed by unrelated bytes)
 * into exactly OUT_LEN bytes.  Returns 0, or -EIO when the stream is bad or
 * ends before OUT_LEN bytes. */
int codec_decompress(int type, const void *in, size_t in_len, void *out, size_t out_len);

/* The same, but the stream must also end after exactly OUT_LEN bytes:
 * -EIO when it would give more (QEMU reads such a stream, cut at the
 * cluster's end; no writer makes one, so zcow verify refuses it). */
int codec_decompress_exact(int type, const void *in, size_t in_len, void *out, size_t out_len);

/* The exact byte count of the stream at IN (IN_LEN bytes, possibly
 * followed by unrelated bytes: qcow2 records whole sectors) that decodes
 * to exactly OUT_LEN bytes; 0 if there is no such stream.  Lets a
 * compressed cluster be copied into a new image without recompression. */
size_t codec_stream_length(int type, const void *in, size_t in_len, size_t out_len);

/* Compression with zlib itself (windowBits -12), whatever the level: the
 * reference the fast path is tested against. */
int codec_compress_zlib_reference(int level, const void *in, size_t in_len,
                                  void *out, size_t out_cap);

#endif
