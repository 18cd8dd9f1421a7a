/* backup_qmp.c - the QMP driver of backups (backup.h): a QEMU reached
 * through its QMP socket, with no management layer.
 *
 * Names in QEMU that belong to the backup directory start with its prefix
 * P: dirty bitmaps P-DISK-N (N: the point they lead from), fleecing nodes
 * P-fl-DISK and P-flf-DISK (format and file), jobs and exports P-DISK.
 *
 *   open    remove what a failed attempt left: jobs, exports, nodes; merge
 *           its bitmaps into the ones the manifest names
 *   start   scratch images and fleecing nodes         blockdev-add
 *           NBD server on a private Unix socket       nbd-server-start
 *           one transaction for every disk:
 *             block-dirty-bitmap-add P-DISK-N (the next point's bitmap),
 *             block-dirty-bitmap-disable (the last point's: frozen now),
 *             blockdev-backup sync=none to the fleecing node
 *           exports with the frozen bitmap          block-export-add
 *   finish  undo start; settle the bitmaps (settle_bitmaps) */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backup.h"
#include "error.h"
#include "options.h"
#include "qmp.h"

/* Block jobs and exports end quickly once told to. */
#define TEARDOWN_TIMEOUT_MS 30000

struct qdisk {
    char *node; /* the active node */
    json_t *bitmaps;
    char *fleece, *fleece_file, *scratch, *job;
};

struct qrun {
    struct qmp *q;
    char *nbd_dir, *nbd_sock;
    bool nbd_started;
};

static struct qrun *Q(struct backup_run *r) { return r->priv; }
static struct qdisk *QD(const struct backup_disk *k) { return k->priv; }

/* ---- QEMU's state -------------------------------------------------------- */

/* The node NAME in query-named-block-nodes (flat), a new reference. */
static int find_node(struct backup_run *r, const char *name, json_t **out)
{
    *out = NULL;
    json_t *nodes;
    int e = qmp_execute(Q(r)->q, "query-named-block-nodes", json_pack("{s:b}", "flat", 1), &nodes);
    if (e < 0)
        return e;
    size_t i;
    json_t *n;
    json_array_foreach(nodes, i, n)
    {
        const char *nn = json_string_value(json_object_get(n, "node-name"));
        if (nn && !strcmp(nn, name)) {
            *out = json_incref(n);
            break;
        }
    }
    json_decref(nodes);
    return 0;
}

/* The named bitmap NAME in the node's list, or NULL. */
static json_t *bitmap_info(json_t *bitmaps, const char *name)
{
    size_t i;
    json_t *b;
    json_array_foreach(bitmaps, i, b)
    {
        const char *bn = json_string_value(json_object_get(b, "name"));
        if (bn && name && !strcmp(bn, name))
            return b;
    }
    return NULL;
}

static int refresh_bitmaps(struct backup_run *r, struct backup_disk *k)
{
    json_t *node;
    int e = find_node(r, QD(k)->node, &node);
    if (e < 0)
        return e;
    if (!node)
        return zerr(ENOENT, "QMP '%s': no block node '%s'", r->o->qmp, QD(k)->node);
    json_decref(QD(k)->bitmaps);
    QD(k)->bitmaps = json_incref(json_object_get(node, "dirty-bitmaps"));
    if (!QD(k)->bitmaps)
        QD(k)->bitmaps = json_array();
    json_decref(node);
    return 0;
}

/* The disk's bitmaps of this DIR other than KEEP are removed; with MERGE
 * their changes are merged into KEEP first (which is enabled): a failed
 * attempt's bitmap holds changes the next incremental must copy.  An
 * inconsistent bitmap (QEMU stopped uncleanly) can only be removed:
 * nothing merges into or out of it. */
