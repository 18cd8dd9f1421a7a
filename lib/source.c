/* source.c - open a conversion source of the right kind. */
#include "source.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "qcow2.h"

/* qcow2 if the first bytes are its magic, else raw (as qemu-img probes). */
static int probe(const char *name, const char **format)
{
    int fd = open(name, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return zerr_sys(errno, "cannot open '%s'", name);
    uint8_t magic[4];
    ssize_t n = pread(fd, magic, sizeof(magic), 0);
    int e = errno;
    close(fd);
    if (n < 0)
        return zerr_sys(e, "cannot read '%s'", name);
    *format = (n == 4 && qcow2_be32(magic) == QCOW2_MAGIC) ? "qcow2" : "raw";
    return 0;
}

int source_open(const char *name, const char *format, bool direct, struct source **out)
{
    *out = NULL;
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
