/* source.c - open a conversion source of the right kind. */
#include "source.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blockio.h"
#include "config.h"
#include "error.h"
#include "qcow2.h"

/* qcow2 if the first bytes are its magic, else raw (as qemu-img probes).
 * Read with O_DIRECT where possible: a probe must not leave pages of the
 * source in the page cache. */
static int probe(const char *name, const char **format)
{
    struct blk b;
    int r = blk_open_read(&b, name, true);
    if (r < 0)
        return r;
    uint8_t *buf = blk_alloc(BLK_ALIGN);
    int64_t n = buf ? blk_pread(&b, buf, BLK_ALIGN, 0) : zerr(ENOMEM, "'%s': out of memory", name);
    if (!b.direct)
        posix_fadvise(b.fd, 0, BLK_ALIGN, POSIX_FADV_DONTNEED);
    blk_close(&b);
    if (n >= 4)
        *format = qcow2_be32(buf) == QCOW2_MAGIC ? "qcow2" : "raw";
    else if (n >= 0)
        *format = "raw";
    free(buf);
    return n < 0 ? (int)n : 0;
}

/* In source.c, not source_nbd.c: NBD URIs are told apart (and refused)
 * without NBD support too. */
bool source_is_nbd(const char *name)
{
    static const char *const schemes[] = { "nbd://", "nbds://", "nbd+unix://", "nbds+unix://" };
    for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++)
        if (!strncmp(name, schemes[i], strlen(schemes[i])))
            return true;
    return false;
}

#ifndef ZCOW_HAVE_NBD
/* Built without libnbd (make NBD=no): source_nbd.c is left out. */
int source_nbd_open(const char *uri, const char *bitmap, const struct zcow_nbd_tls *tls,
                    struct source **out)
{
    (void)bitmap;
    (void)tls;
    *out = NULL;
    return zerr(ENOTSUP, "'%s': NBD support was not built in", uri);
}
#endif

int source_open(const char *name, const char *format, bool direct, struct source **out)
{
    *out = NULL;
    if (source_is_nbd(name)) {
        /* The export is read as raw bytes: QEMU exports its guest view. */
        if (format && strcmp(format, "raw"))
            return zerr(EINVAL, "'%s': an NBD export is read as raw, not '%s'", name, format);
        return source_nbd_open(name, NULL, NULL, out);
    }
    if (!format) {
        int r = probe(name, &format);
        if (r < 0)
            return r;
    }
    if (!strcmp(format, "raw"))
        return source_raw_open(name, direct, out);
    if (!strcmp(format, "qcow2"))
        return source_qcow2_open(name, direct, out);
    return zerr(EINVAL, "'%s': unknown source format '%s' (raw or qcow2)", name, format);
}

void source_close(struct source *s)
{
    if (s)
        s->ops->close(s);
}
