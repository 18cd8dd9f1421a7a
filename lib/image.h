/* image.h - the public zcow_image handle: an image being written (writer.c)
 * or one opened for reading (reader.c).  api.c dispatches between them. */
#ifndef ZCOW_IMAGE_H
#define ZCOW_IMAGE_H

#include "zcow.h"

struct writer;
struct reader;

struct zcow_image {
    struct writer *w; /* exactly one of the two is set */
    struct reader *r;
};

#endif
