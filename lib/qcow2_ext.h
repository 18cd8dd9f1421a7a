/* qcow2_ext.h - header extensions: the one iterator over them (the reader
 * and the checker each apply their own rules to what it yields), the
 * feature name table, and the extensions zcow writes.  No I/O.
 * Spec: QEMU docs/interop/qcow2.txt, "Header extensions" and "Feature name
 * table"; QEMU's reading is qcow2_read_extensions (block/qcow2.c). */
#ifndef ZCOW_QCOW2_EXT_H
#define ZCOW_QCOW2_EXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qcow2.h"

/* Header extension types. */
enum {
    QCOW2_EXT_END = 0,
    QCOW2_EXT_BACKING_FORMAT = 0xe2792aca,
    QCOW2_EXT_FEATURE_TABLE = 0x6803f857,
    QCOW2_EXT_CRYPTO = 0x0537be77,
    QCOW2_EXT_BITMAPS = 0x23852875,
    QCOW2_EXT_DATA_FILE = 0x44415441,
};

/* Feature name table entries: type, bit, a name of up to 46 bytes. */
#define QCOW2_FEATURE_ENTRY_LEN 48
#define QCOW2_FEATURE_NAME_MAX 46

/* One extension: its type, the length of its data, and the data. */
struct qcow2_ext {
    uint32_t type;
    uint32_t len;
    const uint8_t *data;
};

/* The extensions in HDR[START, END), as QEMU walks them: START is the
 * header length, END the end of the area (the backing file name's offset
 * if there is one, else the end of the first cluster).  Each extension is
 * an 8-byte type and length, then its data padded to a multiple of 8. */
struct qcow2_ext_iter {
    const uint8_t *hdr;
    size_t off, end;
};

/* What qcow2_ext_next() found. */
enum qcow2_ext_status {
    QCOW2_EXT_FOUND = 1,   /* *E is the next extension */
    QCOW2_EXT_DONE = 0,    /* the end marker, or exactly the end of the area */
    QCOW2_EXT_SHORT = -1,  /* fewer than 8 bytes left, no room for an
                              extension's header (QEMU refuses the image) */
    QCOW2_EXT_OVERRUN = -2 /* the data of *E (type and length set) would
                              reach past the end of the area */
};

void qcow2_ext_begin(struct qcow2_ext_iter *it, const void *hdr, size_t start, size_t end);
enum qcow2_ext_status qcow2_ext_next(struct qcow2_ext_iter *it, struct qcow2_ext *e);

/* The name the feature name table E gives bit BIT of feature type TYPE
 * (0 incompatible, 1 compatible, 2 autoclear), copied NUL-terminated into
 * NAME; false if the table has no entry for it (the first entry wins). */
bool qcow2_ext_feature_name(const struct qcow2_ext *e, unsigned type, unsigned bit,
                            char name[QCOW2_FEATURE_NAME_MAX + 1]);

/* Write the extensions zcow writes at BUF, at most CAP bytes: the backing
 * file format (if BACKING_FORMAT), the feature name table as QEMU writes
 * it, and the end marker.  Returns the bytes used or -ENOSPC. */
int qcow2_write_extensions(void *buf, size_t cap, const char *backing_format);

#endif
