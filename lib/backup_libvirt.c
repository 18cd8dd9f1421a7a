/* backup_libvirt.c - the libvirt driver of backups (backup.h): pull-mode
 * backups of a domain through libvirt's API, as libvirt documents them
 * (formatbackup.html, formatcheckpoint.html).
 *
 * Tracking is libvirt's checkpoints, one per run for all its disks, named
 * P-N (P: the DIR's prefix, N: the run's point number); each holds a
 * dirty bitmap per disk.  Deleting a checkpoint merges its bitmaps into
 * its parent's, so no change is ever lost by deleting one.  The XML of
 * every checkpoint the manifest names is kept in DIR/checkpoints/, so that
 * a transient or moved domain's checkpoint can be redefined.
 *
 *   open    abort a backup job of this DIR's (its socket is in
 *           /var/tmp/zcow-P-*), delete the checkpoints of failed attempts
 *   start   virDomainBackupBegin: pull mode, a Unix socket in a private
 *           directory the domain's QEMU may write, a scratch image per
 *           disk, incremental per disk, and the new checkpoint P-N; the
 *           export names and bitmaps are read back from the job's XML
 *   finish  virDomainAbortJob (a pull job has no end of its own); failed:
 *           delete the new checkpoint (its bitmaps merge into the last good
 *           one); committed: delete the checkpoints no point needs */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backup.h"
#include "error.h"

struct lrun {
    virConnectPtr conn;
    virDomainPtr dom;
    xmlDocPtr xml;    /* the domain's live XML */
    char *sock_dir;   /* /var/tmp/zcow-P-XXXXXX */
    char *checkpoint; /* this run's new checkpoint, once made */
    bool job;
};

static struct lrun *L(struct backup_run *r) { return r->priv; }

/* libvirt's last error, for messages. */
static const char *verr(void)
{
    const char *m = virGetLastErrorMessage();
    return m && *m ? m : "unknown libvirt error";
}

static int fail(struct backup_run *r, int err, const char *what)
{
    return zerr(err, "libvirt domain '%s': %s: %s", r->o->domain, what, verr());
}

/* The libvirt messages go to zcow's error, not to stderr. */
static void quiet_errors(void *opaque, virErrorPtr e)
{
    (void)opaque;
    (void)e;
}

/* ---- XML ------------------------------------------------------------------ */

/* The string value of XPath EXPR (relative to NODE, or the document),
 * malloc'ed, or NULL. */
static char *xpath_string(xmlDocPtr doc, xmlNodePtr node, const char *expr)
{
    xmlXPathContextPtr ctx = xmlXPathNewContext(doc);
    if (!ctx)
        return NULL;
    if (node)
        ctx->node = node;
    char *out = NULL;
    xmlXPathObjectPtr o = xmlXPathEvalExpression((const xmlChar *)expr, ctx);
    if (o) {
        xmlChar *s = xmlXPathCastToString(o);
        if (s && *s)
            out = strdup((const char *)s);
        xmlFree(s);
        xmlXPathFreeObject(o);
    }
    xmlXPathFreeContext(ctx);
    return out;
}

static xmlXPathObjectPtr xpath_nodes(xmlDocPtr doc, const char *expr)
{
    xmlXPathContextPtr ctx = xmlXPathNewContext(doc);
    if (!ctx)
        return NULL;
    xmlXPathObjectPtr o = xmlXPathEvalExpression((const xmlChar *)expr, ctx);
    xmlXPathFreeContext(ctx);
    return o;
}

static xmlDocPtr parse(const char *text)
{
    return text ? xmlReadMemory(text, (int)strlen(text), "libvirt.xml", NULL,
                                XML_PARSE_NONET | XML_PARSE_NOBLANKS)
                : NULL;
}

static char *dump(xmlDocPtr doc)
{
    xmlChar *buf = NULL;
    int n = 0;
    xmlDocDumpMemory(doc, &buf, &n);
    char *s = buf ? strndup((const char *)buf, (size_t)n) : NULL;
    xmlFree(buf);
    return s;
}

/* ---- Checkpoints ------------------------------------------------------------ */

