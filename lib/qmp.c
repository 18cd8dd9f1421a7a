/* qmp.c - QMP client: see qmp.h.
 *
 * QEMU sends one JSON object per line.  Lines are read into a growing
 * buffer and parsed with jansson; answers to commands carry the "id" we
 * sent, so an answer can never be taken for another's. */
#include "qmp.h"

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "error.h"

/* How long QEMU may take to answer a command (a transaction that starts
 * block jobs on a busy host takes a while, never minutes). */
#define DEFAULT_TIMEOUT_MS 60000
/* Events kept for qmp_wait_event(); older ones are dropped. */
#define MAX_QUEUED_EVENTS 1024
/* Bound on one message: query-block of many disks is a few hundred KiB. */
#define MAX_LINE (64u << 20)

struct qmp {
    char *path;
    int fd;
    int timeout_ms;
    unsigned long long next_id;
    char *buf; /* bytes read and not yet parsed */
    size_t len, cap;
    json_t *events; /* queued events, oldest first */
    char error_class[64];
};

static long long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* The next message, waiting until DEADLINE (monotonic ms). */
static int read_message(struct qmp *q, long long deadline, json_t **out)
{
    *out = NULL;
    for (;;) {
        char *nl = q->len ? memchr(q->buf, '\n', q->len) : NULL;
        if (nl) {
            size_t n = (size_t)(nl - q->buf) + 1;
            json_error_t jerr;
            json_t *m = json_loadb(q->buf, n, 0, &jerr);
            memmove(q->buf, q->buf + n, q->len - n);
            q->len -= n;
            if (!m || !json_is_object(m)) {
                json_decref(m);
                return zerr(EPROTO, "QMP '%s': not a QMP message: %s", q->path, jerr.text);
            }
            *out = m;
            return 0;
        }
        if (q->len == q->cap) {
            if (q->cap >= MAX_LINE)
                return zerr(EPROTO, "QMP '%s': a message longer than %u bytes", q->path, MAX_LINE);
            size_t cap = q->cap ? q->cap * 2 : 65536;
            char *b = realloc(q->buf, cap);
            if (!b)
                return zerr(ENOMEM, "out of memory");
            q->buf = b;
            q->cap = cap;
        }
        long long left = deadline - now_ms();
        if (left <= 0)
            return zerr(ETIMEDOUT, "QMP '%s': no answer from QEMU in %d s", q->path,
                        q->timeout_ms / 1000);
        struct pollfd p = { .fd = q->fd, .events = POLLIN };
        int r = poll(&p, 1, left > 1000 ? 1000 : (int)left);
        if (r < 0 && errno != EINTR)
            return zerr_sys(errno, "QMP '%s'", q->path);
        if (r <= 0)
            continue;
        ssize_t n = read(q->fd, q->buf + q->len, q->cap - q->len);
        if (n == 0)
            return zerr(ECONNRESET, "QMP '%s': QEMU closed the connection", q->path);
        if (n < 0 && errno != EINTR && errno != EAGAIN)
            return zerr_sys(errno, "QMP '%s'", q->path);
        if (n > 0)
            q->len += (size_t)n;
    }
}

static void queue_event(struct qmp *q, json_t *m)
{
    if (json_array_size(q->events) >= MAX_QUEUED_EVENTS)
        json_array_remove(q->events, 0);
    json_array_append_new(q->events, m);
}

