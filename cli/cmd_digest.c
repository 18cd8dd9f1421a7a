/* cmd_digest.c - `zcow digest`: the content digest of disks, printed as
 * sha256sum prints its sums. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "zcow.h"

static const char digest_usage[] =
    "usage: zcow digest [-f raw|qcow2] [-j THREADS] [-p] [--tls-certificates DIR]\n"
    "                   [--tls-psk-file FILE] [--tls-username NAME] SOURCE...\n"
    "\n"
    "  Print the content digest of each SOURCE (a raw file, a block device, a\n"
    "  qcow2 image with its backing chain, an NBD URI) as 'HEX  SOURCE': the\n"
    "  " ZCOW_DIGEST_NAME " digest every backup point records (SHA-256 of the SHA-256\n"
    "  hashes of the disk's 64 KiB blocks), of what a guest would read.\n"
    "\n"
    "  -f FMT        source format (probed by default)\n"
    "  -j THREADS    worker threads (default: twice the online CPUs)\n"
    "  -p            show progress\n"
    "  --tls-certificates DIR, --tls-psk-file FILE, --tls-username NAME\n"
    "                TLS for nbds:// and nbds+unix:// sources, as zcow convert\n";

int cmd_digest(int argc, char **argv)
{
    enum { OPT_TLS_CERTIFICATES = 256, OPT_TLS_PSK_FILE, OPT_TLS_USERNAME };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "tls-certificates", required_argument, NULL, OPT_TLS_CERTIFICATES },
        { "tls-psk-file", required_argument, NULL, OPT_TLS_PSK_FILE },
        { "tls-username", required_argument, NULL, OPT_TLS_USERNAME },
        { NULL, 0, NULL, 0 },
    };
    zcow_convert_opts *o = zcow_convert_opts_new();
    struct cli_progress prog = { .fd = -1, .last_fd_pct = -1, .last_pct = -1 };
    const char *format = NULL;
    int c, rc = 1, e = 0;
    if (!o) {
        die_msg("%s", zcow_get_error());
        return 1;
    }
    optind = 1;
    while ((c = getopt_long(argc, argv, "hf:j:p", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(digest_usage, stdout);
            rc = 0;
            goto out;
        case 'f': format = optarg; break;
        case 'j':
            if (cli_parse_threads(optarg, o) < 0)
                goto out;
            break;
        case 'p': prog.show = 1; break;
        case OPT_TLS_CERTIFICATES: e = zcow_convert_opts_set_tls_certificates(o, optarg); break;
        case OPT_TLS_PSK_FILE: e = zcow_convert_opts_set_tls_psk_file(o, optarg); break;
        case OPT_TLS_USERNAME: e = zcow_convert_opts_set_tls_username(o, optarg); break;
        default: fputs(digest_usage, stderr); goto out;
        }
        if (e < 0) {
            die_msg("%s", zcow_get_error());
            goto out;
        }
    }
    if (optind >= argc) {
        die_msg("digest needs a source ('zcow digest --help')");
        goto out;
    }
    if (zcow_convert_opts_set_src_format(o, format) < 0) {
        die_msg("unknown source format '%s' (raw or qcow2)", format);
        goto out;
    }
    if (prog.show)
        zcow_convert_opts_set_progress(o, cli_progress, &prog);
    rc = 0;
    /* As sha256sum: every source, a failure said and counted. */
    for (int i = optind; i < argc; i++) {
        char hex[ZCOW_DIGEST_HEX_SIZE];
        cli_progress_start(&prog);
        e = zcow_convert_opts_set_src(o, argv[i]);
        if (e == 0)
            e = zcow_digest(o, hex, sizeof(hex));
        cli_progress_end(&prog);
        if (e < 0) {
            die_msg("%s", zcow_get_error());
            rc = 1;
            continue;
        }
        printf("%s  %s\n", hex, argv[i]);
        fflush(stdout);
    }
out:
    zcow_convert_opts_free(o);
    return rc;
}
