/* api_backup.c - the public entry points of backups (zcow_backup*): the
 * options object, and the calls into backup.c and backup_dir.c, which a
 * build without NBD (make NBD=no) does not have: there every call fails
 * with -ENOTSUP, and the ABI stays the same. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "error.h"
#include "options.h"
#include "zcow.h"

#ifdef ZCOW_HAVE_NBD
#include "backup.h"
#include "backup_dir.h"
#include "backup_prune.h"
#endif

struct zcow_backup_options {
    char *dir, *qmp, *domain, *connect;
    char **disks;
    size_t n_disks;
    int level;
    zcow_convert_opts *convert; /* owned: compression, threads, progress, TLS */
    zcow_message_fn *messages;
    void *messages_opaque;
};

#define MISSING(o)                                                                                 \
    do {                                                                                           \
        if (!(o))                                                                                  \
            return zerr(EINVAL, "%s: no options object", __func__);                                \
    } while (0)

zcow_backup_opts *zcow_backup_opts_new(void)
{
    zcow_backup_opts *o = calloc(1, sizeof(*o));
    if (!o || !(o->convert = zcow_convert_opts_new())) {
        free(o);
        zerr(ENOMEM, "out of memory");
        return NULL;
    }
    o->level = ZCOW_BACKUP_AUTO;
    return o;
}

void zcow_backup_opts_free(zcow_backup_opts *o)
{
    if (!o)
        return;
    free(o->dir);
    free(o->qmp);
    free(o->domain);
    free(o->connect);
    for (size_t i = 0; i < o->n_disks; i++)
        free(o->disks[i]);
    free(o->disks);
    zcow_convert_opts_free(o->convert);
    free(o);
}

/* Replace *FIELD by a copy of VALUE: NULL unsets it, "" is refused. */
static int set_text(const char *option, char **field, const char *value)
{
    if (value && !*value)
        return zerr(EINVAL, "%s '' must not be empty (NULL unsets it)", option);
    char *copy = NULL;
    if (value && !(copy = strdup(value)))
        return zerr(ENOMEM, "out of memory");
    free(*field);
    *field = copy;
    return 0;
}

int zcow_backup_opts_set_dir(zcow_backup_opts *o, const char *dir)
{
    MISSING(o);
    return set_text("dir", &o->dir, dir);
}

int zcow_backup_opts_set_qmp(zcow_backup_opts *o, const char *socket)
{
    MISSING(o);
    return set_text("qmp", &o->qmp, socket);
}

int zcow_backup_opts_set_domain(zcow_backup_opts *o, const char *name)
{
    MISSING(o);
    return set_text("domain", &o->domain, name);
}

int zcow_backup_opts_set_connect(zcow_backup_opts *o, const char *uri)
{
    MISSING(o);
    return set_text("connect", &o->connect, uri);
}

int zcow_backup_opts_add_disk(zcow_backup_opts *o, const char *name)
{
    MISSING(o);
    if (!name || !*name)
        return zerr(EINVAL, "disk '%s' must not be empty", name ? name : "");
    char **d = realloc(o->disks, (o->n_disks + 1) * sizeof(*d));
    if (!d)
        return zerr(ENOMEM, "out of memory");
    o->disks = d;
    if (!(d[o->n_disks] = strdup(name)))
        return zerr(ENOMEM, "out of memory");
    o->n_disks++;
    return 0;
}

int zcow_backup_opts_set_level(zcow_backup_opts *o, int level)
{
    MISSING(o);
    if (level != ZCOW_BACKUP_AUTO && level != ZCOW_BACKUP_FULL && level != ZCOW_BACKUP_INC)
        return zerr(EINVAL, "level '%d' must be %d (auto), %d (full) or %d (incremental)", level,
                    ZCOW_BACKUP_AUTO, ZCOW_BACKUP_FULL, ZCOW_BACKUP_INC);
    o->level = level;
    return 0;
}

int zcow_backup_opts_set_convert(zcow_backup_opts *o, const zcow_convert_opts *c)
{
    MISSING(o);
    if (!c)
        return zerr(EINVAL, "%s: no conversion options", __func__);
    zcow_convert_opts *mine = o->convert;
    int e;
    if ((e = zcow_convert_opts_set_create(mine, &c->create)) < 0 ||
        (e = zcow_convert_opts_set_threads(mine, c->threads)) < 0 ||
        (e = zcow_convert_opts_set_progress(mine, c->progress, c->progress_opaque)) < 0 ||
        (e = zcow_convert_opts_set_tls_certificates(mine, c->nbd_tls.certificates)) < 0 ||
        (e = zcow_convert_opts_set_tls_psk_file(mine, c->nbd_tls.psk_file)) < 0 ||
        (e = zcow_convert_opts_set_tls_username(mine, c->nbd_tls.username)) < 0)
        return e;
    return 0;
}

