#!/usr/bin/env python3
"""qmp-backup.py - QEMU's own compressed backup job, for bench/backup.sh.

    qmp-backup.py SOCK job NODE TARGET on|off [TIMEOUT]
        Add TARGET (an existing qcow2 file: qemu-img create -f qcow2 of the
        disk's size) as a node with cache.direct=on|off on its format and
        file nodes, run `blockdev-backup sync=full compress=true` of NODE to
        it, wait for BLOCK_JOB_COMPLETED, then delete the node (which flushes
        and closes the file): the target is complete and on disk when this
        returns.  Exit 0 when the job completed without error, 124 when it
        ran longer than TIMEOUT seconds (default 3600; the job is then
        cancelled), 1 on any other failure.  One line on stderr: the job's
        own time (blockdev-backup to BLOCK_JOB_COMPLETED) and its offset.
    qmp-backup.py SOCK job NODE SOCKET nbd [TIMEOUT]
        The same into an NBD export on the unix socket SOCKET (nbdkit zcow):
        a node of driver nbd, and the job without compress (the export is
        raw to QEMU; the server compresses).  Deleting the node flushes and
        disconnects, which is when nbdkit zcow renames its image into place.
    qmp-backup.py SOCK drop-bitmaps NODE PREFIX
        Remove NODE's dirty bitmaps whose names start with PREFIX (those of
        a zcow backup directory that the benchmark deleted).
"""
import json
import os
import select
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in tests/interop
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "tests", "interop"))
from qmp import QMP  # noqa: E402


class EventQMP(QMP):
    """tests/interop/qmp.py's client, keeping the events it reads while
    waiting for a return, and able to wait for an event with a deadline.
    It reads the socket through its own line buffer: QMP.__init__ reads the
    greeting, after which QEMU sends nothing unasked until qmp_capabilities,
    the first command sent through cmd() here."""

    def __init__(self, path):
        self.events = []
        self.buf = b""
        super().__init__(path)

    def line(self, deadline=None):
        while b"\n" not in self.buf:
            if deadline is not None:
                left = deadline - time.time()
                if left <= 0 or not select.select([self.s], [], [], left)[0]:
                    return None
            data = self.s.recv(65536)
            if not data:
                raise SystemExit("qmp-backup.py: QEMU closed the monitor")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    # The command's name is positional only: arguments may be called "name".
    def cmd(self, _cmd, /, **args):
        msg = {"execute": _cmd}
        if args:
            msg["arguments"] = args
        self.s.sendall((json.dumps(msg) + "\n").encode())
        while True:
            m = self.line()
            if "event" in m:
                self.events.append(m)
                continue
            if "error" in m:
                raise SystemExit("qmp-backup.py: %s: %s" % (_cmd, m["error"]["desc"]))
            return m["return"]

    def wait_job(self, job, deadline):
        """The job's BLOCK_JOB_COMPLETED or _CANCELLED event, None at DEADLINE."""
        while True:
            for m in self.events:
                if (m["event"] in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED") and
                        m.get("data", {}).get("device") == job):
                    return m
            self.events.clear()
            m = self.line(deadline)
            if m is None:
                return None
            if "event" in m:
                self.events.append(m)

    def node(self, name):
        for n in self.cmd("query-named-block-nodes", flat=True):
            if n["node-name"] == name:
                return n
        return None


def job(q, node, target, direct, timeout):
    tnode, job_id = "bench-target", "bench-backup"
    if direct == "nbd":
        q.cmd("blockdev-add", **{
            "driver": "nbd", "node-name": tnode,
            "server": {"type": "unix", "path": os.path.abspath(target)},
        })
    else:
        q.cmd("blockdev-add", **{
            "driver": "qcow2", "node-name": tnode,
            "cache": {"direct": direct},
            "file": {"driver": "file", "filename": os.path.abspath(target),
                     "node-name": tnode + "-file", "cache": {"direct": direct}},
        })
    t0 = time.time()
    q.cmd("blockdev-backup", device=node, target=tnode, sync="full",
          compress=direct != "nbd", **{"job-id": job_id})
    ev = q.wait_job(job_id, t0 + timeout)
    rc = 0
    if ev is None:
        q.cmd("block-job-cancel", device=job_id, force=True)
        q.wait_job(job_id, time.time() + 60)
        print("qmp-backup.py: the job still ran after %g s: cancelled" % timeout,
              file=sys.stderr)
        rc = 124
    else:
        d = ev.get("data", {})
        print("qmp-backup.py: %s after %.2f s: offset %s of %s%s" % (
            ev["event"], time.time() - t0, d.get("offset"), d.get("len"),
            (", error: " + d["error"]) if "error" in d else ""), file=sys.stderr)
        if ev["event"] != "BLOCK_JOB_COMPLETED" or "error" in d:
            rc = 1
    q.cmd("blockdev-del", **{"node-name": tnode})
    if q.node(tnode + "-file"):
        q.cmd("blockdev-del", **{"node-name": tnode + "-file"})
    return rc


def drop_bitmaps(q, node, prefix):
    n = q.node(node)
    if not n:
        raise SystemExit("qmp-backup.py: no block node '%s'" % node)
    for b in n.get("dirty-bitmaps") or []:
        if b.get("name", "").startswith(prefix):
            q.cmd("block-dirty-bitmap-remove", node=node, name=b["name"])
    return 0


def main():
    a = sys.argv[1:]
    if len(a) in (5, 6) and a[1] == "job" and a[4] in ("on", "off", "nbd"):
        q = EventQMP(a[0])
        mode = {"on": True, "off": False}.get(a[4], a[4])
        sys.exit(job(q, a[2], a[3], mode, float(a[5]) if len(a) > 5 else 3600))
    if len(a) == 4 and a[1] == "drop-bitmaps":
        sys.exit(drop_bitmaps(EventQMP(a[0]), a[2], a[3]))
    sys.exit(__doc__.strip())


if __name__ == "__main__":
    main()
