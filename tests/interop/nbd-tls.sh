#!/usr/bin/env bash
# nbd-tls.sh - zcow convert from NBD exports over TLS (nbds://, nbds+unix://).
#
# qemu-nbd serves one image with TLS only: X.509 credentials from a private
# CA made here with openssl (the server checks the client's certificate
# too, QEMU's default), on loopback TCP and on a Unix socket; pre-shared
# keys (PSK) on TCP and on a Unix socket; and without TLS on a Unix socket.
# zcow converts through each with the settings in the URI
# (tls-certificates=, tls-psk-file=, tls-username=, NAME@) and as options
# (--tls-certificates, --tls-psk-file, --tls-username), and the URI's value
# wins over the option's; libnbd's default certificate directory
# (~/.pki/libnbd, as a user other than root) is used when none is given.
# Every image is judged by qemu-img.  zcow convert also writes into
# writable exports over TLS (X.509, PSK), and from a TLS export into one
# without TLS (the settings go to the end with TLS).  Then the failures, each one line
# naming the URI and the cause, a non-zero exit and no image left: a server
# certificate from another CA, no client certificate, a wrong PSK key or
# user, X.509 against PSK, plain NBD against a TLS-only server, TLS
# against a server without it (never a plaintext fallback), TLS settings
# with nbd:// or a file, a certificates directory without ca-cert.pem.
. "$(dirname "$0")/functions.sh"
requires qemu-img qemu-io qemu-nbd openssl
requires_zcow
requires_nbd_support

# ---- credentials -------------------------------------------------------------

# make_ca NAME: a CA in $work/pki/NAME/ca-{cert,key}.pem, with a server
# certificate for localhost and 127.0.0.1 and a client certificate, in the
# file names QEMU and libnbd look for.
make_ca() {
    local d=$work/pki/$1 who
    mkdir -p "$d"
    cat >"$d/ext.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = zcow test CA $1
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
EOF
    openssl req -x509 -new -newkey rsa:2048 -nodes -days 2 -config "$d/ext.cnf" -extensions ca \
        -keyout "$d/ca-key.pem" -out "$d/ca-cert.pem" 2>"$d/log" || return 1
    for who in server client; do
        openssl req -new -newkey rsa:2048 -nodes -subj "/CN=zcow test $who" \
            -keyout "$d/$who-key.pem" -out "$d/$who.csr" 2>>"$d/log" &&
            openssl x509 -req -in "$d/$who.csr" -CA "$d/ca-cert.pem" -CAkey "$d/ca-key.pem" \
                -CAcreateserial -days 2 -extfile "$d/ext.cnf" -extensions "$who" \
                -out "$d/$who-cert.pem" 2>>"$d/log" || return 1
    done
}

# certdir NAME CA FROM [FILE...]: $work/pki/NAME holding CA's ca-cert.pem
# and the FILEs (server-cert.pem, client-key.pem, ...) of CA FROM.
certdir() {
    local d=$work/pki/$1 ca=$2 from=$3 f
    shift 3
    mkdir -p "$d"
    cp "$work/pki/$ca/ca-cert.pem" "$d/"
    for f in "$@"; do cp "$work/pki/$from/$f" "$d/"; done
    echo "$d"
}

make_ca good && make_ca rogue || {
    fail "openssl could not make the test CAs: $(cat "$work"/pki/*/log | tail -3)"
    finish
}
server_dir=$(certdir server good good server-cert.pem server-key.pem)
client_dir=$(certdir client good good client-cert.pem client-key.pem)
# Trusts the server, but has no certificate of its own:
noclient_dir=$(certdir noclient good good)
# Trusts another CA (a good certificate of its own: the server accepts it):
wrongca_dir=$(certdir wrongca rogue good client-cert.pem client-key.pem)
# Trusts the server, with a certificate from another CA:
rogueclient_dir=$(certdir rogueclient good rogue client-cert.pem client-key.pem)
nocacert_dir=$work/pki/nocacert
mkdir -p "$nocacert_dir"
cp "$work/pki/good/client-cert.pem" "$work/pki/good/client-key.pem" "$nocacert_dir/"

