#!/usr/bin/env bash
# The longer storage test run (docs/storage.md, "Conformance and longer tests"):
#   1. pjdfstest (Rust port) on a mount of a replica-2 volume,
#   2. fsx on the same mount for FSX_SECONDS (default 600),
#   3. the big-file and big-directory tests (ignored in CI): a file of BIG_FILE_GIB GiB
#      (default 2) written and read back with a checksum, and a directory of 100,000
#      entries, both through a FUSE mount of a replica-2 volume.
#
# Run as root from the repository root. Needs pjdfstest and fsx on PATH (or in
# $TOOLS/bin): `cargo install --root /tmp/storage-tools pjdfstest fsx`.
#
#   bench/storage/posix.sh                 # everything
#   STEPS="pjdfstest fsx" FSX_SECONDS=120 bench/storage/posix.sh
#
# Every process it starts is stopped by its own pid at the end; temporary files live in
# one directory under /var/tmp (world-traversable, as pjdfstest's unprivileged steps need).
set -euo pipefail

NUAGE=${NUAGE:-target/release/nuage}
TOOLS=${TOOLS:-/tmp/storage-tools}
FSX_SECONDS=${FSX_SECONDS:-600}
FSX_SEED=${FSX_SEED:-7}
STEPS=${STEPS:-"pjdfstest fsx big"}
export PATH="$TOOLS/bin:$PATH"

[ "$(id -u)" = 0 ] || { echo "posix.sh: run as root (FUSE mounts, pjdfstest's user switches)" >&2; exit 1; }
[ -x "$NUAGE" ] || { echo "posix.sh: $NUAGE not found: cargo build --release -p nuage" >&2; exit 1; }
NUAGE=$(realpath "$NUAGE")

base=$(mktemp -d /var/tmp/nuage-posix-XXXXXX)
chmod 755 "$base"
node_pid=
mnt="$base/mnt"
cleanup() {
    if mountpoint -q "$mnt"; then "$NUAGE" umount "$mnt" || umount -l "$mnt" || true; fi
    if [ -n "$node_pid" ]; then kill "$node_pid" 2>/dev/null || true; wait "$node_pid" 2>/dev/null || true; fi
    rm -rf "$base"
}
trap cleanup EXIT

# A node of its own (API on a free port), a replica-2 volume over two local bricks.
# Storage only: the group daemon `nuage up` starts by default wants the fixed port 4803,
# which another node on this host may hold.
NUAGE_GROUP_ENABLED=false "$NUAGE" up --api 127.0.0.1:0 --data "$base/data" --name posix >"$base/node.out" 2>"$base/node.err" &
node_pid=$!
for _ in $(seq 100); do
    api=$(sed -n 's|^api *http://||p' "$base/node.out")
    [ -n "$api" ] && break
    sleep 0.1
done
[ -n "${api:-}" ] || { echo "posix.sh: the node did not start: $(cat "$base/node.err")" >&2; exit 1; }
export NUAGE_API=$api
mkdir -p "$base/b1" "$base/b2" "$mnt"
"$NUAGE" volume create posix replica 2 "localhost:$base/b1" "localhost:$base/b2" force
"$NUAGE" volume start posix
"$NUAGE" mount "localhost:${api##*:}:/posix" "$mnt"
echo "posix.sh: replica-2 volume mounted on $mnt ($(date -u +%FT%TZ), $(nproc) CPUs)"

status=0
for step in $STEPS; do
    case $step in
    pjdfstest)
        conf="$base/pjdfstest.toml"
        # pjdfstest's default users are nobody and "tests"; Debian has daemon instead.
        printf '[settings]\nnaptime = 1.0\n\n[dummy_auth]\nentries = [["nobody", "nogroup"], ["daemon", "daemon"]]\n' >"$conf"
        mkdir "$mnt/pjd"
        chmod 755 "$mnt/pjd"
        echo "== pjdfstest $(pjdfstest --version | awk '{print $2}') on $mnt/pjd"
        if pjdfstest -c "$conf" -p "$mnt/pjd" >"$base/pjdfstest.log" 2>&1; then
            echo "pjdfstest: no failure"
        else
            echo "pjdfstest: FAILURES"; status=1
            grep -E 'FAILED|failed' "$base/pjdfstest.log" | head -50 || true
        fi
        tail -3 "$base/pjdfstest.log"
        ;;
    fsx)
        mkdir "$mnt/fsx"
        echo "== fsx (seed $FSX_SEED) for ${FSX_SECONDS} s on $mnt/fsx/file"
        set +e
        (cd "$mnt/fsx" && timeout "$FSX_SECONDS" fsx -S "$FSX_SEED" -q -P "$base" "$mnt/fsx/file") \
            >"$base/fsx.log" 2>&1
        rc=$?
        set -e
        # 124: stopped by the timeout after FSX_SECONDS without a failure.
        if [ $rc -eq 124 ]; then
            echo "fsx: no failure in ${FSX_SECONDS} s"
        else
            echo "fsx: FAILED (exit $rc)"; tail -30 "$base/fsx.log"; status=1
        fi
        ;;
    big)
        echo "== big file and big directory (cargo test, ignored in CI)"
        if ! cargo test --release -p nuage-fs --test big -- --ignored --nocapture --test-threads 1; then
            status=1
        fi
        ;;
    *) echo "posix.sh: unknown step $step" >&2; status=1 ;;
    esac
done
exit $status
