#!/usr/bin/env python3
"""Time each system call of the small-file workloads on nuage alone: per file, `open`
(O_CREAT), `write` and `close` of a 4 KiB file, then `open`, `read` and `close` of it,
then `unlink`; median and mean in µs, for a 2-brick distribute and a replica-2 volume.
Where a small file's time goes, call by call (docs/storage.md, Benchmark).

    python3 bench/storage/calls.py target/release/nuage   # SMALL=2000 REPS=1 VOLUMES=distribute,replicate

FLUSH_BEHIND=off|on (default on, gluster's default, as run.py sets it); BRICK_DIR=DIR puts
the bricks under DIR (default /var/tmp; see ab.py for why a file system of their own
keeps runs level). TRACE=1 also writes phase markers to the kernel's trace buffer
(/sys/kernel/tracing/trace_marker), so that FUSE requests traced there
(events/fuse/fuse_request_send, Linux 6.14 and later) can be counted per phase.
"""
import os, sys, time, subprocess, tempfile, shutil
NUAGE = os.path.abspath(sys.argv[1])
N = int(os.environ.get("SMALL", "2000"))
KINDS = os.environ.get("VOLUMES", "distribute,replicate").split(",")
LAB = f"calls-{os.getpid()}"[:24]


def sh(*a, check=True):
    r = subprocess.run(a, capture_output=True, text=True)
    if check and r.returncode:
        sys.exit(f"{a}: {r.stderr}")
    return r.stdout


def lab(*a):
    return sh(NUAGE, "lab", "--name", LAB, "exec", "n1", "--", *a)


def mark(m):
    if os.environ.get("TRACE"):
        with open("/sys/kernel/tracing/trace_marker", "w") as f:
            f.write(m)


def med(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def run(mnt, rep):
    d = os.path.join(mnt, f"small{rep}")
    os.mkdir(d)
    names = [os.path.join(d, f"f{i:06}") for i in range(N)]
    block = b"x" * 4096
    t = {k: [] for k in ("open", "write", "close", "reopen", "read", "rclose", "unlink")}
    c = time.perf_counter_ns
    mark("create")
    for n in names:
        a = c(); fd = os.open(n, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        b = c(); os.write(fd, block)
        e = c(); os.close(fd)
        f = c()
        t["open"].append(b - a); t["write"].append(e - b); t["close"].append(f - e)
    mark("read")
    for n in names:
        a = c(); fd = os.open(n, os.O_RDONLY | os.O_CLOEXEC)
        b = c(); os.read(fd, 8192)
        e = c(); os.close(fd)
        f = c()
        t["reopen"].append(b - a); t["read"].append(e - b); t["rclose"].append(f - e)
    mark("unlink")
    for n in names:
        a = c(); os.unlink(n); t["unlink"].append(c() - a)
    mark("end")
    os.rmdir(d)
    return t


base = tempfile.mkdtemp(prefix="calls-", dir=os.environ.get("BRICK_DIR", "/var/tmp"))
sh(NUAGE, "lab", "--name", LAB, "up", "1", "--start")
try:
    ip = lab("hostname", "-I").split()[0]
    time.sleep(1)
    for kind in KINDS:
        vol = f"v{kind[:3]}"
        mnt = os.path.join(base, "m" + kind)
        os.makedirs(mnt)
        bricks = []
        for i in (1, 2):
            d = os.path.join(base, f"{kind}-b{i}")
            os.makedirs(d)
            bricks.append(f"{ip}:{d}")
        replica = ["replica", "2"] if kind == "replicate" else []
        lab(NUAGE, "volume", "create", vol, *replica, *bricks, "force")
        lab(NUAGE, "volume", "set", vol, "performance.flush-behind", os.environ.get("FLUSH_BEHIND", "on"))
        lab(NUAGE, "volume", "start", vol)
        lab(NUAGE, "mount", f"{ip}:/{vol}", mnt)
        for rep in range(int(os.environ.get("REPS", "1"))):
            t = run(mnt, rep)
            cols = "  ".join(f"{k} {med(v) / 1000:.0f}/{sum(v) / len(v) / 1000:.0f}" for k, v in t.items())
            print(f"{kind} {rep}  {cols}  (median/mean µs)", flush=True)
        lab(NUAGE, "umount", mnt)
finally:
    sh(NUAGE, "lab", "--name", LAB, "down", check=False)
    shutil.rmtree(base, ignore_errors=True)
