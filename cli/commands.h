/* commands.h - the subcommands of zcow; each parses its own arguments and
 * calls the public API (zcow.h) only.  Each returns the process exit code. */
#ifndef ZCOW_COMMANDS_H
#define ZCOW_COMMANDS_H

int cmd_convert(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_compare(int argc, char **argv);

/* Print "zcow: MESSAGE" on stderr (one line). */
void die_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Parse a size with an optional k/K, M, G, T suffix (1024-based), as
 * qemu-img does; returns 0 or -1. */
int parse_size(const char *s, unsigned long long *out);

#endif