static int settle_bitmaps(struct backup_run *r, struct backup_disk *k, const char *keep, bool merge)
{
    int e = refresh_bitmaps(r, k);
    if (e < 0)
        return e;
    char *mine = backup_fmt("%s-%s-", backup_prefix(r), k->name);
    if (!mine)
        return zerr(ENOMEM, "out of memory");
    const char *node = QD(k)->node;
    json_t *actions = json_array(), *others = json_array();
    json_t *kb = bitmap_info(QD(k)->bitmaps, keep);
    bool keep_usable = kb && !json_is_true(json_object_get(kb, "inconsistent"));
    size_t i;
    json_t *b;
    json_array_foreach(QD(k)->bitmaps, i, b)
    {
        const char *name = json_string_value(json_object_get(b, "name"));
        if (!backup_has_prefix(name, mine) || (keep && !strcmp(name, keep)))
            continue;
        if (!json_is_true(json_object_get(b, "inconsistent")))
            json_array_append_new(others, json_string(name));
        json_array_append_new(actions,
                              json_pack("{s:s, s:{s:s, s:s}}", "type", "block-dirty-bitmap-remove",
                                        "data", "node", node, "name", name));
    }
    free(mine);
    if (keep_usable) {
        json_t *pre = json_array();
        if (merge && json_array_size(others))
            json_array_append_new(pre, json_pack("{s:s, s:{s:s, s:s, s:O}}", "type",
                                                 "block-dirty-bitmap-merge", "data", "node", node,
                                                 "target", keep, "bitmaps", others));
        if (!json_is_true(json_object_get(kb, "recording")))
            json_array_append_new(pre, json_pack("{s:s, s:{s:s, s:s}}", "type",
                                                 "block-dirty-bitmap-enable", "data", "node", node,
                                                 "name", keep));
        json_array_extend(pre, actions);
        json_decref(actions);
        actions = pre;
    }
    json_decref(others);
    if (json_array_size(actions) == 0) {
        json_decref(actions);
        return 0;
    }
    return qmp_execute(Q(r)->q, "transaction", json_pack("{s:o}", "actions", actions), NULL);
}

/* Cancel the backup jobs, delete the exports and fleecing nodes of this
 * DIR that a failed attempt left behind (or this run made). */
static int clean_qemu(struct backup_run *r)
{
    struct qmp *q = Q(r)->q;
    const char *p = backup_prefix(r);
    json_t *list;
    int e = qmp_execute(q, "query-block-jobs", NULL, &list);
    size_t i;
    json_t *it;
    json_array_foreach(e == 0 ? list : NULL, i, it)
    {
        const char *id = json_string_value(json_object_get(it, "device"));
        if (!backup_has_prefix(id, p))
            continue;
        if ((e = qmp_execute(q, "block-job-cancel",
                             json_pack("{s:s, s:b}", "device", id, "force", 1), NULL)) == 0)
            e = qmp_wait_event(q, "BLOCK_JOB_CANCELLED", "device", id, TEARDOWN_TIMEOUT_MS, NULL);
        if (e < 0)
            break;
    }
    json_decref(list);
    if (e < 0)
        return e;

    if ((e = qmp_execute(q, "query-block-exports", NULL, &list)) < 0)
        return e;
    bool others = false;
    json_array_foreach(list, i, it)
    {
        const char *id = json_string_value(json_object_get(it, "id"));
        if (!backup_has_prefix(id, p)) {
            others = true;
            continue;
        }
        if ((e = qmp_execute(q, "block-export-del",
                             json_pack("{s:s, s:s}", "id", id, "mode", "hard"), NULL)) == 0)
            e = qmp_wait_event(q, "BLOCK_EXPORT_DELETED", "id", id, TEARDOWN_TIMEOUT_MS, NULL);
        if (e < 0)
            break;
    }
    json_decref(list);
    if (e < 0)
        return e;
    /* A server with no exports left serves nothing: stopping it lets this
     * run start its own (it fails when none runs). */
    if (!others && !Q(r)->nbd_started)
        qmp_execute(q, "nbd-server-stop", NULL, NULL);

    /* Fleecing nodes: the format node first, then its file node. */
    char *fl = backup_fmt("%s-fl-", p), *flf = backup_fmt("%s-flf-", p);
    if (!fl || !flf)
        e = zerr(ENOMEM, "out of memory");
    for (int pass = 0; pass < 2 && e == 0; pass++) {
        if ((e = qmp_execute(q, "query-named-block-nodes", json_pack("{s:b}", "flat", 1), &list)) <
            0)
            break;
        json_array_foreach(list, i, it)
        {
            const char *nn = json_string_value(json_object_get(it, "node-name"));
            if (backup_has_prefix(nn, pass == 0 ? fl : flf) &&
                (e = qmp_execute(q, "blockdev-del", json_pack("{s:s}", "node-name", nn), NULL)) < 0)
                break;
        }
        json_decref(list);
    }
    free(fl);
    free(flf);
    return e;
}

