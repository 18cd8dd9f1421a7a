/* cmd_info.c - `zcow info`: what an image holds, as qemu-img info shows
 * it (human or JSON), plus zcow's cluster counts. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "zcow.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: zcow info [-f FORMAT] [--output=human|json] [--backing-chain] IMAGE\n"
               "\n"
               "  -f, --format=FMT     the image's format, qcow2 or raw (default: probe)\n"
               "  --output=FMT         human (default) or json, as qemu-img info\n"
               "  --backing-chain      describe every image of the backing chain\n");
}

/* qemu's size_to_str(): three significant digits and a binary unit. */
static void human_size(uint64_t v, char *out, size_t cap)
{
    static const char *units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
    /* frexp(v / (1000 / 1024)) in qemu: a unit up once v reaches 1000 of
     * the one below. */
    int i = 0;
    while (i < 6 && (double)v >= 1000.0 * (double)(1ull << (10 * i)))
        i++;
    snprintf(out, cap, "%0.3g %s", (double)v / (double)(1ull << (i * 10)), units[i]);
}

static void json_string(const char *s)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < 0x20)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

static const char *compression_name(int type) { return type == 1 ? "zstd" : "zlib"; }
static const char *bool_str(int v) { return v ? "true" : "false"; }

static void print_json(const char *name, const struct zcow_info *in, const char *indent)
{
    int qcow2 = !strcmp(in->format, "qcow2");
    printf("%s{\n", indent);
    printf("%s    \"virtual-size\": %llu,\n", indent, (unsigned long long)in->virtual_size);
    printf("%s    \"filename\": ", indent);
    json_string(name);
    printf(",\n");
    if (qcow2)
        printf("%s    \"cluster-size\": %u,\n", indent, in->cluster_size);
    printf("%s    \"format\": \"%s\",\n", indent, in->format);
    printf("%s    \"actual-size\": %llu,\n", indent, (unsigned long long)in->actual_size);
    if (in->backing_file) {
        printf("%s    \"backing-filename\": ", indent);
        json_string(in->backing_file);
        printf(",\n%s    \"full-backing-filename\": ", indent);
        json_string(in->backing_path ? in->backing_path : in->backing_file);
        printf(",\n");
        if (in->backing_format) {
            printf("%s    \"backing-filename-format\": ", indent);
            json_string(in->backing_format);
            printf(",\n");
        }
    }
    if (qcow2) {
        printf("%s    \"format-specific\": {\n", indent);
        printf("%s        \"type\": \"qcow2\",\n", indent);
        printf("%s        \"data\": {\n", indent);
        if (in->version >= 3) {
            printf("%s            \"compat\": \"1.1\",\n", indent);
            printf("%s            \"compression-type\": \"%s\",\n", indent,
                   compression_name(in->compression_type));
            printf("%s            \"lazy-refcounts\": %s,\n", indent, bool_str(in->lazy_refcounts));
            printf("%s            \"refcount-bits\": %d,\n", indent, in->refcount_bits);
            printf("%s            \"corrupt\": %s,\n", indent, bool_str(in->corrupt));
            printf("%s            \"extended-l2\": %s\n", indent, bool_str(in->extended_l2));
        } else {
            printf("%s            \"compat\": \"0.10\",\n", indent);
            printf("%s            \"compression-type\": \"%s\",\n", indent,
                   compression_name(in->compression_type));
            printf("%s            \"refcount-bits\": %d\n", indent, in->refcount_bits);
        }
        printf("%s        }\n", indent);
        printf("%s    },\n", indent);
        printf("%s    \"zcow\": {\n", indent);
        printf("%s        \"allocated-clusters\": %llu,\n", indent,
               (unsigned long long)in->clusters_allocated);
        printf("%s        \"compressed-clusters\": %llu,\n", indent,
               (unsigned long long)in->clusters_compressed);
        printf("%s        \"normal-clusters\": %llu,\n", indent,
               (unsigned long long)in->clusters_normal);
        printf("%s        \"zero-clusters\": %llu,\n", indent,
               (unsigned long long)in->clusters_zero);
        printf("%s        \"file-size\": %llu\n", indent, (unsigned long long)in->file_size);
        printf("%s    },\n", indent);
    }
    printf("%s    \"dirty-flag\": %s\n", indent, bool_str(in->dirty));
    printf("%s}", indent);
}

