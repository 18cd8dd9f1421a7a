/* convert.c - zcow_convert(): check the options, open the source and the
 * destination, and run the copy engine between them (engine.h).
 *
 * Data flows one way: source (source.h) -> engine -> destination (dest.h:
 * a compressed qcow2 image through the writer, a raw file or a block
 * device).  This file knows which of each the options name, nothing of how
 * they are read or written. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "convert.h"
#include "dest.h"
#include "digest.h"
#include "engine.h"
#include "error.h"
#include "image.h"
#include "options.h"
#include "reader.h"
#include "source.h"
#include "zcow.h"

static bool is_tls_uri(const char *name)
{
    return !strncmp(name, "nbds://", 7) || !strncmp(name, "nbds+unix://", 12);
}

/* A copy's digest is the one TAP expects; else the copy fails. */
static int check_digest(const struct dest *dst, const struct convert_tap *tap)
{
    char hex[DIGEST_HEX_SIZE];
    digest_final(tap->digest, hex);
    if (!tap->expect || !strcmp(hex, tap->expect))
        return 0;
    return zerr(EILSEQ,
                "'%s': the digest of what was restored, %s:%s, is not the one recorded for %s, "
                "%s:%s: the backup is damaged",
                dst->name, DIGEST_NAME, hex, tap->what ? tap->what : "the source", DIGEST_NAME,
                tap->expect);
}

/* Copy SRC to DST (opened, of SRC's size), feeding TAP; DST is committed
 * when all went well, and closed. */
static int run_engine(const struct zcow_convert_options *o, struct source *src, struct dest *dst,
                      const struct convert_tap *tap, struct zcow_convert_stats *st)
{
    uint64_t size = dst->size;
    struct engine_config cfg;
    engine_configure(&cfg, src, dst, o->threads);
    cfg.progress = o->progress;
    cfg.progress_opaque = o->progress_opaque;
    cfg.digest = tap ? tap->digest : NULL;
    int r = 0;
    if (tap && digest_size(tap->digest) != src->size)
        r = zerr(EINVAL, "'%s': a digest of %llu bytes for a source of %llu", src->name,
                 (unsigned long long)digest_size(tap->digest), (unsigned long long)src->size);
    struct engine_stats es = { 0 };
    if (r == 0)
        r = engine_copy(src, dst, &cfg, &es);
    st->clusters_copied = es.clusters_copied;
    if (r == 0 && tap)
        r = check_digest(dst, tap);
    if (r == 0)
        r = dst->ops->commit(dst, st);
    if (r < 0 && dst->in_place) {
        /* Nothing to remove or rename back: the user must know. */
        char cause[1024];
        snprintf(cause, sizeof(cause), "%s", zcow_get_error());
        r = zerr(-r, "%s ('%s' is left partly written)", cause, o->dst);
    }
    dest_close(dst);
    if (r == 0 && o->progress)
        o->progress(o->progress_opaque, size, size);
    return r;
}

/* Copy SRC to O->dst as DST_FORMAT. */
static int copy(const struct zcow_convert_options *o, struct source *src, const char *dst_format,
                const struct convert_tap *tap, struct zcow_convert_stats *st)
{
    if (!strcmp(dst_format, "qcow2") && ((src->size + 511) & ~(uint64_t)511) == 0)
        return zerr(EINVAL, "'%s': source is empty", src->name);
    struct dest *dst;
    int r = dest_open(o, dst_format, src->size, &dst);
    return r < 0 ? r : run_engine(o, src, dst, tap, st);
}

/* The backing file and bitmap options: consistent, and the backing file
 * opens (as qemu-img checks), relative to the destination's directory.
 * A missing backing format is probed and set in O. */
static int check_backing(struct zcow_convert_options *o, const char *dst_format)
{
    const char *bf = o->create.backing_file;
    if (o->bitmap) {
        if (!source_is_nbd(o->src))
            return zerr(EINVAL, "'%s': a dirty bitmap needs an NBD source (nbd://...)", o->src);
        if (!bf)
            return zerr(EINVAL, "a dirty bitmap needs a backing file (-B PREVIOUS): the "
                                "clean clusters are read from it");
    }
    if (!bf) {
        if (o->create.backing_format)
            return zerr(EINVAL, "a backing format needs a backing file (-B)");
        return 0;
    }
    if (strcmp(dst_format, "qcow2"))
        return zerr(EINVAL, "a %s output cannot have a backing file", dst_format);
    if (!*bf)
        return zerr(EINVAL, "empty backing file name");
    const char *fmt = o->create.backing_format;
    if (fmt && strcmp(fmt, "qcow2") && strcmp(fmt, "raw"))
        return zerr(EINVAL, "unknown backing format '%s' (qcow2 or raw)", fmt);
    const char *slash = strrchr(o->dst, '/');
    char *path;
    if (bf[0] == '/' || !slash) {
        path = strdup(bf);
    } else {
        size_t dir = (size_t)(slash - o->dst) + 1;
        path = malloc(dir + strlen(bf) + 1);
        if (path) {
            memcpy(path, o->dst, dir);
            strcpy(path + dir, bf);
        }
    }
    if (!path)
        return zerr(ENOMEM, "out of memory");
    /* The new image replaces DST: it cannot be its own backing file. */
    struct stat a, b;
    if (stat(path, &a) == 0 && stat(o->dst, &b) == 0 && a.st_dev == b.st_dev &&
        a.st_ino == b.st_ino) {
        int e = zerr(EINVAL, "backing file '%s' is the destination itself", bf);
        free(path);
        return e;
    }
    /* O_DIRECT: checking the backing file leaves none of it in the page
     * cache (an incremental backup leaves no pages of the chain). */
    zcow_image *img;
    int r = zcow_open(path, fmt, 1, &img);
    if (r < 0) {
        char cause[400];
        snprintf(cause, sizeof(cause), "%s", zcow_get_error());
        if (strcmp(path, bf))
            r = zerr(-r, "cannot open backing file '%s' (as '%s'): %s", bf, path, cause);
        else
            r = zerr(-r, "cannot open backing file '%s': %s", bf, cause);
        free(path);
        return r;
    }
    free(path);
    if (!fmt) /* probed by the open; no need to walk its tables */
        o->create.backing_format = reader_is_qcow2(img->r) ? "qcow2" : "raw";
    zcow_close(img);
    return r < 0 ? r : 0;
}