/* ---- The driver ------------------------------------------------------------- */

static int q_open(struct backup_run *r)
{
    int e = qmp_connect(r->o->qmp, &Q(r)->q);
    return e < 0 ? e : clean_qemu(r);
}

/* "/machine/peripheral/vda/virtio-backend" -> "vda" */
static char *qdev_id(const char *qdev)
{
    const char *pre = "/machine/peripheral/";
    if (!backup_has_prefix(qdev, pre))
        return NULL;
    const char *id = qdev + strlen(pre);
    size_t n = strcspn(id, "/");
    return n ? strndup(id, n) : NULL;
}

/* Add the disk NAME, the node NODE; what a failed attempt left of its
 * bitmaps is merged into the one the manifest names. */
static int add_disk(struct backup_run *r, const char *name, const char *node, bool named)
{
    json_t *n;
    int e = find_node(r, node, &n);
    if (e < 0)
        return e;
    if (!n)
        return zerr(ENOENT, "QMP '%s': no block node '%s'", r->o->qmp, node);
    const char *drv = json_string_value(json_object_get(n, "drv"));
    json_int_t size =
        json_integer_value(json_object_get(json_object_get(n, "image"), "virtual-size"));
    if ((!drv || strcmp(drv, "qcow2")) && !named) {
        backup_say(r, "%s: skipped: %s, and backups need qcow2 (it keeps the bitmaps)", name,
                   drv ? drv : "no format");
        json_decref(n);
        return 0;
    }
    if (!drv || strcmp(drv, "qcow2")) {
        e = zerr(ENOTSUP,
                 "QMP '%s': node '%s' is %s: backups need a qcow2 node, which keeps the "
                 "dirty bitmaps",
                 r->o->qmp, node, drv ? drv : "of no format");
        json_decref(n);
        return e;
    }
    json_decref(n);
    struct backup_disk *k;
    if ((e = backup_add_disk(r, name, (uint64_t)size, &k)) < 0)
        return e;
    struct qdisk *qd = calloc(1, sizeof(*qd));
    k->priv = qd;
    const char *p = backup_prefix(r);
    if (!qd || !(qd->node = strdup(node)) || !(qd->fleece = backup_fmt("%s-fl-%s", p, name)) ||
        !(qd->fleece_file = backup_fmt("%s-flf-%s", p, name)) ||
        !(qd->job = backup_fmt("%s-%s", p, name)) ||
        !(qd->scratch = backup_fmt("%s/.scratch-%s.qcow2", backup_dir_path(r), name)) ||
        !(k->new_track = backup_fmt("%s-%s-%" PRIu64, p, name, r->next_point)))
        return zerr(ENOMEM, "out of memory");
    return settle_bitmaps(r, k, backup_track(r, name), true);
}

