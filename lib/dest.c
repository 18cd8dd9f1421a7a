/* dest.c - open a copy destination of the right kind. */
#include "dest.h"

#include <errno.h>
#include <string.h>

#include "error.h"

int dest_open(const struct zcow_convert_options *o, const char *format, uint64_t size,
              struct dest **out)
{
    *out = NULL;
    if (!strcmp(format, "qcow2"))
        return dest_qcow2_open(o, size, out);
    if (!strcmp(format, "raw"))
        return dest_raw_open(o, size, out);
    return zerr(EINVAL, "unknown output format '%s' (qcow2 or raw)", format);
}

void dest_close(struct dest *d)
{
    if (d)
        d->ops->close(d);
}
