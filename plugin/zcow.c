/* nbdkit-zcow-plugin - an NBD export whose writes become a compressed
 * qcow2 image through libzcow (its public API only, include/zcow.h).
 *
 *   nbdkit zcow file=OUT.qcow2 size=SIZE [compression_type=zlib|zstd]
 *          [cluster_size=N] [level=N] [cache=none|writeback]
 *          [backing=PREV.qcow2] [backing_format=qcow2|raw] [partial_max=SIZE]
 *
 * One image per nbdkit run, shared by every connection (multi-conn): it is
 * written to a temporary file beside OUT and renamed over OUT when the
 * last connection closes cleanly - every write was followed by a flush -
 * after which nbdkit exits.  A client that ends without flushing what it
 * wrote (killed, or a failed write) leaves no image: the temporary file is
 * removed when the last connection goes, or at nbdkit's exit.
 *
 * Writes of whole clusters go straight to the library (compressed in the
 * calling thread, placed by the write cache).  A partial write of a
 * cluster is gathered in a buffer holding the cluster's current content
 * (read from the image: what was written, the backing file's data, or
 * zeros) until every byte of the cluster has been written, a flush, or
 * the bound on gathered bytes (partial_max) is passed - then the oldest
 * gathered cluster goes to the library whole.  A cluster written again
 * replaces the first version (the library frees its space).
 *
 * Locking: one mutex guards the table of clusters being handled (gathered,
 * or being written to the library: "busy"); no lock is held across the
 * library's calls.  A cluster has at most one busy writer: writes and
 * flushes of one cluster are serialised, so that an acknowledged write is
 * never overwritten by an older gathered copy. */
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h" /* ZCOW_VERSION_TEXT */
#include "zcow.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#define HASH_SIZE 4096u

/* ---- configuration ------------------------------------------------------ */

static char *file;
static int64_t size = -1;
static uint32_t cluster_size = 65536;
static int compression = ZCOW_COMPRESSION_ZLIB;
static int level = ZCOW_LEVEL_DEFAULT;
static int cache_mode = ZCOW_CACHE_NONE;
static char *backing, *backing_format;
static int64_t partial_max = 64 << 20;

/* ---- state -------------------------------------------------------------- */

/* A cluster being handled: gathered (BUF set, not busy), or busy - written
 * to the library, or having its content read to start gathering. */