int zcow_backup_opts_set_messages(zcow_backup_opts *o, zcow_message_fn *fn, void *opaque)
{
    MISSING(o);
    o->messages = fn;
    o->messages_opaque = opaque;
    return 0;
}

#ifdef ZCOW_HAVE_NBD

int zcow_backup(const zcow_backup_opts *o)
{
    MISSING(o);
    if (!o->dir)
        return zerr(EINVAL, "a backup needs a backup directory (zcow_backup_opts_set_dir)");
    if (!o->qmp == !o->domain)
        return zerr(EINVAL, "a backup needs the VM: a libvirt domain or a QMP socket");
    struct backup_options b = {
        .dir = o->dir,
        .qmp = o->qmp,
        .domain = o->domain,
        .connect = o->connect,
        .disks = (const char *const *)o->disks,
        .n_disks = o->n_disks,
        .level = o->level,
        .convert = o->convert,
        .say = o->messages,
        .say_opaque = o->messages_opaque,
    };
    return backup_run(&b);
}

int zcow_backup_list(const char *dir, char **json)
{
    if (!json)
        return zerr(EINVAL, "%s: nowhere to put the list", __func__);
    *json = NULL;
    if (!dir)
        return zerr(EINVAL, "%s: no backup directory", __func__);
    json_t *points;
    int e = backup_dir_list(dir, &points);
    if (e < 0)
        return e;
    *json = json_dumps(points, JSON_INDENT(2));
    json_decref(points);
    return *json ? 0 : zerr(ENOMEM, "out of memory");
}

int zcow_backup_restore(const char *dir, const char *disk, uint64_t point,
                        const zcow_convert_opts *c)
{
    if (!dir || !c)
        return zerr(EINVAL, "%s: no backup directory or options", __func__);
    return backup_dir_restore(dir, disk, point, c);
}

int zcow_backup_verify(const char *dir, const char *disk, uint64_t point, zcow_message_fn *fn,
                       void *opaque)
{
    if (!dir)
        return zerr(EINVAL, "%s: no backup directory", __func__);
    return backup_dir_verify(dir, disk, point, fn, opaque);
}

int zcow_backup_prune(const char *dir, const char *disk, uint64_t keep, unsigned flags,
                      zcow_message_fn *messages, void *opaque)
{
    if (!dir)
        return zerr(EINVAL, "%s: no backup directory", __func__);
    return backup_prune(dir, disk, keep, flags, messages, opaque);
}

int zcow_backup_merge(const char *dir, const char *disk, uint64_t point, const char *dest,
                      const zcow_convert_opts *c, zcow_convert_stats *stats)
{
    if (!dir || !dest)
        return zerr(EINVAL, "%s: no backup directory or destination", __func__);
    struct zcow_convert_options defaults;
    convert_options_defaults(&defaults);
    struct zcow_convert_stats dummy;
    return backup_merge(dir, disk, point, dest, c ? c : &defaults, stats ? stats : &dummy);
}

#else

static int not_built(void)
{
    return zerr(ENOTSUP, "backup support was not built in (zcow was built with NBD=no)");
}

int zcow_backup(const zcow_backup_opts *o)
{
    (void)o;
    return not_built();
}

int zcow_backup_list(const char *dir, char **json)
{
    (void)dir;
    if (json)
        *json = NULL;
    return not_built();
}

int zcow_backup_restore(const char *dir, const char *disk, uint64_t point,
                        const zcow_convert_opts *c)
{
    (void)dir, (void)disk, (void)point, (void)c;
    return not_built();
}

int zcow_backup_verify(const char *dir, const char *disk, uint64_t point, zcow_message_fn *fn,
                       void *opaque)
{
    (void)dir, (void)disk, (void)point, (void)fn, (void)opaque;
}

int zcow_backup_prune(const char *dir, const char *disk, uint64_t keep, unsigned flags,
                      zcow_message_fn *messages, void *opaque)
{
    (void)dir, (void)disk, (void)keep, (void)flags, (void)messages, (void)opaque;
    return not_built();
}

int zcow_backup_merge(const char *dir, const char *disk, uint64_t point, const char *dest,
                      const zcow_convert_opts *c, zcow_convert_stats *stats)
{
    (void)dir, (void)disk, (void)point, (void)dest, (void)c, (void)stats;
    return not_built();
}

#endif
