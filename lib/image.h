/* image.h - the public zcow_image handle: an image being written (writer.c)
 * or one opened for reading (reader.c).  api.c dispatches between them. */
#ifndef ZCOW_IMAGE_H
#define ZCOW_IMAGE_H

#include "options.h"

struct writer;
struct reader;

struct zcow_image {
    struct writer *w; /* exactly one of the two is set */
    struct reader *r;
    /* zcow_get_backing(): a handle on R's backing file, made on first use
     * and freed with this one; BORROWED marks such a handle. */
    struct zcow_image *backing;
    int borrowed;
    struct zcow_image *above; /* of a BORROWED handle: the image it backs */
    /* The name zcow_open() opened the image by, for zcow_check_image();
     * NULL for an image being written and for a backing handle (whose
     * path the image above knows). */
    char *path;
};

#endif
