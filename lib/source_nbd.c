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
 * EXTENT_UNCHANGED, so that the conversion leaves them unallocated for the
 * backing file to fill, and the dirty ones as data; zeroes inside dirty
 * stretches still come from base:allocation without being read.
 *
 * Block status answers are kept per thread (each worker walks its own
 * segment), for BS_SPAN bytes from the offset asked about: one round trip
 * answers the extent and pread calls of a whole segment.
 *
 * TLS: the nbds schemes make libnbd require it (LIBNBD_TLS_REQUIRE: a
 * server that refuses TLS is an error, never a plaintext connection), and
 * every connection is checked to have negotiated it.  The URI may name
 * files (tls-certificates, tls-psk-file): a URI the user gives is the
 * user's to trust, as nbdinfo and nbdcopy take it.  The caller's settings
 * are made before nbd_aio_connect_uri(), which applies the URI's own over
 * them; tls-username=NAME, which libnbd (1.14) does not read, is read here
 * and set the same way, below the NAME@ of the URI. */
#include <errno.h>
#include <libnbd.h>
#include <libxml/uri.h>
#include <pthread.h>
#include <pwd.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "options.h"
#include "source.h"
#include "zcow.h"

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

    /* TLS: an nbds scheme (TLS required), and the settings made on each
     * handle before the URI (NULL: none). */
    bool tls;
    char *tls_certificates, *tls_psk_file, *tls_username;
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

/* Why this thread's connection failed: nbd_msg(), with the failures of
 * TLS said plainly and GnuTLS's own words after them, without the name of
 * the GnuTLS call and the handshake state ("gnutls_handshake: Error in
 * the certificate verification. (15/1)" -> "...: Error in the
 * certificate verification").  In BUF (CAP bytes). */
#define REFUSED                                                                                    \
    "the server broke off TLS: it refused the credentials (the client certificate, the PSK "       \
    "user name or key, or X.509 where it expects PSK or the reverse)"
static const char *connect_cause(char *buf, size_t cap)
{
    static const struct {
        const char *match, *cause;
    } known[] = {
        { "server requires TLS", "the server requires TLS (nbds:// or nbds+unix://)" },
        { "server refused TLS", "the server does not offer TLS, which this URI requires" },
        { "certificate verification",
          "the server's certificate is not trusted (not signed by the CA of ca-cert.pem, or "
          "not for this host name)" },
        { "non-properly terminated", REFUSED },
        { "Error in the push function", REFUSED },
        { "Error in the pull function", REFUSED },
    };
    const char *m = nbd_msg();
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        if (!strstr(m, known[i].match))
            continue;
        if (strncmp(m, "gnutls_", 7)) {
            snprintf(buf, cap, "%s", known[i].cause);
            return buf;
        }
        /* "gnutls_CALL: TEXT. (IN/OUT)" -> "TEXT" */
        const char *t = strstr(m, ": ");
        t = t ? t + 2 : m;
        size_t n = strlen(t);
        const char *paren = strrchr(t, '(');
        if (paren && paren > t && paren[-1] == ' ' && strchr(paren, '/') && t[n - 1] == ')')
            n = (size_t)(paren - 1 - t);
        if (n && t[n - 1] == '.')
            n--;
        snprintf(buf, cap, "%s: %.*s", known[i].cause, (int)n, t);
        return buf;
    }
    snprintf(buf, cap, "%s", m);
    return buf;
}

/* Fail connecting: "cannot connect to 'URI': CAUSE". */
static int connect_error(const struct nbd_src *ns, int fallback)
{
    char cause[400];
    return zerr(nbd_errno(fallback), "cannot connect to '%s': %s", ns->uri,
                connect_cause(cause, sizeof(cause)));
}

/* ---- the URI's query ------------------------------------------------------ */

/* Walk the query of the parsed URI U (libxml2's parser, as libnbd's own;
 * NAME=VALUE pairs split at '&' and ';', as libnbd splits them).  For each
 * pair from *POS on, the %-decoded name and value as new strings (*VALUE
 * "" when there is no '='); returns 1, 0 at the end, -ENOMEM. */
