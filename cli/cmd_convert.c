/* cmd_convert.c - `zcow convert`: flags as qemu-img's where it has them. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "zcow.h"

static const char usage_text[] =
    "usage: zcow convert [-f raw|qcow2] [-O qcow2|raw] [-c] [-o OPTIONS] [-l LEVEL]\n"
    "                    [-j THREADS] [-t none|writeback] [-T none|writeback]\n"
    "                    [--write-cache=on|off] [--drop-pages] [-p] [--progress-fd=N] [-q]\n"
    "                    [-B BACKING [-F qcow2|raw]] [--bitmap NAME] [--target-is-zero]\n"
    "                    [--tls-certificates DIR] [--tls-psk-file FILE]\n"
    "                    [--tls-username NAME] SRC DST\n"
    "\n"
    "  SRC is a file, a block device, a qcow2 image (its backing chain is\n"
    "  flattened) or an NBD URI: nbd://HOST[:PORT]/EXPORT,\n"
    "  nbd+unix:///EXPORT?socket=PATH, or with TLS (required: never plaintext)\n"
    "  nbds://HOST[:PORT]/EXPORT, nbds+unix:///EXPORT?socket=PATH\n"
    "\n"
    "  -f FMT        source format (probed by default)\n"
    "  -O FMT        output format: qcow2 (compressed, default) or raw (restore);\n"
    "                DST may be a block device or an NBD URI (written in place, raw)\n"
    "  --target-is-zero  DST, a block device or NBD export, already reads as\n"
    "                zero: its zero stretches are not written\n"
    "  -c            compress (accepted for qemu-img compatibility: zcow always does)\n"
    "  -o OPTIONS    cluster_size=4k..2M (64k), compression_type=zlib|zstd (zlib)\n"
    "  -l LEVEL      zlib type: 0-3 ISA-L, 4-9 zlib (default: ISA-L 2 or 3 per cluster);\n"
    "                zstd type: 1-19 (default 3)\n"
    "  -j THREADS    worker threads (default: online CPUs)\n"
    "  -t CACHE      target cache: none = O_DIRECT (default), writeback = page cache\n"
    "  -T CACHE      source cache: none = O_DIRECT (default), writeback\n"
    "  --write-cache=on|off  the compressed write cache (default on)\n"
    "  --drop-pages  with -t writeback: drop each written cluster from the page cache\n"
    "  -p            show progress\n"
    "  --progress-fd=N  write 'N/100' progress lines to file descriptor N\n"
    "  -q            quiet: no summary line\n"
    "  -B BACKING    the new image's backing file (stored as given; relative to\n"
    "                DST's directory); zero stretches become zero clusters\n"
    "  -F FMT        the backing file's format (probed by default)\n"
    "  --bitmap NAME incremental backup: copy only the clusters dirty in the NBD\n"
    "                source's bitmap NAME (qemu:dirty-bitmap:NAME); needs -B\n"
    "\n"
    "  TLS (nbds:// and nbds+unix:// only, SRC or DST; with nbd:// an error):\n"
    "  --tls-certificates DIR  X.509: DIR holds ca-cert.pem, and client-cert.pem\n"
    "                and client-key.pem for a server that checks clients; by\n"
    "                default libnbd's: /etc/pki/libnbd for root, else\n"
    "                ~/.pki/libnbd or ~/.config/pki/libnbd (with no ca-cert.pem\n"
    "                there zcow does not connect: the server would go unchecked)\n"
    "  --tls-psk-file FILE  pre-shared keys instead: FILE of USERNAME:HEXKEY lines\n"
    "  --tls-username NAME  the PSK user name (default: the user running zcow)\n"
    "  The URI may give them too (?tls-certificates=DIR, ?tls-psk-file=FILE,\n"
    "  nbds://NAME@HOST/... or ?tls-username=NAME), and the URI's value wins:\n"
    "  libnbd applies the URI over what is set before it. The options keep\n"
    "  paths and names out of a URI that shows in ps. Over nbds+unix:// libnbd\n"
    "  checks no server certificate (it has no host name to check it for).\n";

static int parse_cache(const char *v, int *mode, const char *flag)
{
    if (!strcmp(v, "none"))
        *mode = ZCOW_CACHE_NONE;
    else if (!strcmp(v, "writeback"))
        *mode = ZCOW_CACHE_WRITEBACK;
    else {
        die_msg("%s '%s': cache mode must be none or writeback", flag, v);
        return -1;
    }
    return 0;
}

int cmd_convert(int argc, char **argv)
{
    enum {
        OPT_WRITE_CACHE = 256,
        OPT_DROP_PAGES,
        OPT_PROGRESS_FD,
        OPT_BITMAP,
        OPT_TLS_CERTIFICATES,
        OPT_TLS_PSK_FILE,
        OPT_TLS_USERNAME,
        OPT_TARGET_IS_ZERO,
    };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "write-cache", required_argument, NULL, OPT_WRITE_CACHE },
        { "drop-pages", no_argument, NULL, OPT_DROP_PAGES },
        { "progress-fd", required_argument, NULL, OPT_PROGRESS_FD },
        { "bitmap", required_argument, NULL, OPT_BITMAP },
        { "tls-certificates", required_argument, NULL, OPT_TLS_CERTIFICATES },
        { "tls-psk-file", required_argument, NULL, OPT_TLS_PSK_FILE },
        { "tls-username", required_argument, NULL, OPT_TLS_USERNAME },
        { "target-is-zero", no_argument, NULL, OPT_TARGET_IS_ZERO },
        { NULL, 0, NULL, 0 },
    };
    /* Strings are kept as given until the command line's own checks are
     * done, then set in the order zcow_convert() used to check them. */
    struct {
        const char *src_format, *dst_format, *backing_file, *backing_format, *bitmap;
        const char *tls_certificates, *tls_psk_file, *tls_username;
        int cache_mode, drop_pages, target_is_zero;
    } a = { .cache_mode = ZCOW_CACHE_NONE };
    zcow_create_opts *c = zcow_create_opts_new();
    zcow_convert_opts *o = zcow_convert_opts_new();
    zcow_convert_stats *st = zcow_convert_stats_new();
    struct cli_progress prog = { .fd = -1, .last_fd_pct = -1, .last_pct = -1 };
    int quiet = 0, ch, rc = 1;
    long n;
    if (!c || !o || !st) {
        die_msg("%s", zcow_get_error());
        goto out;
    }
    optind = 1;
    while ((ch = getopt_long(argc, argv, "hf:O:co:l:j:t:T:pqm:WB:F:", longopts, NULL)) != -1) {
        switch (ch) {
        case 'h':
            fputs(usage_text, stdout);
            rc = 0;
            goto out;
        case 'f': a.src_format = optarg; break;
        case 'O': a.dst_format = optarg; break;
        case 'c': break;
        case 'o':
            if (cli_parse_o(optarg, c) < 0)
                goto out;
            break;
        case 'l':
            if (cli_parse_level(optarg, c) < 0)
                goto out;
            break;
        case 'j':
            if (cli_parse_threads(optarg, o) < 0)
                goto out;
            break;
        case 't':
            if (parse_cache(optarg, &a.cache_mode, "-t") < 0)
                goto out;
            break;
        case 'T': {
            int mode;
            if (parse_cache(optarg, &mode, "-T") < 0)
                goto out;
            zcow_convert_opts_set_src_cache(o, mode);
            break;
        }
        case 'p': prog.show = 1; break;
        case 'q': quiet = 1; break;
        case 'm':
        case 'W': break; /* qemu-img's parallelism flags: zcow has -j */
        case OPT_WRITE_CACHE:
            if (strcmp(optarg, "on") && strcmp(optarg, "off")) {
                die_msg("--write-cache '%s' must be on or off", optarg);
                goto out;
            }
            zcow_create_opts_set_write_cache(c, !strcmp(optarg, "on"));
            break;
        case OPT_DROP_PAGES: a.drop_pages = 1; break;
        case 'B': a.backing_file = optarg; break;
        case 'F': a.backing_format = optarg; break;
        case OPT_BITMAP: a.bitmap = optarg; break;
        case OPT_TLS_CERTIFICATES: a.tls_certificates = optarg; break;
        case OPT_TLS_PSK_FILE: a.tls_psk_file = optarg; break;
        case OPT_TLS_USERNAME: a.tls_username = optarg; break;
        case OPT_TARGET_IS_ZERO: a.target_is_zero = 1; break;
        case OPT_PROGRESS_FD:
            if (cli_parse_int(optarg, 0, 1 << 20, &n, "--progress-fd") < 0)
                goto out;
            prog.fd = (int)n;
            break;
        default: fputs(usage_text, stderr); goto out;
        }
    }
    if (argc - optind != 2) {
        die_msg("convert needs a source and a destination ('zcow convert --help')");
        goto out;
    }
    const char *src = argv[optind], *dst = argv[optind + 1];
    /* An NBD export takes raw bytes: no -O needed for one. */
    if (!a.dst_format)
        a.dst_format = cli_is_nbd_uri(dst) ? "raw" : "qcow2";
    if (strcmp(a.dst_format, "qcow2") && strcmp(a.dst_format, "raw")) {
        die_msg("output format '%s' is not qcow2 or raw", a.dst_format);
        goto out;
    }
    if (a.drop_pages && a.cache_mode != ZCOW_CACHE_WRITEBACK) {
        die_msg("--drop-pages needs -t writeback (O_DIRECT leaves no pages)");
        goto out;
    }
    if (a.bitmap && !a.backing_file) {
        die_msg("--bitmap needs -B PREVIOUS (the backup the clean clusters are read from)");
        goto out;
    }
    if (a.backing_format && !a.backing_file) {
        die_msg("-F needs -B BACKING");
        goto out;
    }
    const char *tls_opt = a.tls_certificates ? "--tls-certificates"
                          : a.tls_psk_file   ? "--tls-psk-file"
                          : a.tls_username   ? "--tls-username"
                                             : NULL;
    if (tls_opt && strncmp(src, "nbds://", 7) && strncmp(src, "nbds+unix://", 12) &&
        strncmp(dst, "nbds://", 7) && strncmp(dst, "nbds+unix://", 12)) {
        die_msg("%s needs an NBD URI with TLS (nbds:// or nbds+unix://), not '%s'", tls_opt,
                cli_is_nbd_uri(dst) && !cli_is_nbd_uri(src) ? dst : src);
        goto out;
    }
    /* The setters refuse what zcow_convert() refused; the messages are
     * those it gave. */
    if (zcow_create_opts_set_backing_file(c, a.backing_file) < 0) {
        if (a.backing_file && !*a.backing_file)
            die_msg("empty backing file name");
        else
            die_msg("%s", zcow_get_error());
        goto out;
    }
    if (zcow_create_opts_set_backing_format(c, a.backing_format) < 0) {
        die_msg("unknown backing format '%s' (qcow2 or raw)", a.backing_format);
        goto out;
    }
    if (zcow_convert_opts_set_src_format(o, a.src_format) < 0) {
        if (cli_is_nbd_uri(src))
            die_msg("'%s': an NBD export is read as raw, not '%s'", src, a.src_format);
        else
            die_msg("'%s': unknown source format '%s' (raw or qcow2)", src, a.src_format);
        goto out;
    }
    if (zcow_create_opts_set_cache_mode(c, a.cache_mode) < 0 ||
        zcow_create_opts_set_drop_pages(c, a.drop_pages) < 0 ||
        zcow_convert_opts_set_create(o, c) < 0 || zcow_convert_opts_set_src(o, src) < 0 ||
        zcow_convert_opts_set_dst(o, dst) < 0 ||
        zcow_convert_opts_set_dst_format(o, a.dst_format) < 0 ||
        zcow_convert_opts_set_target_is_zero(o, a.target_is_zero) < 0 ||
        zcow_convert_opts_set_bitmap(o, a.bitmap) < 0 ||
        zcow_convert_opts_set_tls_certificates(o, a.tls_certificates) < 0 ||
        zcow_convert_opts_set_tls_psk_file(o, a.tls_psk_file) < 0 ||
        zcow_convert_opts_set_tls_username(o, a.tls_username) < 0) {
        die_msg("%s", zcow_get_error());
        goto out;
    }
    cli_progress_start(&prog);
    if (prog.show || prog.fd >= 0)
        zcow_convert_opts_set_progress(o, cli_progress, &prog);
    int r = zcow_convert(o, st);
    cli_progress_end(&prog);
    if (r < 0) {
        die_msg("%s", zcow_get_error());
        goto out;
    }
    if (!quiet) {
        char in[32], out[32];
        uint64_t bytes_in = zcow_convert_stats_get_bytes_in(st);
        uint64_t bytes_out = zcow_convert_stats_get_bytes_out(st);
        double seconds = zcow_convert_stats_get_seconds(st);
        cli_human_bytes(bytes_in, in, sizeof(in));
        cli_human_bytes(bytes_out, out, sizeof(out));
        double ratio = bytes_out ? (double)bytes_in / (double)bytes_out : 0;
        double rate = seconds > 0 ? (double)bytes_in / seconds / (1 << 20) : 0;
        printf("%s: %s in, %s out, ratio %.2f, %.2f s, %.1f MiB/s\n", dst, in, out, ratio, seconds,
               rate);
    }
    rc = 0;
out:
    zcow_convert_stats_free(st);
    zcow_convert_opts_free(o);
    zcow_create_opts_free(c);
    return rc;
}
