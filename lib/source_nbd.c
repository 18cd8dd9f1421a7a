/* source_nbd.c - an NBD export as a conversion source, through libnbd.
 *
 * NAME is an NBD URI (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=
 * PATH, and the TLS forms nbds://, nbds+unix://).
 *
 * Connections: one when the server does not allow multi-conn; up to
 * MAX_CONNS when it does, opened lazily as worker threads find every open
 * one busy.  A thread holds a connection for the length of one call, and
 * keeps several requests in flight on it (REQ_BYTES each), so one
 * connection already overlaps the server's work with the network's.
 *
 * Block status: the base:allocation context tells holes and zeroes, which
 * are never read.  With a dirty bitmap ("qemu:dirty-bitmap:NAME", for
 * incremental backups) the extent op reports the clean stretches as
 * is_zero = 1, so that the conversion leaves them unallocated for the
 * backing file to fill, and the dirty ones as data; zeroes inside dirty
 * stretches still come from base:allocation without being read.
 *
 * Block status answers are kept per thread (each worker walks its own
 * segment), for BS_SPAN bytes from the offset asked about: one round trip
 * answers the extent and pread calls of a whole segment. */
#include <errno.h>
#include <libnbd.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "source.h"

/* Connections when the server allows multi-conn: enough for the workers
 * of a large machine; nbdcopy uses 4. */
#define MAX_CONNS 8
/* Bytes per NBD read request: small enough that a 4 MiB segment is
 * several requests in flight, large enough that the per-request cost is
 * small.  Capped further by the server's maximum block size. */
#define REQ_BYTES (512u << 10)
/* Protocol limit on a request when the server names none (libnbd's and
 * QEMU's 32 MiB). */
#define REQ_BYTES_MAX (32u << 20)
/* Block status is asked for this much at a time (the server may answer
 * less).  Below the 4 GiB that some servers refuse. */
#define BS_SPAN (16u << 20)
/* How long a connection may take: the first one (a server that never
 * answers is an error, not a hang), and the extra ones of multi-conn (a
 * server whose connection limit is reached answers them only when another
 * client leaves; then zcow goes on with the connections it has). */
#define CONNECT_TIMEOUT_MS 30000
#define EXTRA_CONNECT_TIMEOUT_MS 2000

#define CTX_BITMAP_PREFIX "qemu:dirty-bitmap:"

struct conn {
    struct nbd_handle *h;
    bool busy; /* guarded by nbd_src.lock */
    /* Requests in flight and the first error of one; used only by the
     * thread holding the connection, and by libnbd's completion callbacks
     * that run inside that thread's libnbd calls. */
    int pending;
    int err;
};

struct run {
    uint64_t end; /* exclusive end offset of the run */
    uint32_t flags;
};

struct runs {
    struct run *v;
    size_t n, cap;
    bool got; /* the server answered for this context */
};

/* The block status of [start, end), kept by one thread. */
struct bs_cache {
    struct bs_cache *next; /* in nbd_src.caches, guarded by nbd_src.lock */
    uint64_t start, end;
    struct runs alloc, dirty;
    uint64_t query_off; /* during a query: where the answer starts */
};

struct nbd_src {
    char *uri;
    char *bitmap_ctx;   /* "qemu:dirty-bitmap:NAME", or NULL */
    bool base_alloc;    /* the server answers base:allocation */
    uint64_t req_bytes; /* bytes per read request */
    uint64_t size;
    pthread_key_t key; /* this thread's struct bs_cache */

    pthread_mutex_t lock; /* guards conns[].busy, n_conns, max_conns,
                             connecting, pending, caches */
    pthread_cond_t freed;
    struct conn conns[MAX_CONNS];
    int n_conns, max_conns;
    bool connecting;            /* a thread is starting or driving `pending` */
    struct nbd_handle *pending; /* a connection on its way, or NULL */
    struct timespec pending_t0;
    struct bs_cache *caches;
};

/* ---- connections ---------------------------------------------------------- */

