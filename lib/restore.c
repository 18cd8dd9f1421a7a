/* restore.c - placeholder until the read side lands (issue 4). */
#include <errno.h>

#include "convert.h"
#include "error.h"

int convert_to_raw(const struct zcow_convert_options *o, struct source *src, struct zcow_convert_stats *st)
{
    (void)src; (void)st;
    return zerr(ENOTSUP, "cannot write '%s': raw output is not built yet", o->dst);
}
