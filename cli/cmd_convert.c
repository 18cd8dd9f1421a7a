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
    "                    [-B BACKING [-F qcow2|raw]] [--bitmap NAME]\n"
    "                    [--tls-certificates DIR] [--tls-psk-file FILE]\n"
    "                    [--tls-username NAME] SRC DST\n"
    "\n"
    "  SRC is a file, a block device, a qcow2 image (its backing chain is\n"
    "  flattened) or an NBD URI: nbd://HOST[:PORT]/EXPORT,\n"
    "  nbd+unix:///EXPORT?socket=PATH, or with TLS (required: never plaintext)\n"
    "  nbds://HOST[:PORT]/EXPORT, nbds+unix:///EXPORT?socket=PATH\n"
    "\n"
    "  -f FMT        source format (probed by default)\n"
    "  -O FMT        output format: qcow2 (compressed, default) or raw (restore)\n"
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
    "  TLS (nbds:// and nbds+unix:// only; with nbd:// these are an error):\n"
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

struct progress {
    int show;          /* -p */
    int tty;
    int fd;            /* --progress-fd, or -1 */
    int last_fd_pct;
    double last_pct;
    struct timespec start;
};

static double since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

static void on_progress(void *opaque, uint64_t done, uint64_t total)
{
    struct progress *p = opaque;
    double pct = total ? 100.0 * (double)done / (double)total : 100.0;
    if (p->fd >= 0 && (int)pct != p->last_fd_pct) {
        p->last_fd_pct = (int)pct;
        dprintf(p->fd, "%d/100\n", (int)pct);
    }
    if (!p->show || pct - p->last_pct < 0.01)
        return;
    p->last_pct = pct;
    if (!p->tty) { /* as qemu-img -p */
        printf("    (%.2f/100%%)\r", pct);
        fflush(stdout);
        return;
    }
    double secs = since(&p->start);
    double rate = secs > 0 ? (double)done / secs / (1 << 20) : 0;
    double eta = done && done < total ? secs * (double)(total - done) / (double)done : 0;
    char bar[31];
    int filled = (int)(pct * 30 / 100);
    for (int i = 0; i < 30; i++)
        bar[i] = i < filled ? '#' : '.';
    bar[30] = 0;
    fprintf(stderr, "\r[%s] %6.2f%%  %8.1f MiB/s  ETA %4.0f s ", bar, pct, rate, eta);
    fflush(stderr);
}

/* -o cluster_size=N,compression_type=T (parsed in a copy: argv stays as
 * it was, for ps) */
static int parse_o(const char *optarg_text, struct zcow_create_options *c)
{
    char arg[1024];
    snprintf(arg, sizeof(arg), "%s", optarg_text);
    for (char *save = NULL, *kv = strtok_r(arg, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        char *v = strchr(kv, '=');
        if (!v) {
            die_msg("option '%s' needs a value (name=value)", kv);
            return -1;
        }
        *v++ = 0;
        unsigned long long n;
        if (!strcmp(kv, "cluster_size")) {
            if (parse_size(v, &n) < 0 || n > (1u << 21) || n < 4096 || (n & (n - 1))) {
                die_msg("cluster_size '%s' must be a power of two from 4k to 2M", v);
                return -1;
            }
            c->cluster_size = (uint32_t)n;
        } else if (!strcmp(kv, "compression_type")) {
            if (!strcmp(v, "zlib"))
                c->compression_type = ZCOW_COMPRESSION_ZLIB;
            else if (!strcmp(v, "zstd"))
                c->compression_type = ZCOW_COMPRESSION_ZSTD;
            else {
                die_msg("compression_type '%s' is not zlib or zstd", v);
                return -1;
            }
        } else {
            die_msg("unknown option '%s' (cluster_size, compression_type)", kv);
            return -1;
        }
    }
    return 0;
}

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

static int parse_int(const char *v, long lo, long hi, long *out, const char *what)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || end == v || *end || n < lo || n > hi) {
        die_msg("%s '%s' must be a number from %ld to %ld", what, v, lo, hi);
        return -1;
    }
    *out = n;
    return 0;
}

