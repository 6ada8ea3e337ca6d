#!/usr/bin/env python3
"""nuage storage beside GlusterFS 10, in one run, on one lab machine.

Both systems serve the same kinds of volume (a 2-brick distributed volume and a replica-2
volume over two bricks) from brick directories under the same base directory, and are
mounted on the same machine; the same workloads run on each mount, RUNS times, and the
medians are printed with the ratio nuage/gluster (higher is better for nuage on every
row), and beside them the CPU seconds the system's own processes (brick servers and FUSE
client) spent on the row, from /proc: on a shared machine wall figures follow the load,
CPU time much less.

Run as root from the repository root, after `cargo build --release -p nuage`:

    python3 bench/storage/run.py    # RUNS=3 BIG_MIB=200 SEQ_MIB=1024 SMALL=1000,10000
                                    # FLUSH_BEHIND=on (nuage's volumes, as gluster's default)
    RUNS=5 VOLUMES=replicate SMALL=1000 python3 bench/storage/run.py
    SMALL= python3 bench/storage/run.py     # no small-file rows (cp, write, read only)

The bricks of both systems (and the "local disk" copy of row (a)) live on a file system of
their own, made for the run: XFS with 512-byte inodes, as gluster's administration guide
asks of a brick, in a sparse image file under /var/tmp on a loop device doing direct I/O,
deleted at the end (BRICK_FS=xfs, the default; BRICK_FS_GIB=16 its size). BRICK_FS=none keeps them in
/var/tmp itself. Why (docs/storage.md, "The bricks' file system"): this machine's root
file system is ext4 without a journal, whose inode allocator checks, inode by inode, for
inodes deleted in the last minutes; each run's creations then get slower the more files
the run before removed, whichever system removed them (six runs of the same build in a
row: 1828 → 487 files/s). Needs xfsprogs.

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
# File counts of the small-file rows; empty: none of those rows.
SMALL = [int(n) for n in os.environ.get("SMALL", "1000,10000").split(",") if n.strip()]
VOLUMES = os.environ.get("VOLUMES", "distribute,replicate").split(",")
# nuage's performance.flush-behind for the run: gluster's default is on.
FLUSH_BEHIND = os.environ.get("FLUSH_BEHIND", "on")
# The bricks' own file system (see the docstring): xfs or none.
BRICK_FS = os.environ.get("BRICK_FS", "xfs")
BRICK_FS_GIB = int(os.environ.get("BRICK_FS_GIB", "16"))
if BRICK_FS not in ("xfs", "none"):
    sys.exit(f"bench: BRICK_FS: {BRICK_FS!r} is not xfs or none")
for _v in VOLUMES:
    if _v not in ("distribute", "replicate"):
        sys.exit(f"bench: VOLUMES: unknown kind {_v!r} (distribute, replicate)")
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


def cmdlines():
    """{pid: argv} of every process."""
    out = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    out[int(pid)] = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            except OSError:
                pass
    return out


def cpu_seconds(pids):
    """User + system CPU time of `pids` (all their threads), in seconds."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def measured(fs, f):
    """(wall seconds, CPU seconds of `fs`'s servers and client) of running f."""
    pids = fs.pids()
    c = cpu_seconds(pids)
    t = timed(f)
    return t, cpu_seconds(pids) - c


def mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == path for line in f)


def replica_args(kind):
    return ["replica", "2"] if kind == "replicate" else []


class Nuage:
    name = "nuage"

    def __init__(self, base, ip, kind):
        self.base, self.ip, self.vol = base, ip, f"bench-{kind}"
        self.mnt = os.path.join(base, f"nuage-mnt-{kind}")
        os.makedirs(self.mnt)
        bricks = []
        for i in (1, 2):
            d = os.path.join(base, f"nuage-{kind}-b{i}")
            os.makedirs(d)
            bricks.append(f"{ip}:{d}")
        in_lab(NUAGE, "volume", "create", self.vol, *replica_args(kind), *bricks, "force")
        # gluster's default (nuage's is off): close(2) does not wait for the file's writes.
        in_lab(NUAGE, "volume", "set", self.vol, "performance.flush-behind", FLUSH_BEHIND)
        in_lab(NUAGE, "volume", "start", self.vol)

    def mount(self):
        in_lab(NUAGE, "mount", f"{self.ip}:/{self.vol}", self.mnt)

    def pids(self):
        """The node serving the bricks (all of this run's volumes) and this mount."""
        node = f"/var/lib/nuage/labs/{LAB}/"
        return [p for p, a in cmdlines().items()
                if a[:1] == [NUAGE] and (any(node in x for x in a) or ("mount" in a and self.mnt in a))]

    def umount(self):
        in_lab(NUAGE, "umount", self.mnt)
        for _ in range(100):
            if not mounted(self.mnt):
                return
            time.sleep(0.05)

    def close(self):
        if mounted(self.mnt):
            self.umount()


