#!/usr/bin/env bash
# The functions benchmark: nuage side by side with the real peers, in one run, on this
# machine (see docs/functions.md, "Benchmark").
#
#   bench/functions/run.sh            # as root (the balancing part uses a lab)
#   RUNS=5 CONNS=2000 REQS=20000 bench/functions/run.sh
#   ONLY=balancing bench/functions/run.sh   # the two-machine part only
#   ONLY=single bench/functions/run.sh      # the single-machine rows only
#
# Every server runs the same program, /bin/cat, so the figures compare the servers:
#   nuage spawn   nuage fn deploy … -- /bin/cat               (a process per connection)
#   nuage pool    nuage fn deploy … --mode pool --min 32 --max 32 -- /bin/cat
#   socat         socat TCP-LISTEN:P,fork,reuseaddr,backlog=1024 EXEC:/bin/cat
#   xinetd        wait = no, server = /bin/cat, cps = 100000 1, instances UNLIMITED
# and, for balancing over two machines:
#   HAProxy       on lab machine n1, mode tcp, balance roundrobin, in front of socat on
#                 n1 and n2; compared with socat on n1 alone (no balancing)
#   nuage         function on lab machines n1 and n2, connections to n1 placed
#                 round-robin; compared with the same function on n1 alone.
#                 HAProxy also runs in front of nuage's single-machine functions on n1
#                 and n2: the very backends nuage balances over (same baseline, links).
# "added by balancing" = per run, p50 with balancing - p50 of the same backends without,
# the set-ups measured interleaved; the median over runs (see balance_row).
# Figures: median of RUNS runs (each run: fn-loadgen, see loadgen/src/main.rs), the servers
# of a row measured interleaved.
set -euo pipefail

RUNS=${RUNS:-3}
CONNS=${CONNS:-2000}
REQS=${REQS:-20000}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"

for tool in socat xinetd haproxy; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is missing: apt-get install -y socat xinetd haproxy" >&2; exit 1; }
done

echo "building (release)…" >&2
cargo build --release -q -p nuage -p fn-echo -p fn-toupper -p fn-loadgen
BIN=$ROOT/target/release
NUAGE=$BIN/nuage
LG=$BIN/fn-loadgen
TMP=$(mktemp -d /tmp/nuage-fn-bench.XXXXXX)
LAB=fnb-$$
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -f "$TMP/lab" ] && "$NUAGE" lab --name "$LAB" down >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT

port() { "$LG" free-port; }
wait_port() { # host port
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "run.sh: nothing listens on $1:$2" >&2; exit 1
}

# --- the servers -----------------------------------------------------------------------
# Every server, and so every cat it starts, runs with the same small environment: nuage
# gives its functions PATH and its own variables only (docs/functions.md), while socat
# and xinetd pass theirs on, and a LANG=C.UTF-8 inherited from this shell makes each cat
# load the locale at start (about 75 more system calls): a cost of the environment, not of
# the server, so no server is given it.
CLEAN=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
API=$(port)
"${CLEAN[@]}" "$NUAGE" up --data "$TMP/data" --api "127.0.0.1:$API" --name bench >"$TMP/nuage.log" 2>&1 &
PIDS+=($!)
wait_port 127.0.0.1 "$API"
export NUAGE_API=127.0.0.1:$API
SPAWN=$(port); POOL=$(port)
"$NUAGE" fn deploy bspawn --port "$SPAWN" -- /bin/cat >/dev/null
"$NUAGE" fn deploy bpool --port "$POOL" --mode pool --min 32 --max 32 -- /bin/cat >/dev/null

SOCAT=$(port)
"${CLEAN[@]}" socat "TCP-LISTEN:$SOCAT,bind=127.0.0.1,fork,reuseaddr,backlog=1024" EXEC:/bin/cat &
PIDS+=($!)

XINETD=$(port)
cat >"$TMP/xinetd.conf" <<EOF
defaults
{
    log_on_success =
    log_on_failure =
}
service nuagebench
{
    type         = UNLISTED
    port         = $XINETD
    bind         = 127.0.0.1
    socket_type  = stream
    protocol     = tcp
    wait         = no
    user         = root
    server       = /bin/cat
    cps          = 100000 1
    instances    = UNLIMITED
    per_source   = UNLIMITED
}
EOF
"${CLEAN[@]}" xinetd -dontfork -f "$TMP/xinetd.conf" -pidfile "$TMP/xinetd.pid" &
PIDS+=($!)

for p in "$SPAWN" "$POOL" "$SOCAT" "$XINETD"; do wait_port 127.0.0.1 "$p"; done
sleep 1 # the pool's 32 warm instances