/* The disks: the nodes named, or every writable disk of the VM. */
static int q_find_disks(struct backup_run *r)
{
    const struct backup_options *o = r->o;
    int e = 0;
    for (size_t i = 0; i < o->n_disks && e == 0; i++)
        e = add_disk(r, o->disks[i], o->disks[i], true);
    if (o->n_disks || e < 0)
        return e;
    json_t *blocks;
    if ((e = qmp_execute(Q(r)->q, "query-block", NULL, &blocks)) < 0)
        return e;
    size_t i;
    json_t *b;
    json_array_foreach(blocks, i, b)
    {
        json_t *ins = json_object_get(b, "inserted");
        const char *node = json_string_value(json_object_get(ins, "node-name"));
        if (!ins || !node || json_is_true(json_object_get(ins, "ro")))
            continue;
        const char *dev = json_string_value(json_object_get(b, "device"));
        char *id =
            dev && *dev ? strdup(dev) : qdev_id(json_string_value(json_object_get(b, "qdev")));
        e = add_disk(r, id ? id : node, node, false);
        free(id);
        if (e < 0)
            break;
    }
    json_decref(blocks);
    if (e == 0 && r->n == 0)
        e = zerr(ENOENT, "QMP '%s': the VM has no writable disk", o->qmp);
    return e;
}

static const char *q_why_not_inc(struct backup_run *r, struct backup_disk *k)
{
    (void)r;
    json_t *bi = bitmap_info(QD(k)->bitmaps, backup_track(r, k->name));
    if (!bi)
        return "the dirty bitmap of the last point is gone";
    if (json_is_true(json_object_get(bi, "inconsistent")))
        return "the dirty bitmap is inconsistent (QEMU stopped uncleanly)";
    if (!json_is_true(json_object_get(bi, "recording")))
        return "the dirty bitmap is not recording";
    if (json_is_true(json_object_get(bi, "busy")))
        return "the dirty bitmap is in use";
    return NULL;
}

/* An empty qcow2 image for the fleecing node (its backing file is given
 * when the node is added). */
static int make_scratch(const struct backup_disk *k)
{
    unlink(QD(k)->scratch);
    zcow_image *img;
    struct zcow_create_options c;
    create_options_defaults(&c);
    c.virtual_size = k->size;
    c.cache_mode = ZCOW_CACHE_WRITEBACK;
    int e = zcow_create(QD(k)->scratch, &c, &img);
    return e < 0 ? e : zcow_close(img);
}

static int add_fleece(struct backup_run *r, struct backup_disk *k)
{
    struct qdisk *qd = QD(k);
    int e = make_scratch(k);
    if (e < 0)
        return e;
    return qmp_execute(Q(r)->q, "blockdev-add",
                       json_pack("{s:s, s:s, s:{s:s, s:s, s:s}, s:s}", "driver", "qcow2",
                                 "node-name", qd->fleece, "file", "driver", "file", "node-name",
                                 qd->fleece_file, "filename", qd->scratch, "backing", qd->node),
                       NULL);
}

static int start_nbd(struct backup_run *r)
{
    struct qrun *qr = Q(r);
    char tmpl[] = "/tmp/zcow-nbd-XXXXXX";
    if (!mkdtemp(tmpl))
        return zerr_sys(errno, "cannot make a directory for the NBD socket");
    if (!(qr->nbd_dir = strdup(tmpl)) || !(qr->nbd_sock = backup_fmt("%s/nbd.sock", tmpl)))
        return zerr(ENOMEM, "out of memory");
    int e = qmp_execute(
        qr->q, "nbd-server-start",
        json_pack("{s:{s:s, s:{s:s}}}", "addr", "type", "unix", "data", "path", qr->nbd_sock),
        NULL);
    qr->nbd_started = e == 0;
    return e;
}

