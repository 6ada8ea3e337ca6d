#!/usr/bin/env python3
"""nuage storage beside GlusterFS 10, in one run, on one lab machine.

Both systems serve a 2-brick distributed volume from brick directories under the same
base directory, and are mounted on the same machine; the same workloads run on each
mount, RUNS times, and the medians are printed with the ratio nuage/gluster (higher is
better for nuage on every row).

Run as root from the repository root, after `cargo build --release -p nuage`:

    python3 bench/storage/run.py              # RUNS=3 BIG_MIB=200 SEQ_MIB=1024 SMALL=1000
    RUNS=5 SMALL=10000 python3 bench/storage/run.py

glusterd runs inside the lab machine (its own network namespace, so its fixed ports never
collide with anything on the host) with its state in a temporary directory.
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

NUAGE = os.path.abspath(os.environ.get("NUAGE", "target/release/nuage"))
RUNS = int(os.environ.get("RUNS", "3"))
BIG_MIB = int(os.environ.get("BIG_MIB", "200"))
SEQ_MIB = int(os.environ.get("SEQ_MIB", "1024"))
SMALL = int(os.environ.get("SMALL", "1000"))
LAB = f"stbench-{os.getpid()}"[:24]


def sh(*args, check=True, quiet=False):
    """Runs a command (never through a shell)."""
    r = subprocess.run(args, capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.exit(f"bench: {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()} {r.stdout.strip()}")
    return r.stdout


def in_lab(*args, check=True):
    return sh(NUAGE, "lab", "--name", LAB, "exec", "n1", "--", *args, check=check)


def timed(f):
    t = time.monotonic()
    f()
    return time.monotonic() - t


def mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == path for line in f)


class Nuage:
    name = "nuage"

    def __init__(self, base, ip):
        self.base, self.ip = base, ip
        self.mnt = os.path.join(base, "nuage-mnt")
        os.makedirs(self.mnt)
        bricks = []
        for i in (1, 2):
            d = os.path.join(base, f"nuage-b{i}")
            os.makedirs(d)
            bricks.append(f"{ip}:{d}")
        in_lab(NUAGE, "volume", "create", "benchvol", *bricks, "force")
        in_lab(NUAGE, "volume", "start", "benchvol")

    def mount(self):
        in_lab(NUAGE, "mount", f"{self.ip}:/benchvol", self.mnt)

    def umount(self):
        in_lab(NUAGE, "umount", self.mnt)
        for _ in range(100):
            if not mounted(self.mnt):
                return
            time.sleep(0.05)

    def close(self):
        if mounted(self.mnt):
            self.umount()


class Gluster:
    name = "gluster"

    def __init__(self, base, ip):
        self.base, self.ip = base, ip
        self.mnt = os.path.join(base, "gluster-mnt")
        os.makedirs(self.mnt)
        work = os.path.join(base, "glusterd")
        os.makedirs(work)
        vol = os.path.join(base, "glusterd.vol")
        # The CLI socket in our directory, not /var/run (read-only CLI over TCP).
        sock = os.path.join(base, "glusterd.socket")
        with open(vol, "w") as f:
            f.write(
                "volume management\n    type mgmt/glusterd\n"
                f"    option working-directory {work}\n"
                "    option transport-type socket\n"
                "    option transport.socket.listen-port 24007\n"
                "    option ping-timeout 0\n    option event-threads 1\n"
                f"    option glusterd-sockfile {sock}\nend-volume\n"
            )
        self.pidfile = os.path.join(base, "glusterd.pid")
        in_lab("glusterd", "-f", vol, "-p", self.pidfile, "--log-file", os.path.join(base, "glusterd.log"))
        g = ["gluster", "--mode=script", f"--glusterd-sock={sock}"]
        for _ in range(100):
            if in_lab(*g, "peer", "status", check=False):
                break
            time.sleep(0.1)
        bricks = []
        for i in (1, 2):
            d = os.path.join(base, f"gluster-b{i}")
            os.makedirs(d)
            bricks.append(f"{ip}:{d}")
        in_lab(*g, "volume", "create", "benchvol", *bricks, "force")
        in_lab(*g, "volume", "start", "benchvol")
        self.g = g

    def mount(self):
        in_lab("mount", "-t", "glusterfs", f"{self.ip}:/benchvol", self.mnt)

    def umount(self):
        in_lab("umount", self.mnt)
        for _ in range(100):
            if not mounted(self.mnt):
                return
            time.sleep(0.05)

    def close(self):
        if mounted(self.mnt):
            in_lab("umount", "-l", self.mnt, check=False)
        in_lab(*self.g, "volume", "stop", "benchvol", check=False)
        in_lab(*self.g, "volume", "delete", "benchvol", check=False)
        try:
            with open(self.pidfile) as f:
                os.kill(int(f.read().strip()), 15)
        except (OSError, ValueError):
            pass


def clear(mnt):
    for e in os.listdir(mnt):
        p = os.path.join(mnt, e)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)


def workloads(fs, src, local):
    """One run of every workload on `fs`; returns {row: value}."""
    out = {}
    fs.mount()
    m = fs.mnt
    clear(m)
    # (a) cp of a BIG_MIB file, and the same cp to local disk for reference.
    t = timed(lambda: sh("cp", src, os.path.join(m, "big")))
    out[f"cp {BIG_MIB} MiB to mount (MB/s)"] = BIG_MIB * 1.048576 / t
    dst = os.path.join(local, "big")
    t = timed(lambda: sh("cp", src, dst))
    os.unlink(dst)
    out[f"(reference) cp {BIG_MIB} MiB local disk"] = BIG_MIB * 1.048576 / t
    # (b) sequential write with fsync at the end, then read after a remount (cold cache).
    seq = os.path.join(m, "seq")
    t = timed(lambda: sh("dd", "if=/dev/zero", f"of={seq}", "bs=1M", f"count={SEQ_MIB}", "conv=fsync"))
    out[f"write {SEQ_MIB} MiB + fsync (MB/s)"] = SEQ_MIB * 1.048576 / t
    fs.umount()
    fs.mount()
    t = timed(lambda: sh("dd", f"if={seq}", "of=/dev/null", "bs=1M"))
    out[f"read {SEQ_MIB} MiB (MB/s)"] = SEQ_MIB * 1.048576 / t
    os.unlink(seq)
    os.unlink(os.path.join(m, "big"))
    # (c) small files: create, ls -l, read, remove.
    d = os.path.join(m, "small")
    os.mkdir(d)
    block = b"x" * 4096
    names = [os.path.join(d, f"f{i:06}") for i in range(SMALL)]

    def create():
        for n in names:
            with open(n, "wb") as f:
                f.write(block)

    out[f"create {SMALL} x 4 KiB (files/s)"] = SMALL / timed(create)
    fs.umount()
    fs.mount()
    out[f"ls -l {SMALL} files (files/s)"] = SMALL / timed(lambda: sh("ls", "-l", d))

    def read_all():
        for n in names:
            with open(n, "rb") as f:
                assert len(f.read()) == 4096

    out[f"read {SMALL} x 4 KiB (files/s)"] = SMALL / timed(read_all)

    def remove():
        for n in names:
            os.unlink(n)

    out[f"remove {SMALL} files (files/s)"] = SMALL / timed(remove)
    os.rmdir(d)
    fs.umount()
    return out


def main():
    if os.geteuid() != 0:
        sys.exit("bench: run as root (lab machines, FUSE mounts)")
    if not os.path.exists(NUAGE):
        sys.exit(f"bench: {NUAGE} not found; run `cargo build --release -p nuage` first")
    base = tempfile.mkdtemp(prefix="nuage-storage-bench-", dir="/var/tmp")
    sh(NUAGE, "lab", "--name", LAB, "up", "1", "--start")
    systems = []
    try:
        ip = sh(NUAGE, "lab", "--name", LAB, "exec", "n1", "--", "hostname", "-I").split()[0]
        src = os.path.join(base, "source")
        with open(src, "wb") as f:
            for _ in range(BIG_MIB):
                f.write(os.urandom(1 << 20))
        local = os.path.join(base, "local")
        os.makedirs(local)
        systems = [Nuage(base, ip), Gluster(base, ip)]
        results = {s.name: {} for s in systems}
        for run in range(RUNS):
            for s in systems:
                for row, v in workloads(s, src, local).items():
                    results[s.name].setdefault(row, []).append(v)
            print(f"run {run + 1}/{RUNS} done", file=sys.stderr)
        print(f"# nuage storage vs GlusterFS {gluster_version()}: 2-brick distribute, one machine,"
              f" medians of {RUNS} runs, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs")
        print(f"{'workload':<36} {'nuage':>10} {'gluster':>10} {'nuage/gluster':>14}")
        for row in results["nuage"]:
            n = statistics.median(results["nuage"][row])
            g = statistics.median(results["gluster"][row])
            print(f"{row:<36} {n:>10.1f} {g:>10.1f} {n / g:>14.2f}")
    finally:
        for s in systems:
            s.close()
        sh(NUAGE, "lab", "--name", LAB, "down", check=False)
        shutil.rmtree(base, ignore_errors=True)


def gluster_version():
    return sh("glusterfs", "--version").split("\n")[0].replace("glusterfs ", "")


if __name__ == "__main__":
    main()
