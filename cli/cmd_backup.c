/* cmd_backup.c - `zcow backup`: full and incremental backups of a running
 * VM into a backup directory (lib/backup.h). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "zcow.h"

static const char usage_text[] =
    "usage: zcow backup --domain NAME [--connect URI] [--disk TARGET]... DIR\n"
    "       zcow backup --qmp SOCKET [--node NODE]... DIR\n"
    "                   [--level full|inc|auto] [-o OPTIONS] [-l LEVEL] [-j THREADS] [-p] [-q]\n"
    "\n"
    "  Back up the disks of a running VM into DIR, all at one point in time:\n"
    "  the first backup of a disk is full, later ones incremental (only what\n"
    "  changed since the last point, as a compressed qcow2 over it).  A\n"
    "  failed backup leaves DIR as it was; the next one covers every change\n"
    "  since the last good point.\n"
    "\n"
    "  --domain NAME  a libvirt domain (pull-mode backup, checkpoints)\n"
    "  --connect URI  libvirt's URI (default: libvirt's default)\n"
    "  --disk TARGET  a disk of the domain (repeatable; default: every\n"
    "                 writable disk)\n"
    "  --qmp SOCKET   a QEMU without libvirt: its QMP socket (QEMU started with\n"
    "                 -qmp unix:SOCKET,server=on,wait=off)\n"
    "  --node NODE    a block node to back up (repeatable; default: every\n"
    "                 writable disk, named by its device id)\n"
    "  --level L      full, inc or auto (default): auto takes an incremental\n"
    "                 when the chain and the dirty bitmap agree, else a full,\n"
    "                 and says why\n"
    "  -o OPTIONS     the points' cluster_size=4k..2M (64k), compression_type=zlib|zstd\n"
    "  -l LEVEL       compression level (as zcow convert -l)\n"
    "  -j THREADS     worker threads (default: online CPUs)\n"
    "  -p             show progress\n"
    "  -q             quiet: no lines about levels and points\n";

static void say(void *opaque, const char *line)
{
    (void)opaque;
    printf("%s\n", line);
    fflush(stdout);
}

int cmd_backup(int argc, char **argv)
{
    enum { OPT_QMP = 256, OPT_NODE, OPT_DOMAIN, OPT_CONNECT, OPT_DISK, OPT_LEVEL };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "qmp", required_argument, NULL, OPT_QMP },
        { "node", required_argument, NULL, OPT_NODE },
        { "domain", required_argument, NULL, OPT_DOMAIN },
        { "connect", required_argument, NULL, OPT_CONNECT },
        { "disk", required_argument, NULL, OPT_DISK },
        { "level", required_argument, NULL, OPT_LEVEL },
        { NULL, 0, NULL, 0 },
    };
    zcow_backup_opts *o = zcow_backup_opts_new();
    zcow_convert_opts *conv = zcow_convert_opts_new();
    zcow_create_opts *create = zcow_create_opts_new();
    struct cli_progress prog = { .fd = -1, .last_fd_pct = -1, .last_pct = -1 };
    const char *qmp = NULL, *domain = NULL, *connect = NULL;
    int c, rc = 1, n_node = 0, n_disk = 0, quiet = 0;
    if (!o || !conv || !create) {
        die_msg("%s", zcow_get_error());
        goto out;
    }
    optind = 1;
    while ((c = getopt_long(argc, argv, "ho:l:j:pq", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(usage_text, stdout);
            rc = 0;
            goto out;
        case OPT_QMP: qmp = optarg; break;
        case OPT_DOMAIN: domain = optarg; break;
        case OPT_CONNECT: connect = optarg; break;
        case OPT_NODE:
            n_node++;
            zcow_backup_opts_add_disk(o, optarg);
            break;
        case OPT_DISK:
            n_disk++;
            zcow_backup_opts_add_disk(o, optarg);
            break;
        case OPT_LEVEL: {
            int level = !strcmp(optarg, "full")   ? ZCOW_BACKUP_FULL
                        : !strcmp(optarg, "inc")  ? ZCOW_BACKUP_INC
                        : !strcmp(optarg, "auto") ? ZCOW_BACKUP_AUTO
                                                  : -1;
            if (level < 0) {
                die_msg("--level '%s' must be full, inc or auto", optarg);
                goto out;
            }
            zcow_backup_opts_set_level(o, level);
            break;
        }
        case 'o':
            if (cli_parse_o(optarg, create) < 0)
                goto out;
            break;
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
        default: fputs(usage_text, stderr); goto out;
        }
    }
    if (argc - optind != 1) {
        die_msg("backup needs one backup directory ('zcow backup --help')");
        goto out;
    }
    if (!qmp == !domain) {
        die_msg("backup needs the VM: --domain NAME (libvirt) or --qmp SOCKET");
        goto out;
    }
    if (qmp && (n_disk || connect)) {
        die_msg("%s is for libvirt (--domain); with --qmp name block nodes with --node",
                n_disk ? "--disk" : "--connect");
        goto out;
    }
    if (domain && n_node) {
        die_msg("--node is for --qmp; with --domain name disks with --disk");
        goto out;
    }
    cli_progress_start(&prog);
    if (prog.show)
        zcow_convert_opts_set_progress(conv, cli_progress, &prog);
    if (zcow_backup_opts_set_dir(o, argv[optind]) < 0 || zcow_backup_opts_set_qmp(o, qmp) < 0 ||
        zcow_backup_opts_set_domain(o, domain) < 0 ||
        zcow_backup_opts_set_connect(o, connect) < 0 ||
        zcow_convert_opts_set_create(conv, create) < 0 ||
        zcow_backup_opts_set_convert(o, conv) < 0 ||
        (!quiet && zcow_backup_opts_set_messages(o, say, NULL) < 0) || zcow_backup(o) < 0) {
        cli_progress_end(&prog);
        die_msg("%s", zcow_get_error());
        goto out;
    }
    cli_progress_end(&prog);
    rc = 0;
out:
    zcow_backup_opts_free(o);
    zcow_convert_opts_free(conv);
    zcow_create_opts_free(create);
    return rc;
}