static long elapsed_ms(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long)(t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

/* The current libnbd message of this thread, without the name of the
 * libnbd call in front ("nbd_poll: handshake: ..." -> "handshake: ..."). */
static const char *nbd_msg(void)
{
    const char *m = nbd_get_error();
    if (!m || !*m)
        return "unknown error";
    if (!strncmp(m, "nbd_", 4)) {
        size_t n = strspn(m + 4, "abcdefghijklmnopqrstuvwxyz_");
        if (!strncmp(m + 4 + n, ": ", 2) && m[6 + n])
            return m + 6 + n;
    }
    return m;
}

static int nbd_errno(int fallback)
{
    int e = nbd_get_errno();
    return e > 0 ? e : fallback;
}

/* Start a connection to the URI with the meta contexts; *T0 is when. */
static int connect_start(struct nbd_src *ns, struct nbd_handle **out, struct timespec *t0)
{
    *out = NULL;
    struct nbd_handle *h = nbd_create();
    if (!h)
        return zerr(ENOMEM, "'%s': %s", ns->uri, nbd_msg());
    int e = 0;
    if (nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) < 0 ||
        (ns->bitmap_ctx && nbd_add_meta_context(h, ns->bitmap_ctx) < 0)) {
        e = zerr(nbd_errno(EINVAL), "'%s': %s", ns->uri, nbd_msg());
    } else if (!nbd_supports_uri(h)) {
        e = zerr(ENOTSUP, "'%s': this libnbd cannot connect to NBD URIs", ns->uri);
    } else {
        clock_gettime(CLOCK_MONOTONIC, t0);
        if (nbd_aio_connect_uri(h, ns->uri) < 0)
            e = zerr(nbd_errno(ECONNREFUSED), "cannot connect to '%s': %s", ns->uri, nbd_msg());
    }
    if (e < 0) {
        nbd_close(h);
        return e;
    }
    *out = h;
    return 0;
}

/* Drive the connection H started at T0 for at most SLICE_MS: 1 when it is
 * ready, 0 when still on its way, a negative errno (message set) when it
 * failed or took more than TIMEOUT_MS. */
static int connect_step(struct nbd_src *ns, struct nbd_handle *h, const struct timespec *t0,
                        long timeout_ms, long slice_ms)
{
    struct timespec s0;
    clock_gettime(CLOCK_MONOTONIC, &s0);
    while (!nbd_aio_is_ready(h)) {
        if (nbd_aio_is_dead(h) || nbd_aio_is_closed(h))
            return zerr(ECONNREFUSED, "cannot connect to '%s': %s", ns->uri, nbd_msg());
        long left = timeout_ms - elapsed_ms(t0);
        if (left <= 0)
            return zerr(ETIMEDOUT, "cannot connect to '%s': no answer from the server in %ld s",
                        ns->uri, timeout_ms / 1000);
        long slice = slice_ms - elapsed_ms(&s0);
        if (slice <= 0)
            return 0;
        if (slice > left)
            slice = left;
        if (nbd_poll(h, (int)(slice < 1000 ? slice : 1000)) < 0)
            return zerr(nbd_errno(ECONNREFUSED), "cannot connect to '%s': %s", ns->uri, nbd_msg());
    }
    return 1;
}

/* Open one connection within TIMEOUT_MS, waiting for it. */
static int connect_one(struct nbd_src *ns, long timeout_ms, struct nbd_handle **out)
{
    struct timespec t0;
    int e = connect_start(ns, out, &t0);
    if (e < 0)
        return e;
    e = connect_step(ns, *out, &t0, timeout_ms, timeout_ms);
    if (e == 1)
        return 0;
    nbd_close(*out);
    *out = NULL;
    return e < 0 ? e : zerr(ETIMEDOUT, "cannot connect to '%s': timed out", ns->uri);
}

