/* test_backup_dir.c - the backup directory: manifests written and read
 * back, malformed manifests refused with a message (never trusted: digests
 * and block-hash files of the wrong shape too), the lock, disk names that
 * could not be file names, and the clean-up of what a failed backup left
 * (temporary files, images and block-hash files of no point); numbers no
 * backup writes (sizes, times) refused naming the member, and a restore of
 * an image whose virtual size is not the manifest's. */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>

#include "backup_dir.h"
#include "options.h"
#include "unit.h"
#include "zcow.h"

static char dir[] = "/tmp/zcow-test-backup-dir-XXXXXX";

static void write_file(const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        exit(1);
    }
    fputs(text, f);
    fclose(f);
}

static bool exists(const char *name)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

/* A manifest with TEXT must be refused with ERR and a message naming it. */
static void refused(const char *what, const char *text, int err)
{
    write_file("zcow-backup.json", text);
    struct backup_dir *d;
    int e = backup_dir_open(dir, false, &d);
    CHECKF(e == -err, "%s: got %d, want %d", what, e, -err);
    CHECKF(strstr(zcow_get_error(), "zcow-backup.json") != NULL, "%s: message '%s'", what,
           zcow_get_error());
    if (e == 0)
        backup_dir_close(d);
}

static const char good[] =
    "{\"format\": \"zcow-backup\", \"version\": 1, \"prefix\": \"zcow-00000001\", \"disks\": "
    "{\"vda\": {\"bitmap\": \"zcow-00000001-vda-2\", \"points\": ["
    "{\"number\": 1, \"time\": 1, \"level\": \"full\", \"file\": \"vda/000001.qcow2\", "
    "\"virtual-size\": 1048576, \"stored-bytes\": 1},"
    "{\"number\": 2, \"time\": 2, \"level\": \"inc\", \"file\": \"vda/000002.qcow2\", "
    "\"virtual-size\": 1048576, \"stored-bytes\": 1, \"digest\": \"sha256/64k:"
    "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\", "
    "\"blkhash\": \"vda/000002.blkhash\"}]}}}";

/* A manifest of one point with DIGEST and BLKHASH (JSON values, or NULL:
 * absent). */
static void point_with(char *buf, size_t cap, const char *digest, const char *blkhash)
{
    snprintf(buf, cap,
             "{\"format\": \"zcow-backup\", \"version\": 1, \"prefix\": \"p\", \"disks\": "
             "{\"vda\": {\"bitmap\": null, \"points\": [{\"number\": 1, \"time\": 1, "
             "\"level\": \"full\", \"file\": \"vda/000001.qcow2\", \"virtual-size\": 1"
             "%s%s%s%s}]}}}",
             digest ? ", \"digest\": " : "", digest ? digest : "", blkhash ? ", \"blkhash\": " : "",
             blkhash ? blkhash : "");
}

/* A manifest of one point whose MEMBERS (JSON) follow its number. */
static void point_members(char *buf, size_t cap, const char *members)
{
    snprintf(buf, cap,
             "{\"format\": \"zcow-backup\", \"version\": 1, \"prefix\": \"p\", \"disks\": "
             "{\"vda\": {\"bitmap\": null, \"points\": [{\"number\": 1, \"level\": \"full\", "
             "\"file\": \"vda/000001.qcow2\", %s}]}}}",
             members);
}

