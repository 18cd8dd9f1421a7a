/* test_source_nbd.c - the NBD source's TLS settings that are refused before
 * any connection (tests/interop/nbd-tls.sh connects to qemu-nbd): TLS
 * settings or tls* query parameters with a URI without TLS, a certificates
 * directory without ca-cert.pem, and zcow_convert()'s TLS settings with a
 * source that is not NBD.  Query names and values are percent-decoded
 * (RFC 3986, 2.1) and split at '&' and ';', as libnbd reads them. */
#include <errno.h>
#include <string.h>

#include "error.h"
#include "options.h"
#include "source.h"
#include "unit.h"
#include "zcow.h"

/* source_nbd_open(URI, TLS) must fail with ERR and a message holding WANT,
 * and leave no source. */
static void refused(const char *uri, const struct zcow_nbd_tls *tls, int err, const char *want)
{
    struct source *s = (struct source *)&s;
    zerr_clear();
    int r = source_nbd_open(uri, NULL, tls, &s);
    CHECKF(r == -err, "%s: %d, want %d", uri, r, -err);
    CHECKF(s == NULL, "%s: a source was left", uri);
    CHECKF(strstr(zcow_get_error(), want), "%s: message '%s', want '%s'", uri, zcow_get_error(),
           want);
    if (r == 0)
        source_close(s);
}

int main(void)
{
    unit_init("test_source_nbd");

    /* TLS settings with the schemes without TLS. */
    const struct zcow_nbd_tls certs = { .certificates = "/nonexistent" };
    const struct zcow_nbd_tls psk = { .psk_file = "/nonexistent.psk" };
    const struct zcow_nbd_tls user = { .username = "alice" };
    refused("nbd://127.0.0.1:1/", &certs, EINVAL,
            "'nbd://127.0.0.1:1/': TLS settings need a URI with TLS (nbds:// or nbds+unix://)");
    refused("nbd+unix:///?socket=/nonexistent.sock", &psk, EINVAL, "TLS settings need a URI");
    refused("nbd+unix:///?socket=/nonexistent.sock", &user, EINVAL, "TLS settings need a URI");

    /* tls* parameters of such a URI, which libnbd would ignore and connect
     * in plaintext: refused, the name decoded. */
    refused("nbd+unix:///?socket=/nonexistent.sock&tls=require", NULL, EINVAL,
            "parameter 'tls' needs a URI with TLS");
    refused("nbd://127.0.0.1:1/?tls-certificates=/tmp", NULL, EINVAL,
            "parameter 'tls-certificates' needs a URI with TLS");
    refused("nbd+unix:///?socket=/nonexistent.sock;%74ls-psk-file=/x", NULL, EINVAL,
            "parameter 'tls-psk-file' needs a URI with TLS");
    refused("nbd+unix:///?socket=/nonexistent.sock&&tls-username=bob#frag", NULL, EINVAL,
            "parameter 'tls-username' needs a URI with TLS");

    /* A certificates directory without ca-cert.pem: the URI's (decoded)
     * over the setting's; a PSK file makes certificates unused. */
    refused("nbds://127.0.0.1:1/?tls-certificates=%2Fno%20such", &certs, ENOENT,
            "TLS certificates directory '/no such' has no readable ca-cert.pem: No such file");
    refused("nbds+unix:///?socket=/nonexistent.sock", &certs, ENOENT,
            "TLS certificates directory '/nonexistent' has no readable ca-cert.pem");
    refused("nbds+unix:///?socket=/nonexistent.sock&tls-psk-file=/nonexistent.psk", &certs, ENOENT,
            "cannot connect to 'nbds+unix:///?socket=/nonexistent.sock&tls-psk-file=");

    /* zcow_convert(): TLS settings need an NBD source, read as raw. */
    zcow_convert_opts *o = zcow_convert_opts_new();
    CHECK(o && !zcow_convert_opts_get_tls_certificates(o) &&
          !zcow_convert_opts_get_tls_psk_file(o) && !zcow_convert_opts_get_tls_username(o));
    CHECK(zcow_convert_opts_set_src(o, "/nonexistent.raw") == 0 &&
          zcow_convert_opts_set_dst(o, "/nonexistent-dir/out.qcow2") == 0 &&
          zcow_convert_opts_set_tls_username(o, "alice") == 0);
    int r = zcow_convert(o, NULL);
    CHECKF(r == -EINVAL && strstr(zcow_get_error(), "TLS settings need an NBD source"), "%d: %s", r,
           zcow_get_error());
    CHECK(zcow_convert_opts_set_src(o, "nbds+unix:///?socket=/nonexistent.sock") == 0 &&
          zcow_convert_opts_set_src_format(o, "qcow2") == 0);
    r = zcow_convert(o, NULL);
    CHECKF(r == -EINVAL && strstr(zcow_get_error(), "an NBD export is read as raw, not 'qcow2'"),
           "%d: %s", r, zcow_get_error());
    zcow_convert_opts_free(o);

    return unit_done();
}
