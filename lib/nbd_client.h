/* nbd_client.h - the client side of NBD that the NBD source (source_nbd.c)
 * and the NBD destination (dest_nbd.c) share, over libnbd: the URI and its
 * TLS settings, connecting (with a timeout; TLS checked), the messages,
 * and a pool of connections: several when the server allows multi-conn,
 * opened as threads find every open one busy.
 *
 * URIs: nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH, and the
 * TLS forms nbds://, nbds+unix://.  The nbds schemes make libnbd require
 * TLS (LIBNBD_TLS_REQUIRE: a server that refuses TLS is an error, never a
 * plaintext connection), and every connection is checked to have
 * negotiated it.  The URI may name files (tls-certificates, tls-psk-file):
 * a URI the user gives is the user's to trust, as nbdinfo and nbdcopy take
 * it.  The caller's settings are made before nbd_aio_connect_uri(), which
 * applies the URI's own over them; tls-username=NAME, which libnbd (1.14)
 * does not read, is read here and set the same way, below the NAME@ of the
 * URI. */
#ifndef ZCOW_NBD_CLIENT_H
#define ZCOW_NBD_CLIENT_H

#include <libnbd.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

/* Connections when the server allows multi-conn: enough for the workers
 * of a large machine; nbdcopy uses 4. */
#define NBDC_MAX_CONNS 8
/* Meta contexts a pool may ask for. */
#define NBDC_MAX_CONTEXTS 2

struct zcow_nbd_tls;

struct nbdc_conn {
    struct nbd_handle *h;
    bool busy; /* guarded by nbdc.lock */
    /* Requests in flight and the first error of one; used only by the
     * thread holding the connection, and by libnbd's completion callbacks
     * that run inside that thread's libnbd calls. */
    int pending;
    int err;
};

struct nbdc {
    char *uri;
    /* Meta contexts asked for on every connection (the strings are the
     * caller's), and which of them the first connection got: an extra
     * connection must get the same. */
    const char *contexts[NBDC_MAX_CONTEXTS];
    bool got_context[NBDC_MAX_CONTEXTS];
    unsigned n_contexts;

    pthread_mutex_t lock; /* guards conns[].busy, n_conns, max_conns,
                             connecting, pending */
    pthread_cond_t freed;
    struct nbdc_conn conns[NBDC_MAX_CONNS];
    int n_conns, max_conns;
    bool connecting;            /* a thread is starting or driving `pending` */
    struct nbd_handle *pending; /* a connection on its way, or NULL */
    struct timespec pending_t0;

    /* TLS: an nbds scheme (TLS required), and the settings made on each
     * handle before the URI (NULL: none). */
    bool tls;
    char *tls_certificates, *tls_psk_file, *tls_username;
};

/* Set C up for URI with TLS (may be NULL) and check the TLS settings (see
 * source.h's source_nbd_open for what is refused).  C may be given to
 * nbdc_close() whatever this returns. */
int nbdc_init(struct nbdc *c, const char *uri, const struct zcow_nbd_tls *tls);

/* Ask for meta context CTX (kept, not copied) on every connection. */
void nbdc_add_context(struct nbdc *c, const char *ctx);

/* Open the first connection, conns[0], within TIMEOUT_MS; max_conns is 1
 * until the caller raises it (up to NBDC_MAX_CONNS). */
int nbdc_connect(struct nbdc *c, long timeout_ms);

/* A connection of our own for one call: a free one, or a new one while
 * max_conns allows and every open one is busy, or wait for one. */
struct nbdc_conn *nbdc_get(struct nbdc *c);
void nbdc_put(struct nbdc *c, struct nbdc_conn *conn);

/* Requests in flight on one connection at most. */
#define NBDC_MAX_IN_FLIGHT 64

enum nbdc_op { NBDC_READ, NBDC_WRITE, NBDC_ZERO };

/* Issue OP over [OFF, OFF+LEN) on CONN, held by the caller, as requests of
 * at most REQ bytes (BUF: where to read into or write from; NULL for
 * NBDC_ZERO, NBD_CMD_WRITE_ZEROES), keeping at most NBDC_MAX_IN_FLIGHT in
 * flight, without waiting for the last ones.  Then nbdc_wait(), with what
 * this returned as ERR (the first failure wins; OFF names where). */
int nbdc_issue(const struct nbdc *c, struct nbdc_conn *conn, enum nbdc_op op, void *buf,
               uint64_t len, uint64_t off, uint64_t req);
int nbdc_wait(const struct nbdc *c, struct nbdc_conn *conn, enum nbdc_op op, int err, uint64_t off);

/* Bytes per read or write request: WANT, capped by the server's maximum
 * block size (asked on the first connection) and the protocol's 32 MiB. */
uint64_t nbdc_request_bytes(const struct nbdc *c, uint64_t want);

/* Shut down and close every connection; free what C holds (not C). */
void nbdc_close(struct nbdc *c);

/* A message for a failed call (WHAT at OFF, e.g. "read") on CONN: a
 * connection that died says so. */
int nbdc_error(const struct nbdc *c, struct nbdc_conn *conn, const char *what, uint64_t off);

/* The current libnbd message of this thread, without the name of the
 * libnbd call in front; libnbd's errno, or FALLBACK. */
const char *nbdc_msg(void);
int nbdc_errno(int fallback);

#endif
