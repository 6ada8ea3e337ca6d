#!/bin/bash
# Spawn mode, two nuage builds side by side: rounds of connections to /bin/cat, the
# builds alternated, with nuage's own CPU and context switches (perf stat, the node's
# threads only) and the whole tree's CPU (the node and every process it starts). Counts
# depend less on the machine's load than rates do; the rates are interleaved so that a
# burst of load falls on both.
#
#   bench/functions/ab.sh BUILD_A BUILD_B [ROUNDS]     # CLIENTS=32 for concurrent clients
#
# Copy each build to a path of its own first (e.g. /tmp/nuage-a); needs perf and the
# release fn-loadgen (cargo build --release -p fn-loadgen).
set -euo pipefail
[ $# -ge 2 ] || { sed -n 2,10p "$0"; exit 2; }
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
LG=$ROOT/target/release/fn-loadgen
ROUNDS=${3:-5}
CLIENTS=${CLIENTS:-1}
CONNS=${CONNS:-2000}
command -v perf >/dev/null || { echo "ab.sh: perf is missing: apt-get install -y linux-perf" >&2; exit 1; }
[ -x "$LG" ] || { echo "ab.sh: build $LG first" >&2; exit 1; }
CLEAN=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin NUAGE_GROUP_ENABLED=false)
TMP=$(mktemp -d /tmp/nuage-fn-ab.XXXXXX)
declare -A PID PORT
cleanup() {
  for x in A B; do [ -n "${PID[$x]:-}" ] && kill "${PID[$x]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
for x in A B; do
  bin=$1; [ $x = B ] && bin=$2
  api=$("$LG" free-port)
  "${CLEAN[@]}" "$bin" up --data "$TMP/data-$x" --api "127.0.0.1:$api" --name "ab${x,,}" >"$TMP/$x.log" 2>&1 &
  PID[$x]=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$api") 2>/dev/null && break; sleep 0.1; done
  PORT[$x]=$("$LG" free-port)
  NUAGE_API=127.0.0.1:$api "$bin" fn deploy "cat${x,,}" --port "${PORT[$x]}" -- /bin/cat >/dev/null
done
sleep 1
echo "functions A/B — $(date -u +%Y-%m-%dT%H:%MZ), load $(cut -d' ' -f1-3 /proc/loadavg); $CONNS connections, $CLIENTS clients; A=$1 B=$2"
for i in $(seq "$ROUNDS"); do
  for x in A B; do
    own=$(perf stat -x, --no-inherit -e task-clock,context-switches -p "${PID[$x]}" -- \
      "$LG" conns "127.0.0.1:${PORT[$x]}" "$CONNS" "$CLIENTS" 2>"$TMP/perf" >"$TMP/out"; cat "$TMP/perf")
    rate=$(cat "$TMP/out")
    tree=$(perf stat -x, -e task-clock -p "${PID[$x]}" -- \
      "$LG" conns "127.0.0.1:${PORT[$x]}" "$CONNS" "$CLIENTS" 2>&1 >/dev/null)
    awk -F, -v x="$x" -v i="$i" -v n="$CONNS" -v rate="$rate" -v tree="$tree" '
      /task-clock/ { cpu = $1 } /context-switches/ { cs = $1 }
      END { split(tree, t, ","); printf "%s round %d  %s  own_cpu_us=%.0f own_cs=%.2f tree_cpu_us=%.0f (per connection)\n", x, i, rate, 1000*cpu/n, cs/n, 1000*t[1]/n }' <<<"$own"
  done
done
