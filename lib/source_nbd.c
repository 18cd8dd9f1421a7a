/* source_nbd.c - an NBD export as a conversion source, through libnbd.
 *
 * NAME is an NBD URI (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=
 * PATH, and the TLS forms nbds://, nbds+unix://); connecting, TLS and the
 * connections are nbd_client.h's.
 *
 * Connections: one when the server does not allow multi-conn; up to
 * NBDC_MAX_CONNS when it does, opened lazily as worker threads find every
 * open one busy.  A thread holds a connection for the length of one call,
 * and keeps several requests in flight on it (REQ_BYTES each), so one
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
 * answers the extent and pread calls of a whole segment. */
#include <errno.h>
#include <libnbd.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "nbd_client.h"
#include "options.h"
#include "source.h"
#include "zcow.h"

/* Bytes per NBD read request: small enough that a 4 MiB segment is
 * several requests in flight, large enough that the per-request cost is
 * small.  Capped further by the server's maximum block size. */
#define REQ_BYTES (512u << 10)
/* Block status is asked for this much at a time (the server may answer
 * less).  Below the 4 GiB that some servers refuse. */
#define BS_SPAN (16u << 20)
/* A server that never answers is an error, not a hang. */
#define CONNECT_TIMEOUT_MS 30000

#define CTX_BITMAP_PREFIX "qemu:dirty-bitmap:"

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
    struct nbdc c;      /* the URI, TLS, the connections */
    const char *uri;    /* c.uri */
    char *bitmap_ctx;   /* "qemu:dirty-bitmap:NAME", or NULL */
    bool base_alloc;    /* the server answers base:allocation */
    uint64_t req_bytes; /* bytes per read request */
    uint64_t size;
    pthread_key_t key; /* this thread's struct bs_cache */
    bool key_made;
    pthread_mutex_t lock; /* guards caches */
    struct bs_cache *caches;
};

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
static int bs_fill(struct nbd_src *ns, struct nbdc_conn *c, struct bs_cache *bc, uint64_t off)
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
        return nbdc_error(&ns->c, c, "block status", off);
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
    struct nbdc_conn *c = nbdc_get(&ns->c);
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
            e = nbdc_issue(&ns->c, c, NBDC_READ, p + done, piece, off + done, ns->req_bytes);
        done += piece;
    }
    e = nbdc_wait(&ns->c, c, NBDC_READ, e, off);
    nbdc_put(&ns->c, c);
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
        struct nbdc_conn *c = nbdc_get(&ns->c);
        int e = bs_fill(ns, c, bc, off);
        nbdc_put(&ns->c, c);
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
    nbdc_close(&ns->c);
    while (ns->caches) {
        struct bs_cache *bc = ns->caches;
        ns->caches = bc->next;
        free(bc->alloc.v);
        free(bc->dirty.v);
        free(bc);
    }
    if (ns->key_made)
        pthread_key_delete(ns->key);
    pthread_mutex_destroy(&ns->lock);
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
int source_nbd_open(const char *uri, const char *bitmap, const struct zcow_nbd_tls *tls,
                    struct source **out)
{
    *out = NULL;
    struct source *s = calloc(1, sizeof(*s));
    struct nbd_src *ns = calloc(1, sizeof(*ns));
    if (!s || !ns || !(s->name = strdup(uri))) {
        if (s)
            free(s->name);
        free(s);
        free(ns);
        return zerr(ENOMEM, "out of memory");
    }
    s->ops = &nbd_ops;
    s->priv = ns;
    pthread_mutex_init(&ns->lock, NULL);
    int e = nbdc_init(&ns->c, uri, tls);
    ns->uri = ns->c.uri;
    if (e < 0)
        goto fail;
    if (bitmap) {
        if (!*bitmap) {
            e = zerr(EINVAL, "'%s': empty bitmap name", uri);
            goto fail;
        }
        size_t n = strlen(CTX_BITMAP_PREFIX) + strlen(bitmap) + 1;
        if (!(ns->bitmap_ctx = malloc(n))) {
            e = zerr(ENOMEM, "out of memory");
            goto fail;
        }
        strcpy(ns->bitmap_ctx, CTX_BITMAP_PREFIX);
        strcat(ns->bitmap_ctx, bitmap);
    }
    if (pthread_key_create(&ns->key, NULL) != 0) {
        e = zerr(EAGAIN, "out of thread-specific keys");
        goto fail;
    }
    ns->key_made = true;

    nbdc_add_context(&ns->c, LIBNBD_CONTEXT_BASE_ALLOCATION);
    if (ns->bitmap_ctx)
        nbdc_add_context(&ns->c, ns->bitmap_ctx);
    if ((e = nbdc_connect(&ns->c, CONNECT_TIMEOUT_MS)) < 0)
        goto fail;
    struct nbd_handle *h = ns->c.conns[0].h;
    int64_t size = nbd_get_size(h);
    if (size < 0) {
        e = zerr(nbdc_errno(EIO), "'%s': %s", uri, nbdc_msg());
        goto fail;
    }
    ns->size = (uint64_t)size;
    ns->base_alloc = ns->c.got_context[0];
    if (ns->bitmap_ctx && !ns->c.got_context[1]) {
        e = zerr(ENOENT, "'%s': the server does not export dirty bitmap '%s' (meta context %s)",
                 uri, bitmap, ns->bitmap_ctx);
        goto fail;
    }
    ns->c.max_conns = nbd_can_multi_conn(h) == 1 ? NBDC_MAX_CONNS : 1;
    ns->req_bytes = nbdc_request_bytes(&ns->c, REQ_BYTES);
    s->size = ns->size;
    *out = s;
    return 0;

fail:
    nbd_src_close(s);
    return e;
}
