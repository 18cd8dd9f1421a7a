/* qmp.h - a client of QEMU's monitor protocol (QMP) on a Unix socket.
 *
 * One connection, used by one thread.  Commands are sent one at a time and
 * their answer awaited; events that arrive meanwhile are queued, so that a
 * later qmp_wait_event() finds them.  Every wait has a deadline: a QEMU
 * that stops answering is an error, not a hang.  Messages are JSON
 * (jansson); failures return a negative errno and set the thread's
 * message, naming the socket and the command. */
#ifndef ZCOW_QMP_H
#define ZCOW_QMP_H

#include <jansson.h>

struct qmp;

/* Connect to the QMP socket PATH and leave capabilities negotiation. */
int qmp_connect(const char *path, struct qmp **out);
void qmp_close(struct qmp *q);

/* Run CMD with ARGS (a JSON object, stolen; NULL for none).  *RET (if not
 * NULL) gets the "return" value, a new reference.  A QMP error fails with
 * -EIO and "QMP 'PATH': CMD: DESC"; qmp_error_class() then tells its class
 * ("GenericError", "DeviceNotFound", ...; "" after a success). */
int qmp_execute(struct qmp *q, const char *cmd, json_t *args, json_t **ret);
const char *qmp_error_class(const struct qmp *q);

/* Wait up to TIMEOUT_MS for the event NAME whose data member KEY equals
 * VALUE (KEY NULL: any), taking queued events first.  *DATA (if not NULL)
 * gets its data, a new reference.  -ETIMEDOUT when none came. */
int qmp_wait_event(struct qmp *q, const char *name, const char *key, const char *value,
                   int timeout_ms, json_t **data);

/* Deadline for an answer to a command. */
void qmp_set_timeout(struct qmp *q, int timeout_ms);

#endif