static int query_next(xmlURIPtr u, size_t *pos, char **name, char **value)
{
    const char *q = u->query_raw;
    size_t qlen = q ? strlen(q) : 0;
    while (*pos < qlen) {
        const char *p = q + *pos;
        size_t n = strcspn(p, "&;");
        *pos += n + 1;
        if (n == 0)
            continue;
        const char *eq = memchr(p, '=', n);
        int nlen = (int)(eq ? (size_t)(eq - p) : n);
        *name = xmlURIUnescapeString(p, nlen, NULL);
        *value = eq ? xmlURIUnescapeString(eq + 1, (int)n - nlen - 1, NULL) : strdup("");
        if (!*name || !*value) {
            free(*name);
            free(*value);
            return -ENOMEM;
        }
        return 1;
    }
    return 0;
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
        (ns->bitmap_ctx && nbd_add_meta_context(h, ns->bitmap_ctx) < 0) ||
        nbd_set_uri_allow_local_file(h, true) < 0 ||
        (ns->tls_certificates && nbd_set_tls_certificates(h, ns->tls_certificates) < 0) ||
        (ns->tls_psk_file && nbd_set_tls_psk_file(h, ns->tls_psk_file) < 0) ||
        (ns->tls_username && nbd_set_tls_username(h, ns->tls_username) < 0)) {
        e = zerr(nbd_errno(EINVAL), "'%s': %s", ns->uri, nbd_msg());
    } else if (!nbd_supports_uri(h)) {
        e = zerr(ENOTSUP, "'%s': this libnbd cannot connect to NBD URIs", ns->uri);
    } else {
        clock_gettime(CLOCK_MONOTONIC, t0);
        if (nbd_aio_connect_uri(h, ns->uri) < 0)
            e = connect_error(ns, ECONNREFUSED);
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
            return connect_error(ns, ECONNREFUSED);
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
            return connect_error(ns, ECONNREFUSED);
    }
    /* libnbd requires TLS for these schemes; this keeps it so whatever
     * the URI may say in a later libnbd. */
    if (ns->tls && nbd_get_tls_negotiated(h) != 1)
        return zerr(EPROTO, "cannot connect to '%s': the connection is not encrypted (no TLS)",
                    ns->uri);
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