mkdir -p "$work/psk"
key=$(openssl rand -hex 32)
mykey=$(openssl rand -hex 32)
me=$(id -un)
printf 'alice:%s\n%s:%s\n' "$key" "$me" "$mykey" >"$work/psk/keys.psk" # the server's
echo "alice:$key" >"$work/alice.psk"                # the client's
echo "$me:$mykey" >"$work/me.psk"
echo "alice:$(openssl rand -hex 32)" >"$work/wrongkey.psk"
echo "bob:$(openssl rand -hex 32)" >"$work/bob.psk"  # a user the server does not know

x509_obj="tls-creds-x509,id=tls0,endpoint=server,dir=$server_dir"
psk_obj="tls-creds-psk,id=tls0,endpoint=server,dir=$work/psk"

# ---- servers -------------------------------------------------------------------

# nbd_start NAME QEMU-NBD-ARGS...: a read-only persistent qemu-nbd in the
# background (--fork returns once it listens); stopped at exit.
nbd_start() {
    local name=$1
    shift
    qemu-nbd --fork --pid-file="$work/$name.pid" -t -r "$@" || return 1
    cleanup_fn nbd_stop "$name"
}

# nbd_stop NAME: stop that server and wait until it is gone.
nbd_stop() {
    local pidf=$work/$1.pid pid
    [ -f "$pidf" ] || return 0
    pid=$(cat "$pidf")
    kill_wait "$pid" # read-only: nothing to flush
    rm -f "$pidf"
}

