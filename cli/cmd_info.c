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

static void print_json(const char *name, const zcow_info *in, const char *indent)
{
    const char *format = zcow_info_get_format(in);
    const char *backing_file = zcow_info_get_backing_file(in);
    const char *backing_path = zcow_info_get_backing_path(in);
    const char *backing_format = zcow_info_get_backing_format(in);
    int qcow2 = !strcmp(format, "qcow2");
    printf("%s{\n", indent);
    printf("%s    \"virtual-size\": %llu,\n", indent,
           (unsigned long long)zcow_info_get_virtual_size(in));
    printf("%s    \"filename\": ", indent);
    json_string(name);
    printf(",\n");
    if (qcow2)
        printf("%s    \"cluster-size\": %u,\n", indent, zcow_info_get_cluster_size(in));
    printf("%s    \"format\": \"%s\",\n", indent, format);
    printf("%s    \"actual-size\": %llu,\n", indent,
           (unsigned long long)zcow_info_get_actual_size(in));
    if (backing_file) {
        printf("%s    \"backing-filename\": ", indent);
        json_string(backing_file);
        printf(",\n%s    \"full-backing-filename\": ", indent);
        json_string(backing_path ? backing_path : backing_file);
        printf(",\n");
        if (backing_format) {
            printf("%s    \"backing-filename-format\": ", indent);
            json_string(backing_format);
            printf(",\n");
        }
    }
    if (qcow2) {
        const char *ctype = compression_name(zcow_info_get_compression_type(in));
        printf("%s    \"format-specific\": {\n", indent);
        printf("%s        \"type\": \"qcow2\",\n", indent);
        printf("%s        \"data\": {\n", indent);
        if (zcow_info_get_version(in) >= 3) {
            printf("%s            \"compat\": \"1.1\",\n", indent);
            printf("%s            \"compression-type\": \"%s\",\n", indent, ctype);
            printf("%s            \"lazy-refcounts\": %s,\n", indent,
                   bool_str(zcow_info_get_lazy_refcounts(in)));
            printf("%s            \"refcount-bits\": %d,\n", indent,
                   zcow_info_get_refcount_bits(in));
            printf("%s            \"corrupt\": %s,\n", indent, bool_str(zcow_info_get_corrupt(in)));
            printf("%s            \"extended-l2\": %s\n", indent,
                   bool_str(zcow_info_get_extended_l2(in)));
        } else {
            printf("%s            \"compat\": \"0.10\",\n", indent);
            printf("%s            \"compression-type\": \"%s\",\n", indent, ctype);
            printf("%s            \"refcount-bits\": %d\n", indent,
                   zcow_info_get_refcount_bits(in));
        }
        printf("%s        }\n", indent);
        printf("%s    },\n", indent);
        printf("%s    \"zcow\": {\n", indent);
        printf("%s        \"allocated-clusters\": %llu,\n", indent,
               (unsigned long long)zcow_info_get_clusters_allocated(in));
        printf("%s        \"compressed-clusters\": %llu,\n", indent,
               (unsigned long long)zcow_info_get_clusters_compressed(in));
        printf("%s        \"normal-clusters\": %llu,\n", indent,
               (unsigned long long)zcow_info_get_clusters_normal(in));
        printf("%s        \"zero-clusters\": %llu,\n", indent,
               (unsigned long long)zcow_info_get_clusters_zero(in));
        printf("%s        \"file-size\": %llu\n", indent,
               (unsigned long long)zcow_info_get_file_size(in));
        printf("%s    },\n", indent);
    }
    printf("%s    \"dirty-flag\": %s\n", indent, bool_str(zcow_info_get_dirty(in)));
    printf("%s}", indent);
}