static int nbd_src_extent(struct source *s, uint64_t off, uint64_t max, uint64_t *len,
                          enum extent_kind *kind)
{
    struct nbd_src *ns = s->priv;
    if (off >= ns->size) {
        *len = max;
        *kind = EXTENT_ZERO;
        return 0;
    }
    if (!ns->base_alloc && !ns->bitmap_ctx) {
        *len = ns->size - off < max ? ns->size - off : max;
        *kind = EXTENT_DATA;
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
        *kind = r->flags & 1 ? EXTENT_DATA : EXTENT_UNCHANGED;
    } else {
        r = runs_find(&bc->alloc, off);
        *kind = r->flags & LIBNBD_STATE_ZERO ? EXTENT_ZERO : EXTENT_DATA;
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
    free(ns->tls_certificates);
    free(ns->tls_psk_file);
    free(ns->tls_username);
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

/* Is DIR/ca-cert.pem readable (errno set when not)? */
static bool has_ca_cert(const char *dir)
{
    char path[4096];
    if (snprintf(path, sizeof(path), "%s/ca-cert.pem", dir) >= (int)sizeof(path)) {
        errno = ENAMETOOLONG;
        return false;
    }
    return access(path, R_OK) == 0;
}

/* Does one of the directories libnbd reads when given none hold a CA
 * certificate (lib/crypto.c: /etc/pki/libnbd for root, else
 * ~/.pki/libnbd, then ~/.config/pki/libnbd)? */
static bool default_certs(void)
{
    const char *home = getenv("HOME");
    char dir[4096];
    if (geteuid() == 0 || !home)
        return geteuid() == 0 && has_ca_cert("/etc/pki/libnbd");
    snprintf(dir, sizeof(dir), "%s/.pki/libnbd", home);
    if (has_ca_cert(dir))
        return true;
    snprintf(dir, sizeof(dir), "%s/.config/pki/libnbd", home);
    return has_ca_cert(dir);
}

/* NS's TLS settings: TLS's (may be NULL) and the URI's tls-username; none
 * of them, and no tls* parameter, in a URI without TLS.  The settings in
 * effect are checked where libnbd would go on quietly:
 * - a certificates directory without ca-cert.pem, or none at all where
 *   libnbd's default directories have none, makes libnbd (1.14) use the
 *   system's CAs without checking the server's certificate against them,
 *   and send no client certificate: refused;
 * - PSK without a user name makes libnbd ask getlogin_r(), which fails
 *   without a terminal: the user running zcow is the default instead. */
static int tls_setup(struct nbd_src *ns, const struct zcow_nbd_tls *tls)
{
    static const struct zcow_nbd_tls none = { 0 };
    if (!tls)
        tls = &none;
    if (!ns->tls && (tls->certificates || tls->psk_file || tls->username))
        return zerr(EINVAL, "'%s': TLS settings need a URI with TLS (nbds:// or nbds+unix://)",
                    ns->uri);
    if ((tls->certificates && !(ns->tls_certificates = strdup(tls->certificates))) ||
        (tls->psk_file && !(ns->tls_psk_file = strdup(tls->psk_file))) ||
        (tls->username && !(ns->tls_username = strdup(tls->username))))
        return zerr(ENOMEM, "out of memory");
    xmlURIPtr u = xmlParseURI(ns->uri);
    if (!u)
        return zerr(EINVAL, "'%s' is not a valid NBD URI", ns->uri);
    char *name, *value, *uri_certs = NULL;
    bool uri_psk = false;
    size_t pos = 0;
    int r = 0, e = 0;
    while (e == 0 && (r = query_next(u, &pos, &name, &value)) > 0) {
        if (!ns->tls && !strncmp(name, "tls", 3)) {
            e = zerr(EINVAL, "'%s': parameter '%s' needs a URI with TLS (nbds:// or nbds+unix://)",
                     ns->uri, name);
        } else if (!strcmp(name, "tls-username")) {
            free(ns->tls_username);
            ns->tls_username = value;
            value = NULL;
        } else if (!strcmp(name, "tls-certificates")) {
            free(uri_certs);
            uri_certs = value;
            value = NULL;
        } else if (!strcmp(name, "tls-psk-file")) {
            uri_psk = true;
        }
        free(name);
        free(value);
    }
    xmlFreeURI(u);
    if (e == 0 && r < 0)
        e = zerr(ENOMEM, "out of memory");
    const char *dir = uri_certs ? uri_certs : ns->tls_certificates;
    bool psk = uri_psk || ns->tls_psk_file;
    if (e < 0 || !ns->tls) {
        /* nothing more to check */
    } else if (!psk && dir && !has_ca_cert(dir)) {
        e = zerr_sys(errno,
                     "cannot connect to '%s': TLS certificates directory '%s' has no "
                     "readable ca-cert.pem",
                     ns->uri, dir);
    } else if (!psk && !dir && !default_certs()) {
        e = zerr(EINVAL,
                 "cannot connect to '%s': no TLS certificates to check the server's "
                 "with: give a directory holding ca-cert.pem (libnbd's default, %s, "
                 "has none) or a PSK file",
                 ns->uri, geteuid() == 0 ? "/etc/pki/libnbd" : "~/.pki/libnbd");
    } else if (psk && !ns->tls_username) {
        char buf[1024];
        struct passwd pw, *pwp = NULL;
        if (getpwuid_r(geteuid(), &pw, buf, sizeof(buf), &pwp) != 0 || !pwp)
            e = zerr(ENOENT,
                     "cannot connect to '%s': no TLS user name given, and user %u has no "
                     "name",
                     ns->uri, (unsigned)geteuid());
        else if (!(ns->tls_username = strdup(pw.pw_name)))
            e = zerr(ENOMEM, "out of memory");
    }
    free(uri_certs);
    return e;
}

int source_nbd_open(const char *uri, const char *bitmap, const struct zcow_nbd_tls *tls,
                    struct source **out)
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
    ns->tls = !strncmp(uri, "nbds://", 7) || !strncmp(uri, "nbds+unix://", 12);
    if ((e = tls_setup(ns, tls)) < 0)
        goto fail_alloc;
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
    free(ns->tls_certificates);
    free(ns->tls_psk_file);
    free(ns->tls_username);
    free(ns->uri);
    free(ns);
    free(s->name);
    free(s);
    return e;
}
