#!/usr/bin/env python3
"""nuage storage alone, for A/B runs of two builds: dd write+fsync and small-file create and
remove on a 2-brick distribute and a replica-2 volume, with wall time, CPU time of the nuage
processes per operation and their context switches per operation (less load-dependent
than wall time on a shared machine).

    python3 bench/storage/ab.py target/release/nuage      # VOLUMES= SEQ_MIB=256 SMALL=1000 REPS=1 FLUSH_BEHIND=on

DETAIL=1 also prints the context switches per operation of each thread (by process and
thread name) that switched at least once per 20 operations.

Copy each build to its own path first: the processes of a run are found by their binary.

BRICK_DIR=DIR puts the bricks under DIR (default /var/tmp). On this machine's root file
system (ext4 without a journal) consecutive runs get slower as recently deleted inodes
pile up (docs/storage.md, "The bricks' file system"); a loop-mounted XFS keeps them level.
"""
import os, sys, time, subprocess, tempfile, shutil, glob, resource
NUAGE = os.path.abspath(sys.argv[1])
KINDS = os.environ.get("VOLUMES", "distribute,replicate").split(",")
SEQ = int(os.environ.get("SEQ_MIB", "256")); N = int(os.environ.get("SMALL", "1000"))
LAB = f"stab-{os.getpid()}"[:24]
def sh(*a, check=True):
    r = subprocess.run(a, capture_output=True, text=True)
    if check and r.returncode: sys.exit(f"{a}: {r.stderr}")
    return r.stdout
def lab(*a, check=True): return sh(NUAGE, "lab", "--name", LAB, "exec", "n1", "--", *a, check=check)
def procs():
    out = []
    for p in glob.glob("/proc/[0-9]*"):
        try:
            if os.readlink(p + "/exe") == NUAGE: out.append(p)
        except OSError: pass
    return out
def threads():
    """Context switches (voluntary, involuntary) and name of every thread, by thread id
    (threads that end between two samples, as idle blocking-pool threads do, would make a
    sum over processes go down)."""
    out = {}
    for p in procs():
        try:
            role = "mount" if b"mount" in open(p + "/cmdline", "rb").read() else "node"
            for t in glob.glob(p + "/task/*"):
                name = open(t + "/comm").read().strip()
                v = n = 0
                for l in open(t + "/status"):
                    if l.startswith("voluntary_ctxt_switches"): v = int(l.split()[1])
                    if l.startswith("nonvoluntary_ctxt_switches"): n = int(l.split()[1])
                out[t] = (role, name, v, n)
        except OSError: pass
    return out
def switches(a, b):
    """Per (role, thread name): (voluntary, involuntary) switches between samples a and b,
    of the threads alive at b (a thread born in between counts from zero)."""
    out = {}
    for t, (role, name, v, n) in b.items():
        _, _, va, na = a.get(t, (role, name, 0, 0))
        x = out.get((role, name), (0, 0)); out[(role, name)] = (x[0] + v - va, x[1] + n - na)
    return out
def detail(a, b, n):
    if not os.environ.get("DETAIL"): return
    for k, (v, i) in sorted(switches(a, b).items()):
        if v + i > n // 20:
            print(f"      {k[0]:<6} {k[1]:<16} voluntary {v/n:6.2f}/op  involuntary {i/n:6.2f}/op")
def sample():
    cpu = 0
    tck = os.sysconf("SC_CLK_TCK")
    for p in procs():
        try:
            st = open(p + "/stat").read().rsplit(")", 1)[1].split()
            cpu += (int(st[11]) + int(st[12])) / tck
        except OSError: pass
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return cpu, threads(), ru.ru_utime + ru.ru_stime, time.monotonic()
def delta(a, b, n, label, unit_n):
    wall = b[3] - a[3]
    print(f"  {label:<14} {unit_n / wall:9.1f}/s  nuage-cpu {1e6*(b[0]-a[0])/n:8.1f} us/op  cs {sum(v + i for v, i in switches(a[1], b[1]).values())/n:6.2f}/op  caller-cpu {1e6*(b[2]-a[2])/n:7.1f} us/op", flush=True)
base = tempfile.mkdtemp(prefix="stab-", dir=os.environ.get("BRICK_DIR", "/var/tmp"))
sh(NUAGE, "lab", "--name", LAB, "up", "1", "--start")
try:
    ip = sh(NUAGE, "lab", "--name", LAB, "exec", "n1", "--", "hostname", "-I").split()[0]
    time.sleep(1)
    for kind in KINDS:
        vol = f"v{kind[:3]}"; mnt = os.path.join(base, "m" + kind); os.makedirs(mnt)
        bricks = []
        for i in (1, 2):
            d = os.path.join(base, f"{kind}-b{i}"); os.makedirs(d); bricks.append(f"{ip}:{d}")
        lab(NUAGE, "volume", "create", vol, *(["replica", "2"] if kind == "replicate" else []), *bricks, "force")
        lab(NUAGE, "volume", "set", vol, "performance.flush-behind", os.environ.get("FLUSH_BEHIND", "on"))
        lab(NUAGE, "volume", "start", vol)
        lab(NUAGE, "mount", f"{ip}:/{vol}", mnt)
        print(f"{kind} ({os.path.basename(os.path.dirname(NUAGE))})")
        for rep in range(int(os.environ.get("REPS", "1"))):
            f = os.path.join(mnt, "seq")
            a = sample(); sh("dd", "if=/dev/zero", f"of={f}", "bs=1M", f"count={SEQ}", "conv=fsync"); b = sample()
            delta(a, b, SEQ, "dd MiB", SEQ * 1.048576)
            os.unlink(f)
            d = os.path.join(mnt, f"small{rep}"); os.mkdir(d)
            names = [os.path.join(d, f"f{i:06}") for i in range(N)]; blk = b"x" * 4096
            a = sample()
            for n in names:
                with open(n, "wb") as fh: fh.write(blk)
            b = sample(); delta(a, b, N, "create", N); detail(a[1], b[1], N)
            a = sample()
            for n in names: os.unlink(n)
            b = sample(); delta(a, b, N, "remove", N); detail(a[1], b[1], N)
            os.rmdir(d)
        lab(NUAGE, "umount", mnt)
finally:
    sh(NUAGE, "lab", "--name", LAB, "down", check=False)
    shutil.rmtree(base, ignore_errors=True)