/* One transaction: every disk frozen at the same instant. */
static int freeze(struct backup_run *r)
{
    json_t *actions = json_array();
    for (size_t i = 0; i < r->n; i++) {
        struct backup_disk *k = &r->disks[i];
        const char *node = QD(k)->node;
        json_array_append_new(actions, json_pack("{s:s, s:{s:s, s:s, s:b}}", "type",
                                                 "block-dirty-bitmap-add", "data", "node", node,
                                                 "name", k->new_track, "persistent", 1));
        if (k->inc)
            json_array_append_new(actions, json_pack("{s:s, s:{s:s, s:s}}", "type",
                                                     "block-dirty-bitmap-disable", "data", "node",
                                                     node, "name", k->track));
        json_array_append_new(actions,
                              json_pack("{s:s, s:{s:s, s:s, s:s, s:s}}", "type", "blockdev-backup",
                                        "data", "device", node, "target", QD(k)->fleece, "sync",
                                        "none", "job-id", QD(k)->job));
    }
    return qmp_execute(Q(r)->q, "transaction", json_pack("{s:o}", "actions", actions), NULL);
}

static int export_disk(struct backup_run *r, struct backup_disk *k)
{
    json_t *args = json_pack("{s:s, s:s, s:s, s:s, s:b}", "type", "nbd", "id", QD(k)->job,
                             "node-name", QD(k)->fleece, "name", k->name, "writable", 0);
    if (k->inc)
        json_object_set_new(args, "bitmaps", json_pack("[s]", k->track));
    int e = qmp_execute(Q(r)->q, "block-export-add", args, NULL);
    if (e == 0 && (!(k->uri = backup_fmt("nbd+unix:///%s?socket=%s", k->name, Q(r)->nbd_sock)) ||
                   (k->inc && !(k->export_bitmap = strdup(k->track)))))
        e = zerr(ENOMEM, "out of memory");
    return e;
}

static int q_start(struct backup_run *r)
{
    int e = 0;
    for (size_t i = 0; i < r->n && e == 0; i++)
        e = add_fleece(r, &r->disks[i]);
    if (e == 0)
        e = start_nbd(r);
    if (e == 0)
        e = freeze(r);
    for (size_t i = 0; i < r->n && e == 0; i++)
        e = export_disk(r, &r->disks[i]);
    return e;
}

static int q_finish(struct backup_run *r, bool committed)
{
    struct qrun *qr = Q(r);
    int first = clean_qemu(r);
    if (qr->nbd_started) {
        int e = qmp_execute(qr->q, "nbd-server-stop", NULL, NULL);
        if (first == 0)
            first = e;
    }
    for (size_t i = 0; i < r->n; i++)
        if (QD(&r->disks[i]) && QD(&r->disks[i])->scratch)
            unlink(QD(&r->disks[i])->scratch);
    if (qr->nbd_sock)
        unlink(qr->nbd_sock);
    if (qr->nbd_dir)
        rmdir(qr->nbd_dir);
    /* Committed: the points hold the old bitmaps' changes; the new ones
     * lead from them.  Else the new bitmaps' changes go back into the old
     * ones, which record on. */
    for (size_t i = 0; i < r->n; i++) {
        struct backup_disk *k = &r->disks[i];
        int e =
            settle_bitmaps(r, k, committed ? k->new_track : backup_track(r, k->name), !committed);
        if (first == 0)
            first = e;
    }
    return first;
}

static void q_close(struct backup_run *r)
{
    struct qrun *qr = Q(r);
    for (size_t i = 0; i < r->n; i++) {
        struct qdisk *qd = QD(&r->disks[i]);
        if (!qd)
            continue;
        free(qd->node);
        json_decref(qd->bitmaps);
        free(qd->fleece);
        free(qd->fleece_file);
        free(qd->scratch);
        free(qd->job);
        free(qd);
    }
    free(qr->nbd_dir);
    free(qr->nbd_sock);
    qmp_close(qr->q);
}

const struct backup_driver backup_driver_qmp = {
    .name = "qmp",
    .priv_size = sizeof(struct qrun),
    .open = q_open,
    .find_disks = q_find_disks,
    .why_not_inc = q_why_not_inc,
    .start = q_start,
    .finish = q_finish,
    .close = q_close,
};
