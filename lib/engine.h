/* engine.h - the copy engine: any source (source.h) to any destination
 * (dest.h), in parallel, in bounded memory.
 *
 * The destination's [0, size) is cut into fixed segments.  Each segment is
 * planned from the source's extents (each asked about that segment only,
 * but for one look past its end to skip a long hole) into stretches of
 * whole granules (dest->granularity) of one kind:
 *   DATA       read from the source, given to dest->ops->write
 *              (or, when both sides deal in compressed clusters of the
 *              same type and size, copied cluster by cluster through
 *              source read_compressed and dest write_compressed);
 *   ZERO       never read; given to dest->ops->zero unless the destination
 *              reads as zero where it is not written;
 *   UNCHANGED  never read, never given: left to the destination.
 * A granule with any data in it is data.  Segments are handed out in
 * order to a bounded set of slots (a segment buffer and its plan each):
 *   read-ahead (cfg->readers > 0): reader threads plan and read segments
 *     into free slots, writer threads write the lowest read one; used
 *     when writing costs the CPU (compression);
 *   direct (cfg->readers == 0): each writer thread plans, reads and writes
 *     its own segment; used when reading does (decompression), and for
 *     the cluster by cluster copy of compressed clusters.
 * Both run on pools (pool.h).  The calling thread gives each slot its
 * first segment and reports progress; the job that finishes a segment
 * gives its slot the next one.  The first failure (of the source, the destination or
 * the engine) stops the run: no slot is handed out after it, and it is
 * returned with its message.
 *
 * Data flows one way: source -> engine -> destination.  The engine knows
 * neither qcow2 nor files: a new kind of source or destination is one new
 * file implementing the ops. */
#ifndef ZCOW_ENGINE_H
#define ZCOW_ENGINE_H

#include <stdint.h>

#include "dest.h"
#include "source.h"

struct digest;

struct engine_config {
    unsigned workers; /* writer threads (direct: each also reads), >= 1 */
    unsigned readers; /* read-ahead threads; 0: direct */
    uint32_t segment; /* bytes per segment, a multiple of the granularity
                          and of BLK_ALIGN: the unit of reading, planning
                          and progress; memory is (workers + readers)
                          segments */
    /* Called from the calling thread only, every 100 ms or so, with the
     * bytes done so far (never decreasing); NULL: none. */
    void (*progress)(void *opaque, uint64_t done, uint64_t total);
    void *progress_opaque;
    /* NULL, or the digest (digest.h) of what is copied, [0, its size):
     * DATA stretches are hashed as they are written, ZERO stretches
     * (written or skipped) clear their blocks, UNCHANGED ones leave them
     * as they were.  The engine then plans in whole digest blocks at
     * least, and copies no compressed cluster as it is (its data would
     * go unseen). */
    struct digest *digest;
};

/* The settings zcow_convert uses for SRC to DST with THREADS workers (0:
 * the online CPUs): read-ahead when the destination compresses (unless
 * compressed clusters are copied); more workers than CPUs when it does
 * not, since reading (decompression, I/O) is then the work. */
void engine_configure(struct engine_config *cfg, const struct source *src, const struct dest *dst,
                      int threads);

/* What a run did. */
struct engine_stats {
    uint64_t clusters_copied; /* compressed clusters copied as they were */
};

/* Copy [0, dst->size) of SRC to DST.  Returns 0 or the first failure (a
 * negative errno, its message made the calling thread's).  DST is neither
 * committed nor closed.  Call from one thread; the engine starts its own. */
int engine_copy(struct source *src, struct dest *dst, const struct engine_config *cfg,
                struct engine_stats *st);

#endif
