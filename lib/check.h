/* check.h - the parts of the checker (check.c) that tests and fuzz
 * targets reach directly; the public entry point is zcow_check(). */
#ifndef ZCOW_CHECK_H
#define ZCOW_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include "qcow2.h"

/* What the header extensions of an image say, as far as the check needs. */
struct check_extensions {
    uint32_t nb_bitmaps; /* 0: no bitmaps to count */
    uint64_t bitmap_dir_offset;
    uint64_t bitmap_dir_size;
    int has_crypto; /* a LUKS header extension */
    uint64_t crypto_offset;
    uint64_t crypto_length;
    int bitmaps_ignored; /* extension present, autoclear bit clear */
    int has_data_file;
};

/* Parse the header extensions found in HDR (the first LEN bytes of the
 * file, zero-filled to at least one cluster) of an image whose decoded
 * header is H, with QEMU's rules (block/qcow2.c, qcow2_read_extensions).
 * Returns 0, or -EINVAL with a static reason in *WHY. */
int check_parse_extensions(const uint8_t *hdr, size_t len, const struct qcow2_header *h,
                           struct check_extensions *ext, const char **why);

#endif
