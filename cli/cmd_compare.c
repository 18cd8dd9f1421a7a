/* cmd_compare.c - zcow compare: the options, messages and exit codes of
 * `qemu-img compare` (0 identical, 1 different, 2 open error, 4 read
 * error). */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "zcow.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: zcow compare [-f FMT] [-F FMT] [-s] [-q] IMAGE1 IMAGE2\n"
               "\n"
               "Compare the guest contents of two images (raw or qcow2).  Where one image\n"
               "is longer, its extra part must read as zero.\n"
               "\n"
               "  -f FMT    format of IMAGE1: raw or qcow2 (default: probe)\n"
               "  -F FMT    format of IMAGE2\n"
               "  -s        strict: images of different sizes differ (unlike qemu-img,\n"
               "            allocation status is not compared)\n"
               "  -q        quiet: no output, only the exit status\n"
               "\n"
               "exit status: 0 identical, 1 different, 2 cannot open, 4 read error\n");
}

static int valid_format(const char *f) { return !strcmp(f, "raw") || !strcmp(f, "qcow2"); }

static uint64_t virtual_size(zcow_image *img)
{
    zcow_info *info = zcow_info_new();
    uint64_t size = info && zcow_get_info(img, info) == 0 ? zcow_info_get_virtual_size(info) : 0;
    zcow_info_free(info);
    return size;
}

int cmd_compare(int argc, char **argv)
{
    const char *fmt[2] = { NULL, NULL }, *path[2] = { NULL, NULL };
    int strict = 0, quiet = 0, npaths = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "-f") || !strcmp(a, "-F")) {
            if (++i == argc || !valid_format(argv[i])) {
                die_msg("option '%s' needs a format: raw or qcow2", a);
                return 2;
            }
            fmt[a[1] == 'F'] = argv[i];
        } else if (!strcmp(a, "-s")) {
            strict = 1;
        } else if (!strcmp(a, "-q")) {
            quiet = 1;
        } else if (a[0] == '-' && a[1]) {
            die_msg("unknown option '%s'", a);
            usage(stderr);
            return 2;
        } else if (npaths == 2) {
            die_msg("compare takes two images, not '%s' too", a);
            return 2;
        } else {
            path[npaths++] = a;
        }
    }
    if (npaths != 2) {
        usage(stderr);
        return 2;
    }

    zcow_image *img[2] = { NULL, NULL };
    for (int i = 0; i < 2; i++) {
        if (zcow_open(path[i], fmt[i], 1, &img[i]) < 0) {
            die_msg("%s", zcow_get_error());
            zcow_close(img[0]);
            return 2;
        }
    }
    uint64_t size0 = virtual_size(img[0]), size1 = virtual_size(img[1]);
    uint64_t common = size0 < size1 ? size0 : size1;
    uint64_t off = 0;
    int r = zcow_compare_images(img[0], img[1], strict, &off);
    int ret;
    if (r < 0) {
        die_msg("%s", zcow_get_error());
        ret = 4;
    } else if (r == ZCOW_COMPARE_SIZE) {
        if (!quiet)
            printf("Strict mode: Image size mismatch!\n");
        ret = 1;
    } else {
        /* qemu-img warns once the common part has compared equal. */
        if (!quiet && size0 != size1 && (r == ZCOW_COMPARE_IDENTICAL || off >= common))
            printf("Warning: Image size mismatch!\n");
        if (r == ZCOW_COMPARE_CONTENT) {
            if (!quiet)
                printf("Content mismatch at offset %" PRIu64 "!\n", off);
            ret = 1;
        } else {
            if (!quiet)
                printf("Images are identical.\n");
            ret = 0;
        }
    }
    zcow_close(img[0]);
    zcow_close(img[1]);
    return ret;
}