static char *checkpoint_file(struct backup_run *r, const char *name)
{
    return backup_fmt("%s/checkpoints/%s.xml", backup_dir_path(r), name);
}

/* Keep the checkpoint's XML in DIR, for a later redefinition. */
static int save_checkpoint(struct backup_run *r, const char *name)
{
    virDomainCheckpointPtr cp = virDomainCheckpointLookupByName(L(r)->dom, name, 0);
    char *xml = cp ? virDomainCheckpointGetXMLDesc(cp, 0) : NULL;
    if (cp)
        virDomainCheckpointFree(cp);
    if (!xml)
        return fail(r, EIO, "cannot read checkpoint");
    char *dir = backup_fmt("%s/checkpoints", backup_dir_path(r));
    char *path = checkpoint_file(r, name);
    char *tmp = path ? backup_fmt("%s.tmp", path) : NULL;
    int e = 0;
    FILE *f = NULL;
    if (!dir || !path || !tmp)
        e = zerr(ENOMEM, "out of memory");
    else if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        e = zerr_sys(errno, "cannot create '%s'", dir);
    else if (!(f = fopen(tmp, "w")) || fputs(xml, f) < 0 || fflush(f) != 0 ||
             fsync(fileno(f)) != 0 || fclose(f) != 0 || (f = NULL, rename(tmp, path) < 0))
        e = zerr_sys(errno, "cannot write '%s'", path);
    if (f)
        fclose(f);
    if (e < 0 && tmp)
        unlink(tmp);
    free(xml);
    free(dir);
    free(path);
    free(tmp);
    return e;
}

/* The checkpoint NAME, redefined from DIR when the domain forgot it (a
 * transient domain started again keeps its bitmaps, not its checkpoints).
 * NULL when neither works. */
static virDomainCheckpointPtr find_checkpoint(struct backup_run *r, const char *name)
{
    virDomainCheckpointPtr cp = virDomainCheckpointLookupByName(L(r)->dom, name, 0);
    if (cp)
        return cp;
    char *path = checkpoint_file(r, name), *xml = NULL;
    FILE *f = path ? fopen(path, "r") : NULL;
    if (f) {
        size_t cap = 0;
        if (getdelim(&xml, &cap, 0, f) < 0) {
            free(xml);
            xml = NULL;
        }
        fclose(f);
    }
    /* Its parent may be gone too (another DIR's, forgotten as well): the
     * checkpoint comes back as a root, which is all an incremental needs;
     * and the domain it names may have another UUID now: libvirt takes
     * the current one when none is given. */
    xmlDocPtr doc = parse(xml);
    free(xml);
    xml = NULL;
    if (doc) {
        xmlXPathObjectPtr parent =
            xpath_nodes(doc, "/domaincheckpoint/parent | /domaincheckpoint/domain");
        for (int i = 0; parent && parent->nodesetval && i < parent->nodesetval->nodeNr; i++) {
            xmlUnlinkNode(parent->nodesetval->nodeTab[i]);
            xmlFreeNode(parent->nodesetval->nodeTab[i]);
            parent->nodesetval->nodeTab[i] = NULL;
        }
        xmlXPathFreeObject(parent);
        xml = dump(doc);
        xmlFreeDoc(doc);
    }
    if (xml)
        cp = virDomainCheckpointCreateXML(L(r)->dom, xml, VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE);
    free(xml);
    free(path);
    return cp;
}

/* Does checkpoint NAME hold a bitmap of DISK? */
static bool checkpoint_covers(virDomainCheckpointPtr cp, const char *disk)
{
    char *xml = virDomainCheckpointGetXMLDesc(cp, VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN);
    xmlDocPtr doc = parse(xml);
    free(xml);
    if (!doc)
        return false;
    char *expr = backup_fmt("string(/domaincheckpoint/disks/disk[@name='%s']/@checkpoint)", disk);
    char *mode = expr ? xpath_string(doc, NULL, expr) : NULL;
    bool yes = mode && !strcmp(mode, "bitmap");
    free(mode);
    free(expr);
    xmlFreeDoc(doc);
    return yes;
}

