/* cmd_merge.c - `zcow merge`: a point of a backup directory as one
 * compressed qcow2 image. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "zcow.h"

static const char merge_usage[] =
    "usage: zcow merge [--disk NAME] --point N|latest [--no-verify] [-l LEVEL] [-j THREADS]\n"
    "                  [-p] [-q] DIR DEST\n"
    "\n"
    "  Write a point of DIR as one compressed qcow2 image without a backing\n"
    "  file (a synthetic full) at DEST, outside DIR: the compressed clusters\n"
    "  of the point's chain are copied as they are, and the image's digest is\n"
    "  checked against the one the point recorded before it is put at DEST.\n"
    "\n"
    "  --disk NAME   the disk (needed when DIR holds several)\n"
    "  --point N     the point (latest: the newest)\n"
    "  --no-verify   no digest check\n"
    "  -l LEVEL      compression level of clusters compressed anew (as zcow\n"
    "                convert -l)\n"
    "  -j THREADS    worker threads (default: online CPUs)\n"
    "  -p            show progress\n"
    "  -q            quiet: no summary line\n";

int cmd_merge(int argc, char **argv)
{
    enum { OPT_DISK = 256, OPT_POINT, OPT_NO_VERIFY };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "disk", required_argument, NULL, OPT_DISK },
        { "point", required_argument, NULL, OPT_POINT },
        { "no-verify", no_argument, NULL, OPT_NO_VERIFY },
        { NULL, 0, NULL, 0 },
    };
    zcow_convert_opts *conv = zcow_convert_opts_new();
    zcow_create_opts *create = zcow_create_opts_new();
    zcow_convert_stats *st = zcow_convert_stats_new();
    struct cli_progress prog = { .fd = -1, .last_fd_pct = -1, .last_pct = -1 };
    const char *disk = NULL;
    unsigned long long point = 0;
    int c, rc = 1, quiet = 0, have_point = 0;
    if (!conv || !create || !st) {
        die_msg("%s", zcow_get_error());
        goto out;
    }
    optind = 1;
    while ((c = getopt_long(argc, argv, "hl:j:pq", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(merge_usage, stdout);
            rc = 0;
            goto out;
        case OPT_DISK: disk = optarg; break;
        case OPT_POINT:
            have_point = 1;
            if (cli_parse_point(optarg, &point, NULL) < 0)
                goto out;
            break;
        case OPT_NO_VERIFY: zcow_convert_opts_set_verify(conv, false); break;
        case 'l':
            if (cli_parse_level(optarg, create) < 0)
                goto out;
            break;
        case 'j':
            if (cli_parse_threads(optarg, conv) < 0)
                goto out;
            break;
        case 'p': prog.show = 1; break;
        case 'q': quiet = 1; break;
        default: fputs(merge_usage, stderr); goto out;
        }
    }
    if (argc - optind != 2) {
        die_msg("merge needs a backup directory and a destination ('zcow merge --help')");
        goto out;
    }
    if (!have_point) {
        die_msg("merge needs --point N (or latest), the point to write");
        goto out;
    }
    cli_progress_start(&prog);
    if (prog.show)
        zcow_convert_opts_set_progress(conv, cli_progress, &prog);
    int e = zcow_convert_opts_set_create(conv, create);
    if (e == 0)
        e = zcow_backup_merge(argv[optind], disk, (uint64_t)point, argv[optind + 1], conv, st);
    cli_progress_end(&prog);
    if (e < 0) {
        die_msg("%s", zcow_get_error());
        goto out;
    }
    if (!quiet)
        printf("%s: %" PRIu64 " compressed clusters copied as they were, %" PRIu64
               " compressed anew, %" PRIu64 " stored uncompressed\n",
               argv[optind + 1], zcow_convert_stats_get_clusters_copied(st),
               zcow_convert_stats_get_clusters_compressed(st),
               zcow_convert_stats_get_clusters_normal(st));
    rc = 0;
out:
    zcow_convert_opts_free(conv);
    zcow_create_opts_free(create);
    zcow_convert_stats_free(st);
    return rc;
}
