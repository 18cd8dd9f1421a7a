/* zcow.c - the command line: find the subcommand and run it. */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "commands.h"
#include "config.h"
#include "zcow.h"

static const struct {
    const char *name;
    int (*run)(int, char **);
    const char *summary;
} commands[] = {
    { "convert", cmd_convert, "convert an image to compressed qcow2 (or qcow2 to raw)" },
    { "info", cmd_info, "show what an image holds" },
    { "check", cmd_check, "check an image's metadata, as qemu-img check" },
    { "compare", cmd_compare, "compare the contents of two images" },
    { "backup", cmd_backup, "back up a running VM's disks (full, incremental)" },
    { "list", cmd_list, "list the points of a backup directory" },
    { "restore", cmd_restore, "restore a disk from a backup directory" },
    { "verify", cmd_verify, "verify the points of a backup directory" },
    { "prune", cmd_prune, "keep the newest points of a backup directory" },
    { "merge", cmd_merge, "write a point of a backup directory as one image" },
    { "digest", cmd_digest, "print the content digest of disks (sha256/64k)" },
};

void die_msg(const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    fprintf(stderr, "zcow: %s\n", line);
}

int parse_size(const char *s, unsigned long long *out)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s)
        return -1;
    int shift = 0;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'M': shift = 20; end++; break;
    case 'G': shift = 30; end++; break;
    case 'T': shift = 40; end++; break;
    default: break;
    }
    if (*end == 'b' || *end == 'B')
        end++;
    if (*end || (shift && v > (~0ull >> shift)))
        return -1;
    *out = v << shift;
    return 0;
}

static void on_signal(int sig)
{
    zcow_remove_temp_files();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: zcow COMMAND [OPTIONS] ...\n\ncommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n'zcow COMMAND --help' describes each.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 1;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        /* The optional parts this zcow was built with (make NBD=no): the
         * tests read this line. */
#ifdef ZCOW_HAVE_NBD
        const char *nbd = "+nbd";
#else
        const char *nbd = "-nbd";
#endif
        printf("zcow %s\nfeatures: %s\n", ZCOW_VERSION_TEXT, nbd);
        return 0;
    }
    struct sigaction sa = { .sa_handler = on_signal };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].run(argc - 1, argv + 1);
    die_msg("unknown command '%s'", argv[1]);
    usage(stderr);
    return 1;
}