static void print_human(const char *name, const struct zcow_info *in)
{
    char vs[32], ds[32];
    human_size(in->virtual_size, vs, sizeof(vs));
    human_size(in->actual_size, ds, sizeof(ds));
    printf("image: %s\n", name);
    printf("file format: %s\n", in->format);
    printf("virtual size: %s (%llu bytes)\n", vs, (unsigned long long)in->virtual_size);
    printf("disk size: %s\n", ds);
    if (strcmp(in->format, "qcow2"))
        return;
    printf("cluster_size: %u\n", in->cluster_size);
    if (in->backing_file) {
        printf("backing file: %s", in->backing_file);
        if (in->backing_path && strcmp(in->backing_path, in->backing_file))
            printf(" (actual path: %s)", in->backing_path);
        printf("\n");
        if (in->backing_format)
            printf("backing file format: %s\n", in->backing_format);
    }
    printf("Format specific information:\n");
    printf("    compat: %s\n", in->version >= 3 ? "1.1" : "0.10");
    printf("    compression type: %s\n", compression_name(in->compression_type));
    if (in->version >= 3)
        printf("    lazy refcounts: %s\n", bool_str(in->lazy_refcounts));
    printf("    refcount bits: %d\n", in->refcount_bits);
    if (in->version >= 3) {
        printf("    corrupt: %s\n", bool_str(in->corrupt));
        printf("    extended l2: %s\n", bool_str(in->extended_l2));
    }
    printf("Clusters (zcow):\n");
    printf("    allocated: %llu\n", (unsigned long long)in->clusters_allocated);
    printf("    compressed: %llu\n", (unsigned long long)in->clusters_compressed);
    printf("    normal: %llu\n", (unsigned long long)in->clusters_normal);
    printf("    zero: %llu\n", (unsigned long long)in->clusters_zero);
    printf("    file size: %llu\n", (unsigned long long)in->file_size);
    if (in->dirty)
        printf("dirty flag: true\n");
}

/* Describe IMG, known to the user as NAME. */
static int describe(zcow_image *img, const char *name, int json, int first, int in_array)
{
    struct zcow_info info;
    memset(&info, 0, sizeof(info));
    if (zcow_get_info(img, &info) < 0) {
        die_msg("%s", zcow_get_error());
        return -1;
    }
    if (json) {
        if (in_array)
            printf(first ? "[\n" : ",\n");
        print_json(name, &info, in_array ? "    " : "");
        if (!in_array)
            printf("\n");
    } else {
        if (!first)
            printf("\n");
        print_human(name, &info);
    }
    return 0;
}

int cmd_info(int argc, char **argv)
{
    static const struct option opts[] = {
        { "output", required_argument, NULL, 'o' },
        { "format", required_argument, NULL, 'f' },
        { "backing-chain", no_argument, NULL, 'b' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int json = 0, chain = 0, c;
    const char *format = NULL;
    while ((c = getopt_long(argc, argv, "f:h", opts, NULL)) != -1) {
        switch (c) {
        case 'o':
            if (!strcmp(optarg, "json"))
                json = 1;
            else if (!strcmp(optarg, "human"))
                json = 0;
            else {
                die_msg("unknown output format '%s'", optarg);
                return 1;
            }
            break;
        case 'f':
            format = optarg;
            break;
        case 'b':
            chain = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 1;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return 1;
    }

    /* The chain is opened once, with the top image; each image below is
     * named as the one above resolves it. */
    zcow_image *top;
    if (zcow_open(argv[optind], format, 0, &top) < 0) {
        const char *msg = zcow_get_error();
        if (*msg)
            die_msg("%s", msg);
        else
            die_msg("cannot open '%s'", argv[optind]);
        return 1;
    }
    int rc = 0;
    const char *name = argv[optind];
    zcow_image *img = top;
    for (int i = 0; img; i++) {
        if (describe(img, name, json, i == 0, chain) < 0) {
            rc = 1;
            break;
        }
        if (!chain)
            break;
        struct zcow_info info;
        if (zcow_get_info(img, &info) < 0)
            break;
        name = info.backing_path ? info.backing_path : info.backing_file;
        img = zcow_get_backing(img);
    }
    if (json && chain && rc == 0)
        printf("\n]\n");
    zcow_close(top);
    return rc;
}