static bool named(json_t *names, const char *name)
{
    size_t i;
    json_t *n;
    json_array_foreach(names, i, n)
    {
        if (!strcmp(json_string_value(n), name))
            return true;
    }
    return false;
}

/* Delete this DIR's checkpoints that the manifest does not name: a failed
 * attempt's (their bitmaps merge into their parents', so nothing is
 * lost), and after a run those no point leads from any more. */
static int delete_unnamed_checkpoints(struct backup_run *r)
{
    virDomainCheckpointPtr *cps = NULL;
    int n = virDomainListAllCheckpoints(L(r)->dom, &cps, VIR_DOMAIN_CHECKPOINT_LIST_TOPOLOGICAL);
    if (n < 0)
        return fail(r, EIO, "cannot list checkpoints");
    json_t *keep = backup_tracks(r);
    char *prefix = backup_fmt("%s-", backup_prefix(r));
    int e = prefix ? 0 : zerr(ENOMEM, "out of memory");
    /* Children first (the list is parents first): each merges into a
     * parent that is still there. */
    for (int i = n - 1; i >= 0; i--) {
        const char *name = virDomainCheckpointGetName(cps[i]);
        if (e == 0 && backup_has_prefix(name, prefix) && !named(keep, name)) {
            char *path = checkpoint_file(r, name);
            if (virDomainCheckpointDelete(cps[i], 0) < 0)
                e = fail(r, EIO, "cannot delete a checkpoint");
            else if (path)
                unlink(path);
            free(path);
        }
        virDomainCheckpointFree(cps[i]);
    }
    free(cps);
    free(prefix);
    json_decref(keep);
    return e;
}

/* ---- The driver ------------------------------------------------------------- */

/* Remove PATH and the files in it (a socket, scratch images). */
static void remove_dir(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *f;
    while (d && (f = readdir(d))) {
        char *p = f->d_name[0] != '.' ? backup_fmt("%s/%s", path, f->d_name) : NULL;
        if (p)
            unlink(p);
        free(p);
    }
    if (d)
        closedir(d);
    rmdir(path);
}

/* A backup job of this DIR's left by a failed attempt: abort it, and
 * remove the private directories of its socket and scratch images. */
static int abort_stale_job(struct backup_run *r)
{
    char *dir_prefix = backup_fmt("/var/tmp/%s-", backup_prefix(r));
    if (!dir_prefix)
        return zerr(ENOMEM, "out of memory");
    char *xml = virDomainBackupGetXMLDesc(L(r)->dom, 0);
    int e = 0;
    if (xml) {
        xmlDocPtr doc = parse(xml);
        char *sock = doc ? xpath_string(doc, NULL, "string(/domainbackup/server/@socket)") : NULL;
        if (backup_has_prefix(sock, dir_prefix) && virDomainAbortJob(L(r)->dom) < 0)
            e = fail(r, EIO, "cannot abort the backup job of a failed attempt");
        free(sock);
        xmlFreeDoc(doc);
        free(xml);
    }
    DIR *d = opendir("/var/tmp");
    struct dirent *de;
    while (e == 0 && d && (de = readdir(d))) {
        char *path = backup_fmt("/var/tmp/%s", de->d_name);
        if (path && backup_has_prefix(path, dir_prefix))
            remove_dir(path);
        free(path);
    }
    if (d)
        closedir(d);
    free(dir_prefix);
    return e;
}

static int l_open(struct backup_run *r)
{
    struct lrun *lr = L(r);
    virSetErrorFunc(NULL, quiet_errors);
    lr->conn = virConnectOpen(r->o->connect);
    if (!lr->conn)
        return zerr(ECONNREFUSED, "cannot connect to libvirt%s%s%s: %s",
                    r->o->connect ? " at '" : "", r->o->connect ? r->o->connect : "",
                    r->o->connect ? "'" : "", verr());
    lr->dom = virDomainLookupByName(lr->conn, r->o->domain);
    if (!lr->dom)
        return zerr(ENOENT, "libvirt: no domain '%s': %s", r->o->domain, verr());
    if (virDomainIsActive(lr->dom) != 1)
        return zerr(EINVAL, "libvirt domain '%s' is not running", r->o->domain);
    int e = abort_stale_job(r);
    return e < 0 ? e : delete_unnamed_checkpoints(r);
}

