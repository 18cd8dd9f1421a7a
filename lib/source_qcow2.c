/* source_qcow2.c - placeholder until the read side lands (issue 4). */
#include <errno.h>

#include "error.h"
#include "source.h"

int source_qcow2_open(const char *name, bool direct, struct source **out)
{
    (void)direct; *out = 0;
    return zerr(ENOTSUP, "cannot read '%s': qcow2 sources are not built yet", name);
}