static int send_all(struct qmp *q, const char *s, size_t len)
{
    while (len > 0) {
        ssize_t n = send(q->fd, s, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return zerr_sys(errno, "QMP '%s': cannot send", q->path);
        s += n;
        len -= (size_t)n;
    }
    return 0;
}

int qmp_execute(struct qmp *q, const char *cmd, json_t *args, json_t **ret)
{
    if (ret)
        *ret = NULL;
    q->error_class[0] = 0;
    unsigned long long id = ++q->next_id;
    json_t *msg = json_pack("{s:s, s:I}", "execute", cmd, "id", (json_int_t)id);
    if (!msg) {
        json_decref(args);
        return zerr(ENOMEM, "out of memory");
    }
    if (args)
        json_object_set_new(msg, "arguments", args);
    char *text = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    if (!text)
        return zerr(ENOMEM, "out of memory");
    size_t tlen = strlen(text);
    text[tlen] = '\n'; /* json_dumps' NUL becomes the line's end */
    int e = send_all(q, text, tlen + 1);
    free(text);
    if (e < 0)
        return e;

    long long deadline = now_ms() + q->timeout_ms;
    for (;;) {
        json_t *m;
        if ((e = read_message(q, deadline, &m)) < 0)
            return e;
        if (json_object_get(m, "event")) {
            queue_event(q, m);
            continue;
        }
        json_t *mid = json_object_get(m, "id");
        if (!json_is_integer(mid) || (unsigned long long)json_integer_value(mid) != id) {
            json_decref(m); /* an answer to a command of an earlier, failed wait */
            continue;
        }
        json_t *err = json_object_get(m, "error");
        if (err) {
            const char *desc = json_string_value(json_object_get(err, "desc"));
            const char *cls = json_string_value(json_object_get(err, "class"));
            snprintf(q->error_class, sizeof(q->error_class), "%s", cls ? cls : "");
            e = zerr(EIO, "QMP '%s': %s: %s", q->path, cmd, desc ? desc : "error");
            json_decref(m);
            return e;
        }
        if (ret) {
            *ret = json_object_get(m, "return");
            json_incref(*ret);
        }
        json_decref(m);
        return 0;
    }
}

const char *qmp_error_class(const struct qmp *q) { return q->error_class; }

static bool event_matches(json_t *m, const char *name, const char *key, const char *value)
{
    const char *ev = json_string_value(json_object_get(m, "event"));
    if (!ev || strcmp(ev, name))
        return false;
    if (!key)
        return true;
    const char *v = json_string_value(json_object_get(json_object_get(m, "data"), key));
    return v && !strcmp(v, value);
}

int qmp_wait_event(struct qmp *q, const char *name, const char *key, const char *value,
                   int timeout_ms, json_t **data)
{
    if (data)
        *data = NULL;
    size_t i;
    json_t *m;
    json_array_foreach(q->events, i, m)
    {
        if (event_matches(m, name, key, value)) {
            if (data) {
                *data = json_object_get(m, "data");
                json_incref(*data);
            }
            json_array_remove(q->events, i);
            return 0;
        }
    }
    long long deadline = now_ms() + timeout_ms;
    for (;;) {
        int e = read_message(q, deadline, &m);
        if (e == -ETIMEDOUT)
            return zerr(ETIMEDOUT, "QMP '%s': no %s event in %d s", q->path, name,
                        timeout_ms / 1000);
        if (e < 0)
            return e;
        if (!json_object_get(m, "event")) {
            json_decref(m); /* a late answer to a command given up on */
            continue;
        }
        if (event_matches(m, name, key, value)) {
            if (data) {
                *data = json_object_get(m, "data");
                json_incref(*data);
            }
            json_decref(m);
            return 0;
        }
        queue_event(q, m);
    }
}

void qmp_set_timeout(struct qmp *q, int timeout_ms) { q->timeout_ms = timeout_ms; }

void qmp_close(struct qmp *q)
{
    if (!q)
        return;
    if (q->fd >= 0)
        close(q->fd);
    json_decref(q->events);
    free(q->buf);
    free(q->path);
    free(q);
}

int qmp_connect(const char *path, struct qmp **out)
{
    *out = NULL;
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(sa.sun_path))
        return zerr(ENAMETOOLONG, "QMP socket '%s': the path is too long", path);
    strcpy(sa.sun_path, path);
    struct qmp *q = calloc(1, sizeof(*q));
    if (!q || !(q->path = strdup(path)) || !(q->events = json_array())) {
        qmp_close(q);
        return zerr(ENOMEM, "out of memory");
    }
    q->timeout_ms = DEFAULT_TIMEOUT_MS;
    q->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (q->fd < 0 || connect(q->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = zerr_sys(errno, "cannot connect to the QMP socket '%s'", path);
        qmp_close(q);
        return e;
    }
    /* The greeting, then leave negotiation mode. */
    json_t *greeting;
    int e = read_message(q, now_ms() + q->timeout_ms, &greeting);
    if (e == 0 && !json_object_get(greeting, "QMP"))
        e = zerr(EPROTO, "'%s' is not a QMP socket (no greeting)", path);
    json_decref(greeting);
    if (e == 0)
        e = qmp_execute(q, "qmp_capabilities", NULL, NULL);
    if (e < 0) {
        qmp_close(q);
        return e;
    }
    *out = q;
    return 0;
}
