#!/usr/bin/env python3
"""blkhash.py - the sha256/64k content digest of files, independently of
zcow: SHA-256 over the SHA-256 of each 64 KiB block of the bytes in order
(the last block short when the size is not a multiple), blkhash's
construction.  Prints 'HEX  FILE' per file, as sha256sum; reads raw bytes
only ('-' is stdin).  Holes of a file (SEEK_DATA) are not read: their
blocks are zero blocks."""
import errno
import hashlib
import os
import sys

BLOCK = 64 * 1024
ZERO = hashlib.sha256(bytes(BLOCK)).digest()


def data_at(f, off):
    """Where data starts at or after OFF; None when unknown (a pipe)."""
    try:
        return os.lseek(f.fileno(), off, os.SEEK_DATA)
    except OSError as e:
        return os.fstat(f.fileno()).st_size if e.errno == errno.ENXIO else None


def digest(f):
    outer, off = hashlib.sha256(), 0
    while True:
        data = data_at(f, off)  # (which moves the file's offset)
        if data is not None and data - off >= BLOCK:  # whole blocks of a hole
            n = (data - off) // BLOCK
            outer.update(ZERO * n)
            off += n * BLOCK
        if data is not None:
            f.seek(off)
        block = f.read(BLOCK)
        while block and len(block) < BLOCK:  # a pipe may give less
            more = f.read(BLOCK - len(block))
            if not more:
                break
            block += more
        if not block:
            return outer.hexdigest()
        outer.update(hashlib.sha256(block).digest())
        off += len(block)


for name in sys.argv[1:]:
    # Unbuffered: the offset is the file's own, which lseek moves.
    with open(sys.stdin.fileno() if name == "-" else name, "rb", buffering=0, closefd=name != "-") as f:
        print("%s  %s" % (digest(f), name))