static int l_find_disks(struct backup_run *r)
{
    struct lrun *lr = L(r);
    char *text = virDomainGetXMLDesc(lr->dom, 0);
    lr->xml = parse(text);
    free(text);
    if (!lr->xml)
        return fail(r, EIO, "cannot read the domain's XML");
    xmlXPathObjectPtr disks = xpath_nodes(lr->xml, "/domain/devices/disk[@device='disk']");
    int e = 0;
    for (int i = 0; disks && disks->nodesetval && i < disks->nodesetval->nodeNr && e == 0; i++) {
        xmlNodePtr node = disks->nodesetval->nodeTab[i];
        char *target = xpath_string(lr->xml, node, "string(target/@dev)");
        char *type = xpath_string(lr->xml, node, "string(driver/@type)");
        char *ro = xpath_string(lr->xml, node, "name(readonly)");
        bool wanted = !r->o->n_disks && !ro;
        for (size_t j = 0; target && j < r->o->n_disks; j++)
            wanted |= !strcmp(r->o->disks[j], target);
        bool qcow2 = type && !strcmp(type, "qcow2");
        if (target && wanted && !qcow2 && !r->o->n_disks) {
            backup_say(r, "%s: skipped: %s, and backups need qcow2 (it keeps the bitmaps)", target,
                       type ? type : "no format");
        } else if (target && wanted) {
            virDomainBlockInfo info;
            if (!qcow2)
                e = zerr(ENOTSUP,
                         "libvirt domain '%s': disk '%s' is %s: backups need qcow2, "
                         "which keeps the checkpoints' bitmaps",
                         r->o->domain, target, type ? type : "of no format");
            else if (virDomainGetBlockInfo(lr->dom, target, &info, 0) < 0)
                e = fail(r, EIO, "cannot read a disk's size");
            else
                e = backup_add_disk(r, target, info.capacity, NULL);
        }
        free(target);
        free(type);
        free(ro);
    }
    xmlXPathFreeObject(disks);
    for (size_t j = 0; e == 0 && j < r->o->n_disks; j++) {
        bool found = false;
        for (size_t i = 0; i < r->n; i++)
            found |= !strcmp(r->disks[i].name, r->o->disks[j]);
        if (!found)
            e = zerr(ENOENT, "libvirt domain '%s' has no disk '%s'", r->o->domain, r->o->disks[j]);
    }
    if (e == 0 && r->n == 0)
        e = zerr(ENOENT, "libvirt domain '%s' has no writable disk", r->o->domain);
    /* Unique per attempt: a failed attempt's checkpoint that libvirt forgot
     * (a transient domain restarted) leaves its bitmaps in the images, and
     * a new checkpoint must not collide with them. */
    char *cp = backup_fmt("%s-%" PRIu64 "-%lx", backup_prefix(r), r->next_point,
                          (unsigned long)time(NULL));
    for (size_t i = 0; e == 0 && i < r->n; i++)
        if (!cp || !(r->disks[i].new_track = strdup(cp)))
            e = zerr(ENOMEM, "out of memory");
    free(cp);
    return e;
}

static const char *l_why_not_inc(struct backup_run *r, struct backup_disk *k)
{
    const char *name = backup_track(r, k->name);
    virDomainCheckpointPtr cp = name ? find_checkpoint(r, name) : NULL;
    if (!cp)
        return "the checkpoint of the last point is gone";
    bool covers = checkpoint_covers(cp, k->name);
    virDomainCheckpointFree(cp);
    return covers ? NULL : "the checkpoint of the last point has no bitmap of this disk";
}

/* A directory for the socket and the scratch images that only root and
 * the domain's QEMU (its DAC label, +UID:+GID) may enter. */
