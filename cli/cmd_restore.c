/* cmd_restore.c - `zcow restore`: a disk as it was at a point of a backup
 * directory. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "config.h"
#include "zcow.h"

#ifdef ZCOW_HAVE_NBD
#include <jansson.h>
#endif

static const char restore_usage[] =
    "usage: zcow restore [--disk NAME] [--point N|latest] [-O raw|qcow2] [--target-is-zero]\n"
    "                    [--no-verify] [-j THREADS] [-p] [--tls-certificates DIR]\n"
    "                    [--tls-psk-file FILE] [--tls-username NAME] DIR DEST\n"
    "\n"
    "  Write the disk as it was at a point of DIR to DEST, reading the point's\n"
    "  chain once: a sparse raw file, a block device (written in place), a\n"
    "  qcow2 image (uncompressed, to run a VM from), or an NBD export\n"
    "  (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH, or with TLS\n"
    "  nbds://, nbds+unix://; written in place).\n"
    "\n"
    "  --disk NAME   the disk (needed when DIR holds several)\n"
    "  --point N     the point (default: latest)\n"
    "  -O FMT        raw or qcow2 (default: qcow2 for a DEST ending in .qcow2,\n"
    "                raw otherwise; an NBD export is raw)\n"
    "  --target-is-zero  the block device or NBD export already reads as zero:\n"
    "                its zero stretches are not written (default: zeroed)\n"
    "  --no-verify   do not compare the digest of what is written with the\n"
    "                point's (by default a mismatch fails the restore, and a\n"
    "                file is not put in place)\n"
    "  -j THREADS    worker threads (default: twice the online CPUs)\n"
    "  -p            show progress\n"
    "  --tls-certificates DIR, --tls-psk-file FILE, --tls-username NAME\n"
    "                TLS for an nbds:// DEST, as for zcow convert\n";

/* The format DEST gets by default: qcow2 when named so (a VM runs from
 * it), else raw (a file, a block device, an NBD export). */
static const char *default_format(const char *dest)
{
    size_t n = strlen(dest);
    if (cli_is_nbd_uri(dest) || n < 6 || strcmp(dest + n - 6, ".qcow2"))
        return "raw";
    return "qcow2";
}

/* A restore verified what it wrote, unless the point has no digest (made
 * before zcow 0.3): say so.  DISK NULL: DIR's only disk; POINT 0: the
 * latest. */
static void say_if_unverified(const char *dir, const char *disk, uint64_t point)
{
#ifdef ZCOW_HAVE_NBD
    char *text;
    if (zcow_backup_list(dir, &text) < 0)
        return;
    json_t *points = json_loads(text, 0, NULL), *p, *found = NULL;
    size_t i;
    json_array_foreach(points, i, p)
    {
        const char *d = json_string_value(json_object_get(p, "disk"));
        uint64_t n = (uint64_t)json_integer_value(json_object_get(p, "number"));
        if (d && (!disk || !strcmp(d, disk)) && (point ? n == point : true))
            found = p; /* the last: the latest */
    }
    if (found && !json_object_get(found, "digest"))
        fprintf(stderr,
                "zcow: point %" JSON_INTEGER_FORMAT " of disk '%s' has no digest: not verified\n",
                json_integer_value(json_object_get(found, "number")),
                json_string_value(json_object_get(found, "disk")));
    json_decref(points);
    free(text);
#else
    (void)dir, (void)disk, (void)point;
#endif
}

int cmd_restore(int argc, char **argv)
{
    enum {
        OPT_DISK = 256,
        OPT_POINT,
        OPT_TARGET_IS_ZERO,
        OPT_NO_VERIFY,
        OPT_TLS_CERTIFICATES,
        OPT_TLS_PSK_FILE,
        OPT_TLS_USERNAME,
    };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "disk", required_argument, NULL, OPT_DISK },
        { "point", required_argument, NULL, OPT_POINT },
        { "target-is-zero", no_argument, NULL, OPT_TARGET_IS_ZERO },
        { "no-verify", no_argument, NULL, OPT_NO_VERIFY },
        { "tls-certificates", required_argument, NULL, OPT_TLS_CERTIFICATES },
        { "tls-psk-file", required_argument, NULL, OPT_TLS_PSK_FILE },
        { "tls-username", required_argument, NULL, OPT_TLS_USERNAME },
        { NULL, 0, NULL, 0 },
    };
    zcow_convert_opts *conv = zcow_convert_opts_new();
    zcow_create_opts *create = zcow_create_opts_new();
    const char *format = NULL, *tls_certificates = NULL, *tls_psk_file = NULL;
    const char *tls_username = NULL;
    int target_is_zero = 0, verify = 1;
    struct cli_progress prog = { .fd = -1, .last_fd_pct = -1, .last_pct = -1 };
    const char *disk = NULL;
    int rc = 1;
    unsigned long long point = 0;
    int c;
    optind = 1;
    if (!conv || !create) {
        die_msg("%s", zcow_get_error());
        return 1;
    }
    while ((c = getopt_long(argc, argv, "hj:pO:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(restore_usage, stdout);
            rc = 0;
            goto out;
        case OPT_DISK: disk = optarg; break;
        case OPT_POINT:
            if (cli_parse_point(optarg, &point, NULL) < 0)
                goto out;
            break;
        case 'j':
            if (cli_parse_threads(optarg, conv) < 0)
                goto out;
            break;
        case 'p': prog.show = 1; break;
        case 'O':
            if (strcmp(optarg, "raw") && strcmp(optarg, "qcow2")) {
                die_msg("output format '%s' is not raw or qcow2", optarg);
                goto out;
            }
            format = optarg;
            break;
        case OPT_TARGET_IS_ZERO: target_is_zero = 1; break;
        case OPT_NO_VERIFY: verify = 0; break;
        case OPT_TLS_CERTIFICATES: tls_certificates = optarg; break;
        case OPT_TLS_PSK_FILE: tls_psk_file = optarg; break;
        case OPT_TLS_USERNAME: tls_username = optarg; break;
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
    const char *dest = argv[optind + 1];
    if (!format)
        format = default_format(dest);
    /* A qcow2 restore is an image to run a VM from: uncompressed. */
    int e = zcow_create_opts_set_compress(create, false);
    if (e == 0)
        e = zcow_convert_opts_set_create(conv, create);
    if (e == 0)
        e = zcow_convert_opts_set_dst(conv, dest);
    if (e == 0)
        e = zcow_convert_opts_set_dst_format(conv, format);
    if (e == 0)
        e = zcow_convert_opts_set_target_is_zero(conv, target_is_zero);
    if (e == 0)
        e = zcow_convert_opts_set_verify(conv, verify);
    if (e == 0)
        e = zcow_convert_opts_set_tls_certificates(conv, tls_certificates);
    if (e == 0)
        e = zcow_convert_opts_set_tls_psk_file(conv, tls_psk_file);
    if (e == 0)
        e = zcow_convert_opts_set_tls_username(conv, tls_username);
    if (e == 0)
        e = zcow_backup_restore(argv[optind], disk, (uint64_t)point, conv);
    cli_progress_end(&prog);
    if (e < 0) {
        die_msg("%s", zcow_get_error());
        goto out;
    }
    if (verify)
        say_if_unverified(argv[optind], disk, (uint64_t)point);
    rc = 0;
out:
    zcow_create_opts_free(create);
    zcow_convert_opts_free(conv);
    return rc;
}