static void print_human(const char *name, const zcow_info *in)
{
    char vs[32], ds[32];
    const char *format = zcow_info_get_format(in);
    const char *backing_file = zcow_info_get_backing_file(in);
    const char *backing_path = zcow_info_get_backing_path(in);
    const char *backing_format = zcow_info_get_backing_format(in);
    uint64_t virtual_size = zcow_info_get_virtual_size(in);
    int v3 = zcow_info_get_version(in) >= 3;
    human_size(virtual_size, vs, sizeof(vs));
    human_size(zcow_info_get_actual_size(in), ds, sizeof(ds));
    printf("image: %s\n", name);
    printf("file format: %s\n", format);
    printf("virtual size: %s (%llu bytes)\n", vs, (unsigned long long)virtual_size);
    printf("disk size: %s\n", ds);
    if (strcmp(format, "qcow2"))
        return;
    printf("cluster_size: %u\n", zcow_info_get_cluster_size(in));
    if (backing_file) {
        printf("backing file: %s", backing_file);
        if (backing_path && strcmp(backing_path, backing_file))
            printf(" (actual path: %s)", backing_path);
        printf("\n");
        if (backing_format)
            printf("backing file format: %s\n", backing_format);
    }
    printf("Format specific information:\n");
    printf("    compat: %s\n", v3 ? "1.1" : "0.10");
    printf("    compression type: %s\n", compression_name(zcow_info_get_compression_type(in)));
    if (v3)
        printf("    lazy refcounts: %s\n", bool_str(zcow_info_get_lazy_refcounts(in)));
    printf("    refcount bits: %d\n", zcow_info_get_refcount_bits(in));
    if (v3) {
        printf("    corrupt: %s\n", bool_str(zcow_info_get_corrupt(in)));
        printf("    extended l2: %s\n", bool_str(zcow_info_get_extended_l2(in)));
    }
    printf("Clusters (zcow):\n");
    printf("    allocated: %llu\n", (unsigned long long)zcow_info_get_clusters_allocated(in));
    printf("    compressed: %llu\n", (unsigned long long)zcow_info_get_clusters_compressed(in));
    printf("    normal: %llu\n", (unsigned long long)zcow_info_get_clusters_normal(in));
    printf("    zero: %llu\n", (unsigned long long)zcow_info_get_clusters_zero(in));
    printf("    file size: %llu\n", (unsigned long long)zcow_info_get_file_size(in));
    if (zcow_info_get_dirty(in))
        printf("dirty flag: true\n");
}

/* Describe IMG, known to the user as NAME; INFO is left filled for IMG. */
static int describe(zcow_image *img, zcow_info *info, const char *name, int json, int first,
                    int in_array)
{
    if (zcow_get_info(img, info) < 0) {
        die_msg("%s", zcow_get_error());
        return -1;
    }
    if (json) {
        if (in_array)
            printf(first ? "[\n" : ",\n");
        print_json(name, info, in_array ? "    " : "");
        if (!in_array)
            printf("\n");
    } else {
        if (!first)
            printf("\n");
        print_human(name, info);
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
        case 'f': format = optarg; break;
        case 'b': chain = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 1;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return 1;
    }

    /* The chain is opened once, with the top image; each image below is
     * named as the one above resolves it. */
    zcow_info *info = zcow_info_new();
    if (!info) {
        die_msg("%s", zcow_get_error());
        return 1;
    }
    zcow_image *top;
    if (zcow_open(argv[optind], format, 0, &top) < 0) {
        const char *msg = zcow_get_error();
        if (*msg)
            die_msg("%s", msg);
        else
            die_msg("cannot open '%s'", argv[optind]);
        zcow_info_free(info);
        return 1;
    }
    int rc = 0;
    const char *name = argv[optind];
    zcow_image *img = top;
    for (int i = 0; img; i++) {
        if (describe(img, info, name, json, i == 0, chain) < 0) {
            rc = 1;
            break;
        }
        if (!chain)
            break;
        /* The names belong to the chain: they live until zcow_close(top). */
        name = zcow_info_get_backing_path(info) ? zcow_info_get_backing_path(info)
                                                : zcow_info_get_backing_file(info);
        img = zcow_get_backing(img);
    }
    if (json && chain && rc == 0)
        printf("\n]\n");
    zcow_close(top);
    zcow_info_free(info);
    return rc;
}