struct pcl {
    uint64_t index;
    uint8_t *buf;     /* the cluster's content (gathered), or NULL */
    uint8_t *covered; /* one bit per byte written since gathering began */
    uint32_t n_covered;
    bool busy;
    struct pcl *hnext;         /* hash chain */
    struct pcl *lprev, *lnext; /* idle gathered clusters, oldest first */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER; /* a busy cluster left */
static zcow_image *img;
static uint8_t *zeros;
static struct pcl *hash[HASH_SIZE];
static struct pcl *lru_head, *lru_tail;
static uint64_t lru_n;
static int64_t gathered_bytes;
static unsigned gathers_busy; /* gathered clusters being written out */

static unsigned connections;
static uint64_t writes;  /* write, zero and trim requests done */
static uint64_t flushed; /* WRITES when the last good flush began */
static bool flushed_any; /* a flush succeeded */
static bool failed;      /* a write or flush failed: no image */
static bool finished;    /* finalised or aborted */

/* ---- helpers ------------------------------------------------------------- */

/* Report a library failure R to nbdkit (the message of this thread). */
static int lib_error(int r, const char *what)
{
    nbdkit_error("%s: %s", what, zcow_get_error());
    nbdkit_set_error(-r);
    return -1;
}

/* Bytes of cluster INDEX within the export (less for the last one). */
static uint32_t cluster_len(uint64_t index)
{
    uint64_t start = index * cluster_size;
    return (uint64_t)size - start < cluster_size ? (uint32_t)((uint64_t)size - start)
                                                 : cluster_size;
}

static struct pcl **slot(uint64_t index)
{
    struct pcl **pp = &hash[(index * 0x9e3779b97f4a7c15ull >> 40) % HASH_SIZE];
    while (*pp && (*pp)->index != index)
        pp = &(*pp)->hnext;
    return pp;
}

static void lru_remove(struct pcl *e)
{
    *(e->lprev ? &e->lprev->lnext : &lru_head) = e->lnext;
    *(e->lnext ? &e->lnext->lprev : &lru_tail) = e->lprev;
    e->lprev = e->lnext = NULL;
    lru_n--;
}

static void lru_append(struct pcl *e)
{
    e->lprev = lru_tail;
    e->lnext = NULL;
    *(lru_tail ? &lru_tail->lnext : &lru_head) = e;
    lru_tail = e;
    lru_n++;
}

/* Wait (the lock held) until cluster INDEX is not busy; then take it:
 * returned busy, made if absent.  NULL when out of memory. */
static struct pcl *take(uint64_t index)
{
    struct pcl **pp;
    while (*(pp = slot(index)) && (*pp)->busy)
        pthread_cond_wait(&cond, &lock);
    struct pcl *e = *pp;
    if (!e) {
        if (!(e = calloc(1, sizeof(*e))))
            return NULL;
        e->index = index;
        *pp = e;
    } else if (e->buf) {
        lru_remove(e);
    }
    e->busy = true;
    return e;
}

/* Drop E from the table (the lock held) and wake its waiters. */
static void drop(struct pcl *e)
{
    struct pcl **pp = slot(e->index);
    *pp = e->hnext;
    if (e->buf) {
        gathered_bytes -= cluster_size + cluster_size / 8;
        free(e->buf);
        free(e->covered);
    }
    free(e);
    pthread_cond_broadcast(&cond);
}

/* Write E's gathered cluster to the library and drop it; E is busy.
 * Called with the lock held, which is dropped meanwhile. */
static int write_gathered(struct pcl *e)
{
    gathers_busy++;
    pthread_mutex_unlock(&lock);
    int r = zcow_write_cluster(img, e->index * cluster_size, e->buf, cluster_len(e->index));
    if (r < 0)
        lib_error(r, file);
    pthread_mutex_lock(&lock);
    gathers_busy--;
    if (r < 0)
        failed = true;
    drop(e);
    return r < 0 ? -1 : 0;
}

/* Mark bytes [AT, AT+LEN) of E written; count the new ones. */
static void cover(struct pcl *e, uint32_t at, uint32_t len)
{
    for (uint32_t i = at; i < at + len; i++) {
        uint8_t bit = (uint8_t)(1u << (i & 7));
        if (!(e->covered[i >> 3] & bit)) {
            e->covered[i >> 3] |= bit;
            e->n_covered++;
        }
    }
}

/* Write LEN bytes of DATA at AT within cluster INDEX, LEN short of the
 * whole cluster: gather them. */
static int write_partial(uint64_t index, uint32_t at, const void *data, uint32_t len)
{
    uint32_t clen = cluster_len(index);
    pthread_mutex_lock(&lock);
    struct pcl *e = take(index);
    if (!e) {
        pthread_mutex_unlock(&lock);
        nbdkit_error("out of memory");
        nbdkit_set_error(ENOMEM);
        return -1;
    }
    if (!e->buf) { /* start from the cluster's current content */
        pthread_mutex_unlock(&lock);
        uint8_t *buf = malloc(cluster_size), *covered = calloc(1, cluster_size / 8);
        int r = buf && covered ? zcow_read(img, index * cluster_size, buf, clen) : -ENOMEM;
        if (r < 0) {
            free(buf);
            free(covered);
            pthread_mutex_lock(&lock);
            drop(e);
            pthread_mutex_unlock(&lock);
            return r == -ENOMEM ? (nbdkit_error("out of memory"), nbdkit_set_error(ENOMEM), -1)
                                : lib_error(r, file);
        }
        memset(buf + clen, 0, cluster_size - clen);
        pthread_mutex_lock(&lock);
        e->buf = buf;
        e->covered = covered;
        gathered_bytes += cluster_size + cluster_size / 8;
    }
    memcpy(e->buf + at, data, len);
    cover(e, at, len);
    int r = 0;
    if (e->n_covered >= clen) { /* whole now */
        r = write_gathered(e);
    } else {
        e->busy = false;
        lru_append(e);
        pthread_cond_broadcast(&cond);
        /* Over the bound: the oldest gathered clusters go out as they are. */
        while (r == 0 && gathered_bytes > partial_max && lru_head) {
            struct pcl *old = lru_head;
            lru_remove(old);
            old->busy = true;
            r = write_gathered(old);
        }
    }
    pthread_mutex_unlock(&lock);
    return r;
}

/* Write whole clusters [FIRST, FIRST+N) from DATA (the last may be the
 * export's short last cluster) with one library call; gathered copies of
 * them are superseded. */
static int write_whole(uint64_t first, uint64_t n, const void *data)
{
    struct pcl **taken = calloc(n, sizeof(*taken));
    if (!taken) {
        nbdkit_error("out of memory");
        nbdkit_set_error(ENOMEM);
        return -1;
    }
    pthread_mutex_lock(&lock);
    uint64_t got = 0;
    while (got < n && (taken[got] = take(first + got)))
        got++;
    pthread_mutex_unlock(&lock);
    int r = got < n ? -ENOMEM : 0;
    uint64_t bytes = 0;
    for (uint64_t i = 0; i < n; i++)
        bytes += cluster_len(first + i);
    if (r == 0 && (r = zcow_write(img, first * cluster_size, data, bytes)) < 0)
        lib_error(r, file);
    else if (r < 0) {
        nbdkit_error("out of memory");
        nbdkit_set_error(ENOMEM);
    }
    pthread_mutex_lock(&lock);
    if (r < 0 && r != -ENOMEM)
        failed = true;
    for (uint64_t i = 0; i < got; i++)
        drop(taken[i]);
    pthread_mutex_unlock(&lock);
    free(taken);
    return r < 0 ? -1 : 0;
}

/* Write COUNT bytes at OFFSET: whole clusters together, partial ones
 * gathered.  ZERO: DATA is NULL, the bytes are zeros. */
static int do_write(const uint8_t *data, uint32_t count, uint64_t offset)
{
    while (count > 0) {
        uint64_t index = offset / cluster_size;
        uint32_t at = (uint32_t)(offset % cluster_size);
        uint32_t clen = cluster_len(index);
        int r;
        if (at == 0 && count >= clen) {
            /* A run of whole clusters (at most 256 at a time). */
            uint64_t n = 0, bytes = 0;
            while (n < 256 && bytes < count && count - bytes >= cluster_len(index + n)) {
                bytes += cluster_len(index + n);
                n++;
            }
            if (data) {
                r = write_whole(index, n, data);
            } else {
                r = 0;
                for (uint64_t i = 0; i < n && r == 0; i++)
                    r = write_whole(index + i, 1, zeros);
            }
            offset += bytes;
            count -= (uint32_t)bytes;
            if (data)
                data += bytes;
        } else {
            uint32_t n = clen - at < count ? clen - at : count;
            r = write_partial(index, at, data ? data : zeros, n);
            offset += n;
            count -= n;
            if (data)
                data += n;
        }
        if (r < 0)
            return -1;
    }
    return 0;
}

/* ---- the end of the image ------------------------------------------------ */

/* Clean: something was written or flushed, and every write was followed
 * by a successful flush. */
static bool clean(void) { return !failed && flushed == writes && (writes || flushed_any); }

/* Finalise the image (rename it into place) when clean, else remove it.
 * The lock is held; no request runs. */
static void finish(void)
{
    if (finished || !img)
        return;
    finished = true;
    if (clean()) {
        int r = zcow_close(img);
        if (r < 0)
            nbdkit_error("%s: %s", file, zcow_get_error());
        else
            nbdkit_debug("zcow: %s written", file);
    } else {
        zcow_abort(img);
        nbdkit_error("%s: %s: no image written", file,
                     failed ? "a write failed" : "the client ended without flushing its writes");
    }
    img = NULL;
}

/* ---- callbacks ------------------------------------------------------------ */

static void zp_unload(void)
{
    pthread_mutex_lock(&lock);
    if (img && (writes || flushed_any || failed)) /* nbdkit exits with the image open */
        finish();
    else if (img) /* nothing was written: no image */
        zcow_abort(img);
    img = NULL;
    /* Clusters still gathered (the image failed or was dropped). */
    for (unsigned h = 0; h < HASH_SIZE; h++)
        while (hash[h])
            drop(hash[h]);
    lru_head = lru_tail = NULL;
    pthread_mutex_unlock(&lock);
    free(zeros);
    free(file);
    free(backing);
    free(backing_format);
}

static int zp_config(const char *key, const char *value)
{
    if (strcmp(key, "file") == 0) {
        free(file);
        if (!(file = nbdkit_absolute_path(value)))
            return -1;
    } else if (strcmp(key, "size") == 0) {
        if ((size = nbdkit_parse_size(value)) < 0)
            return -1;
    } else if (strcmp(key, "cluster_size") == 0) {
        int64_t cs = nbdkit_parse_size(value);
        if (cs < 4096 || cs > (2 << 20) || (cs & (cs - 1))) {
            nbdkit_error("cluster_size '%s' must be a power of two from 4k to 2M", value);
            return -1;
        }
        cluster_size = (uint32_t)cs;
    } else if (strcmp(key, "compression_type") == 0) {
        if (strcmp(value, "zlib") == 0)
            compression = ZCOW_COMPRESSION_ZLIB;
        else if (strcmp(value, "zstd") == 0)
            compression = ZCOW_COMPRESSION_ZSTD;
        else {
            nbdkit_error("compression_type '%s' must be zlib or zstd", value);
            return -1;
        }
    } else if (strcmp(key, "level") == 0) {
        char *end;
        long l = strtol(value, &end, 10);
        if (*value == '\0' || *end || l < 0 || l > 19) {
            nbdkit_error("level '%s' must be from 0 to 19", value);
            return -1;
        }
        level = (int)l;
    } else if (strcmp(key, "cache") == 0) {
        if (strcmp(value, "none") == 0)
            cache_mode = ZCOW_CACHE_NONE;
        else if (strcmp(value, "writeback") == 0)
            cache_mode = ZCOW_CACHE_WRITEBACK;
        else {
            nbdkit_error("cache '%s' must be none or writeback", value);
            return -1;
        }
    } else if (strcmp(key, "backing") == 0) {
        free(backing);
        if (!(backing = strdup(value)))
            return -1;
    } else if (strcmp(key, "backing_format") == 0) {
        if (strcmp(value, "qcow2") != 0 && strcmp(value, "raw") != 0) {
            nbdkit_error("backing_format '%s' must be qcow2 or raw", value);
            return -1;
        }
        free(backing_format);
        if (!(backing_format = strdup(value)))
            return -1;
    } else if (strcmp(key, "partial_max") == 0) {
        if ((partial_max = nbdkit_parse_size(value)) < 0)
            return -1;
    } else {
        nbdkit_error("unknown parameter '%s'", key);
        return -1;
    }
    return 0;
}

static int zp_config_complete(void)
{
    if (!file) {
        nbdkit_error("file=OUT.qcow2 is required");
        return -1;
    }
    if (size <= 0 || size % 512) {
        nbdkit_error("size=SIZE is required: a positive multiple of 512");
        return -1;
    }
    return 0;
}

#define zp_config_help                                                                             \
    "file=OUT.qcow2        (required) The image to write.\n"                                       \
    "size=SIZE             (required) The export's (virtual) size.\n"                              \
    "compression_type=zlib|zstd       Default zlib.\n"                                             \
    "cluster_size=N        4k to 2M, default 64k.\n"                                               \
    "level=N               Compression level (default: zcow's).\n"                                 \
    "cache=none|writeback  O_DIRECT (default) or the page cache.\n"                                \
    "backing=PREV.qcow2    A backing file: unwritten clusters read from it.\n"                     \
    "backing_format=qcow2|raw         Default qcow2.\n"                                            \
    "partial_max=SIZE      Bound on partly written clusters held (64M)."

/* Create the image after nbdkit forked (a daemon keeps no thread state of
 * the parent), before any client connects. */
static int zp_after_fork(void)
{
    zcow_create_opts *o = zcow_create_opts_new();
    if (!o || !(zeros = calloc(1, cluster_size))) {
        nbdkit_error("out of memory");
        zcow_create_opts_free(o);
        return -1;
    }
    int r = zcow_create_opts_set_virtual_size(o, (uint64_t)size);
    if (r == 0)
        r = zcow_create_opts_set_cluster_size(o, cluster_size);
    if (r == 0)
        r = zcow_create_opts_set_compression_type(o, compression);
    if (r == 0)
        r = zcow_create_opts_set_level(o, level);
    if (r == 0)
        r = zcow_create_opts_set_cache_mode(o, cache_mode);
    if (r == 0)
        r = zcow_create_opts_set_atomic(o, true);
    if (r == 0 && backing)
        r = zcow_create_opts_set_backing_file(o, backing);
    if (r == 0 && backing)
        r = zcow_create_opts_set_backing_format(o, backing_format ? backing_format : "qcow2");
    if (r == 0)
        r = zcow_create(file, o, &img);
    zcow_create_opts_free(o);
    if (r < 0) {
        nbdkit_error("%s", zcow_get_error());
        return -1;
    }
    return 0;
}

static void *zp_open(int readonly)
{
    (void)readonly;
    pthread_mutex_lock(&lock);
    bool ok = img && !finished;
    if (ok)
        connections++;
    pthread_mutex_unlock(&lock);
    if (!ok) {
        nbdkit_error("%s: the image is already finished", file);
        return NULL;
    }
    return &connections; /* no per-connection state */
}

/* The last connection gone: the image is finished, as clean() says - a
 * client that only looked (no write, no flush) leaves it open. */
static void zp_close(void *handle)
{
    (void)handle;
    pthread_mutex_lock(&lock);
    if (--connections == 0 && (writes || flushed_any || failed)) {
        finish();
        nbdkit_shutdown(); /* the image is done: nothing more to serve */
    }
    pthread_mutex_unlock(&lock);
}

static int64_t zp_get_size(void *handle)
{
    (void)handle;
    return size;
}

static int zp_block_size(void *handle, uint32_t *minimum, uint32_t *preferred, uint32_t *maximum)
{
    (void)handle;
    *minimum = 1;
    *preferred = cluster_size < 4096 ? 4096 : cluster_size;
    *maximum = 0xffffffff;
    return 0;
}

static int zp_can_multi_conn(void *handle)
{
    (void)handle;
    return 1; /* one image, one table, and a flush flushes it all */
}

static int zp_can_zero(void *handle)
{
    (void)handle;
    return 1;
}

static int zp_can_fast_zero(void *handle)
{
    (void)handle;
    return 1;
}

static int zp_can_trim(void *handle)
{
    (void)handle;
    return 1;
}

static int zp_can_flush(void *handle)
{
    (void)handle;
    return 1;
}

static int zp_can_fua(void *handle)
{
    (void)handle;
    return NBDKIT_FUA_EMULATE;
}

static int zp_pread(void *handle, void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
    (void)handle;
    (void)flags;
    uint8_t *p = buf;
    while (count > 0) {
        uint64_t index = offset / cluster_size;
        uint32_t at = (uint32_t)(offset % cluster_size);
        uint32_t n = cluster_len(index) - at < count ? cluster_len(index) - at : count;
        pthread_mutex_lock(&lock);
        struct pcl *e = *slot(index);
        bool hit = e && e->buf;
        if (hit)
            memcpy(p, e->buf + at, n);
        pthread_mutex_unlock(&lock);
        if (!hit) {
            int r = zcow_read(img, offset, p, n);
            if (r < 0)
                return lib_error(r, file);
        }
        p += n;
        offset += n;
        count -= n;
    }
    return 0;
}

/* A request done: counted for clean(), or the image marked failed. */
static int done(int r)
{
    pthread_mutex_lock(&lock);
    if (r == 0)
        writes++;
    else
        failed = true;
    pthread_mutex_unlock(&lock);
    return r;
}

static int zp_pwrite(void *handle, const void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
    (void)handle;
    (void)flags; /* FUA: emulated by nbdkit with a flush */
    return done(do_write(buf, count, offset));
}

/* Zeros: whole clusters become holes (zero clusters over a backing file);
 * parts of clusters are written as zeros. */
static int zp_zero(void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
    (void)handle;
    (void)flags;
    return done(do_write(NULL, count, offset));
}

/* Trim: the whole clusters in the range as zero; parts of clusters are
 * left as they are (a trim is advisory). */
static int zp_trim(void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
    (void)handle;
    (void)flags;
    uint64_t start = (offset + cluster_size - 1) / cluster_size * cluster_size;
    uint64_t end = (offset + count) / cluster_size * cluster_size;
    if (offset + count == (uint64_t)size)
        end = (uint64_t)size;
    return done(start < end ? do_write(NULL, (uint32_t)(end - start), start) : 0);
}

/* Everything written so far reaches the file: the gathered clusters as
 * they are, then the library's flush (the write cache, fsync). */
static int zp_flush(void *handle, uint32_t flags)
{
    (void)handle;
    (void)flags;
    pthread_mutex_lock(&lock);
    uint64_t mark = writes, n = lru_n; /* those gathered now: later ones cannot starve it */
    int r = 0;
    while (r == 0 && n-- > 0 && lru_head) {
        struct pcl *e = lru_head;
        lru_remove(e);
        e->busy = true;
        r = write_gathered(e);
    }
    while (gathers_busy > 0) /* acknowledged writes gathered by others */
        pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    if (r == 0 && (r = zcow_flush(img)) < 0)
        lib_error(r, file);
    pthread_mutex_lock(&lock);
    if (r < 0) {
        failed = true;
    } else {
        flushed_any = true;
        if (mark > flushed)
            flushed = mark;
    }
    pthread_mutex_unlock(&lock);
    return r < 0 ? -1 : 0;
}

static struct nbdkit_plugin plugin = {
    .name = "zcow",
    .longname = "nbdkit zcow plugin: writes become a compressed qcow2 image",
    .version = ZCOW_VERSION_TEXT,
    .unload = zp_unload,
    .config = zp_config,
    .config_complete = zp_config_complete,
    .config_help = zp_config_help,
    .magic_config_key = "file",
    .after_fork = zp_after_fork,
    .open = zp_open,
    .close = zp_close,
    .get_size = zp_get_size,
    .block_size = zp_block_size,
    .can_multi_conn = zp_can_multi_conn,
    .can_zero = zp_can_zero,
    .can_fast_zero = zp_can_fast_zero,
    .can_trim = zp_can_trim,
    .can_flush = zp_can_flush,
    .can_fua = zp_can_fua,
    .pread = zp_pread,
    .pwrite = zp_pwrite,
    .zero = zp_zero,
    .trim = zp_trim,
    .flush = zp_flush,
    .errno_is_preserved = 0,
};

NBDKIT_REGISTER_PLUGIN(plugin)
