/* dest_null.c - a destination that keeps nothing: a copy engine run for
 * what it computes on the way (a digest: zcow_digest()).  It reads as zero
 * where it is not written, so zero stretches cost no call. */
#include <errno.h>
#include <stdlib.h>

#include "blockio.h"
#include "dest.h"
#include "error.h"

static int n_write(struct dest *d, uint64_t off, const void *buf, size_t len)
{
    (void)d, (void)off, (void)buf, (void)len;
    return 0;
}

static int n_commit(struct dest *d, struct zcow_convert_stats *st)
{
    (void)d;
    st->bytes_out = 0;
    return 0;
}

static void n_close(struct dest *d) { free(d); }

static const struct dest_ops null_ops = {
    .name = "null",
    .write = n_write,
    .zero = NULL,
    .write_compressed = NULL,
    .commit = n_commit,
    .close = n_close,
};

int dest_null_open(const char *name, uint64_t size, struct dest **out)
{
    *out = NULL;
    struct dest *d = calloc(1, sizeof(*d));
    if (!d)
        return zerr(ENOMEM, "out of memory");
    d->ops = &null_ops;
    d->name = name;
    d->size = size;
    d->granularity = BLK_ALIGN;
    d->unwritten_is_zero = true;
    d->priv = d;
    *out = d;
    return 0;
}
