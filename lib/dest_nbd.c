/* dest_nbd.c - an NBD export as a copy destination, through libnbd: a new
 * VM's disk exported by qemu-nbd, say, restored into in place.
 *
 * The export must be writable and hold the whole disk.  Data stretches go
 * as NBD_CMD_WRITE requests; zero stretches (unless the caller promised
 * the export reads as zero: target_is_zero) are asked about first with
 * block status, as qemu-img convert does before zeroing a target, and
 * only what does not read as zero already is zeroed: with
 * NBD_CMD_WRITE_ZEROES where the export can, else by writing zeros.  On a
 * fresh export that is nothing, and a qcow2 export gets no zero clusters.
 *
 * Connections (nbd_client.h): several when the server advertises
 * multi-conn, up to one per engine worker (NBDC_MAX_CONNS), opened as the
 * workers find every open one busy; else the one connection, held by one
 * worker at a time.  A worker keeps many requests in flight on the
 * connection it holds.  Commit flushes (with multi-conn, a flush on one
 * connection covers the writes completed on all, by the protocol).
 *
 * Nothing is renamed: a failed copy leaves the export partly written, as
 * qemu-img convert -n does; the destination says so (in_place). */
#include <errno.h>
#include <libnbd.h>
#include <stdlib.h>
#include <string.h>

#include "blockio.h"
#include "dest.h"
#include "error.h"
#include "nbd_client.h"

/* Bytes per write request: as the source's reads (source_nbd.c). */
#define REQ_BYTES (512u << 10)
/* Bytes per NBD_CMD_WRITE_ZEROES request: no payload, so no block size
 * limit; below the 4 GiB of a request's 32-bit length. */
#define ZERO_REQ_BYTES (1u << 30)
#define CONNECT_TIMEOUT_MS 30000

struct ndest {
    struct dest d;
    struct nbdc c;
    uint64_t req_bytes;
    bool can_zero;   /* NBD_CMD_WRITE_ZEROES */
    bool base_alloc; /* block status tells what reads as zero */
    uint8_t *zeros;  /* req_bytes of zeros, where the export cannot zero */
};

static int n_write(struct dest *d, uint64_t off, const void *buf, size_t len)
{
    struct ndest *nd = d->priv;
    struct nbdc_conn *c = nbdc_get(&nd->c);
    int e = nbdc_issue(&nd->c, c, NBDC_WRITE, (void *)buf, len, off, nd->req_bytes);
    e = nbdc_wait(&nd->c, c, NBDC_WRITE, e, off);
    nbdc_put(&nd->c, c);
    return e;
}

/* Zero [OFF, OFF+LEN) on C without waiting: NBD_CMD_WRITE_ZEROES, or
 * writes from the zero buffer. */
static int zero_issue(struct ndest *nd, struct nbdc_conn *c, uint64_t off, uint64_t len)
{
    if (nd->can_zero)
        return nbdc_issue(&nd->c, c, NBDC_ZERO, NULL, len, off, ZERO_REQ_BYTES);
    int e = 0;
    for (uint64_t end = off + len; off < end && e == 0; off += nd->req_bytes) {
        uint64_t n = end - off < nd->req_bytes ? end - off : nd->req_bytes;
        e = nbdc_issue(&nd->c, c, NBDC_WRITE, nd->zeros, n, off, nd->req_bytes);
    }
    return e;
}

/* Block status of a zero stretch: the runs that do not read as zero,
 * gathered (libnbd is not called from its own callback) and zeroed after. */
struct zero_query {
    uint64_t end;  /* of the stretch */
    uint64_t done; /* answered up to here */
    struct {
        uint64_t off, len;
    } * runs;
    size_t n, cap;
};

static int zero_extent(void *opaque, const char *ctx, uint64_t offset, uint32_t *entries, size_t nr,
                       int *error)
{
    struct zero_query *q = opaque;
    if (strcmp(ctx, LIBNBD_CONTEXT_BASE_ALLOCATION) || offset != q->done)
        return 0; /* another context, or a second answer: keep the first */
    for (size_t i = 0; i + 1 < nr && q->done < q->end; i += 2) {
        if (entries[i] == 0)
            break;
        uint64_t end = q->done + entries[i] < q->end ? q->done + entries[i] : q->end;
        if (!(entries[i + 1] & LIBNBD_STATE_ZERO)) {
            if (q->n && q->runs[q->n - 1].off + q->runs[q->n - 1].len == q->done) {
                q->runs[q->n - 1].len += end - q->done;
            } else {
                if (q->n == q->cap) {
                    size_t cap = q->cap ? 2 * q->cap : 16;
                    void *v = realloc(q->runs, cap * sizeof(*q->runs));
                    if (!v) {
                        *error = ENOMEM;
                        return -1;
                    }
                    q->runs = v;
                    q->cap = cap;
                }
                q->runs[q->n].off = q->done;
                q->runs[q->n++].len = end - q->done;
            }
        }
        q->done = end;
    }
    return 0;
}

