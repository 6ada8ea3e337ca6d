#!/usr/bin/env bash
# bench/groups/run.sh: three group daemons on three lab machines, a sender on n1,
# receivers on n2 and n3; throughput and one-way latency for RELIABLE, AGREED and SAFE
# at 100, 1000 and 8000 bytes, and the same sends through corosync 3 (CPG, knet, agreed
# order) when bench/groups/cpg_bench can be built (Debian: corosync libcpg-dev).
#
# Run as root from the repository root after `cargo build --release -p nuage` and
# `cargo build --release -p nuage-group --example groups_bench`:
#   bench/groups/run.sh [RUNS]        (default 5 runs; medians are printed)
# For AGREED, nuage and corosync runs alternate (nuage first in odd runs, corosync first
# in even ones); each run gives the ratios nuage/corosync, and their medians are printed
# with every per-run ratio, so a drifting machine load does not favour either side.
# Environment: COUNT, LATENCY, SERVICES, SIZES; NUAGE_RT=1 runs nuage's daemons with
# realtime scheduling, as corosync runs itself (see below).
# PACE=US sets nuage's token pacing hold (NUAGE_GROUP_TOKEN_PACE_US; 0 turns it off;
# unset: the daemon's default), for A/B runs.
# Diagnostics: STATS=1 prints each daemon's ring counters after every nuage run, and
# n1's messages per frame and token rotations per second over the throughput phase;
# CLIENT_RT=1 runs all clients (both systems) at realtime priority 50.
set -euo pipefail

RUNS=${1:-5}
ROOT=$(pwd)
NUAGE=$ROOT/target/release/nuage
CLIENT=$ROOT/target/release/examples/groups_bench
COUNT=${COUNT:-20000}
LATENCY=${LATENCY:-2000}
LAB=gbench$$
[ -x "$NUAGE" ] && [ -x "$CLIENT" ] || { echo "build the release binaries first (see the header)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/groups-bench.XXXXXX)
cleanup() {
  "$NUAGE" lab down --name "$LAB" >/dev/null 2>&1 || true   # kills every process of the lab
  rm -rf "$WORK"
}
trap cleanup EXIT

UP=$("$NUAGE" lab up 3 --name "$LAB")
A1=$(awk '$1=="n1" {print $2}' <<<"$UP"); A2=$(awk '$1=="n2" {print $2}' <<<"$UP"); A3=$(awk '$1=="n3" {print $2}' <<<"$UP")
NET=${A1%.*}
# A bulk sender reads its own copies while it writes; at ~100k messages/s a client
# descheduled for 10 ms on a busy machine is 1000 messages behind, Spread's default
# bound, so the benchmark raises it (as Spread users do for bulk transfers).
cat > "$WORK/spread.conf" <<CONF
MaxSessionMessages = 100000
Spread_Segment $NET.255:4803 {
  n1 $A1
  n2 $A2
  n3 $A3
}
CONF
# corosync gives itself round-robin realtime scheduling at the highest priority (its
# default, `sched_rr: yes`); on a busy machine that alone shortens its latency tail.
# NUAGE_RT=1 runs nuage's daemons the same way (chrt --rr 99), so the two protocols can
# be compared on equal terms; NUAGE_RT=0 (default) leaves them at normal priority.
RT=()
if [ "${NUAGE_RT:-0}" = 1 ]; then RT=(chrt --rr 99); fi
# CLIENT_RT=1 runs every benchmark client (nuage's and corosync's alike) at realtime
# priority 50, below the daemons: a diagnostic, to see how much of the latency tail is
# the clients being descheduled by the machine's other work.
CRT=()
if [ "${CLIENT_RT:-0}" = 1 ]; then CRT=(chrt --rr 50); fi
# PACE=US: token pacing hold of nuage's daemons (see docs/groups.md, "Token pacing").
PACEENV=()
if [ -n "${PACE:-}" ]; then PACEENV=(env "NUAGE_GROUP_TOKEN_PACE_US=$PACE"); fi
for m in n1 n2 n3; do
  mkdir -p "$WORK/$m"
  "$NUAGE" lab exec --name "$LAB" "$m" -- "${RT[@]}" "${PACEENV[@]}" "$NUAGE" group daemon -l n -n "$m" -c "$WORK/spread.conf" --runtime-dir "$WORK/$m" >"$WORK/$m.log" 2>&1 &
done
sleep 4

median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print "nan"; else print a[int((NR+1)/2)]}'; }
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p"; }

