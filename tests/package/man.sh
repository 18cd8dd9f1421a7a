#!/usr/bin/env bash
# man.sh - the man pages say what the code has:
#   - every page of man/ renders with `man --warnings -l` without a warning;
#   - man/libzcow.3 names every function include/zcow.h declares (ZCOW_API),
#     and no zcow_ function the header lacks;
#   - man/zcow.1 has a section for every command of cli/zcow.c, and in it
#     every option the command's source parses (getopt letters and long
#     options, and the "-x" / "--name" strings it compares arguments with);
#   - the EXAMPLES program of libzcow.3 compiles against include/zcow.h
#     (-Wall -Wextra -Werror), links to libzcow.so and writes an image
#     qemu-img judges.
. "$(dirname "$0")/../interop/functions.sh"
requires man python3 cc qemu-img
requires_zcow

bdir=$(dirname "$ZCOW")
cd "$ROOT" || exit 1

for m in man/*.[1-8]; do
    if out=$(man --warnings -l "$m" 2>&1 >/dev/null) && [ -z "$out" ]; then
        pass
    else
        fail "man --warnings -l $m: $(echo "$out" | head -5 | tr '\n' ' ')"
    fi
done

# The checks of the text, one line per failure; the example to $EXAMPLE.
export EXAMPLE=$work/example.c
out=$(python3 - <<'EOF_PY'
import os, re

def text(path):
    with open(path) as f:
        return f.read()

def roff_plain(s):
    # \- is a minus, \f. fonts, \c joins: enough to find names in the source.
    s = s.replace("\\-", "-").replace("\\c", "").replace("\\e", "\\")
    return re.sub(r"\\f[BIRP]", "", s)

bad = []
hdr = text("include/zcow.h")
api = set(re.findall(r"^ZCOW_API\b[^(]*?\b(zcow_\w+)\s*\(", hdr, re.M))
man3 = roff_plain(text("man/libzcow.3"))
fntypes = set(re.findall(r"^typedef\b[^;]*?\b(zcow_\w+)\s*\(", hdr, re.M))
named = set(re.findall(r"\b(zcow_\w+)\s*\(", man3)) - fntypes
for f in sorted(api - named):
    bad.append("man/libzcow.3 does not name %s(), which include/zcow.h declares" % f)
for f in sorted(named - api):
    bad.append("man/libzcow.3 names %s(), which include/zcow.h does not declare" % f)
if not api:
    bad.append("no ZCOW_API function found in include/zcow.h")

man1 = roff_plain(text("man/zcow.1"))
sections = {}
for m in re.finditer(r'^\.SS "?zcow (\w+)[^\n]*\n(.*?)(?=^\.S[SH] |\Z)', man1, re.M | re.S):
    sections[m.group(1)] = m.group(2)
main = text("cli/zcow.c")
commands = re.findall(r'\{\s*"(\w+)",\s*cmd_\w+', main)
if not commands:
    bad.append("no commands found in cli/zcow.c")
for cmd in commands:
    if cmd not in sections:
        bad.append("man/zcow.1 has no section 'zcow %s'" % cmd)
        continue
    src = text("cli/cmd_%s.c" % cmd)
    opts = set()
    for g in re.findall(r'getopt_long\([^"]*"([^"]*)"', src):
        opts |= {"-" + c for c in g if c.isalpha() and c != "h"}
    opts |= {"--" + n for n in re.findall(r'\{\s*"([a-z][a-z-]*)",\s*(?:no|required|optional)_argument', src)}
    opts |= set(re.findall(r'"(--?[a-zA-Z][a-z-]*)[="]', src))
    opts -= {"-h", "--help"}
    sec = sections[cmd]
    for o in sorted(opts):
        if not re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(o), sec):
            bad.append("man/zcow.1, section 'zcow %s', does not describe %s (cli/cmd_%s.c)" % (cmd, o, cmd))
    print("# zcow %s: %d options, in man/zcow.1" % (cmd, len(opts)))
print("# libzcow.3: %d functions of include/zcow.h" % len(api))

ex = re.search(r"^\.SH EXAMPLES\n.*?^\.EX\n(.*?)^\.EE", text("man/libzcow.3"), re.M | re.S)
if not ex:
    bad.append("man/libzcow.3 has no EXAMPLES program")
else:
    with open(os.environ["EXAMPLE"], "w") as f:
        f.write(roff_plain(ex.group(1)))
for b in bad:
    print("FAIL " + b)
EOF_PY
)
echo "$out" | grep '^#'
while IFS= read -r line; do
    case $line in FAIL\ *) fail "${line#FAIL }" ;; esac
done <<<"$out"
grep '^FAIL ' <<<"$out" >/dev/null || pass

# The example: a raw file of text and random bytes in, an image out.
if [ -s "$EXAMPLE" ]; then
    {
        yes "man page example" | head -c $((1 << 20))
        head -c $((300 << 10)) /dev/urandom
        echo "an odd tail"
    } >"$work/in.raw"
    if ! out=$(cc -std=c99 -Wall -Wextra -Werror -Iinclude -o "$work/example" "$EXAMPLE" -L"$bdir" -lzcow 2>&1); then
        fail "the EXAMPLES program of man/libzcow.3 does not build: $(echo "$out" | head -5 | tr '\n' ' ')"
    elif ! out=$(LD_LIBRARY_PATH=$bdir "$work/example" "$work/in.raw" "$work/out.qcow2" 2>&1); then
        fail "the EXAMPLES program of man/libzcow.3 failed: $out"
    else
        truncate -s %512 "$work/in.raw" # the example rounds the size up to 512
        judge "$work/in.raw" "$work/out.qcow2" "the image the EXAMPLES program of man/libzcow.3 wrote"
    fi
fi
finish