/* Numbers no backup writes, refused in one line naming the member. */
static void hostile_numbers(void)
{
    static const struct {
        const char *members, *field;
    } bad[] = {
        { "\"time\": 1, \"virtual-size\": -1", "virtual-size -1" },
        { "\"time\": 1, \"virtual-size\": 0", "virtual-size 0" },
        { "\"time\": 1, \"virtual-size\": 4611686018427387904",
          "virtual-size 4611686018427387904" },
        { "\"time\": -5, \"virtual-size\": 1048576", "time -5" },
        { "\"time\": 1, \"virtual-size\": 1048576, \"stored-bytes\": -1", "stored-bytes -1" },
        { "\"time\": 1, \"virtual-size\": 1048576, \"stored-bytes\": \"7\"", "stored-bytes \"7\"" },
    };
    char m[1024];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        point_members(m, sizeof(m), bad[i].members);
        refused(bad[i].field, m, EINVAL);
        const char *msg = zcow_get_error();
        CHECKF(strstr(msg, bad[i].field) && strstr(msg, "point 1 of disk 'vda'") &&
                   !strchr(msg, '\n'),
               "%s: message '%s'", bad[i].field, msg);
    }
    /* The largest an image holds (2^61), a time of 0, no stored-bytes. */
    point_members(m, sizeof(m), "\"time\": 0, \"virtual-size\": 2305843009213693952");
    write_file("zcow-backup.json", m);
    struct backup_dir *d;
    CHECKF(backup_dir_open(dir, false, &d) == 0, "%s", zcow_get_error());
    backup_dir_close(d);
}

/* A restore of a point whose image is not of the manifest's virtual size
 * is refused before anything is written, in verify's words. */
static void restore_size_mismatch(void)
{
    char sub[600], image[700], dst[700], m[1024];
    snprintf(sub, sizeof(sub), "%s/sized", dir);
    snprintf(image, sizeof(image), "%s/vda", sub);
    CHECK(mkdir(sub, 0755) == 0 && mkdir(image, 0755) == 0);
    snprintf(image, sizeof(image), "%s/vda/000001.qcow2", sub);
    snprintf(dst, sizeof(dst), "%s/out.raw", dir);
    zcow_create_opts *o = zcow_create_opts_new();
    zcow_image *img;
    CHECK(o && zcow_create_opts_set_virtual_size(o, 1 << 20) == 0);
    CHECKF(zcow_create(image, o, &img) == 0 && zcow_close(img) == 0, "%s", zcow_get_error());
    zcow_create_opts_free(o);
    struct zcow_convert_options c;
    convert_options_defaults(&c);
    c.dst = dst;
    c.dst_format = "raw";
    c.threads = 1;
    for (int k = 0; k < 2; k++) {
        point_members(m, sizeof(m),
                      k ? "\"time\": 1, \"virtual-size\": 1048576"
                        : "\"time\": 1, \"virtual-size\": 2097152");
        write_file("sized/zcow-backup.json", m);
        int e = backup_dir_restore(sub, "vda", 1, &c);
        if (k) {
            CHECKF(e == 0 && access(dst, F_OK) == 0, "the right size: %s", zcow_get_error());
            break;
        }
        const char *msg = zcow_get_error();
        CHECKF(e == -EINVAL && strstr(msg, "000001.qcow2") &&
                   strstr(msg, "virtual size 1048576, the manifest says 2097152"),
               "got %d '%s'", e, msg);
        CHECK(access(dst, F_OK) != 0);
    }
}