/* A connection of our own for one call: a free one, or a new one while
 * the server allows more and every open one is busy, or wait for one.
 * A new connection is made a slice at a time (CONNECT_SLICE_MS), by
 * whichever waiting thread is free to, so that a server at its connection
 * limit, which leaves it unanswered, stalls nobody: the others go on with
 * the connections there are, and after EXTRA_CONNECT_TIMEOUT_MS zcow stops
 * asking for more. */
#define CONNECT_SLICE_MS 20
static struct conn *conn_get(struct nbd_src *ns)
{
    pthread_mutex_lock(&ns->lock);
    for (;;) {
        for (int i = 0; i < ns->n_conns; i++) {
            if (!ns->conns[i].busy) {
                ns->conns[i].busy = true;
                pthread_mutex_unlock(&ns->lock);
                return &ns->conns[i];
            }
        }
        if (ns->n_conns < ns->max_conns && !ns->connecting) {
            ns->connecting = true;
            struct nbd_handle *h = ns->pending;
            struct timespec t0 = ns->pending_t0;
            pthread_mutex_unlock(&ns->lock);
            int e = h ? 0 : connect_start(ns, &h, &t0);
            if (e == 0)
                e = connect_step(ns, h, &t0, EXTRA_CONNECT_TIMEOUT_MS, CONNECT_SLICE_MS);
            /* Both contexts must be there as on the first connection. */
            if (e == 1 &&
                ((ns->base_alloc && nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) != 1) ||
                 (ns->bitmap_ctx && nbd_can_meta_context(h, ns->bitmap_ctx) != 1)))
                e = -EPROTO;
            if (e < 0 && h) {
                nbd_close(h);
                h = NULL;
            }
            pthread_mutex_lock(&ns->lock);
            ns->connecting = false;
            ns->pending = e == 0 ? h : NULL;
            ns->pending_t0 = t0;
            if (e < 0) {
                /* Go on with the connections there are. */
                zerr_clear();
                ns->max_conns = ns->n_conns;
                pthread_cond_broadcast(&ns->freed);
                continue;
            }
            if (e == 0)
                continue; /* still connecting: look for a free one again */
            struct conn *c = &ns->conns[ns->n_conns++];
            c->h = h;
            c->busy = true;
            pthread_mutex_unlock(&ns->lock);
            return c;
        }
        if (ns->pending) {
            /* Someone is connecting: come back to take over the slices. */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += CONNECT_SLICE_MS * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&ns->freed, &ns->lock, &ts);
        } else {
            pthread_cond_wait(&ns->freed, &ns->lock);
        }
    }
}

static void conn_put(struct nbd_src *ns, struct conn *c)
{
    pthread_mutex_lock(&ns->lock);
    c->busy = false;
    pthread_cond_signal(&ns->freed);
    pthread_mutex_unlock(&ns->lock);
}

/* ---- reads ------------------------------------------------------------------ */

static int read_done(void *opaque, int *error)
{
    struct conn *c = opaque;
    if (*error && !c->err)
        c->err = *error;
    c->pending--;
    return 1; /* retire the command */
}

/* A message for a failed call on C: a connection that died says so. */
static int conn_error(struct nbd_src *ns, struct conn *c, const char *what, uint64_t off)
{
    if (nbd_aio_is_dead(c->h) || nbd_aio_is_closed(c->h))
        return zerr(ENOTCONN, "'%s': %s at offset %llu failed: the server closed the connection",
                    ns->uri, what, (unsigned long long)off);
    return zerr(nbd_errno(EIO), "'%s': %s at offset %llu failed: %s", ns->uri, what,
                (unsigned long long)off, nbd_msg());
}

/* Issue a read of [OFF, OFF+LEN) into BUF as requests of req_bytes,
 * without waiting for them.  Keeps at most 64 in flight. */
static int read_issue(struct nbd_src *ns, struct conn *c, uint8_t *buf, uint64_t len, uint64_t off)
{
    while (len > 0) {
        while (c->pending >= 64) {
            if (nbd_poll(c->h, -1) < 0)
                return conn_error(ns, c, "read", off);
        }
        uint64_t n = len < ns->req_bytes ? len : ns->req_bytes;
        nbd_completion_callback cb = { .callback = read_done, .user_data = c };
        if (nbd_aio_pread(c->h, buf, (size_t)n, off, cb, 0) < 0)
            return conn_error(ns, c, "read", off);
        c->pending++;
        buf += n;
        off += n;
        len -= n;
    }
    return 0;
}

