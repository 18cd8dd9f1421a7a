#!/usr/bin/env python3
"""qmp.py - the test's own hand on a running QEMU, on a second QMP socket.

    qmp.py SOCK write QDEV CMD...      qemu-io commands through the device
                                       (as the guest writes: they go through
                                       any backup filter above the disk)
    qmp.py SOCK write-during PREFIX QDEV CMD...
                                       wait until a block job whose id starts
                                       with PREFIX runs, then write; exit 0 if
                                       the job still ran after the writes
                                       (they fell inside the backup), 3 if not
    qmp.py SOCK run CMD [JSON-ARGS]    any command; prints its return as JSON
    qmp.py SOCK bitmaps NODE           the node's named bitmaps, one per line:
                                       NAME recording busy
    qmp.py SOCK write-stream QDEV BASE STEP N READY
                                       N writes of 4 KiB, in ascending order, at
                                       BASE + i*STEP, each filled with byte
                                       i % 255 + 1; touches READY after 20
    qmp.py - prefix RAW OLD BASE STEP N
                                       which of those writes RAW holds (OLD: the
                                       disk before them): exit 0 and print K when
                                       it holds exactly the first K (a prefix),
                                       1 otherwise
"""
import json
import socket
import sys
import time


class QMP:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.f = self.s.makefile("rw")
        json.loads(self.f.readline())
        self.cmd("qmp_capabilities")

    def cmd(self, _name, **args):
        msg = {"execute": _name}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg) + "\n")
        self.f.flush()
        while True:
            m = json.loads(self.f.readline())
            if "event" in m:
                continue
            if "error" in m:
                raise SystemExit("qmp.py: %s: %s" % (_name, m["error"]["desc"]))
            return m["return"]

    def write(self, qdev, cmds):
        for c in cmds:
            out = self.cmd("human-monitor-command",
                           **{"command-line": 'qemu-io -d %s "%s"' % (qdev, c)})
            if out.strip():
                raise SystemExit("qmp.py: qemu-io %s: %s" % (c, out.strip()))

    def jobs(self, prefix):
        return [j for j in self.cmd("query-block-jobs") if j["device"].startswith(prefix)]


def check_prefix(raw, old, base, step, n):
    held = []
    with open(raw, "rb") as f, open(old, "rb") as g:
        for i in range(n):
            f.seek(base + i * step)
            g.seek(base + i * step)
            block, before = f.read(4096), g.read(4096)
            want = bytes([i % 255 + 1]) * 4096
            if block == want:
                held.append(True)
            elif block == before:
                held.append(False)
            else:
                print("write %d: neither old nor new bytes" % i)
                return 1
    k = held.index(False) if False in held else n
    if any(held[k:]):
        print("not a prefix: the first %d, then write %d" % (k, held.index(True, k)))
        return 1
    print(k)
    return 0


def main():
    if sys.argv[2] == "prefix":
        sys.exit(check_prefix(sys.argv[3], sys.argv[4], *map(int, sys.argv[5:8])))
    q = QMP(sys.argv[1])
    op = sys.argv[2]
    if op == "write":
        q.write(sys.argv[3], sys.argv[4:])
    elif op == "write-during":
        prefix, qdev = sys.argv[3], sys.argv[4]
        deadline = time.time() + 60
        while not q.jobs(prefix):
            if time.time() > deadline:
                raise SystemExit("qmp.py: no backup job started in 60 s")
            time.sleep(0.005)
        q.write(qdev, sys.argv[5:])
        sys.exit(0 if q.jobs(prefix) else 3)
    elif op == "write-stream":
        qdev, base, step, n, ready = sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), \
            int(sys.argv[6]), sys.argv[7]
        for i in range(n):
            q.write(qdev, ["write -P %d %d 4k" % (i % 255 + 1, base + i * step)])
            if i == 20:
                open(ready, "w").close()
    elif op == "run":
        args = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
        print(json.dumps(q.cmd(sys.argv[3], **args)))
    elif op == "bitmaps":
        for n in q.cmd("query-named-block-nodes", flat=True):
            if n["node-name"] == sys.argv[3]:
                for b in n.get("dirty-bitmaps") or []:
                    if "name" in b:
                        print(b["name"], b["recording"], b["busy"])
    else:
        raise SystemExit("qmp.py: unknown operation " + op)


if __name__ == "__main__":
    main()
