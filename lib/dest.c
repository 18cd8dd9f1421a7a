/* dest.c - open a copy destination of the right kind. */
#include "dest.h"

#include <errno.h>
#include <string.h>

#include "config.h"
#include "error.h"
#include "source.h"

#ifndef ZCOW_HAVE_NBD
/* Built without libnbd (make NBD=no): dest_nbd.c is left out. */
int dest_nbd_open(const struct zcow_convert_options *o, uint64_t size, struct dest **out)
{
    (void)size;
    *out = NULL;
    return zerr(ENOTSUP, "'%s': NBD support was not built in", o->dst);
}
#endif

int dest_open(const struct zcow_convert_options *o, const char *format, uint64_t size,
              struct dest **out)
{
    *out = NULL;
    if (source_is_nbd(o->dst)) {
        /* The export takes raw bytes: the server presents the guest view. */
        if (strcmp(format, "raw"))
            return zerr(EINVAL, "'%s': an NBD export is written as raw, not '%s'", o->dst, format);
        return dest_nbd_open(o, size, out);
    }
    if (!strcmp(format, "qcow2")) {
        if (o->target_is_zero)
            return zerr(EINVAL,
                        "'%s': target-is-zero is for a block device or an NBD export (a new "
                        "image reads as zero anyway)",
                        o->dst);
        return dest_qcow2_open(o, size, out);
    }
    if (!strcmp(format, "raw"))
        return dest_raw_open(o, size, out);
    return zerr(EINVAL, "unknown output format '%s' (qcow2 or raw)", format);
}

void dest_close(struct dest *d)
{
    if (d)
        d->ops->close(d);
}