/* Wait for every request in flight on C; the first failure is returned. */
static int read_wait(struct nbd_src *ns, struct conn *c, int err, uint64_t off)
{
    while (c->pending > 0) {
        if (nbd_poll(c->h, -1) < 0) {
            /* A dead connection completes nothing more. */
            int e = conn_error(ns, c, "read", off);
            c->pending = 0;
            return err < 0 ? err : e;
        }
    }
    if (err < 0)
        return err;
    if (c->err) {
        int e = c->err;
        c->err = 0;
        if (nbd_aio_is_dead(c->h) || nbd_aio_is_closed(c->h))
            return conn_error(ns, c, "read", off);
        return zerr(e, "'%s': the server failed a read near offset %llu: %s", ns->uri,
                    (unsigned long long)off, strerror(e));
    }
    return 0;
}

/* ---- block status ---------------------------------------------------------- */

static int runs_push(struct runs *r, uint64_t end, uint32_t flags)
{
    if (r->n && r->v[r->n - 1].flags == flags) {
        r->v[r->n - 1].end = end;
        return 0;
    }
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 64;
        struct run *v = realloc(r->v, cap * sizeof(*v));
        if (!v)
            return -1;
        r->v = v;
        r->cap = cap;
    }
    r->v[r->n++] = (struct run){ end, flags };
    return 0;
}

static uint64_t runs_end(const struct runs *r) { return r->n ? r->v[r->n - 1].end : 0; }

