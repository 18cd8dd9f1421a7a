/* qcow2_l2.c - L2 entries (see qcow2_l2.h). */
#include "qcow2_l2.h"

unsigned qcow2_subcluster_range(uint64_t entry, uint64_t bitmap, bool extended, unsigned sc,
                                enum qcow2_subcluster_type *type)
{
    *type = qcow2_subcluster_type(entry, bitmap, extended, sc);
    if (!extended || *type == QCOW2_SUBCLUSTER_COMPRESSED || *type == QCOW2_SUBCLUSTER_INVALID)
        return QCOW2_SUBCLUSTERS - sc; /* the same for every subcluster */
    unsigned end = sc + 1;
    while (end < QCOW2_SUBCLUSTERS && qcow2_subcluster_type(entry, bitmap, true, end) == *type)
        end++;
    return end - sc;
}