class Glusterd:
    """One glusterd for the run, in the lab machine."""

    def __init__(self, base):
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
        self.g = ["gluster", "--mode=script", f"--glusterd-sock={sock}"]
        for _ in range(100):
            if in_lab(*self.g, "peer", "status", check=False):
                break
            time.sleep(0.1)

    def close(self):
        try:
            with open(self.pidfile) as f:
                os.kill(int(f.read().strip()), 15)
        except (OSError, ValueError):
            pass


class Gluster:
    name = "gluster"

    def __init__(self, base, ip, kind, glusterd):
        self.base, self.ip, self.vol, self.g = base, ip, f"bench-{kind}", glusterd.g
        self.mnt = os.path.join(base, f"gluster-mnt-{kind}")
        os.makedirs(self.mnt)
        bricks = []
        for i in (1, 2):
            d = os.path.join(base, f"gluster-{kind}-b{i}")
            os.makedirs(d)
            bricks.append(f"{ip}:{d}")
        in_lab(*self.g, "volume", "create", self.vol, *replica_args(kind), *bricks, "force")
        in_lab(*self.g, "volume", "start", self.vol)

    def mount(self):
        in_lab("mount", "-t", "glusterfs", f"{self.ip}:/{self.vol}", self.mnt)

    def pids(self):
        """The volume's brick servers (glusterfsd) and this mount's client (glusterfs)."""
        bricks = os.path.join(self.base, f"gluster-{self.vol[len('bench-'):]}-b")
        return [p for p, a in cmdlines().items()
                if a[:1] == ["/usr/sbin/glusterfsd"] and any(x.startswith(bricks) for x in a)
                or a[:1] == ["/usr/sbin/glusterfs"] and self.mnt in a]

    def umount(self):
        in_lab("umount", self.mnt)
        for _ in range(100):
            if not mounted(self.mnt):
                return
            time.sleep(0.05)

    def close(self):
        if mounted(self.mnt):
            in_lab("umount", "-l", self.mnt, check=False)
        in_lab(*self.g, "volume", "stop", self.vol, check=False)
        in_lab(*self.g, "volume", "delete", self.vol, check=False)


def clear(mnt):
    for e in os.listdir(mnt):
        p = os.path.join(mnt, e)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)


def workloads(fs, src, local):
    """One run of every workload on `fs`; returns ({row: value}, {row: CPU seconds})."""
    out, cpu = {}, {}
    fs.mount()
    m = fs.mnt
    clear(m)

    def row(name, work, f):
        t, c = measured(fs, f)
        out[name] = work / t
        cpu[name] = c

    # (a) cp of a BIG_MIB file, and the same cp to local disk for reference. A copy of
    # its bytes: on the bricks' XFS, cp would otherwise clone the file (reflink) locally.
    row(f"cp {BIG_MIB} MiB to mount (MB/s)", BIG_MIB * 1.048576,
        lambda: sh("cp", "--reflink=never", src, os.path.join(m, "big")))
    dst = os.path.join(local, "big")
    t = timed(lambda: sh("cp", "--reflink=never", src, dst))
    os.unlink(dst)
    out[f"(reference) cp {BIG_MIB} MiB local disk"] = BIG_MIB * 1.048576 / t
    # (b) sequential write with fsync at the end, then read after a remount (cold cache).
    seq = os.path.join(m, "seq")
    row(f"write {SEQ_MIB} MiB + fsync (MB/s)", SEQ_MIB * 1.048576,
        lambda: sh("dd", "if=/dev/zero", f"of={seq}", "bs=1M", f"count={SEQ_MIB}", "conv=fsync"))
    fs.umount()
    fs.mount()
    row(f"read {SEQ_MIB} MiB (MB/s)", SEQ_MIB * 1.048576,
        lambda: sh("dd", f"if={seq}", "of=/dev/null", "bs=1M"))
    os.unlink(seq)
    os.unlink(os.path.join(m, "big"))
    # (c) small files: create, ls -l, read, remove; for each count in SMALL.
    for count in SMALL:
        small_files(fs, count, row)
    fs.umount()
    return out, cpu


