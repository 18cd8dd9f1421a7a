/* cmd_restore.c - `zcow restore`: a disk as it was at a point of a backup
 * directory. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "zcow.h"

static const char restore_usage[] =
    "usage: zcow restore [--disk NAME] [--point N|latest] [-j THREADS] [-p] DIR DEST\n"
    "\n"
    "  Write the disk as it was at a point of DIR to DEST: a sparse raw file or\n"
    "  a block device.\n"
    "\n"
    "  --disk NAME   the disk (needed when DIR holds several)\n"
    "  --point N     the point (default: latest)\n"
    "  -j THREADS    worker threads (default: twice the online CPUs)\n"
    "  -p            show progress\n";

int cmd_restore(int argc, char **argv)
{
    enum { OPT_DISK = 256, OPT_POINT };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "disk", required_argument, NULL, OPT_DISK },
        { "point", required_argument, NULL, OPT_POINT },
        { NULL, 0, NULL, 0 },
    };
    zcow_convert_opts *conv = zcow_convert_opts_new();
    struct cli_progress prog = { .fd = -1, .last_fd_pct = -1, .last_pct = -1 };
    const char *disk = NULL;
    long n;
    int rc = 1;
    unsigned long long point = 0;
    int c;
    optind = 1;
    if (!conv) {
        die_msg("%s", zcow_get_error());
        return 1;
    }
    while ((c = getopt_long(argc, argv, "hj:p", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(restore_usage, stdout);
            rc = 0;
            goto out;
        case OPT_DISK: disk = optarg; break;
        case OPT_POINT:
            if (!strcmp(optarg, "latest")) {
                point = 0;
            } else {
                char *end;
                point = strtoull(optarg, &end, 10);
                if (end == optarg || *end || point == 0) {
                    die_msg("--point '%s' must be a point number or latest", optarg);
                    goto out;
                }
            }
            break;
        case 'j':
            if (cli_parse_int(optarg, 1, 256, &n, "-j") < 0)
                goto out;
            zcow_convert_opts_set_threads(conv, (int)n);
            break;
        case 'p': prog.show = 1; break;
        default: fputs(restore_usage, stderr); goto out;
        }
    }
    if (argc - optind != 2) {
        die_msg("restore needs a backup directory and a destination ('zcow restore --help')");
        goto out;
    }
    cli_progress_start(&prog);
    if (prog.show)
        zcow_convert_opts_set_progress(conv, cli_progress, &prog);
    int e = zcow_convert_opts_set_dst(conv, argv[optind + 1]);
    if (e == 0)
        e = zcow_convert_opts_set_dst_format(conv, "raw");
    if (e == 0)
        e = zcow_backup_restore(argv[optind], disk, (uint64_t)point, conv);
    cli_progress_end(&prog);
    if (e < 0) {
        die_msg("%s", zcow_get_error());
        goto out;
    }
    rc = 0;
out:
    zcow_convert_opts_free(conv);
    return rc;
}
