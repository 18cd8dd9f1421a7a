/* cmd_list.c - `zcow list`: the points of a backup directory. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "commands.h"
#include "config.h"
#include "zcow.h"

#ifdef ZCOW_HAVE_NBD
#include <jansson.h>
#endif

static const char list_usage[] =
    "usage: zcow list [--output=human|json] DIR\n"
    "\n"
    "  The points of every disk backed up in DIR: number, time, level,\n"
    "  virtual size, the bytes the point's image stores, and the content\n"
    "  digest of the disk at the point (as zcow digest prints it).\n";

/* The human table of zcow_backup_list()'s JSON. */
static void print_points(const char *text)
{
#ifdef ZCOW_HAVE_NBD
    json_t *points = json_loads(text, 0, NULL);
    printf("%-10s %6s  %-19s  %-5s %12s  %12s  %s\n", "DISK", "POINT", "TIME", "LEVEL", "VIRTUAL",
           "STORED", "DIGEST (sha256/64k, as zcow digest prints it)");
    size_t i;
    json_t *p;
    json_array_foreach(points, i, p)
    {
        time_t t = (time_t)json_integer_value(json_object_get(p, "time"));
        char when[32], vsize[32], stored[32];
        strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", localtime(&t));
        cli_human_bytes((uint64_t)json_integer_value(json_object_get(p, "virtual-size")), vsize,
                        sizeof(vsize));
        cli_human_bytes((uint64_t)json_integer_value(json_object_get(p, "stored-bytes")), stored,
                        sizeof(stored));
        /* "sha256/64k:HEX": the hex; points older than digests have none. */
        const char *digest = json_string_value(json_object_get(p, "digest"));
        const char *colon = digest ? strchr(digest, ':') : NULL;
        printf("%-10s %6" JSON_INTEGER_FORMAT "  %-19s  %-5s %12s  %12s  %s\n",
               json_string_value(json_object_get(p, "disk")),
               json_integer_value(json_object_get(p, "number")), when,
               json_string_value(json_object_get(p, "level")), vsize, stored,
               colon ? colon + 1 : "no digest");
    }
    json_decref(points);
#else
    (void)text; /* zcow_backup_list() fails without NBD: never here */
#endif
}

int cmd_list(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "output", required_argument, NULL, 'O' },
        { NULL, 0, NULL, 0 },
    };
    int c, json = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(list_usage, stdout); return 0;
        case 'O':
            if (strcmp(optarg, "json") && strcmp(optarg, "human")) {
                die_msg("unknown output format '%s' (human or json)", optarg);
                return 1;
            }
            json = !strcmp(optarg, "json");
            break;
        default: fputs(list_usage, stderr); return 1;
        }
    }
    if (argc - optind != 1) {
        die_msg("list needs one backup directory ('zcow list --help')");
        return 1;
    }
    char *text;
    if (zcow_backup_list(argv[optind], &text) < 0) {
        die_msg("%s", zcow_get_error());
        return 1;
    }
    if (json) {
        printf("%s\n", text);
        free(text);
        return 0;
    }
    print_points(text);
    free(text);
    return 0;
}
