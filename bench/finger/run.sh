#!/usr/bin/env bash
# Finger side by side: `nuage finger serve` and Debian's fingerd (in.fingerd started per
# connection by socat, as inetd does, running finger(1) as nobody) answer the same
# queries about the same system, in the same run, on this machine.
#
#   sudo bench/finger/run.sh [SECONDS_PER_RUN] [RUNS]      (defaults: 5 s, 3 runs)
#
# Everything happens in a private mount and network namespace: a fake system of 20 users,
# each logged in once with a plan, is mounted over /etc/passwd, /run (utmp), /var/log,
# /dev/pts; the two servers listen on 127.0.0.1:7979 (nuage) and :7980 (fingerd).
# For each scenario it prints every run, the medians, and the ratios nuage/fingerd.
# Needs: root, packages finger fingerd socat; builds nuage and the load generator
# (crates/nuage-coord/examples/finger_load.rs) in release mode.
set -euo pipefail

SECONDS_PER_RUN=${1:-5}
RUNS=${2:-3}
USERS=20
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

if [[ ${1:-} == --inside ]]; then
    shift
    SYS=$1 NUAGE=$2 LOAD=$3 SECONDS_PER_RUN=$4 RUNS=$5
    ip link set lo up
    mount --bind "$SYS/passwd" /etc/passwd
    mount -t tmpfs bench-run /run
    cp "$SYS/utmp" /run/utmp
    mount -t tmpfs bench-log /var/log
    cp "$SYS/lastlog" "$SYS/wtmp" /var/log/
    mount --bind "$SYS/pts" /dev/pts

    socat TCP-LISTEN:7980,reuseaddr,fork,backlog=256 \
        EXEC:/usr/sbin/in.fingerd,nofork,su=nobody 2>/dev/null &
    FINGERD=$!
    "$NUAGE" finger serve --port 7979 --bind 127.0.0.1 >/dev/null &
    NUAGED=$!
    trap 'kill $FINGERD $NUAGED 2>/dev/null; wait 2>/dev/null' EXIT
    sleep 1

    # The two must say the same thing, or the comparison is void.
    for q in user7 ""; do
        a=$(printf '%s\r\n' "$q" | socat -t5 - TCP:127.0.0.1:7979)
        b=$(printf '%s\r\n' "$q" | socat -t5 - TCP:127.0.0.1:7980)
        if [[ "$a" != "$b" ]]; then
            echo "nuage and fingerd answer \"$q\" differently:" >&2
            diff <(echo "$b") <(echo "$a") >&2 || true
            exit 1
        fi
    done

    median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
    field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p"; }
    printf '%-34s %-8s %8s %9s %9s\n' scenario server qps p50_ms p99_ms
    for scenario in "user7 1" "user7 16" "_ 16"; do
        set -- $scenario
        query=$1 clients=$2
        [[ $query == _ ]] && query=""
        label="\"$query\" x $clients clients"
        declare -A out=()
        for ((r = 1; r <= RUNS; r++)); do
            for server in nuage:7979 fingerd:7980; do
                name=${server%%:*} port=${server##*:}
                line=$("$LOAD" run 127.0.0.1 "$port" "$query" "$clients" "$SECONDS_PER_RUN")
                out[$name]+="$line"$'\n'
                printf '%-34s %-8s %8s %9s %9s\n' "$label (run $r)" "$name" \
                    "$(field qps <<<"$line")" "$(field p50_ms <<<"$line")" "$(field p99_ms <<<"$line")"
            done
        done
        for name in nuage fingerd; do
            for f in qps p50_ms p99_ms; do
                declare "${name}_$f=$(field $f <<<"${out[$name]}" | median)"
            done
        done
        printf '%-34s %-8s %8s %9s %9s\n' "$label MEDIAN" nuage "$nuage_qps" "$nuage_p50_ms" "$nuage_p99_ms"
        printf '%-34s %-8s %8s %9s %9s\n' "$label MEDIAN" fingerd "$fingerd_qps" "$fingerd_p50_ms" "$fingerd_p99_ms"
        awk -v a="$nuage_qps" -v b="$fingerd_qps" -v c="$nuage_p50_ms" -v d="$fingerd_p50_ms" -v l="$label" \
            'BEGIN {printf "%-34s ratio nuage/fingerd: qps %.1f, p50 latency %.3f\n", l, a/b, c/d}'
        unset out
    done
    exit 0
fi

if [[ $(id -u) != 0 ]]; then
    echo "bench/finger/run.sh: needs root (mount and network namespaces)" >&2
    exit 1
fi
for tool in finger /usr/sbin/in.fingerd socat unshare; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install finger fingerd socat)" >&2; exit 1; }
done
cd "$ROOT"
cargo build --release -q -p nuage --bin nuage
cargo build --release -q -p nuage-coord --example finger_load
WORK=$(mktemp -d /tmp/nuage-bench-finger.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
chmod 755 "$WORK"
target/release/examples/finger_load system "$WORK/sys" "$USERS"
echo "finger benchmark: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r), $SECONDS_PER_RUN s x $RUNS runs"
unshare --mount --net --propagation private \
    "$0" --inside "$WORK/sys" "$ROOT/target/release/nuage" \
    "$ROOT/target/release/examples/finger_load" "$SECONDS_PER_RUN" "$RUNS"
