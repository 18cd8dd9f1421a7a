/* cmd_check.c - zcow check: qcow2 metadata consistency, reported as
 * `qemu-img check` reports it (same exit codes, JSON field names and
 * human wording), so scripts written for one work with the other. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "zcow.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: zcow check [--output=human|json] [--decompress] [-q] [-f qcow2] IMAGE\n"
               "\n"
               "Rebuild the refcounts of a qcow2 image from its L1/L2 tables, snapshots and\n"
               "refcount structures and compare them with the stored ones.\n"
               "\n"
               "  --output=FMT   human (default) or json, as qemu-img check\n"
               "  --decompress   also decompress every compressed cluster\n"
               "  -q, --quiet    no output but the errors found\n"
               "\n"
               "exit status: 0 clean, 1 check not completed, 2 corruptions, 3 leaks only\n");
}

static void report_line(void *opaque, const char *line)
{
    (void)opaque;
    fprintf(stderr, "%s\n", line);
}

static void print_json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch < 0x20)
            printf("\\u%04x", ch);
        else
            putchar(ch);
    }
    putchar('"');
}

/* qemu-img prints the QDict of an ImageCheck, whose key order is that of
 * its hash table; optional fields appear only when nonzero. */
static void print_json(const char *path, const zcow_check_result *r)
{
    const char *sep = "{\n";
#define FIELD(name, value, always)                                                                 \
    do {                                                                                           \
        if ((always) || (value)) {                                                                 \
            printf("%s    \"%s\": %" PRIu64, sep, name, (uint64_t)(value));                        \
            sep = ",\n";                                                                           \
        }                                                                                          \
    } while (0)
    FIELD("image-end-offset", zcow_check_result_get_image_end_offset(r), 0);
    FIELD("compressed-clusters", zcow_check_result_get_compressed_clusters(r), 0);
    FIELD("total-clusters", zcow_check_result_get_total_clusters(r), 0);
    FIELD("corruptions", zcow_check_result_get_corruptions(r), 0);
    FIELD("check-errors", zcow_check_result_get_check_errors(r), 1);
    FIELD("leaks", zcow_check_result_get_leaks(r), 0);
    FIELD("allocated-clusters", zcow_check_result_get_allocated_clusters(r), 0);
    printf("%s    \"filename\": ", sep);
    print_json_string(path);
    printf(",\n    \"format\": \"qcow2\"");
    sep = ",\n";
    FIELD("fragmented-clusters", zcow_check_result_get_fragmented_clusters(r), 0);
#undef FIELD
    printf("\n}\n");
}

static void print_human(const zcow_check_result *r)
{
    uint64_t corruptions = zcow_check_result_get_corruptions(r);
    uint64_t leaks = zcow_check_result_get_leaks(r);
    uint64_t check_errors = zcow_check_result_get_check_errors(r);
    uint64_t total = zcow_check_result_get_total_clusters(r);
    uint64_t allocated = zcow_check_result_get_allocated_clusters(r);
    uint64_t fragmented = zcow_check_result_get_fragmented_clusters(r);
    uint64_t compressed = zcow_check_result_get_compressed_clusters(r);
    uint64_t decompress_failures = zcow_check_result_get_decompress_failures(r);
    uint64_t image_end = zcow_check_result_get_image_end_offset(r);
    if (!corruptions && !leaks && !check_errors) {
        printf("No errors were found on the image.\n");
    } else {
        if (corruptions)
            printf("\n%" PRIu64 " errors were found on the image.\n"
                   "Data may be corrupted, or further writes to the image may corrupt it.\n",
                   corruptions);
        if (leaks)
            printf("\n%" PRIu64 " leaked clusters were found on the image.\n"
                   "This means waste of disk space, but no harm to data.\n",
                   leaks);
        if (check_errors)
            printf("\n%" PRIu64 " internal errors have occurred during the check.\n", check_errors);
    }
    if (decompress_failures)
        printf("%" PRIu64 " compressed clusters could not be decompressed.\n", decompress_failures);
    if (total && allocated)
        printf("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% fragmented, "
               "%0.2f%% compressed clusters\n",
               allocated, total, allocated * 100.0 / total, fragmented * 100.0 / allocated,
               compressed * 100.0 / allocated);
    if (image_end)
        printf("Image end offset: %" PRIu64 "\n", image_end);
}

int cmd_check(int argc, char **argv)
{
    int json = 0, quiet = 0;
    unsigned flags = 0;
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *fmt = NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strncmp(a, "--output=", 9)) {
            fmt = a + 9;
        } else if (!strcmp(a, "--output")) {
            if (++i == argc) {
                die_msg("option '--output' needs a value");
                return 1;
            }
            fmt = argv[i];
        } else if (!strcmp(a, "--decompress")) {
            flags |= ZCOW_CHECK_DECOMPRESS;
        } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            quiet = 1;
        } else if (!strcmp(a, "-f")) {
            if (++i == argc || strcmp(argv[i], "qcow2")) {
                die_msg("only qcow2 images can be checked");
                return 1;
            }
        } else if (a[0] == '-' && a[1]) {
            die_msg("unknown option '%s'", a);
            usage(stderr);
            return 1;
        } else if (path) {
            die_msg("one image at a time: '%s'", a);
            return 1;
        } else {
            path = a;
        }
        if (fmt) {
            if (!strcmp(fmt, "json")) {
                json = 1;
            } else if (!strcmp(fmt, "human")) {
                json = 0;
            } else {
                die_msg("--output must be 'human' or 'json', not '%s'", fmt);
                return 1;
            }
        }
    }
    if (!path) {
        usage(stderr);
        return 1;
    }

    zcow_check_result *res = zcow_check_result_new();
    if (!res || zcow_check(path, flags, report_line, NULL, res) < 0) {
        die_msg("%s", zcow_get_error());
        zcow_check_result_free(res);
        return 1;
    }
    if (zcow_check_result_get_marked_corrupt(res))
        fprintf(stderr, "warning: '%s' is marked corrupt (incompatible feature bit 1)\n", path);
    if (zcow_check_result_get_marked_dirty(res))
        fprintf(stderr, "warning: '%s' is marked dirty: its refcounts may be stale\n", path);
    if (!quiet) {
        if (json)
            print_json(path, res);
        else
            print_human(res);
    }
    uint64_t check_errors = zcow_check_result_get_check_errors(res);
    uint64_t corruptions = zcow_check_result_get_corruptions(res);
    uint64_t leaks = zcow_check_result_get_leaks(res);
    zcow_check_result_free(res);
    if (check_errors) {
        die_msg("check of '%s' failed: %" PRIu64 " internal errors", path, check_errors);
        return 1;
    }
    if (corruptions)
        return 2;
    if (leaks)
        return 3;
    return 0;
}