/* Open O->src as the options say: an NBD source with a dirty bitmap or TLS
 * settings (TLS, may be NULL) through the NBD client, read as raw. */
static int open_source(const struct zcow_convert_options *o, const struct zcow_nbd_tls *tls,
                       struct source **src)
{
    bool nbd = source_is_nbd(o->src);
    if (nbd && (o->bitmap || tls) && o->src_format && strcmp(o->src_format, "raw"))
        return zerr(EINVAL, "'%s': an NBD export is read as raw, not '%s'", o->src, o->src_format);
    if (nbd && (o->bitmap || tls))
        return source_nbd_open(o->src, o->bitmap, tls, src);
    return source_open(o->src, o->src_format, o->src_cache == ZCOW_CACHE_NONE, src);
}

int zcow_convert(const struct zcow_convert_options *o, struct zcow_convert_stats *st)
{
    return convert_tapped(o, NULL, st);
}

int convert_tapped(const struct zcow_convert_options *o, const struct convert_tap *tap,
                   struct zcow_convert_stats *st)
{
    struct zcow_convert_stats dummy;
    if (!st)
        st = &dummy;
    memset(st, 0, sizeof(*st));
    if (!o || !o->src || !o->dst)
        return zerr(EINVAL, "zcow_convert: missing source or destination");
    const char *dst_format = o->dst_format ? o->dst_format : "qcow2";
    if (strcmp(dst_format, "qcow2") && strcmp(dst_format, "raw"))
        return zerr(EINVAL, "unknown output format '%s' (qcow2 or raw)", dst_format);
    struct stat dst_st;
    if (stat(o->dst, &dst_st) == 0 && S_ISDIR(dst_st.st_mode))
        return zerr(EISDIR, "cannot write '%s': Is a directory", o->dst);
    struct zcow_convert_options oc = *o;
    int r = check_backing(&oc, dst_format);
    if (r < 0)
        return r;
    o = &oc;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct source *src;
    /* TLS settings are for the NBD source or destination, or the one of
     * them with TLS when both are NBD; a dirty bitmap for an NBD source
     * (read as raw). */
    const struct zcow_nbd_tls given = o->nbd_tls, *tls = &given;
    bool has_tls = tls->certificates || tls->psk_file || tls->username;
    bool src_nbd = source_is_nbd(o->src), dst_nbd = source_is_nbd(o->dst);
    if (has_tls && !src_nbd && !dst_nbd)
        return zerr(EINVAL,
                    "'%s': TLS settings need an NBD source or destination (nbds://, "
                    "nbds+unix://)",
                    o->src);
    bool src_tls = src_nbd && (!dst_nbd || is_tls_uri(o->src));
    if (!dst_nbd || (src_nbd && !is_tls_uri(o->dst)))
        oc.nbd_tls = (struct zcow_nbd_tls){ NULL, NULL, NULL };
    if ((r = open_source(o, src_tls ? tls : NULL, &src)) < 0)
        return r;
    st->bytes_in = src->size;
    r = copy(o, src, dst_format, tap, st);
    source_close(src);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    st->seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    struct stat sb;
    if (r == 0 && stat(o->dst, &sb) == 0 && S_ISREG(sb.st_mode))
        st->bytes_out = (uint64_t)sb.st_size;
    return r;
}

/* ---- digests ---------------------------------------------------------------- */

int convert_digest(const struct zcow_convert_options *o, struct digest **dg)
{
    if (o->bitmap)
        return zerr(EINVAL, "a digest covers the whole disk: no dirty bitmap");
    const struct zcow_nbd_tls *tls = &o->nbd_tls;
    bool nbd = source_is_nbd(o->src);
    if (!nbd && (tls->certificates || tls->psk_file || tls->username))
        return zerr(EINVAL, "'%s': TLS settings need an NBD source (nbds://, nbds+unix://)",
                    o->src);
    struct source *src;
    int r = open_source(o, nbd ? tls : NULL, &src);
    if (r < 0)
        return r;
    bool made = !*dg;
    struct dest *dst;
    if ((!made || (r = digest_new(src->size, dg)) == 0) &&
        (r = dest_null_open(o->src, src->size, &dst)) == 0) {
        struct convert_tap tap = { .digest = *dg };
        struct zcow_convert_stats st;
        r = run_engine(o, src, dst, &tap, &st);
    }
    source_close(src);
    if (r < 0 && made) {
        digest_free(*dg);
        *dg = NULL;
    }
    return r;
}

int zcow_digest(const struct zcow_convert_options *o, char *hex, size_t size)
{
    if (!o || !o->src)
        return zerr(EINVAL, "zcow_digest: missing source");
    if (!hex || size < DIGEST_HEX_SIZE)
        return zerr(ERANGE, "zcow_digest: room for %d bytes needed", DIGEST_HEX_SIZE);
    struct digest *dg = NULL;
    int r = convert_digest(o, &dg);
    if (r == 0)
        digest_final(dg, hex);
    digest_free(dg);
    return r;
}