/* The run holding OFF (which is inside the runs). */
static const struct run *runs_find(const struct runs *r, uint64_t off)
{
    size_t lo = 0, hi = r->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (r->v[mid].end <= off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < r->n ? &r->v[lo] : NULL;
}

struct bs_query {
    struct nbd_src *ns;
    struct bs_cache *bc;
};

static int bs_extent(void *opaque, const char *ctx, uint64_t offset, uint32_t *entries, size_t nr,
                     int *error)
{
    struct bs_query *q = opaque;
    struct runs *r;
    if (!strcmp(ctx, LIBNBD_CONTEXT_BASE_ALLOCATION))
        r = &q->bc->alloc;
    else if (q->ns->bitmap_ctx && !strcmp(ctx, q->ns->bitmap_ctx))
        r = &q->bc->dirty;
    else
        return 0;
    if (r->got || offset != q->bc->query_off)
        return 0; /* a second answer for one context: keep the first */
    r->got = true;
    uint64_t end = offset;
    for (size_t i = 0; i + 1 < nr; i += 2) {
        if (entries[i] == 0)
            break;
        end += entries[i];
        if (runs_push(r, end, entries[i + 1]) < 0) {
            *error = ENOMEM;
            return -1;
        }
    }
    return 0;
}

/* This thread's block status cache, made on first use. */
static struct bs_cache *bs_cache_get(struct nbd_src *ns)
{
    struct bs_cache *bc = pthread_getspecific(ns->key);
    if (bc)
        return bc;
    bc = calloc(1, sizeof(*bc));
    if (!bc || pthread_setspecific(ns->key, bc) != 0) {
        free(bc);
        return NULL;
    }
    pthread_mutex_lock(&ns->lock);
    bc->next = ns->caches;
    ns->caches = bc;
    pthread_mutex_unlock(&ns->lock);
    return bc;
}

/* Make BC cover OFF (< size), asking the server on C if it does not. */
static int bs_fill(struct nbd_src *ns, struct conn *c, struct bs_cache *bc, uint64_t off)
{
    if (off >= bc->start && off < bc->end)
        return 0;
    bc->alloc.n = bc->dirty.n = 0;
    bc->alloc.got = bc->dirty.got = false;
    bc->start = bc->end = bc->query_off = off;
    uint64_t count = ns->size - off < BS_SPAN ? ns->size - off : BS_SPAN;
    struct bs_query q = { ns, bc };
    nbd_extent_callback cb = { .callback = bs_extent, .user_data = &q };
    if (nbd_block_status(c->h, count, off, cb, 0) < 0)
        return conn_error(ns, c, "block status", off);
    uint64_t end = ns->size;
    if (ns->base_alloc)
        end = runs_end(&bc->alloc) < end ? runs_end(&bc->alloc) : end;
    if (ns->bitmap_ctx)
        end = runs_end(&bc->dirty) < end ? runs_end(&bc->dirty) : end;
    if (end <= off)
        return zerr(EPROTO, "'%s': the server sent no block status for offset %llu", ns->uri,
                    (unsigned long long)off);
    bc->end = end;
    return 0;
}

/* ---- source ops --------------------------------------------------------------- */

static int nbd_src_pread(struct source *s, void *buf, size_t len, uint64_t off)
{
    struct nbd_src *ns = s->priv;
    uint8_t *p = buf;
    uint64_t n = off >= ns->size ? 0 : ns->size - off < len ? ns->size - off : len;
    memset(p + n, 0, len - n);
    if (n == 0)
        return 0;
    struct bs_cache *bc = ns->base_alloc ? bs_cache_get(ns) : NULL;
    if (ns->base_alloc && !bc)
        return zerr(ENOMEM, "out of memory");
    struct conn *c = conn_get(ns);
    c->pending = 0;
    c->err = 0;
    int e = 0;
    uint64_t done = 0;
    while (done < n && e == 0) {
        uint64_t piece = n - done;
        bool zero = false;
        if (bc) {
            /* Stretches the server reports as zero are not read. */
            if ((e = bs_fill(ns, c, bc, off + done)) < 0)
                break;
            const struct run *r = runs_find(&bc->alloc, off + done);
            uint64_t end = r->end < bc->end ? r->end : bc->end;
            if (end - (off + done) < piece)
                piece = end - (off + done);
            zero = r->flags & LIBNBD_STATE_ZERO;
        }
        if (zero)
            memset(p + done, 0, (size_t)piece);
        else
            e = read_issue(ns, c, p + done, piece, off + done);
        done += piece;
    }
    e = read_wait(ns, c, e, off);
    conn_put(ns, c);
    return e;
}

static int nbd_src_extent(struct source *s, uint64_t off, uint64_t max, uint64_t *len, int *is_zero)
{
    struct nbd_src *ns = s->priv;
    if (off >= ns->size) {
        *len = max;
        *is_zero = 1;
        return 0;
    }
    if (!ns->base_alloc && !ns->bitmap_ctx) {
        *len = ns->size - off < max ? ns->size - off : max;
        *is_zero = 0;
        return 0;
    }
    struct bs_cache *bc = bs_cache_get(ns);
    if (!bc)
        return zerr(ENOMEM, "out of memory");
    if (!(off >= bc->start && off < bc->end)) {
        struct conn *c = conn_get(ns);
        int e = bs_fill(ns, c, bc, off);
        conn_put(ns, c);
        if (e < 0)
            return e;
    }
    const struct run *r;
    if (ns->bitmap_ctx) {
        /* Clean stretches are skipped (left to the backing file). */
        r = runs_find(&bc->dirty, off);
        *is_zero = !(r->flags & 1);
    } else {
        r = runs_find(&bc->alloc, off);
        *is_zero = (r->flags & LIBNBD_STATE_ZERO) != 0;
    }
    *len = (r->end < bc->end ? r->end : bc->end) - off;
    if (*len > max)
        *len = max;
    return 0;
}

static void nbd_src_close(struct source *s)
{
    struct nbd_src *ns = s->priv;
    for (int i = 0; i < ns->n_conns; i++) {
        nbd_shutdown(ns->conns[i].h, 0);
        nbd_close(ns->conns[i].h);
    }
    if (ns->pending)
        nbd_close(ns->pending);
    while (ns->caches) {
        struct bs_cache *bc = ns->caches;
        ns->caches = bc->next;
        free(bc->alloc.v);
        free(bc->dirty.v);
        free(bc);
    }
    pthread_key_delete(ns->key);
    pthread_mutex_destroy(&ns->lock);
    pthread_cond_destroy(&ns->freed);
    free(ns->uri);
    free(ns->bitmap_ctx);
    free(ns);
    free(s->name);
    free(s);
}

static const struct source_ops nbd_ops = {
    .name = "nbd",
    .pread = nbd_src_pread,
    .extent = nbd_src_extent,
    .read_compressed = NULL,
    .close = nbd_src_close,
};

bool source_is_nbd(const char *name)
{
    static const char *const schemes[] = { "nbd://", "nbds://", "nbd+unix://", "nbds+unix://" };
    for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++)
        if (!strncmp(name, schemes[i], strlen(schemes[i])))
            return true;
    return false;
}