run_nuage() { # service size -> "msgs_per_s mbit p50 p99" (one run, receivers' median)
  local svc=$1 size=$2 out="$WORK/out.$svc.$size.$RANDOM"
  local pids=()
  for m in n2 n3; do
    "$NUAGE" lab exec --name "$LAB" "$m" -- "${CRT[@]}" "$CLIENT" recv -s 4803@127.0.0.1 -g "b$svc$size" --latency "$LATENCY" >"$out.$m" 2>&1 &
    pids+=($!)
  done
  sleep 0.5
  local watcher=
  if [ "${STATS:-0}" = 1 ]; then
    # n1's counters before the run and when the sender says its throughput phase is
    # over (during the 1 s pause before the probes): frames and tokens of that phase.
    snapshot n1 "$out.pre"
    ( for _ in $(seq 1000); do grep -q '^throughput phase over' "$out.n1" 2>/dev/null && break; sleep 0.01; done
      snapshot n1 "$out.mid" ) &
    watcher=$!
  fi
  if ! "$NUAGE" lab exec --name "$LAB" n1 -- "${CRT[@]}" "$CLIENT" send -s 4803@127.0.0.1 -g "b$svc$size" --service "$svc" --size "$size" --count "$COUNT" --latency "$LATENCY" --members 3 >"$out.n1" 2>&1; then
    echo "nuage sender failed: $(cat "$out.n1")" >&2
  fi
  wait "${pids[@]}" || true
  if [ -n "$watcher" ]; then wait "$watcher" || true; fi
  sleep 0.2
  cat "$out.n2" "$out.n3" > "$out.all"
  if [ "${STATS:-0}" = 1 ]; then ring_stats "$svc $size" >&2; fi
  echo "$(field msgs_per_s <"$out.all" | median) $(field mbit_per_s <"$out.all" | median) $(field p50_us <"$out.all" | median) $(field p99_us <"$out.all" | median)"
}

# STATS=1: after each nuage run, each daemon's ring counters (cumulative since start)
# and each receiver's latency line, on stderr, to see where a latency tail comes from.
ring_stats() {
  for m in n1 n2 n3; do
    local st; st=$("$NUAGE" group status --runtime-dir "$WORK/$m" --json 2>&1 | tr -d ' \n')
    echo "  [$1] $m $(sed -n 's/.*"stats":{\([^}]*\)}.*/\1/p' <<<"$st") pacing $(sed -n 's/.*"token_pacing":{\([^}]*\)}.*/\1/p' <<<"$st")"
  done
  for m in n2 n3; do echo "  [$1] recv $m: $(grep '^recv' "$out.$m")"; done
  # The throughput phase at n1 (the only sender): messages per frame and token
  # rotations per second; neither depends on how loaded the machine is.
  local secs d_frames d_tokens d_paced d_full
  secs=$(field secs <"$out.n1" | head -1)
  d_frames=$(( $(counter frames_sent <"$out.mid") - $(counter frames_sent <"$out.pre") ))
  d_tokens=$(( $(counter tokens <"$out.mid") - $(counter tokens <"$out.pre") ))
  d_paced=$(( $(counter tokens_paced <"$out.mid") - $(counter tokens_paced <"$out.pre") ))
  d_full=$(( $(counter released_full <"$out.mid") - $(counter released_full <"$out.pre") ))
  echo "  [$1] n1 throughput phase: $(awk -v c="$COUNT" -v f="$d_frames" -v t="$d_tokens" -v s="$secs" -v p="$d_paced" -v u="$d_full" 'BEGIN {
    printf "%.3f s, %d frames (%.1f msgs/frame), %d token visits (%.0f rotations/s), %d held back (%d released full)", s, f, (f > 0 ? c / f : 0), t, (s > 0 ? t / s : 0), p, u }')"
}
snapshot() { "$NUAGE" group status --runtime-dir "$WORK/$1" --json 2>/dev/null | tr -d ' \n' >"$2" || true; }
counter() { grep -o "\"$1\":[0-9]*" | head -1 | cut -d: -f2 | grep . || echo 0; }

# corosync: one per machine, each with a private /run and /var/lib/corosync (a mount
# namespace of its own), knet transport, and our CPG client doing the same sends.
COROSYNC=0
if command -v corosync >/dev/null && cc -O2 -o "$WORK/cpg_bench" "$ROOT/bench/groups/cpg_bench.c" -lcpg 2>"$WORK/cc.log"; then
  COROSYNC=1
  cat > "$WORK/corosync.conf" <<CONF
totem {
  version: 2
  cluster_name: nuagebench
  transport: knet
  crypto_cipher: none
  crypto_hash: none
  token: 1000
}
nodelist {
  node {
    ring0_addr: $A1
    name: n1
    nodeid: 1
  }
  node {
    ring0_addr: $A2
    name: n2
    nodeid: 2
  }
  node {
    ring0_addr: $A3
    name: n3
    nodeid: 3
  }
}
quorum {
  provider: corosync_votequorum
}
logging {
  to_stderr: yes
  to_syslog: no
  to_logfile: no
}
CONF
  for m in n1 n2 n3; do
    "$NUAGE" lab exec --name "$LAB" "$m" -- unshare --mount --propagation private \
      sh -c 'mount -t tmpfs none /run && mount -t tmpfs none /var/lib/corosync && exec corosync -f -c "$0"' "$WORK/corosync.conf" \
      >"$WORK/corosync.$m.log" 2>&1 &
  done
  sleep 5
  # Say how each daemon is scheduled (class RR = realtime round robin, TS = normal).
  ps -eo cls=,rtprio=,args= | awk -v w="$WORK" 'index($0, w) && ($3 ~ /corosync$/ || $4 == "group") && $3 != "sh" {
    print "scheduling: " $1 " " $2 "  " ($3 ~ /corosync$/ ? "corosync" : "nuage group daemon") }' | sort | uniq -c
