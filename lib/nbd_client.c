/* nbd_client.c - the NBD client parts the NBD source and destination
 * share (see nbd_client.h): TLS settings, connecting, messages, the pool
 * of connections.  Moved from source_nbd.c, which had them first. */
#include "nbd_client.h"

#include <errno.h>
#include <libxml/uri.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "options.h"
#include "zcow.h"

/* How long a connection may take: the first one is the caller's (a server
 * that never answers is an error, not a hang), the extra ones of
 * multi-conn this (a server whose connection limit is reached answers them
 * only when another client leaves; then the pool goes on with the
 * connections it has). */
#define EXTRA_CONNECT_TIMEOUT_MS 2000
/* Protocol limit on a request when the server names none (libnbd's and
 * QEMU's 32 MiB). */
#define REQ_BYTES_MAX (32u << 20)

/* ---- messages ------------------------------------------------------------- */

static long elapsed_ms(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long)(t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

/* The current libnbd message of this thread, without the name of the
 * libnbd call in front ("nbd_poll: handshake: ..." -> "handshake: ..."). */
const char *nbdc_msg(void)
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

int nbdc_errno(int fallback)
{
    int e = nbd_get_errno();
    return e > 0 ? e : fallback;
}

/* Why this thread's connection failed: nbdc_msg(), with the failures of
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
    const char *m = nbdc_msg();
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
static int connect_error(const struct nbdc *ns, int fallback)
{
    char cause[400];
    return zerr(nbdc_errno(fallback), "cannot connect to '%s': %s", ns->uri,
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

/* ---- connections ---------------------------------------------------------- */

/* Start a connection to the URI with the meta contexts; *T0 is when. */
static int connect_start(struct nbdc *ns, struct nbd_handle **out, struct timespec *t0)
{
    *out = NULL;
    struct nbd_handle *h = nbd_create();
    if (!h)
        return zerr(ENOMEM, "'%s': %s", ns->uri, nbdc_msg());
    int e = 0;
    bool ok = true;
    for (unsigned i = 0; ok && i < ns->n_contexts; i++)
        ok = nbd_add_meta_context(h, ns->contexts[i]) == 0;
    if (!ok || nbd_set_uri_allow_local_file(h, true) < 0 ||
        (ns->tls_certificates && nbd_set_tls_certificates(h, ns->tls_certificates) < 0) ||
        (ns->tls_psk_file && nbd_set_tls_psk_file(h, ns->tls_psk_file) < 0) ||
        (ns->tls_username && nbd_set_tls_username(h, ns->tls_username) < 0)) {
        e = zerr(nbdc_errno(EINVAL), "'%s': %s", ns->uri, nbdc_msg());
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
static int connect_step(struct nbdc *ns, struct nbd_handle *h, const struct timespec *t0,
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
static int connect_one(struct nbdc *ns, long timeout_ms, struct nbd_handle **out)
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
struct nbdc_conn *nbdc_get(struct nbdc *ns)
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
            /* The contexts must be there as on the first connection. */
            for (unsigned i = 0; e == 1 && i < ns->n_contexts; i++)
                if (ns->got_context[i] && nbd_can_meta_context(h, ns->contexts[i]) != 1)
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
            struct nbdc_conn *c = &ns->conns[ns->n_conns++];
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

void nbdc_put(struct nbdc *ns, struct nbdc_conn *c)
{
    pthread_mutex_lock(&ns->lock);
    c->busy = false;
    pthread_cond_signal(&ns->freed);
    pthread_mutex_unlock(&ns->lock);
}

int nbdc_error(const struct nbdc *ns, struct nbdc_conn *c, const char *what, uint64_t off)
{
    if (nbd_aio_is_dead(c->h) || nbd_aio_is_closed(c->h))
        return zerr(ENOTCONN, "'%s': %s at offset %llu failed: the server closed the connection",
                    ns->uri, what, (unsigned long long)off);
    return zerr(nbdc_errno(EIO), "'%s': %s at offset %llu failed: %s", ns->uri, what,
                (unsigned long long)off, nbdc_msg());
}

/* ---- requests ------------------------------------------------------------------ */

static const char *const op_names[] = { "read", "write", "write zeroes" };

static int request_done(void *opaque, int *error)
{
    struct nbdc_conn *c = opaque;
    if (*error && !c->err)
        c->err = *error;
    c->pending--;
    return 1; /* retire the command */
}

int nbdc_issue(const struct nbdc *ns, struct nbdc_conn *c, enum nbdc_op op, void *buf, uint64_t len,
               uint64_t off, uint64_t req)
{
    uint8_t *p = buf;
    while (len > 0) {
        while (c->pending >= NBDC_MAX_IN_FLIGHT) {
            if (nbd_poll(c->h, -1) < 0)
                return nbdc_error(ns, c, op_names[op], off);
        }
        uint64_t n = len < req ? len : req;
        nbd_completion_callback cb = { .callback = request_done, .user_data = c };
        int64_t r = op == NBDC_READ    ? nbd_aio_pread(c->h, p, (size_t)n, off, cb, 0)
                    : op == NBDC_WRITE ? nbd_aio_pwrite(c->h, p, (size_t)n, off, cb, 0)
                                       : nbd_aio_zero(c->h, n, off, cb, 0);
        if (r < 0)
            return nbdc_error(ns, c, op_names[op], off);
        c->pending++;
        if (p)
            p += n;
        off += n;
        len -= n;
    }
    return 0;
}

int nbdc_wait(const struct nbdc *ns, struct nbdc_conn *c, enum nbdc_op op, int err, uint64_t off)
{
    while (c->pending > 0) {
        if (nbd_poll(c->h, -1) < 0) {
            /* A dead connection completes nothing more. */
            int e = nbdc_error(ns, c, op_names[op], off);
            c->pending = 0;
            c->err = 0;
            return err < 0 ? err : e;
        }
    }
    if (c->err) {
        int e = c->err;
        c->err = 0;
        if (err < 0)
            return err;
        if (nbd_aio_is_dead(c->h) || nbd_aio_is_closed(c->h))
            return nbdc_error(ns, c, op_names[op], off);
        return zerr(e, "'%s': the server failed a %s near offset %llu: %s", ns->uri, op_names[op],
                    (unsigned long long)off, strerror(e));
    }
    return err;
}

/* ---- TLS settings ------------------------------------------------------------ */

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
static int tls_setup(struct nbdc *ns, const struct zcow_nbd_tls *tls)
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

/* ---- the pool ---------------------------------------------------------------- */

int nbdc_init(struct nbdc *c, const char *uri, const struct zcow_nbd_tls *tls)
{
    memset(c, 0, sizeof(*c));
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->freed, NULL);
    c->max_conns = 1;
    if (!(c->uri = strdup(uri)))
        return zerr(ENOMEM, "out of memory");
    c->tls = !strncmp(uri, "nbds://", 7) || !strncmp(uri, "nbds+unix://", 12);
    return tls_setup(c, tls);
}

void nbdc_add_context(struct nbdc *c, const char *ctx)
{
    if (c->n_contexts < NBDC_MAX_CONTEXTS)
        c->contexts[c->n_contexts++] = ctx;
}

int nbdc_connect(struct nbdc *c, long timeout_ms)
{
    struct nbd_handle *h;
    int e = connect_one(c, timeout_ms, &h);
    if (e < 0)
        return e;
    c->conns[0].h = h;
    c->n_conns = 1;
    for (unsigned i = 0; i < c->n_contexts; i++)
        c->got_context[i] = nbd_can_meta_context(h, c->contexts[i]) == 1;
    return 0;
}

void nbdc_close(struct nbdc *c)
{
    for (int i = 0; i < c->n_conns; i++) {
        nbd_shutdown(c->conns[i].h, 0);
        nbd_close(c->conns[i].h);
    }
    if (c->pending)
        nbd_close(c->pending);
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->freed);
    free(c->uri);
    free(c->tls_certificates);
    free(c->tls_psk_file);
    free(c->tls_username);
    memset(c, 0, sizeof(*c));
}

uint64_t nbdc_request_bytes(const struct nbdc *c, uint64_t want)
{
    int64_t max = c->n_conns ? nbd_get_block_size(c->conns[0].h, LIBNBD_SIZE_MAXIMUM) : -1;
    if (max > 0 && (uint64_t)max < want)
        want = (uint64_t)max;
    return want < REQ_BYTES_MAX ? want : REQ_BYTES_MAX;
}