/* Zero [OFF, OFF+LEN) where it does not read as zero already. */
static int n_zero(struct dest *d, uint64_t off, uint64_t len)
{
    struct ndest *nd = d->priv;
    struct nbdc_conn *c = nbdc_get(&nd->c);
    int e = 0;
    if (!nd->base_alloc) {
        e = zero_issue(nd, c, off, len);
    } else {
        struct zero_query q = { .end = off + len, .done = off };
        while (q.done < q.end && e == 0) {
            uint64_t at = q.done;
            q.n = 0;
            nbd_extent_callback cb = { .callback = zero_extent, .user_data = &q };
            uint64_t n = q.end - q.done < ZERO_REQ_BYTES ? q.end - q.done : ZERO_REQ_BYTES;
            if (nbd_block_status(c->h, n, q.done, cb, 0) < 0)
                e = nbdc_error(&nd->c, c, "block status", at);
            else if (q.done == at)
                e = zerr(EPROTO, "'%s': the server sent no block status for offset %llu", nd->c.uri,
                         (unsigned long long)at);
            for (size_t i = 0; i < q.n && e == 0; i++)
                e = zero_issue(nd, c, q.runs[i].off, q.runs[i].len);
        }
        free(q.runs);
    }
    e = nbdc_wait(&nd->c, c, nd->can_zero ? NBDC_ZERO : NBDC_WRITE, e, off);
    nbdc_put(&nd->c, c);
    return e;
}

static int n_commit(struct dest *d, struct zcow_convert_stats *st)
{
    struct ndest *nd = d->priv;
    struct nbd_handle *h = nd->c.conns[0].h;
    if (nbd_can_flush(h) == 1 && nbd_flush(h, 0) < 0)
        return zerr(nbdc_errno(EIO), "cannot flush '%s': %s", d->name, nbdc_msg());
    st->bytes_out = d->size;
    return 0;
}

static void n_close(struct dest *d)
{
    struct ndest *nd = d->priv;
    nbdc_close(&nd->c);
    free(nd->zeros);
    free(nd);
}

static const struct dest_ops nbd_ops = {
    .name = "nbd",
    .write = n_write,
    .zero = n_zero,
    .write_compressed = NULL,
    .commit = n_commit,
    .close = n_close,
};

int dest_nbd_open(const struct zcow_convert_options *o, uint64_t size, struct dest **out)
{
    *out = NULL;
    struct ndest *nd = calloc(1, sizeof(*nd));
    if (!nd)
        return zerr(ENOMEM, "out of memory");
    struct dest *d = &nd->d;
    d->ops = &nbd_ops;
    d->name = o->dst;
    d->size = size;
    d->granularity = BLK_ALIGN;
    d->unwritten_is_zero = o->target_is_zero != 0;
    d->in_place = true;
    d->priv = nd;
    int e = nbdc_init(&nd->c, o->dst, &o->nbd_tls);
    if (e == 0) {
        nbdc_add_context(&nd->c, LIBNBD_CONTEXT_BASE_ALLOCATION);
        e = nbdc_connect(&nd->c, CONNECT_TIMEOUT_MS);
    }
    struct nbd_handle *h = e == 0 ? nd->c.conns[0].h : NULL;
    int64_t export_size = h ? nbd_get_size(h) : 0;
    if (e == 0 && export_size < 0)
        e = zerr(nbdc_errno(EIO), "'%s': %s", o->dst, nbdc_msg());
    else if (e == 0 && nbd_is_read_only(h) == 1)
        e = zerr(EROFS, "cannot write '%s': the export is read-only", o->dst);
    else if (e == 0 && (uint64_t)export_size < size)
        e = zerr(ENOSPC,
                 "cannot write '%s': the export (%lld bytes) is smaller than the image (%llu "
                 "bytes)",
                 o->dst, (long long)export_size, (unsigned long long)size);
    if (e == 0) {
        nd->c.max_conns = nbd_can_multi_conn(h) == 1 ? NBDC_MAX_CONNS : 1;
        nd->req_bytes = nbdc_request_bytes(&nd->c, REQ_BYTES);
        nd->can_zero = nbd_can_zero(h) == 1;
        nd->base_alloc = nd->c.got_context[0];
        if (!nd->can_zero && !d->unwritten_is_zero && !(nd->zeros = blk_zalloc(nd->req_bytes)))
            e = zerr(ENOMEM, "out of memory");
    }
    if (e < 0) {
        n_close(d);
        return e;
    }
    *out = d;
    return 0;
}