else
  echo "corosync or libcpg-dev missing: no corosync figures (apt-get install corosync libcpg-dev)"
fi

run_cpg() { # size -> "msgs_per_s mbit p50 p99"
  local size=$1 out="$WORK/cpg.$size.$RANDOM" pids=()
  for m in n2 n3; do
    "$NUAGE" lab exec --name "$LAB" "$m" -- "${CRT[@]}" "$WORK/cpg_bench" recv "c$size" "$LATENCY" >"$out.$m" 2>&1 &
    pids+=($!)
  done
  sleep 0.5
  if ! "$NUAGE" lab exec --name "$LAB" n1 -- "${CRT[@]}" "$WORK/cpg_bench" send "c$size" "$size" "$COUNT" "$LATENCY" 3 >"$out.n1" 2>&1; then
    echo "cpg sender failed: $(cat "$out.n1")" >&2
  fi
  wait "${pids[@]}" || true
  cat "$out.n2" "$out.n3" > "$out.all"
  echo "$(field msgs_per_s <"$out.all" | median) $(field mbit_per_s <"$out.all" | median) $(field p50_us <"$out.all" | median) $(field p99_us <"$out.all" | median)"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f\n", a / b; else print "nan" }'; }
sorted() { tr ' ' '\n' | grep -v '^$' | sort -n | tr '\n' ' '; }

echo "groups benchmark: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg); $COUNT messages per run, $LATENCY latency probes, $RUNS runs; NUAGE_RT=${NUAGE_RT:-0} CLIENT_RT=${CLIENT_RT:-0} PACE=${PACE:-default}"
echo "(AGREED: nuage and corosync runs interleaved, alternating which goes first; ratios are per run, then the median)"
printf '%-14s %6s | %12s %10s %8s %8s\n' "system/service" size "msgs/s" "Mbit/s" "p50 us" "p99 us"
for svc in ${SERVICES:-reliable agreed safe}; do
  for size in ${SIZES:-100 1000 8000}; do
    rs=(); ms=(); p5=(); p9=()
    crs=(); cms=(); cp5=(); cp9=()
    rt=(); r5=(); r9=()
    compare=0
    if [ "$svc" = agreed ] && [ "$COROSYNC" = 1 ]; then compare=1; fi
    for r in $(seq "$RUNS"); do
      if [ "$compare" = 1 ]; then
        # Interleaved, alternating the order: the machine's load drifts, and each
        # ratio compares two runs made a few seconds apart.
        if [ $((r % 2)) = 1 ]; then
          read -r a b c d < <(run_nuage "$svc" "$size")
          read -r ca cb cc cd < <(run_cpg "$size")
        else
          read -r ca cb cc cd < <(run_cpg "$size")
          read -r a b c d < <(run_nuage "$svc" "$size")
        fi
        crs+=("$ca"); cms+=("$cb"); cp5+=("$cc"); cp9+=("$cd")
        rt+=("$(ratio "$a" "$ca")"); r5+=("$(ratio "$c" "$cc")"); r9+=("$(ratio "$d" "$cd")")
      else
        read -r a b c d < <(run_nuage "$svc" "$size")
      fi
      rs+=("$a"); ms+=("$b"); p5+=("$c"); p9+=("$d")
    done
    printf '%-14s %6s | %12s %10s %8s %8s\n' "nuage/$svc" "$size" \
      "$(printf '%s\n' "${rs[@]}" | median)" "$(printf '%s\n' "${ms[@]}" | median)" \
      "$(printf '%s\n' "${p5[@]}" | median)" "$(printf '%s\n' "${p9[@]}" | median)"
    if [ "$compare" = 1 ]; then
      printf '%-14s %6s | %12s %10s %8s %8s\n' "corosync/cpg" "$size" \
        "$(printf '%s\n' "${crs[@]}" | median)" "$(printf '%s\n' "${cms[@]}" | median)" \
        "$(printf '%s\n' "${cp5[@]}" | median)" "$(printf '%s\n' "${cp9[@]}" | median)"
      printf '%-14s %6s | nuage/corosync per run, median: throughput %s  p50 %s  p99 %s\n' "ratio" "$size" \
        "$(printf '%s\n' "${rt[@]}" | median)" "$(printf '%s\n' "${r5[@]}" | median)" "$(printf '%s\n' "${r9[@]}" | median)"
      printf '%-14s %6s |   throughput: %s\n' "" "" "$(echo "${rt[*]}" | sorted)"
      printf '%-14s %6s |   p50:        %s\n' "" "" "$(echo "${r5[*]}" | sorted)"
      printf '%-14s %6s |   p99:        %s\n' "" "" "$(echo "${r9[*]}" | sorted)"
    fi
  done
done