def small_files(fs, count, row):
    m = fs.mnt
    d = os.path.join(m, "small")
    os.mkdir(d)
    block = b"x" * 4096
    names = [os.path.join(d, f"f{i:06}") for i in range(count)]

    def create():
        for n in names:
            with open(n, "wb") as f:
                f.write(block)

    row(f"create {count} x 4 KiB (files/s)", count, create)
    fs.umount()
    fs.mount()
    row(f"ls -l {count} files (files/s)", count, lambda: sh("ls", "-l", d))

    def read_all():
        for n in names:
            with open(n, "rb") as f:
                assert len(f.read()) == 4096

    row(f"read {count} x 4 KiB (files/s)", count, read_all)

    def remove():
        for n in names:
            os.unlink(n)

    row(f"remove {count} files (files/s)", count, remove)
    os.rmdir(d)


def main():
    if os.geteuid() != 0:
        sys.exit("bench: run as root (lab machines, FUSE mounts)")
    if not os.path.exists(NUAGE):
        sys.exit(f"bench: {NUAGE} not found; run `cargo build --release -p nuage` first")
    if BRICK_FS == "xfs" and shutil.which("mkfs.xfs") is None:
        sys.exit("bench: mkfs.xfs is missing: apt-get install -y xfsprogs (or BRICK_FS=none)")
    base = tempfile.mkdtemp(prefix="nuage-storage-bench-", dir="/var/tmp")
    image = loop = None
    systems = []
    try:
        if BRICK_FS == "xfs":
            image = base + ".img"
            with open(image, "wb") as f:
                f.truncate(BRICK_FS_GIB << 30)
            # Direct I/O from the loop device to its image: without it every byte is
            # cached twice (XFS's pages, then the image file's), and 2 GiB of replica
            # writes hit the dirty-page limits of the host twice over.
            loop = sh("losetup", "--direct-io=on", "--find", "--show", image).strip()
            sh("mkfs.xfs", "-q", "-f", "-i", "size=512", loop)
            sh("mount", "-o", "noatime", loop, base)
        sh(NUAGE, "lab", "--name", LAB, "up", "1", "--start")
        ip = sh(NUAGE, "lab", "--name", LAB, "exec", "n1", "--", "hostname", "-I").split()[0]
        src = os.path.join(base, "source")
        with open(src, "wb") as f:
            for _ in range(BIG_MIB):
                f.write(os.urandom(1 << 20))
        local = os.path.join(base, "local")
        os.makedirs(local)
        glusterd = Glusterd(base)
        systems = [glusterd]
        pairs = {}
        for kind in VOLUMES:
            pair = [Nuage(base, ip, kind), Gluster(base, ip, kind, glusterd)]
            systems[:0] = pair
            pairs[kind] = pair
        # results[kind][system][row] = [values…]; cpus likewise, CPU seconds.
        results = {k: {"nuage": {}, "gluster": {}} for k in VOLUMES}
        cpus = {k: {"nuage": {}, "gluster": {}} for k in VOLUMES}
        for run in range(RUNS):
            for kind, pair in pairs.items():
                for s in pair:
                    out, cpu = workloads(s, src, local)
                    for row, v in out.items():
                        results[kind][s.name].setdefault(row, []).append(v)
                    for row, v in cpu.items():
                        cpus[kind][s.name].setdefault(row, []).append(v)
            print(f"run {run + 1}/{RUNS} done", file=sys.stderr)
        print(f"# nuage storage vs GlusterFS {gluster_version()}: one machine,"
              f" medians of {RUNS} runs, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs,"
              f" bricks on {'/var/tmp' if image is None else 'their own XFS'}")
        for kind in VOLUMES:
            title = "2-brick distribute" if kind == "distribute" else "replica 2 (2 bricks)"
            print(f"\n## {title}")
            print(f"{'workload':<36} {'nuage':>10} {'gluster':>10} {'nuage/gluster':>14}"
                  f" {'CPU s: nuage':>13} {'gluster':>8}")
            r, c = results[kind], cpus[kind]
            for row in r["nuage"]:
                n = statistics.median(r["nuage"][row])
                g = statistics.median(r["gluster"][row])
                line = f"{row:<36} {n:>10.1f} {g:>10.1f} {n / g:>14.2f}"
                if row in c["nuage"]:
                    cn = statistics.median(c["nuage"][row])
                    cg = statistics.median(c["gluster"][row])
                    line += f" {cn:>13.2f} {cg:>8.2f}"
                print(line)
    finally:
        for s in systems:
            s.close()
        sh(NUAGE, "lab", "--name", LAB, "down", check=False)
        if loop is not None:
            sh("umount", base, check=False)
            sh("losetup", "-d", loop, check=False)
        if image is not None:
            os.unlink(image)
        shutil.rmtree(base, ignore_errors=True)


def gluster_version():
    return sh("glusterfs", "--version").split("\n")[0].replace("glusterfs ", "")


if __name__ == "__main__":
    main()