static void human_bytes(uint64_t n, char *buf, size_t cap)
{
    const char *units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
    double v = (double)n;
    int u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        u++;
    }
    snprintf(buf, cap, u ? "%.1f %s" : "%.0f %s", v, units[u]);
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
        { NULL, 0, NULL, 0 },
    };
    struct zcow_convert_options o;
    zcow_convert_options_init(&o);
    struct progress prog = { .fd = -1, .last_fd_pct = -1, .last_pct = -1 };
    int quiet = 0, c;
    long n;
    optind = 1;
    while ((c = getopt_long(argc, argv, "hf:O:co:l:j:t:T:pqm:WB:F:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(usage_text, stdout); return 0;
        case 'f': o.src_format = optarg; break;
        case 'O': o.dst_format = optarg; break;
        case 'c': break;
        case 'o': if (parse_o(optarg, &o.create) < 0) return 1; break;
        case 'l':
            if (parse_int(optarg, 0, 19, &n, "level") < 0) return 1;
            o.create.level = (int)n;
            break;
        case 'j':
            if (parse_int(optarg, 1, 256, &n, "-j") < 0) return 1;
            o.threads = (int)n;
            break;
        case 't': if (parse_cache(optarg, &o.create.cache_mode, "-t") < 0) return 1; break;
        case 'T': if (parse_cache(optarg, &o.src_cache, "-T") < 0) return 1; break;
        case 'p': prog.show = 1; break;
        case 'q': quiet = 1; break;
        case 'm': case 'W': break; /* qemu-img's parallelism flags: zcow has -j */
        case OPT_WRITE_CACHE:
            if (strcmp(optarg, "on") && strcmp(optarg, "off")) {
                die_msg("--write-cache '%s' must be on or off", optarg);
                return 1;
            }
            o.create.write_cache = !strcmp(optarg, "on");
            break;
        case OPT_DROP_PAGES: o.create.drop_pages = 1; break;
        case 'B': o.create.backing_file = optarg; break;
        case 'F': o.create.backing_format = optarg; break;
        case OPT_BITMAP: o.bitmap = optarg; break;
        case OPT_TLS_CERTIFICATES: o.nbd_tls.certificates = optarg; break;
        case OPT_TLS_PSK_FILE: o.nbd_tls.psk_file = optarg; break;
        case OPT_TLS_USERNAME: o.nbd_tls.username = optarg; break;
        case OPT_PROGRESS_FD:
            if (parse_int(optarg, 0, 1 << 20, &n, "--progress-fd") < 0) return 1;
            prog.fd = (int)n;
            break;
        default: fputs(usage_text, stderr); return 1;
        }
    }
    if (argc - optind != 2) {
        die_msg("convert needs a source and a destination ('zcow convert --help')");
        return 1;
    }
    o.src = argv[optind];
    o.dst = argv[optind + 1];
    if (strcmp(o.dst_format, "qcow2") && strcmp(o.dst_format, "raw")) {
        die_msg("output format '%s' is not qcow2 or raw", o.dst_format);
        return 1;
    }
    if (o.create.drop_pages && o.create.cache_mode != ZCOW_CACHE_WRITEBACK) {
        die_msg("--drop-pages needs -t writeback (O_DIRECT leaves no pages)");
        return 1;
    }
    if (o.bitmap && !o.create.backing_file) {
        die_msg("--bitmap needs -B PREVIOUS (the backup the clean clusters are read from)");
        return 1;
    }
    if (o.create.backing_format && !o.create.backing_file) {
        die_msg("-F needs -B BACKING");
        return 1;
    }
    const char *tls_opt = o.nbd_tls.certificates ? "--tls-certificates"
                          : o.nbd_tls.psk_file   ? "--tls-psk-file"
                          : o.nbd_tls.username   ? "--tls-username"
                                                 : NULL;
    if (tls_opt && strncmp(o.src, "nbds://", 7) && strncmp(o.src, "nbds+unix://", 12)) {
        die_msg("%s needs an NBD URI with TLS (nbds:// or nbds+unix://), not '%s'", tls_opt, o.src);
        return 1;
    }
    prog.tty = isatty(STDERR_FILENO);
    clock_gettime(CLOCK_MONOTONIC, &prog.start);
    if (prog.show || prog.fd >= 0) {
        o.progress = on_progress;
        o.progress_opaque = &prog;
    }
    struct zcow_convert_stats st;
    int r = zcow_convert(&o, &st);
    if (prog.show)
        fputs(prog.tty ? "\n" : "    (100.00/100%)\n", prog.tty ? stderr : stdout);
    if (r < 0) {
        die_msg("%s", zcow_get_error());
        return 1;
    }
    if (!quiet) {
        char in[32], out[32];
        human_bytes(st.bytes_in, in, sizeof(in));
        human_bytes(st.bytes_out, out, sizeof(out));
        double ratio = st.bytes_out ? (double)st.bytes_in / (double)st.bytes_out : 0;
        double rate = st.seconds > 0 ? (double)st.bytes_in / st.seconds / (1 << 20) : 0;
        printf("%s: %s in, %s out, ratio %.2f, %.2f s, %.1f MiB/s\n", o.dst, in, out, ratio,
               st.seconds, rate);
    }
    return 0;
}