# --- measuring -------------------------------------------------------------------------
# measure MODE TOTAL CLIENTS ADDR… -> one line per ADDR: "rate p50_us p99_us", medians of
# RUNS runs. The addresses are measured interleaved (each once, then again, RUNS times),
# so that load from other programs on this machine falls on all of them alike.
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
field() { sed "s/.*$1=\(-\{0,1\}[0-9]*\).*/\1/"; }
measure() {
  local mode=$1 total=$2 clients=$3 i a line errors=0
  shift 3
  local out=()
  for i in $(seq "$RUNS"); do
    for a in $(seq 0 $(($# - 1))); do
      local addrs=("$@")
      line=$("$LG" "$mode" "${addrs[$a]}" "$total" "$clients")
      out[$a]+="$line"$'\n'
      errors=$((errors + $(field errors <<<"$line")))
    done
  done
  [ "$errors" -eq 0 ] || echo "run.sh: $errors failed operations ($mode, $clients clients)" >&2
  for a in $(seq 0 $(($# - 1))); do
    local f med=()
    for f in rate p50_us p99_us; do med+=("$(printf '%s' "${out[$a]}" | field "$f" | median)"); done
    echo "${med[*]}"
  done
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "-"; else printf "%.2f", a / b }'; }

printf '%s\n' "functions benchmark — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r), median of $RUNS runs"
printf '\n%-28s %12s %12s %12s %12s %11s %12s %11s\n' figure "nuage spawn" "nuage pool" socat xinetd spawn/socat spawn/xinetd pool/socat

row() { # title MODE TOTAL CLIENTS
  local s p so x figures
  figures=$(measure "$2" "$3" "$4" "127.0.0.1:$SPAWN" "127.0.0.1:$POOL" "127.0.0.1:$SOCAT" "127.0.0.1:$XINETD")
  { read -r -a s; read -r -a p; read -r -a so; read -r -a x; } <<<"$figures"
  local unit=$([ "$2" = conns ] && echo "conn/s" || echo "req/s")
  printf '%-28s %12s %12s %12s %12s %11s %12s %11s\n' "$1 ($unit)" "${s[0]}" "${p[0]}" "${so[0]}" "${x[0]}" \
    "$(ratio "${s[0]}" "${so[0]}")" "$(ratio "${s[0]}" "${x[0]}")" "$(ratio "${p[0]}" "${so[0]}")"
  printf '%-28s %12s %12s %12s %12s %11s %12s %11s\n' "  p50 latency (µs)" "${s[1]}" "${p[1]}" "${so[1]}" "${x[1]}" \
    "$(ratio "${s[1]}" "${so[1]}")" "$(ratio "${s[1]}" "${x[1]}")" "$(ratio "${p[1]}" "${so[1]}")"
  printf '%-28s %12s %12s %12s %12s %11s %12s %11s\n' "  p99 latency (µs)" "${s[2]}" "${p[2]}" "${so[2]}" "${x[2]}" \
    "$(ratio "${s[2]}" "${so[2]}")" "$(ratio "${s[2]}" "${x[2]}")" "$(ratio "${p[2]}" "${so[2]}")"
}

if [ "${ONLY:-}" != balancing ]; then
  row "$CONNS conns, sequential" conns "$CONNS" 1
  row "$CONNS conns, 32 clients" conns "$CONNS" 32
  row "$REQS round trips, 1 conn" reqs "$REQS" 1
  row "$REQS round trips, 32 conns" reqs "$REQS" 32
fi

# --- balancing over two machines -------------------------------------------------------
[ "${ONLY:-}" = single ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo; echo "balancing: skipped (the lab needs root)"; exit 0
fi
touch "$TMP/lab"
"$NUAGE" lab --name "$LAB" up 2 --start >"$TMP/lab.out"
N1=$(awk '$1 == "n1" { print $2 }' "$TMP/lab.out")
N2=$(awk '$1 == "n2" { print $2 }' "$TMP/lab.out")
# `one` and `uno` run on one machine each (no balancing); `two` on both (nuage balances).
"$NUAGE" fn --api "$N1:7070" deploy one --port 9001 --on n1 -- /bin/cat >/dev/null
"$NUAGE" fn --api "$N1:7070" deploy uno --port 9003 --on n2 -- /bin/cat >/dev/null
"$NUAGE" fn --api "$N1:7070" deploy two --port 9002 -- /bin/cat >/dev/null
# The peers run where nuage runs: socat on n1 and n2 (port 9101); HAProxy on n1 in front
# of both socat (9100, the issue's set-up) and in front of nuage's `one` and `uno` (9200:
# the very backends nuage balances over, so both balancers share baseline and links).
for m in n1 n2; do
  "$NUAGE" lab --name "$LAB" exec "$m" -- "${CLEAN[@]}" socat "TCP-LISTEN:9101,fork,reuseaddr,backlog=1024" EXEC:/bin/cat &
  PIDS+=($!)
done
cat >"$TMP/haproxy.cfg" <<EOF
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend bench
    bind $N1:9100
    default_backend cats
backend cats
    balance roundrobin
    server n1 $N1:9101
    server n2 $N2:9101
frontend benchnuage
    bind $N1:9200
    default_backend nuages
backend nuages
    balance roundrobin
    server n1 $N1:9001
    server n2 $N2:9003
EOF
"$NUAGE" lab --name "$LAB" exec n1 -- haproxy -db -f "$TMP/haproxy.cfg" >"$TMP/haproxy.log" 2>&1 &
PIDS+=($!)
for p in 9001 9100 9101 9200; do wait_port "$N1" "$p"; done
for p in 9003 9101; do wait_port "$N2" "$p"; done
for _ in $(seq 100); do # n1 sees `two` running on n2
  "$NUAGE" fn --api "$N1:7070" ls | grep -q '^two .* running$' && break
  sleep 0.2
done
sleep 1

# Balancing: the five set-ups are measured interleaved (a b c d e, then again, RUNS
# times), so that load from other programs on this machine falls on all of them alike.
# "added by balancing" is, per run, the p50 of a balanced set-up minus the p50 of its
# unbalanced baseline measured moments before; the table shows the median over runs of
# that difference (not the difference of two medians taken minutes apart).
#   a  nuage n1         `one` on n1 alone                      (baseline of b and e)
#   b  nuage n1+n2      `two`, nuage balancing on n1
#   c  socat n1         socat on n1 alone                      (baseline of d)
#   d  haproxy->socat   HAProxy on n1 over socat on n1 and n2
#   e  haproxy->nuage   HAProxy on n1 over `one` (n1) and `uno` (n2)
printf '\n%-28s %10s %11s %10s %14s %14s %10s %10s\n' "balancing (client->n1)" "nuage n1" "nuage n1+n2" "socat n1" "haproxy>socat" "haproxy>nuage" "nuage/hap" "(same be)"
balance_row() { # title MODE TOTAL CLIENTS
  local setups=(a b c d e) s i f line label
  declare -A addr=([a]="$N1:9001" [b]="$N1:9002" [c]="$N1:9101" [d]="$N1:9100" [e]="$N1:9200")
  declare -A lines=() p50=() med=()
  local diffs_b=() diffs_d=() diffs_e=() errors=0
  for i in $(seq "$RUNS"); do
    for s in "${setups[@]}"; do
      line=$("$LG" "$2" "${addr[$s]}" "$3" "$4")
      lines[$s]+="$line"$'\n'
      errors=$((errors + $(field errors <<<"$line")))
      p50[$s]=$(field p50_us <<<"$line")
    done
    diffs_b+=($((p50[b] - p50[a]))); diffs_d+=($((p50[d] - p50[c]))); diffs_e+=($((p50[e] - p50[a])))
  done
  [ "$errors" -eq 0 ] || echo "run.sh: $errors failed operations (balancing, $1)" >&2
  for s in "${setups[@]}"; do
    for f in rate p50_us p99_us; do
      med[$s$f]=$(printf '%s' "${lines[$s]}" | field "$f" | median)
    done
  done
  for f in rate p50_us p99_us; do
    case $f in rate) label="$1 (conn/s)" ;; p50_us) label="  p50 latency (µs)" ;; *) label="  p99 latency (µs)" ;; esac
    printf '%-28s %10s %11s %10s %14s %14s %10s %10s\n' "$label" "${med[a$f]}" "${med[b$f]}" "${med[c$f]}" "${med[d$f]}" "${med[e$f]}" \
      "$(ratio "${med[b$f]}" "${med[d$f]}")" "$(ratio "${med[b$f]}" "${med[e$f]}")"
  done
  printf '%-28s %10s %11s %10s %14s %14s\n' "  added by balancing (µs)" "" \
    "$(printf '%s\n' "${diffs_b[@]}" | median)" "" \
    "$(printf '%s\n' "${diffs_d[@]}" | median)" "$(printf '%s\n' "${diffs_e[@]}" | median)"
  printf '%-28s %10s %11s %10s %14s %14s\n' "    per run" "" "$(IFS=,; echo "${diffs_b[*]}")" "" "$(IFS=,; echo "${diffs_d[*]}")" "$(IFS=,; echo "${diffs_e[*]}")"
  if [ "$4" -eq 1 ]; then # one client: the two paths of round-robin, apart
    for f in p50_fast_half_us p50_slow_half_us; do
      for s in "${setups[@]}"; do med[$s$f]=$(printf '%s' "${lines[$s]}" | field "$f" | median); done
    done
    printf '%-28s %10s %11s %10s %14s %14s\n' "  p50, one path/other (µs)" "" "${med[bp50_fast_half_us]}/${med[bp50_slow_half_us]}" "" \
      "${med[dp50_fast_half_us]}/${med[dp50_slow_half_us]}" "${med[ep50_fast_half_us]}/${med[ep50_slow_half_us]}"
  fi
}
balance_row "$CONNS conns, sequential" conns "$CONNS" 1
balance_row "$CONNS conns, 32 clients" conns "$CONNS" 32