static int make_sock_dir(struct backup_run *r)
{
    struct lrun *lr = L(r);
    char *tmpl = backup_fmt("/var/tmp/%s-XXXXXX", backup_prefix(r));
    if (!tmpl)
        return zerr(ENOMEM, "out of memory");
    if (!mkdtemp(tmpl)) {
        int e = zerr_sys(errno, "cannot create '%s'", tmpl);
        free(tmpl);
        return e;
    }
    lr->sock_dir = tmpl;
    char *label = xpath_string(lr->xml, NULL,
                               "string(/domain/seclabel[@model='dac'][@type='dynamic']/label)");
    unsigned uid, gid;
    int e = 0;
    if (label && sscanf(label, "+%u:+%u", &uid, &gid) == 2 && chown(tmpl, uid, gid) < 0)
        e = zerr_sys(errno, "cannot give '%s' to the domain's QEMU", tmpl);
    free(label);
    return e;
}

/* The backup and checkpoint XML of this run. */
static int backup_xml(struct backup_run *r, char **backup, char **checkpoint)
{
    xmlDocPtr b = xmlNewDoc((const xmlChar *)"1.0"), c = xmlNewDoc((const xmlChar *)"1.0");
    xmlNodePtr broot = xmlNewNode(NULL, (const xmlChar *)"domainbackup");
    xmlNodePtr croot = xmlNewNode(NULL, (const xmlChar *)"domaincheckpoint");
    xmlDocSetRootElement(b, broot);
    xmlDocSetRootElement(c, croot);
    xmlNewProp(broot, (const xmlChar *)"mode", (const xmlChar *)"pull");
    xmlNodePtr server = xmlNewChild(broot, NULL, (const xmlChar *)"server", NULL);
    char *sock = backup_fmt("%s/nbd.sock", L(r)->sock_dir);
    xmlNewProp(server, (const xmlChar *)"transport", (const xmlChar *)"unix");
    xmlNewProp(server, (const xmlChar *)"socket", (const xmlChar *)sock);
    xmlNewTextChild(croot, NULL, (const xmlChar *)"name", (const xmlChar *)r->disks[0].new_track);
    xmlNodePtr bdisks = xmlNewChild(broot, NULL, (const xmlChar *)"disks", NULL);
    xmlNodePtr cdisks = xmlNewChild(croot, NULL, (const xmlChar *)"disks", NULL);
    /* Every disk of the domain is named: those not backed up with
     * backup='no' and checkpoint='no'. */
    xmlXPathObjectPtr all = xpath_nodes(L(r)->xml, "/domain/devices/disk/target/@dev");
    for (int i = 0; all && all->nodesetval && i < all->nodesetval->nodeNr; i++) {
        xmlChar *dev = xmlNodeGetContent(all->nodesetval->nodeTab[i]);
        struct backup_disk *k = NULL;
        for (size_t j = 0; j < r->n; j++)
            if (!strcmp(r->disks[j].name, (const char *)dev))
                k = &r->disks[j];
        xmlNodePtr bd = xmlNewChild(bdisks, NULL, (const xmlChar *)"disk", NULL);
        xmlNodePtr cd = xmlNewChild(cdisks, NULL, (const xmlChar *)"disk", NULL);
        xmlNewProp(bd, (const xmlChar *)"name", dev);
        xmlNewProp(cd, (const xmlChar *)"name", dev);
        xmlNewProp(bd, (const xmlChar *)"backup", (const xmlChar *)(k ? "yes" : "no"));
        xmlNewProp(cd, (const xmlChar *)"checkpoint", (const xmlChar *)(k ? "bitmap" : "no"));
        if (k) {
            xmlNewProp(bd, (const xmlChar *)"type", (const xmlChar *)"file");
            xmlNewProp(bd, (const xmlChar *)"backupmode",
                       (const xmlChar *)(k->inc ? "incremental" : "full"));
            if (k->inc)
                xmlNewProp(bd, (const xmlChar *)"incremental", (const xmlChar *)k->track);
            char *scratch = backup_fmt("%s/scratch-%s.qcow2", L(r)->sock_dir, k->name);
            xmlNodePtr s = xmlNewChild(bd, NULL, (const xmlChar *)"scratch", NULL);
            xmlNewProp(s, (const xmlChar *)"file", (const xmlChar *)scratch);
            free(scratch);
        }
        xmlFree(dev);
    }
    xmlXPathFreeObject(all);
    *backup = dump(b);
    *checkpoint = dump(c);
    xmlFreeDoc(b);
    xmlFreeDoc(c);
    free(sock);
    return *backup && *checkpoint ? 0 : zerr(ENOMEM, "out of memory");
}