# nbd_start_tcp NAME QEMU-NBD-ARGS...: the same on 127.0.0.1, on a free
# port tried from a random base; prints the port.
nbd_start_tcp() {
    local name=$1 base p
    shift
    base=$((20000 + RANDOM % 30000))
    for p in $(seq "$base" $((base + 40))); do
        if qemu-nbd --fork --pid-file="$work/$name.pid" -t -r -b 127.0.0.1 -p "$p" "$@" \
            2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

make_sources "$work"
src=$work/mixed.raw
nbd_start x509-unix -k "$work/x509.sock" -f raw -e 4 --object "$x509_obj" --tls-creds tls0 "$src" ||
    fail "qemu-nbd with X.509 on a Unix socket did not start"
nbd_start psk-unix -k "$work/psk.sock" -f raw --object "$psk_obj" --tls-creds tls0 "$src" ||
    fail "qemu-nbd with PSK on a Unix socket did not start"
nbd_start plain-unix -k "$work/plain.sock" -f raw "$src" ||
    fail "qemu-nbd without TLS did not start"
x509_port=$(nbd_start_tcp x509-tcp -x disk -f raw -e 4 --object "$x509_obj" --tls-creds tls0 "$src")
if [ -n "$x509_port" ]; then cleanup_fn nbd_stop x509-tcp; else
    fail "qemu-nbd with X.509 found no free TCP port"
fi
psk_port=$(nbd_start_tcp psk-tcp -x disk -f raw --object "$psk_obj" --tls-creds tls0 "$src")
if [ -n "$psk_port" ]; then cleanup_fn nbd_stop psk-tcp; else
    fail "qemu-nbd with PSK found no free TCP port"
fi

x509_tcp="nbds://localhost:$x509_port/disk"
x509_unix="nbds+unix:///?socket=$work/x509.sock"
psk_tcp="nbds://127.0.0.1:$psk_port/disk"
psk_unix="nbds+unix:///?socket=$work/psk.sock"
plain_unix="nbds+unix:///?socket=$work/plain.sock"

# ---- conversions -----------------------------------------------------------------

n=0
# convert_and_judge LABEL ZCOW-CONVERT-ARGS... (the last one the source)
convert_and_judge() {
    local label=$1 out dst
    shift
    n=$((n + 1))
    dst=$work/ok$n.qcow2
    if ! out=$("$ZCOW" convert -q "$@" "$dst" 2>&1 </dev/null); then
        fail "$label: zcow convert failed: $out"
        return 1
    fi
    judge "$src" "$dst" "$label"
}

# X.509, the directory in the URI and as an option; by host name and by
# address (the certificate names both); multi-conn (-e 4) with -j 4.
convert_and_judge "X.509 TCP, tls-certificates= in the URI" \
    "$x509_tcp?tls-certificates=$client_dir"
convert_and_judge "X.509 TCP by address, --tls-certificates, -j 4" -j 4 \
    --tls-certificates "$client_dir" "nbds://127.0.0.1:$x509_port/disk"
convert_and_judge "X.509 Unix socket, tls-certificates= in the URI" \
    "$x509_unix&tls-certificates=$client_dir"
convert_and_judge "X.509 Unix socket, --tls-certificates, -j 4" -j 4 \
    --tls-certificates "$client_dir" "$x509_unix"
# PSK: the file and user in the URI, the user as NAME@, both as options.
convert_and_judge "PSK TCP, tls-psk-file= and tls-username= in the URI" \
    "$psk_tcp?tls-psk-file=$work/alice.psk&tls-username=alice"
convert_and_judge "PSK TCP, NAME@ in the URI, --tls-psk-file" \
    --tls-psk-file "$work/alice.psk" "nbds://alice@127.0.0.1:$psk_port/disk"
convert_and_judge "PSK Unix socket, --tls-psk-file and --tls-username" \
    --tls-psk-file "$work/alice.psk" --tls-username alice "$psk_unix"
convert_and_judge "PSK, the user name by default the user running zcow ($me)" \
    --tls-psk-file "$work/me.psk" "$psk_unix"
# The URI's value wins over the option's.
convert_and_judge "tls-certificates= in the URI over --tls-certificates" \
    --tls-certificates "$wrongca_dir" "$x509_tcp?tls-certificates=$client_dir"
convert_and_judge "tls-psk-file= in the URI over --tls-psk-file" \
    --tls-psk-file "$work/wrongkey.psk" --tls-username alice \
    "$psk_unix&tls-psk-file=$work/alice.psk"
convert_and_judge "tls-username= in the URI over --tls-username" \
    --tls-psk-file "$work/alice.psk" --tls-username bob "$psk_unix&tls-username=alice"
convert_and_judge "NAME@ in the URI over tls-username=" \
    "nbds://alice@127.0.0.1:$psk_port/disk?tls-psk-file=$work/alice.psk&tls-username=bob"

# TLS destinations (zcow convert into an export, as zcow restore writes one):
# the settings go to the NBD end with TLS, the other end may be NBD without.
# write_and_cmp LABEL SERVER-TLS-ARGS -- ZCOW-ARGS... (the last the URI,
# with @SOCK@ for the writable server's socket)
n_w=0
write_and_cmp() {
    local label=$1 sargs=() out uri
    shift
    while [ "$1" != -- ]; do sargs+=("$1"); shift; done
    shift
    n_w=$((n_w + 1))
    truncate -s "$(stat -c %s "$src")" "$work/w$n_w.raw"
    qemu-nbd --fork --pid-file="$work/w$n_w.pid" -t -k "$work/w$n_w.sock" -f raw --shared=4 \
        "${sargs[@]}" "$work/w$n_w.raw" || { fail "$label: qemu-nbd did not start"; return; }
    cleanup_fn nbd_stop "w$n_w"
    local args=("${@//@SOCK@/$work/w$n_w.sock}")
    if out=$("$ZCOW" convert -q "${args[@]}" 2>&1 </dev/null) && cmp -s "$src" "$work/w$n_w.raw"; then
        pass
    else
        fail "$label: ${out:-the export differs from the source}"
    fi
}
write_and_cmp "into X.509 Unix socket, --tls-certificates, -j 4" \
    --object "$x509_obj" --tls-creds tls0 -- \
    -j 4 --tls-certificates "$client_dir" "$src" "nbds+unix:///?socket=@SOCK@"
write_and_cmp "into PSK Unix socket, --tls-psk-file, --tls-username" \
    --object "$psk_obj" --tls-creds tls0 -- \
    --tls-psk-file "$work/alice.psk" --tls-username alice "$src" "nbds+unix:///?socket=@SOCK@"
write_and_cmp "from X.509 (--tls-certificates) into NBD without TLS" -- \
    --tls-certificates "$client_dir" "$x509_unix" "nbd+unix:///?socket=@SOCK@"

# libnbd's default certificate directory: ~/.pki/libnbd of a user other than
# root (root's is /etc/pki/libnbd, which a test must not write).
# as_user HOME CMD...: CMD as nobody (or as ourselves when not root).
as_user() {
    local home=$1
    shift
    if [ "$(id -u)" -eq 0 ]; then
        setpriv --reuid=nobody --regid=nogroup --clear-groups env HOME="$home" "$@"
    else
        env HOME="$home" "$@"
    fi
}
chmod 711 "$work"
mkdir -p "$work/user/home/.pki/libnbd" "$work/user/empty"
cp "$client_dir"/*.pem "$work/user/home/.pki/libnbd/"
[ "$(id -u)" -eq 0 ] && chown -R nobody:nogroup "$work/user"
if out=$(as_user "$work/user/home" "$ZCOW" convert -q "$x509_tcp" "$work/user/default.qcow2" 2>&1 \
    </dev/null); then
    judge "$src" "$work/user/default.qcow2" "X.509 from ~/.pki/libnbd"
else
    fail "X.509 from ~/.pki/libnbd: $out"
fi

# ---- failures ----------------------------------------------------------------------

# expect_error LABEL PATTERN ZCOW-CONVERT-ARGS...: must fail with one line
# "zcow: ..." matching PATTERN, and leave no $work/err.qcow2.
expect_error() {
    local label=$1 pattern=$2 out
    shift 2
    rm -f "$work/err.qcow2"
    if out=$("$ZCOW" convert -q "$@" "$work/err.qcow2" 2>&1 </dev/null); then
        fail "$label: exit 0"
        return 1
    fi
    if [ "$(printf '%s\n' "$out" | wc -l)" -ne 1 ] || ! printf '%s' "$out" | grep -q -- "^zcow: $pattern"; then
        fail "$label: unexpected message: $out"
        return 1
    fi
    if [ -e "$work/err.qcow2" ] || [ -n "$(temp_leftovers "$work/err.qcow2")" ]; then
        fail "$label: an image was left"
        return 1
    fi
    echo "# $label: $out"
    pass
}
q() { printf '%s' "$1" | sed 's/[][\.*^$]/\\&/g'; } # a literal for grep

u="$x509_tcp?tls-certificates=$wrongca_dir"
expect_error "server certificate from another CA (TCP)" \
    "cannot connect to '$(q "$u")': the server's certificate is not trusted" "$u"
u="$x509_tcp?tls-certificates=$noclient_dir"
expect_error "no client certificate (TCP)" \
    "cannot connect to '$(q "$u")': the server broke off TLS: it refused the credentials" "$u"
u="$x509_tcp?tls-certificates=$rogueclient_dir"
expect_error "client certificate the server does not trust (TCP)" \
    "cannot connect to '$(q "$u")': the server broke off TLS: it refused the credentials" "$u"
u="$x509_unix&tls-certificates=$rogueclient_dir"
expect_error "client certificate the server does not trust (Unix socket)" \
    "cannot connect to '$(q "$u")': the server broke off TLS: it refused the credentials" "$u"
u="$psk_tcp?tls-psk-file=$work/wrongkey.psk&tls-username=alice"
expect_error "wrong PSK key (TCP)" \
    "cannot connect to '$(q "$u")': the server broke off TLS: it refused the credentials" "$u"
u="$psk_unix&tls-psk-file=$work/wrongkey.psk"
expect_error "wrong PSK key (Unix socket, --tls-username)" \
    "cannot connect to '$(q "$u")': the server broke off TLS: it refused the credentials" \
    --tls-username alice "$u"
u="$psk_unix&tls-psk-file=$work/bob.psk&tls-username=bob"
expect_error "PSK user the server does not know" \
    "cannot connect to '$(q "$u")': the server broke off TLS: it refused the credentials" "$u"
u="$psk_unix&tls-psk-file=$work/alice.psk&tls-username=carol"
expect_error "PSK user not in the client's file" \
    "cannot connect to '$(q "$u")': .*username carol was not found in PSK file" "$u"
u="$psk_unix&tls-certificates=$client_dir"
expect_error "X.509 against a PSK server" \
    "cannot connect to '$(q "$u")': the server broke off TLS" "$u"
u="nbd://localhost:$x509_port/disk"
expect_error "plain NBD against a TLS-only server (TCP)" \
    "cannot connect to '$(q "$u")': the server requires TLS" "$u"
u="nbd+unix:///?socket=$work/psk.sock"
expect_error "plain NBD against a TLS-only server (Unix socket)" \
    "cannot connect to '$(q "$u")': the server requires TLS" "$u"
u="$plain_unix&tls-certificates=$client_dir"
expect_error "TLS against a server without TLS" \
    "cannot connect to '$(q "$u")': the server does not offer TLS" "$u"
expect_error "TLS against a server without TLS, PSK" \
    "cannot connect to '$(q "$plain_unix")': the server does not offer TLS" \
    --tls-psk-file "$work/alice.psk" "$plain_unix"
expect_error "--tls-certificates with nbd://" \
    "--tls-certificates needs an NBD URI with TLS (nbds:// or nbds+unix://), not 'nbd://" \
    --tls-certificates "$client_dir" "nbd://localhost:$x509_port/disk"
expect_error "--tls-psk-file with nbd+unix://" "--tls-psk-file needs an NBD URI with TLS" \
    --tls-psk-file "$work/alice.psk" "nbd+unix:///?socket=$work/plain.sock"
expect_error "--tls-username with a file" "--tls-username needs an NBD URI with TLS" \
    --tls-username alice "$src"
u="nbd+unix:///?socket=$work/plain.sock&tls-psk-file=$work/alice.psk"
expect_error "tls-psk-file= in an nbd+unix:// URI" \
    "'$(q "$u")': parameter 'tls-psk-file' needs a URI with TLS" "$u"
u="nbd+unix:///?socket=$work/plain.sock&tls=require"
expect_error "tls=require in an nbd+unix:// URI (not a plaintext connection)" \
    "'$(q "$u")': parameter 'tls' needs a URI with TLS" "$u"
u="$x509_tcp?tls-certificates=$nocacert_dir"
expect_error "certificates directory without ca-cert.pem" \
    "cannot connect to '$(q "$u")': TLS certificates directory '$(q "$nocacert_dir")' has no readable ca-cert.pem" \
    "$u"
expect_error "--tls-certificates directory that does not exist" \
    "cannot connect to '$(q "$x509_tcp")': TLS certificates directory '$(q "$work/none")' has no readable ca-cert.pem: No such file" \
    --tls-certificates "$work/none" "$x509_tcp"

# No directory at all and none of libnbd's defaults: refused, rather than
# left to libnbd (1.14), which would trust the system's CAs without
# checking the server's certificate.
if out=$(as_user "$work/user/empty" "$ZCOW" convert -q "$x509_tcp" "$work/user/err.qcow2" 2>&1 \
    </dev/null); then
    fail "no certificates directory: exit 0"
elif ! printf '%s' "$out" | grep -q "^zcow: cannot connect to '$(q "$x509_tcp")': no TLS certificates to check the server's with"; then
    fail "no certificates directory: unexpected message: $out"
elif [ -e "$work/user/err.qcow2" ]; then
    fail "no certificates directory: an image was left"
else
    echo "# no certificates directory: $out"
    pass
fi

finish
