#!/usr/bin/env python3
"""nbd-writes.py - a client that writes an NBD export from several
connections at once, as nbdkit-plugin.sh needs it (libnbd's Python binding).

    nbd-writes.py SOCK MODEL SEED CLUSTER [--connections N] [--ops N]
                  [--no-flush] [--die-after N]

Opens N connections (default 4) to the export on unix socket SOCK and
sends --ops rounds (default 60) of requests: each round a set of requests
whose byte ranges do not overlap, spread over the connections and in
flight together (so that their order is the server's), in a shuffled
order: whole clusters and runs of them, partial and unaligned writes (of
one byte up to more than a cluster, several of them into one cluster at
once), writes over earlier data, write-zeroes (whole and partial
clusters), trims (whole clusters read as zero afterwards; parts of
clusters keep their data), and now and then a flush.  After every few
rounds the whole export is read back, in pieces, through every connection
and compared with the expected content (read-your-writes); it is then
written to MODEL (a raw file), the last step after a final flush and a
clean disconnect of every connection.  Exit 0 when every read matched.

--no-flush: no flush at all, then a clean disconnect (the server must not
keep the image).  --die-after N: after N rounds, kill this process
(SIGKILL), with requests in flight.
"""
import argparse
import os
import random
import signal
import sys

import nbd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sock")
    ap.add_argument("model")
    ap.add_argument("seed", type=int)
    ap.add_argument("cluster", type=int)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--ops", type=int, default=60)
    ap.add_argument("--no-flush", action="store_true")
    ap.add_argument("--die-after", type=int, default=-1)
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    cs = a.cluster

    hs = []
    for _ in range(a.connections):
        h = nbd.NBD()
        h.connect_unix(a.sock)
        hs.append(h)
    size = hs[0].get_size()
    if a.connections > 1 and not hs[0].can_multi_conn():
        sys.exit("nbd-writes.py: the export does not allow multi-conn")
    model = bytearray(size)

    def data(n):
        kind = rnd.randrange(3)
        if kind == 0:  # compressible
            b = bytes([rnd.randrange(1, 256)]) * 64 + rnd.randbytes(16)
            return (b * (n // len(b) + 1))[:n]
        if kind == 1:  # incompressible
            return rnd.randbytes(n)
        return (bytes(rnd.choice(b"abcdefgh") for _ in range(min(n, 97))) * (n // 97 + 1))[:n]

    def request():
        """One request (kind, offset, length) somewhere in the export."""
        k = rnd.randrange(10)
        if k < 3:  # whole clusters, a run of 1..4
            n = rnd.randint(1, 4) * cs
            off = rnd.randrange(0, size // cs) * cs
        elif k < 6:  # a partial, unaligned piece
            n = rnd.choice([1, 7, 512, 4096, cs // 2, cs - 1, cs + 3])
            off = rnd.randrange(0, size)
        elif k < 7:  # a cluster in pieces, all at once (several requests)
            return "pieces", rnd.randrange(0, size // cs) * cs, cs
        elif k < 9:
            n = rnd.choice([cs, 2 * cs, 300, cs + 700])
            off = rnd.randrange(0, size)
            return "zero", off, min(n, size - off)
        else:
            n = rnd.choice([cs, 3 * cs, cs + 5000])
            off = rnd.randrange(0, size)
            return "trim", off, min(n, size - off)
        return "write", off, min(n, size - off)

    def read_all():
        bad = 0
        off = 0
        while off < size:
            n = min(rnd.choice([4096, cs, 3 * cs + 17, 1 << 20]), size - off)
            h = rnd.choice(hs)
            got = h.pread(n, off)
            if got != model[off:off + n]:
                first = next(i for i in range(n) if got[i] != model[off + i])
                print("nbd-writes.py: read at %d: byte %d differs" % (off, off + first))
                bad += 1
            off += n
        return bad

    bad = 0
    for rnd_i in range(a.ops):
        reqs, taken = [], [(0, cs)] if rnd_i == a.die_after else []
        if rnd_i == a.die_after:  # at least one write in flight at the kill
            reqs.append(("write", 0, cs))

        def free(off, n):
            return all(off + n <= o or o + m <= off for o, m in taken)
        for _ in range(rnd.randint(1, 8)):
            kind, off, n = request()
            if n <= 0 or not free(off, n):
                continue
            taken.append((off, n))
            if kind == "pieces":  # 2..5 pieces, each its own request
                cuts = sorted(rnd.sample(range(1, n), rnd.randint(1, 4)))
                edges = [0] + cuts + [n]
                for s, e in zip(edges, edges[1:]):
                    reqs.append(("write", off + s, e - s))
            else:
                reqs.append((kind, off, n))
        rnd.shuffle(reqs)
        cookies = []
        for kind, off, n in reqs:
            h = rnd.choice(hs)
            if kind == "write":
                b = data(n)
                cookies.append((h, h.aio_pwrite(b, off)))
                model[off:off + n] = b
            elif kind == "zero":
                cookies.append((h, h.aio_zero(n, off)))
                model[off:off + n] = bytes(n)
            else:  # trim: whole clusters read as zero, the rest unchanged
                cookies.append((h, h.aio_trim(n, off)))
                s = -(-off // cs) * cs
                e = (off + n) // cs * cs if off + n < size else size
                if s < e:
                    model[s:e] = bytes(e - s)
        if rnd_i == a.die_after:
            os.kill(os.getpid(), signal.SIGKILL)
        for h, c in cookies:
            while not h.aio_command_completed(c):
                h.poll(-1)
        if not a.no_flush and rnd.randrange(6) == 0:
            rnd.choice(hs).flush()
        if rnd_i % 15 == 14:
            bad += read_all()
    bad += read_all()
    if not a.no_flush:
        hs[rnd.randrange(len(hs))].flush()
    for h in hs:
        h.shutdown()
    with open(a.model, "wb") as f:
        f.write(model)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