/* What libvirt chose: each disk's export name and bitmap. */
static int read_exports(struct backup_run *r)
{
    char *text = virDomainBackupGetXMLDesc(L(r)->dom, 0);
    xmlDocPtr doc = parse(text);
    free(text);
    if (!doc)
        return fail(r, EIO, "cannot read the backup job's XML");
    char *sock = xpath_string(doc, NULL, "string(/domainbackup/server/@socket)");
    int e = 0;
    for (size_t i = 0; i < r->n && e == 0; i++) {
        struct backup_disk *k = &r->disks[i];
        char *base = backup_fmt("/domainbackup/disks/disk[@name='%s']", k->name);
        char *ex = base ? backup_fmt("string(%s/@exportname)", base) : NULL;
        char *eb = base ? backup_fmt("string(%s/@exportbitmap)", base) : NULL;
        char *name = ex ? xpath_string(doc, NULL, ex) : NULL;
        if (!name || !sock)
            e = zerr(EPROTO, "libvirt domain '%s': the backup job exports no disk '%s'",
                     r->o->domain, k->name);
        else if (!(k->uri = backup_fmt("nbd+unix:///%s?socket=%s", name, sock)))
            e = zerr(ENOMEM, "out of memory");
        else if (k->inc && !(k->export_bitmap = xpath_string(doc, NULL, eb)))
            e = zerr(EPROTO, "libvirt domain '%s': the backup job exports no bitmap of '%s'",
                     r->o->domain, k->name);
        free(base);
        free(ex);
        free(eb);
        free(name);
    }
    free(sock);
    xmlFreeDoc(doc);
    return e;
}

static int l_start(struct backup_run *r)
{
    struct lrun *lr = L(r);
    char *bxml = NULL, *cxml = NULL;
    int e = make_sock_dir(r);
    if (e == 0)
        e = backup_xml(r, &bxml, &cxml);
    if (e == 0) {
        if (virDomainBackupBegin(lr->dom, bxml, cxml, 0) < 0) {
            e = fail(r, EIO, "cannot start the backup");
        } else {
            lr->job = true;
            lr->checkpoint = strdup(r->disks[0].new_track);
            e = read_exports(r);
        }
    }
    free(bxml);
    free(cxml);
    return e;
}

static int l_finish(struct backup_run *r, bool committed)
{
    struct lrun *lr = L(r);
    int first = 0;
    if (lr->job && virDomainAbortJob(lr->dom) < 0)
        first = fail(r, EIO, "cannot end the backup job");
    if (committed) {
        int e = save_checkpoint(r, lr->checkpoint);
        if (first == 0)
            first = e;
    }
    /* Failed: the new checkpoint is not in the manifest, and goes; its
     * bitmaps merge into the last good one's. */
    int e = delete_unnamed_checkpoints(r);
    if (first == 0)
        first = e;
    if (lr->sock_dir)
        remove_dir(lr->sock_dir);
    return first;
}

static void l_close(struct backup_run *r)
{
    struct lrun *lr = L(r);
    if (lr->xml)
        xmlFreeDoc(lr->xml);
    if (lr->dom)
        virDomainFree(lr->dom);
    if (lr->conn)
        virConnectClose(lr->conn);
    free(lr->sock_dir);
    free(lr->checkpoint);
}

const struct backup_driver backup_driver_libvirt = {
    .name = "libvirt",
    .priv_size = sizeof(struct lrun),
    .open = l_open,
    .find_disks = l_find_disks,
    .why_not_inc = l_why_not_inc,
    .start = l_start,
    .finish = l_finish,
    .close = l_close,
};