int main(void)
{
    unit_init("test_backup_dir");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }

    /* A new directory: created, a fresh prefix, saved, read back. */
    char sub[600];
    snprintf(sub, sizeof(sub), "%s/new", dir);
    struct backup_dir *d;
    CHECK(backup_dir_open(sub, false, &d) == -ENOENT);
    CHECK(backup_dir_open(sub, true, &d) == 0);
    CHECK(strncmp(d->prefix, "zcow-", 5) == 0 && strlen(d->prefix) == 13);
    char prefix[32];
    snprintf(prefix, sizeof(prefix), "%s", d->prefix);
    json_t *disk = backup_dir_disk(d, "vda", true);
    CHECK(disk != NULL && backup_dir_last_point(disk) == NULL);
    json_array_append_new(json_object_get(disk, "points"),
                          json_pack("{s:i, s:i, s:s, s:s, s:i, s:i}", "number", 1, "time", 5,
                                    "level", "full", "file", "vda/000001.qcow2", "virtual-size",
                                    4096, "stored-bytes", 1));
    CHECK(backup_dir_save(d) == 0);
    /* The lock: a second writer is refused, and so is a reader. */
    struct backup_dir *d2;
    CHECK(backup_dir_open(sub, true, &d2) == -EBUSY);
    CHECK(backup_dir_open_shared(sub, &d2) == -EBUSY);
    backup_dir_close(d);
    CHECK(backup_dir_open_shared(sub, &d) == 0);
    CHECK(strcmp(d->prefix, prefix) == 0);
    json_t *p = backup_dir_point(backup_dir_disk(d, "vda", false), 1);
    CHECK(p && json_integer_value(json_object_get(p, "time")) == 5);
    CHECK(backup_dir_point(backup_dir_disk(d, "vda", false), 2) == NULL);
    backup_dir_close(d);
    json_t *list;
    CHECK(backup_dir_list(sub, &list) == 0 && json_array_size(list) == 1);
    CHECK(!strcmp(json_string_value(json_object_get(json_array_get(list, 0), "disk")), "vda"));
    json_decref(list);

    /* Malformed manifests. */
    refused("not JSON", "{\"format\": ", EINVAL);
    refused("another format",
            "{\"format\": \"x\", \"version\": 1, \"prefix\": \"p\", \"disks\": {}}", EINVAL);
    refused("a later version",
            "{\"format\": \"zcow-backup\", \"version\": 9, \"prefix\": \"p\", \"disks\": {}}",
            ENOTSUP);
    refused("a disk name with a slash",
            "{\"format\": \"zcow-backup\", \"version\": 1, \"prefix\": \"p\", \"disks\": "
            "{\"../x\": {\"bitmap\": null, \"points\": []}}}",
            EINVAL);
    refused("a point without a file",
            "{\"format\": \"zcow-backup\", \"version\": 1, \"prefix\": \"p\", \"disks\": "
            "{\"vda\": {\"bitmap\": null, \"points\": [{\"number\": 1, \"time\": 1, "
            "\"level\": \"full\", \"virtual-size\": 1}]}}}",
            EINVAL);
    refused(
        "points out of order",
        "{\"format\": \"zcow-backup\", \"version\": 1, \"prefix\": \"p\", \"disks\": "
        "{\"vda\": {\"bitmap\": null, \"points\": ["
        "{\"number\": 2, \"time\": 1, \"level\": \"full\", \"file\": \"a\", \"virtual-size\": 1},"
        "{\"number\": 1, \"time\": 1, \"level\": \"inc\", \"file\": \"b\", "
        "\"virtual-size\": 1}]}}}",
        EINVAL);
    /* Digests: "sha256/64k:" and 64 lowercase hex digits; block-hash
     * files in their disk's directory, and only with a digest. */
    char m[1024];
    const char *hex = "\"sha256/64k:00112233445566778899aabbccddeeff00112233445566778899aabb"
                      "ccddeeff\"";
    static const char *bad_digests[] = {
        "1",
        "\"sha256/64k:0011\"",
        "\"md5/64k:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"",
        "\"sha256/64k:00112233445566778899AABBCCDDEEFF00112233445566778899aabbccddeeff\"",
        "\"sha256/64k:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeffa\"",
    };
    for (size_t i = 0; i < sizeof(bad_digests) / sizeof(bad_digests[0]); i++) {
        point_with(m, sizeof(m), bad_digests[i], NULL);
        refused(bad_digests[i], m, EINVAL);
    }
    static const char *bad_blkhash[] = {
        "\"../../etc/passwd\"",
        "\"vdb/000001.blkhash\"",
        "\"vda/1.blkhash\"",
        "\"vda/000001.qcow2\"",
        "7",
    };
    for (size_t i = 0; i < sizeof(bad_blkhash) / sizeof(bad_blkhash[0]); i++) {
        point_with(m, sizeof(m), hex, bad_blkhash[i]);
        refused(bad_blkhash[i], m, EINVAL);
    }
    point_with(m, sizeof(m), NULL, "\"vda/000001.blkhash\"");
    refused("a block-hash file without a digest", m, EINVAL);
    /* A digest alone, and both, are fine (and neither: points before 0.3). */
    point_with(m, sizeof(m), hex, NULL);
    write_file("zcow-backup.json", m);
    CHECK(backup_dir_open(dir, false, &d) == 0);
    p = backup_dir_point(backup_dir_disk(d, "vda", false), 1);
    const char *got = p ? backup_dir_point_digest(p) : NULL;
    CHECKF(got && strlen(got) == 64 && !strncmp(got, hex + 12, 64), "digest '%s'", got);
    CHECK(backup_dir_blkhash_path(d, p) == NULL);
    backup_dir_close(d);
    refused("a duplicate key",
            "{\"format\": \"zcow-backup\", \"format\": \"zcow-backup\", \"version\": 1, "
            "\"prefix\": \"p\", \"disks\": {}}",
            EINVAL);

    hostile_numbers();
    restore_size_mismatch();

    /* Clean-up: temporary images and images of no point go, the rest
     * stays. */
    write_file("zcow-backup.json", good);
    mkdir(strcat(strcpy(sub, dir), "/vda"), 0755);
    mkdir(strcat(strcpy(sub, dir), "/vdb"), 0755);
    write_file("vda/000001.qcow2", "x");
    write_file("vda/000002.qcow2", "x");
    write_file("vda/000003.qcow2", "x"); /* a failed point's */
    write_file("vda/000003.qcow2.zcow-tmp-123456", "x");
    write_file("vda/000002.blkhash", "x");
    write_file("vda/000001.blkhash", "x"); /* point 1 has no digest */
    write_file("vda/000003.blkhash", "x");
    write_file("vda/000003.blkhash.zcow-tmp-654321", "x");
    write_file("vda/notes.txt", "x");
    write_file("vdb/000001.qcow2", "x"); /* a disk the manifest lacks */
    CHECK(backup_dir_open(dir, false, &d) == 0);
    CHECK(backup_dir_clean(d) == 0);
    backup_dir_close(d);
    CHECK(exists("vda/000001.qcow2") && exists("vda/000002.qcow2") && exists("vda/notes.txt"));
    CHECK(!exists("vda/000003.qcow2") && !exists("vda/000003.qcow2.zcow-tmp-123456"));
    CHECK(exists("vda/000002.blkhash") && !exists("vda/000001.blkhash") &&
          !exists("vda/000003.blkhash") && !exists("vda/000003.blkhash.zcow-tmp-654321"));
    CHECK(!exists("vdb/000001.qcow2"));

    /* A directory of other files never becomes a backup directory, and
     * gets no lock file; one holding only a failed first backup's files
     * does. */
    char other[600];
    snprintf(other, sizeof(other), "%s/other", dir);
    mkdir(other, 0755);
    write_file("other/notes.txt", "x");
    CHECK(backup_dir_open(other, true, &d) == -EEXIST);
    CHECK(!exists("other/.lock") && !exists("other/zcow-backup.json"));
    snprintf(other, sizeof(other), "%s/failed", dir);
    mkdir(other, 0755);
    mkdir(strcat(strcpy(sub, other), "/vda"), 0755);
    write_file("failed/.lock", "");
    write_file("failed/vda/000001.qcow2.zcow-tmp-abcdef", "x");
    CHECK(backup_dir_open(other, true, &d) == 0);
    backup_dir_close(d);
    write_file("failed/vda/readme", "x");
    CHECK(backup_dir_open(other, true, &d) == -EEXIST);

    /* Disk names. */
    CHECK(backup_dir_valid_disk_name("vda") && backup_dir_valid_disk_name("virtio-disk0"));
    CHECK(!backup_dir_valid_disk_name("") && !backup_dir_valid_disk_name(".hidden"));
    CHECK(!backup_dir_valid_disk_name("a/b") && !backup_dir_valid_disk_name("a b"));

    if (system(strcat(strcpy(sub, "rm -rf "), dir)) != 0)
        perror("rm");
    return unit_done();
}