int source_nbd_open(const char *uri, const char *bitmap, struct source **out)
{
    *out = NULL;
    struct source *s = calloc(1, sizeof(*s));
    struct nbd_src *ns = calloc(1, sizeof(*ns));
    if (!s || !ns || !(s->name = strdup(uri)) || !(ns->uri = strdup(uri))) {
        if (s)
            free(s->name);
        free(s);
        free(ns);
        return zerr(ENOMEM, "out of memory");
    }
    int e = 0;
    if (bitmap) {
        if (!*bitmap) {
            e = zerr(EINVAL, "'%s': empty bitmap name", uri);
            goto fail_alloc;
        }
        size_t n = strlen(CTX_BITMAP_PREFIX) + strlen(bitmap) + 1;
        if (!(ns->bitmap_ctx = malloc(n))) {
            e = zerr(ENOMEM, "out of memory");
            goto fail_alloc;
        }
        strcpy(ns->bitmap_ctx, CTX_BITMAP_PREFIX);
        strcat(ns->bitmap_ctx, bitmap);
    }
    if (pthread_key_create(&ns->key, NULL) != 0) {
        e = zerr(EAGAIN, "out of thread-specific keys");
        goto fail_alloc;
    }
    pthread_mutex_init(&ns->lock, NULL);
    pthread_cond_init(&ns->freed, NULL);

    struct nbd_handle *h;
    if ((e = connect_one(ns, CONNECT_TIMEOUT_MS, &h)) < 0)
        goto fail;
    ns->conns[0].h = h;
    ns->n_conns = 1;
    int64_t size = nbd_get_size(h);
    if (size < 0) {
        e = zerr(nbd_errno(EIO), "'%s': %s", uri, nbd_msg());
        goto fail;
    }
    ns->size = (uint64_t)size;
    ns->base_alloc = nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
    if (ns->bitmap_ctx && nbd_can_meta_context(h, ns->bitmap_ctx) != 1) {
        e = zerr(ENOENT, "'%s': the server does not export dirty bitmap '%s' (meta context %s)",
                 uri, bitmap, ns->bitmap_ctx);
        goto fail;
    }
    ns->max_conns = nbd_can_multi_conn(h) == 1 ? MAX_CONNS : 1;
    int64_t max = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
    ns->req_bytes = REQ_BYTES;
    if (max > 0 && (uint64_t)max < ns->req_bytes)
        ns->req_bytes = (uint64_t)max;
    if (ns->req_bytes > REQ_BYTES_MAX)
        ns->req_bytes = REQ_BYTES_MAX;

    s->ops = &nbd_ops;
    s->priv = ns;
    s->size = ns->size;
    *out = s;
    return 0;

fail:
    s->priv = ns;
    s->ops = &nbd_ops;
    nbd_src_close(s);
    return e;
fail_alloc:
    free(ns->bitmap_ctx);
    free(ns->uri);
    free(ns);
    free(s->name);
    free(s);
    return e;
}
