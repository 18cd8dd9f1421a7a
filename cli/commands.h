/* commands.h - the subcommands of zcow; each parses its own arguments and
 * calls the public API (zcow.h) only.  Each returns the process exit code. */
#ifndef ZCOW_COMMANDS_H
#define ZCOW_COMMANDS_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "zcow.h"

int cmd_convert(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_compare(int argc, char **argv);
int cmd_backup(int argc, char **argv);
int cmd_list(int argc, char **argv);
int cmd_restore(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_prune(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_digest(int argc, char **argv);

/* Print "zcow: MESSAGE" on stderr (one line). */
void die_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Parse a size with an optional k/K, M, G, T suffix (1024-based), as
 * qemu-img does; returns 0 or -1. */
int parse_size(const char *s, unsigned long long *out);

/* -p and --progress-fd: a bar on a terminal, qemu-img's lines elsewhere;
 * cli_progress is a zcow_progress_fn with a struct cli_progress. */
struct cli_progress {
    int show; /* -p */
    int tty;
    int fd; /* --progress-fd, or -1 */
    int last_fd_pct;
    double last_pct;
    struct timespec start;
};
void cli_progress_start(struct cli_progress *p);
void cli_progress(void *opaque, uint64_t done, uint64_t total);
void cli_progress_end(const struct cli_progress *p);

/* -o cluster_size=N,compression_type=T into C; -1 after a message. */
int cli_parse_o(const char *text, zcow_create_opts *c);
/* A number from LO to HI (WHAT names it in the message); -1 after one. */
int cli_parse_int(const char *v, long lo, long hi, long *out, const char *what);
/* -l N into C (0 to 19) and -j N into O (1 to 256); -1 after a message. */
int cli_parse_level(const char *v, zcow_create_opts *c);
int cli_parse_threads(const char *v, zcow_convert_opts *o);
/* --point V: a point number (1 and up) or "latest" (0); -1 after a
 * message naming also EXTRA ("or all"), when not NULL. */
int cli_parse_point(const char *v, unsigned long long *out, const char *extra);
/* Is S an NBD URI (nbd://, nbds://, nbd+unix://, nbds+unix://), as the
 * library tells NBD sources and destinations from files? */
int cli_is_nbd_uri(const char *s);
/* "1.5 GiB" */
void cli_human_bytes(uint64_t n, char *buf, size_t cap);

#endif
