/* readimg.c - a small program using libzcow as any program would, built
 * by the tests of the library as shipped (tests/abi/static-link.sh,
 * tests/package/install.sh): only <zcow.h> and calls that every version
 * of the API has.
 *
 * usage: readimg IMAGE RAW
 * Opens IMAGE (probed), reads it whole in 1 MiB pieces and compares it with
 * the file RAW, of the same virtual size; counts IMAGE's compressed
 * clusters (zcow_cluster_info at every 4 KiB) and prints
 * "readimg: N bytes identical, M compressed clusters".  Exit 0 when
 * identical and M > 0, 1 otherwise. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zcow.h>

#define PIECE (1u << 20)

int main(int argc, char **argv)
{
    zcow_image *img = NULL;
    FILE *raw;
    unsigned char *a, *b;
    unsigned long long off = 0, compressed = 0, last = ~0ull;
    size_t n;
    int r = 1;

    if (argc != 3) {
        fprintf(stderr, "usage: readimg IMAGE RAW\n");
        return 2;
    }
    a = malloc(PIECE);
    b = malloc(PIECE);
    raw = fopen(argv[2], "rb");
    if (!a || !b || !raw) {
        fprintf(stderr, "readimg: cannot open '%s'\n", argv[2]);
        return 1;
    }
    if (zcow_open(argv[1], NULL, 0, &img) < 0) {
        fprintf(stderr, "readimg: %s\n", zcow_get_error());
        return 1;
    }
    while ((n = fread(b, 1, PIECE, raw)) > 0) {
        size_t i;
        if (zcow_read(img, off, a, n) < 0) {
            fprintf(stderr, "readimg: %s\n", zcow_get_error());
            goto out;
        }
        if (memcmp(a, b, n)) {
            fprintf(stderr, "readimg: '%s' differs from '%s' in [%llu, %llu)\n", argv[1], argv[2],
                    off, off + n);
            goto out;
        }
        for (i = 0; i < n; i += 4096) {
            struct zcow_cluster_info ci;
            if (zcow_cluster_info(img, off + i, &ci) < 0) {
                fprintf(stderr, "readimg: %s\n", zcow_get_error());
                goto out;
            }
            if (ci.kind == ZCOW_CLUSTER_COMPRESSED && ci.host_offset != last) {
                compressed++;
                last = ci.host_offset;
            }
        }
        off += n;
    }
    printf("readimg: %llu bytes identical, %llu compressed clusters\n", off, compressed);
    r = compressed > 0 ? 0 : 1;
out:
    zcow_close(img);
    fclose(raw);
    free(a);
    free(b);
    return r;
}
