/* common.c - what several subcommands parse and print alike: -o, numbers,
 * progress, sizes. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "zcow.h"

static double since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

void cli_progress(void *opaque, uint64_t done, uint64_t total)
{
    struct cli_progress *p = opaque;
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
int cli_parse_o(const char *optarg_text, zcow_create_opts *c)
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
            if (parse_size(v, &n) < 0 || n > UINT32_MAX ||
                zcow_create_opts_set_cluster_size(c, (uint32_t)n) < 0) {
                die_msg("cluster_size '%s' must be a power of two from 4k to 2M", v);
                return -1;
            }
        } else if (!strcmp(kv, "compression_type")) {
            if (!strcmp(v, "zlib"))
                zcow_create_opts_set_compression_type(c, ZCOW_COMPRESSION_ZLIB);
            else if (!strcmp(v, "zstd"))
                zcow_create_opts_set_compression_type(c, ZCOW_COMPRESSION_ZSTD);
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

int cli_parse_int(const char *v, long lo, long hi, long *out, const char *what)
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

int cli_parse_level(const char *v, zcow_create_opts *c)
{
    long n;
    if (cli_parse_int(v, 0, 19, &n, "level") < 0)
        return -1;
    if (zcow_create_opts_set_level(c, (int)n) < 0) {
        die_msg("%s", zcow_get_error());
        return -1;
    }
    return 0;
}

int cli_parse_threads(const char *v, zcow_convert_opts *o)
{
    long n;
    if (cli_parse_int(v, 1, 256, &n, "-j") < 0)
        return -1;
    zcow_convert_opts_set_threads(o, (int)n);
    return 0;
}

int cli_parse_point(const char *v, unsigned long long *out, const char *extra)
{
    if (!strcmp(v, "latest")) {
        *out = 0;
        return 0;
    }
    char *end;
    errno = 0;
    unsigned long long n = strtoull(v, &end, 10);
    /* strtoull takes "-1" (as ULLONG_MAX) and " 1": digits only. */
    if (errno || *v < '0' || *v > '9' || *end || n == 0 || n == ULLONG_MAX) {
        if (extra)
            die_msg("--point '%s' must be a point number, latest%s", v, extra);
        else
            die_msg("--point '%s' must be a point number or latest", v);
        return -1;
    }
    *out = n;
    return 0;
}

void cli_human_bytes(uint64_t n, char *buf, size_t cap)
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

void cli_progress_start(struct cli_progress *p)
{
    p->tty = isatty(STDERR_FILENO);
    clock_gettime(CLOCK_MONOTONIC, &p->start);
}

void cli_progress_end(const struct cli_progress *p)
{
    if (p->show)
        fputs(p->tty ? "\n" : "    (100.00/100%)\n", p->tty ? stderr : stdout);
}

int cli_is_nbd_uri(const char *s)
{
    return !strncmp(s, "nbd://", 6) || !strncmp(s, "nbds://", 7) ||
           !strncmp(s, "nbd+unix://", 11) || !strncmp(s, "nbds+unix://", 12);
}
