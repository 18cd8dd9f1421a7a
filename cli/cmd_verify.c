/* cmd_verify.c - `zcow verify`: is every point of a backup directory what
 * the backup wrote? */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "zcow.h"

static const char verify_usage[] =
    "usage: zcow verify [--disk NAME] [--point N|latest|all] DIR\n"
    "\n"
    "  Check the points of DIR: the manifest, each image's structure (as zcow\n"
    "  check), the chain's links (backing files, sizes, order, no image\n"
    "  missing), the content (every cluster is read once and every compressed\n"
    "  one must decompress to exactly a cluster) and each point's digest,\n"
    "  recomputed, against the recorded one.  One line per point (\"vda 3 inc\n"
    "  ok\", \"vda 3 inc BAD: why\") and a summary.\n"
    "\n"
    "  --disk NAME   only this disk (default: every disk)\n"
    "  --point N     only point N: the points below it in its chain are read\n"
    "                too, as its content rests on them, but only N is\n"
    "                reported; latest: the latest of each disk (default: all)\n"
    "\n"
    "  Exit status: 0 every point is good, 2 a point is bad (the first is\n"
    "  named), 1 DIR could not be verified.\n";

static void print_line(void *opaque, const char *line)
{
    (void)opaque;
    printf("%s\n", line);
    fflush(stdout);
}

int cmd_verify(int argc, char **argv)
{
    enum { OPT_DISK = 256, OPT_POINT };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "disk", required_argument, NULL, OPT_DISK },
        { "point", required_argument, NULL, OPT_POINT },
        { NULL, 0, NULL, 0 },
    };
    const char *disk = NULL;
    uint64_t point = ZCOW_VERIFY_ALL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(verify_usage, stdout); return 0;
        case OPT_DISK: disk = optarg; break;
        case OPT_POINT: {
            unsigned long long n;
            if (!strcmp(optarg, "all"))
                point = ZCOW_VERIFY_ALL;
            else if (cli_parse_point(optarg, &n, " or all") < 0)
                return 1;
            else
                point = n ? n : ZCOW_VERIFY_LATEST;
            break;
        }
        default: fputs(verify_usage, stderr); return 1;
        }
    }
    if (argc - optind != 1) {
        die_msg("verify needs a backup directory ('zcow verify --help')");
        return 1;
    }
    int e = zcow_backup_verify(argv[optind], disk, point, print_line, NULL);
    if (e < 0) {
        die_msg("%s", zcow_get_error());
        return e == -EBADMSG ? 2 : 1;
    }
    return 0;
}
