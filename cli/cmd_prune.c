/* cmd_prune.c - `zcow prune`: keep the newest points of a backup
 * directory's disks, the oldest kept one made a full. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "zcow.h"

static const char prune_usage[] =
    "usage: zcow prune [--disk NAME] --keep N [--force] [-q] DIR\n"
    "\n"
    "  Keep the newest N points of each disk of DIR (or of NAME): the oldest\n"
    "  kept point becomes a full, its chain merged by copying the compressed\n"
    "  clusters as they are, and the points below it are removed.  Every kept\n"
    "  point stays restorable at every instant; a prune that is interrupted\n"
    "  is finished by the next one.\n"
    "\n"
    "  --disk NAME   prune this disk only\n"
    "  --keep N      the points to keep per disk (at least 1)\n"
    "  --force       prune even a chain that does not check clean\n"
    "  -q            quiet: no line per disk\n";

static void say(void *opaque, const char *line)
{
    (void)opaque;
    printf("%s\n", line);
    fflush(stdout);
}

int cmd_prune(int argc, char **argv)
{
    enum { OPT_DISK = 256, OPT_KEEP, OPT_FORCE };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "disk", required_argument, NULL, OPT_DISK },
        { "keep", required_argument, NULL, OPT_KEEP },
        { "force", no_argument, NULL, OPT_FORCE },
        { NULL, 0, NULL, 0 },
    };
    const char *disk = NULL;
    unsigned long long keep = 0;
    unsigned flags = 0;
    int c, quiet = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "hq", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(prune_usage, stdout); return 0;
        case OPT_DISK: disk = optarg; break;
        case OPT_KEEP: {
            char *end;
            keep = strtoull(optarg, &end, 10);
            if (end == optarg || *end || keep == 0 || optarg[0] == '-') {
                die_msg("--keep '%s' must be a number of points, at least 1", optarg);
                return 1;
            }
            break;
        }
        case OPT_FORCE: flags |= ZCOW_PRUNE_FORCE; break;
        case 'q': quiet = 1; break;
        default: fputs(prune_usage, stderr); return 1;
        }
    }
    if (argc - optind != 1) {
        die_msg("prune needs one backup directory ('zcow prune --help')");
        return 1;
    }
    if (!keep) {
        die_msg("prune needs --keep N, the points to keep per disk");
        return 1;
    }
    if (zcow_backup_prune(argv[optind], disk, keep, flags, quiet ? NULL : say, NULL) < 0) {
        die_msg("%s", zcow_get_error());
        return 1;
    }
    return 0;
}
