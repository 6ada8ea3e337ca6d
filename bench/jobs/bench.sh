#!/bin/bash
# nuage jobs beside Slurm on this machine, in one run (see docs/jobs.md, "Benchmark").
#
#   bench/jobs/bench.sh            # after `cargo build --release -p nuage`; needs root,
#                                  # Debian packages slurm-wlm and munge
#
# Each system gets one node with 2 slots (nuage: a manager and 2 workers; Slurm:
# slurmctld + slurmd with CPUs=2, batch_sched_delay=0, sched_min_interval=0) and:
#   cli    N trivial jobs (`true`), one submit command each (nuage jobs submit / sbatch),
#          from the first submit until every job has ended: jobs per second, and the
#          latency of one submit command (p50, p99);
#   array  the same N jobs from one command (submit --array N / sbatch --array);
#   start  L jobs one at a time on an idle cluster. queue-to-start: from the moment
#          the scheduler recorded the job as queued (nuage: the manager's submitted_at,
#          in µs, taken as the Submit RPC adds the job; Slurm: the time stamp of
#          slurmctld's "_slurm_rpc_submit_batch_job" log line, written as that RPC ends,
#          in ms, truncated: up to 1 ms against Slurm) to the job's first instruction
#          (the same bash script on both sides writing $EPOCHREALTIME: process start,
#          bash's own start, then the stamp). Also each scheduler's own idea of it:
#          nuage queued → started (started_at: the worker about to start the process);
#          Slurm submit → "sched: Allocate" (resources given, before slurmd launches it);
#   trace  the cost of tracing: TRACE_PAIRS pairs of array runs (TRACE_N jobs on a fresh
#          manager and workers), one untraced and one with --trace on the manager and
#          the workers, in alternating order. Per pair: the ratio of jobs/s and of the
#          CPU time the manager and workers used per job (from /proc, the daemons only:
#          the tasks are the same either way); the median of the pairs' ratios. CPU
#          time is what tracing adds and is far less disturbed by other load than
#          wall-clock throughput. And the cost of one span, off and on, from
#          `span_cost` (crates/nuage-jobs/examples), times the spans per job counted in
#          the traces: what tracing off can cost at most.
# Every figure is the median of RUNS runs; the ratio is nuage/Slurm (for latencies,
# Slurm/nuage: above 1 means nuage is faster).
set -euo pipefail

N=${N:-1000}
L=${L:-100}
RUNS=${RUNS:-3}
# Slurm starts about 2 jobs a second here (its scheduler wakes once a second), so one
# run of 1000 jobs takes minutes: fewer runs by default.
SLURM_RUNS=${SLURM_RUNS:-1}
# Pairs of traced/untraced runs, and jobs per run. One pair of 1000-job runs (~1.5 s
# each) moves by ±10-15 % on this shared 2-core machine (other load, timer phases), so
# 6 such pairs could not tell 5 % from 15 %. Runs of 2000 jobs and 20 pairs bring the
# uncertainty of the median of the pairs' ratios to about ±2-3 % (docs/tracing.md).
TRACE_PAIRS=${TRACE_PAIRS:-20}
TRACE_N=${TRACE_N:-2000}
# ONLY_NUAGE=1: skip Slurm and print only nuage's figures (e.g. for the tracing cost).
ONLY_NUAGE=${ONLY_NUAGE:-0}
here=$(cd "$(dirname "$0")" && pwd)
NUAGE=${NUAGE:-$here/../../target/release/nuage}
SPAN_COST=${SPAN_COST:-$here/../../target/release/examples/span_cost}
[ -x "$NUAGE" ] && [ -x "$SPAN_COST" ] || {
    echo "build first: cargo build --release -p nuage && cargo build --release -p nuage-jobs --example span_cost" >&2
    exit 1
}
work=$(mktemp -d /tmp/nuage-bench-jobs.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    "$here/slurm.sh" stop "$work/slurm" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT

cat > "$work/stamp.sh" <<'S'
#!/bin/bash
echo "$EPOCHREALTIME" > "$1"
S
chmod +x "$work/stamp.sh"

now() { echo "$EPOCHREALTIME"; }
# percentile P of the numbers on stdin
pct() { sort -g | awk -v p="$1" '{v[NR]=$1} END {i=int(p*NR+0.999999); if (i<1) i=1; print v[i]}'; }
median() { pct 0.5; }
ms() { awk '{printf "%.2f", $1*1000}'; }

# ---- nuage ------------------------------------------------------------------------
nuage_up() { # $1: extra manager/worker args (e.g. --trace DIR)
    local d=$work/nuage.$RANDOM
    mkdir -p "$d"
    "$NUAGE" jobs manager --listen 127.0.0.1:0 --data "$d" $1 > "$d/m.out" 2> "$d/m.err" &
    pids+=($!)
    for _ in $(seq 100); do grep -q listening "$d/m.out" 2>/dev/null && break; sleep 0.05; done
    export NUAGE_MANAGER
    NUAGE_MANAGER=$(grep -o '127.0.0.1:[0-9]*' "$d/m.out")
    for w in w1 w2; do
        "$NUAGE" jobs worker --name "$w" $1 > /dev/null 2> "$d/$w.err" &
        pids+=($!)
    done
    for _ in $(seq 100); do
        [ "$("$NUAGE" jobs workers | grep -c idle)" = 2 ] && return 0
        sleep 0.05
    done
    echo "nuage workers did not come up" >&2; exit 1
}
nuage_down() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
}
# CPU time (clock ticks) used so far by the manager and workers started by nuage_up.
nuage_cpu() {
    local t=0 p f
    for p in "${pids[@]}"; do
        read -r -a f < "/proc/$p/stat"
        t=$((t + f[13] + f[14]))
    done
    echo "$t"
}
# jobs/s of the last array by the manager's own records: $1 jobs over the time from the first
# job's submission to the last one's end (µs). Unlike run_array's clock, no 50 ms polling
# step and no client process start: on runs of ~1 s those alone move a figure by ~5 %.
records_tps() { # $1: jobs in the array
    "$NUAGE" jobs ls --tsv --limit "$1" |
        awk -F'\t' -v n="$1" 'NR == 1 || $6 < a {a = $6} NR == 1 || $9 > b {b = $9} END {printf "%.3f", n / ((b - a) / 1e6)}'
}
nuage_busy() { [ -n "$("$NUAGE" jobs ls --tsv --state queued,running --limit 1)" ]; }
slurm_busy() { [ -n "$(squeue -h -t PD,CF,R,CG | head -1)" ]; }
wait_idle() { while "$1"; do sleep 0.05; done; }

# cli: prints "jobs/s submit_p50_ms submit_p99_ms"
run_cli() { # $1 nuage|slurm
    local lat=$work/lat.$RANDOM t0 t1 a b
    t0=$(now)
    for i in $(seq "$N"); do
        a=$(now)
        if [ "$1" = nuage ]; then "$NUAGE" jobs submit "b$i" -- true > /dev/null
        else sbatch -Q -o /dev/null --wrap true; fi
        b=$(now)
        echo "$b - $a" | bc -l >> "$lat"
    done
    wait_idle "${1}_busy"
    t1=$(now)
    echo "$(echo "$N / ($t1 - $t0)" | bc -l) $(pct 0.5 < "$lat" | ms) $(pct 0.99 < "$lat" | ms)"
}

run_array() { # $1 nuage|slurm, $2 jobs (default N); prints jobs/s
    local n=${2:-$N}
    local t0 t1
    t0=$(now)
    if [ "$1" = nuage ]; then "$NUAGE" jobs submit b --array "$n" -- true > /dev/null
    else sbatch -Q -o /dev/null --array="0-$((n - 1))" --wrap true; fi
    wait_idle "${1}_busy"
    t1=$(now)
    echo "$n / ($t1 - $t0)" | bc -l
}

run_start() { # prints "p50_ms p99_ms p50_ms(records) p99_ms(records)"
    local d=$work/start.$RANDOM id t
    mkdir -p "$d"
    for i in $(seq "$L"); do
        if [ "$1" = nuage ]; then id=$("$NUAGE" jobs submit "s$i" -- "$work/stamp.sh" "$d/s.$i")
        else id=$(sbatch --parsable -o /dev/null "$work/stamp.sh" "$d/s.$i"); fi
        echo "$id" > "$d/id.$i"
        # Let the job start and end: each one meets an idle cluster.
        for _ in $(seq 500); do [ -s "$d/s.$i" ] && break; sleep 0.01; done
        wait_idle "${1}_busy"
    done
    # When the scheduler queued each job, from its own records: nuage's jobs table
    # (microseconds); slurmctld's log line for the submit RPC (milliseconds).
    if [ "$1" = nuage ]; then
        "$NUAGE" jobs ls --tsv --limit 100000 > "$d/tsv"
    fi
    : > "$d/lat"; : > "$d/rec"
    for i in $(seq "$L"); do
        id=$(cat "$d/id.$i")
        if [ "$1" = nuage ]; then
            t=$(awk -F'\t' -v id="$id" '$1 == id {printf "%.6f %.6f", $6 / 1e6, $8 / 1e6}' "$d/tsv")
            echo "$(cat "$d/s.$i") - ${t% *}" | bc -l >> "$d/lat"
            echo "${t#* } - ${t% *}" | bc -l >> "$d/rec"
        else
            t=$(grep -m1 "_slurm_rpc_submit_batch_job: JobId=$id " "$SLURM_DIR/slurmctld.log" | sed 's/^\[\([^]]*\)\].*/\1/')
            t=$(date -u -d "$t" +%s.%3N)
            echo "$(cat "$d/s.$i") - $t" | bc -l >> "$d/lat"
            a=$(grep -m1 "sched: Allocate JobId=$id " "$SLURM_DIR/slurmctld.log" | sed 's/^\[\([^]]*\)\].*/\1/')
            echo "$(date -u -d "$a" +%s.%3N) - $t" | bc -l >> "$d/rec"
        fi
    done
    echo "$(pct 0.5 < "$d/lat" | ms) $(pct 0.99 < "$d/lat" | ms) $(pct 0.5 < "$d/rec" | ms) $(pct 0.99 < "$d/rec" | ms)"
}

declare -A R
record() { R[$1]+="$2"$'\n'; }
med() { printf '%s' "${R[$1]}" | median; }

for run in $(seq "$RUNS"); do
    echo "run $run/$RUNS: nuage" >&2
    nuage_up ""
    read -r tps p50 p99 < <(run_cli nuage); record n_cli "$tps"; record n_sub50 "$p50"; record n_sub99 "$p99"
    record n_array "$(run_array nuage)"
    read -r s50 s99 r50 r99 < <(run_start nuage)
    record n_start50 "$s50"; record n_start99 "$s99"; record n_rec50 "$r50"; record n_rec99 "$r99"
    nuage_down
done

# The cost of tracing: pairs of array runs, untraced and traced, in alternating order.
spans_per_job=
for pair in $(seq "$TRACE_PAIRS"); do
    echo "tracing pair $pair/$TRACE_PAIRS" >&2
    if [ $((pair % 2)) = 1 ]; then order="off on"; else order="on off"; fi
    for mode in $order; do
        tdir=$work/trace.$pair
        if [ "$mode" = on ]; then nuage_up "--trace $tdir"; else nuage_up ""; fi
        c0=$(nuage_cpu)
        tps=$(run_array nuage "$TRACE_N")
        c1=$(nuage_cpu)
        rec=$(records_tps "$TRACE_N")
        nuage_down
        eval "tps_$mode=\$tps rec_$mode=\$rec cpu_$mode=\$((c1 - c0))"
        if [ "$mode" = on ]; then
            # Spans recorded per job (one line per span in the Trace Event JSON).
            [ -n "$spans_per_job" ] ||
                spans_per_job=$(echo "$(cat "$tdir"/json/*.json | grep -c '"ph":"X"') / $TRACE_N" | bc -l)
            rm -rf "$tdir"
        fi
    done
    # Each pair on stderr: single pairs disagree by tens of per cent on a shared machine.
    printf '  pair %d: jobs/s off %.1f on %.1f; by the records off %.1f on %.1f; CPU ticks off %d on %d\n' \
        "$pair" "$tps_off" "$tps_on" "$rec_off" "$rec_on" "$cpu_off" "$cpu_on" >&2
    record t_tps_off "$tps_off"; record t_tps_on "$tps_on"
    record t_tps_ratio "$(echo "$tps_on / $tps_off" | bc -l)"
    record t_rec_off "$rec_off"; record t_rec_on "$rec_on"
    record t_rec_ratio "$(echo "$rec_on / $rec_off" | bc -l)"
    record t_cpu_off "$(echo "$cpu_off * 10000 / $TRACE_N" | bc -l)"   # µs per job (100 Hz ticks)
    record t_cpu_on "$(echo "$cpu_on * 10000 / $TRACE_N" | bc -l)"
    record t_cpu_ratio "$(echo "$cpu_on / $cpu_off" | bc -l)"
done
[ "$TRACE_PAIRS" = 0 ] || read -r span_off_ns span_on_ns < <("$SPAN_COST")

tracing_report() {
    local job_us
    [ "$TRACE_PAIRS" -gt 0 ] || return 0
    job_us=$(echo "1000000 / $(med t_tps_off)" | bc -l)
    echo "tracing cost: $TRACE_PAIRS pairs of array runs of $TRACE_N jobs (median of the pairs' ratios); $(printf '%.1f' "$spans_per_job") spans per job"
    printf '  throughput       %8.1f jobs/s traced vs %8.1f untraced: ratio %.3f (%+.1f%%)\n' \
        "$(med t_tps_on)" "$(med t_tps_off)" "$(med t_tps_ratio)" "$(echo "($(med t_tps_ratio) - 1) * 100" | bc -l)"
    printf '  by the records   %8.1f jobs/s traced vs %8.1f untraced: ratio %.3f (%+.1f%%)\n' \
        "$(med t_rec_on)" "$(med t_rec_off)" "$(med t_rec_ratio)" "$(echo "($(med t_rec_ratio) - 1) * 100" | bc -l)"
    printf '  daemons CPU/job  %8.1f µs traced vs %8.1f µs untraced: ratio %.3f (%+.1f%%)\n' \
        "$(med t_cpu_on)" "$(med t_cpu_off)" "$(med t_cpu_ratio)" "$(echo "($(med t_cpu_ratio) - 1) * 100" | bc -l)"
    printf '  one span         %8.2f ns off, %8.2f ns on; off, per job: %.3f µs = %.5f%% of a job (%.0f µs at the untraced rate)\n' \
        "$span_off_ns" "$span_on_ns" "$(echo "$span_off_ns * $spans_per_job / 1000" | bc -l)" \
        "$(echo "$span_off_ns * $spans_per_job / 1000 / $job_us * 100" | bc -l)" "$job_us"
}

if [ "$ONLY_NUAGE" = 1 ]; then
    echo
    echo "nuage jobs alone, $(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%MZ), N=$N L=$L, median of $RUNS runs"
    [ "$RUNS" = 0 ] || for k in n_cli n_array n_sub50 n_sub99 n_start50 n_start99 n_rec50 n_rec99; do
        printf '%-12s %10.2f\n' "$k" "$(med $k)"
    done
    tracing_report
    exit 0
fi
echo "slurm: starting a private single-node Slurm" >&2
SLURM_DIR=$work/slurm
SLURM_CONF=$("$here/slurm.sh" start "$SLURM_DIR")
export SLURM_CONF
cd "$work"
# A first job wakes the node up (its registration) before anything is measured.
sbatch -Q -o /dev/null --wrap true; wait_idle slurm_busy
for run in $(seq "$SLURM_RUNS"); do
    echo "run $run/$SLURM_RUNS: slurm" >&2
    read -r tps p50 p99 < <(run_cli slurm); record s_cli "$tps"; record s_sub50 "$p50"; record s_sub99 "$p99"
    record s_array "$(run_array slurm)"
    read -r s50 s99 r50 r99 < <(run_start slurm)
    record s_start50 "$s50"; record s_start99 "$s99"; record s_rec50 "$r50"; record s_rec99 "$r99"
done

row() { # name nuage slurm higher-is-better(1)|lower(0) unit
    local ratio
    if [ "$4" = 1 ]; then ratio=$(echo "$2 / $3" | bc -l); else ratio=$(echo "$3 / $2" | bc -l); fi
    printf '%-34s %12.2f %12.2f %9.1fx\n' "$1 ($5)" "$2" "$3" "$ratio"
}
echo
echo "nuage jobs vs Slurm $(slurmctld -V | awk '{print $2}'), $(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%MZ), N=$N L=$L, median of $RUNS (nuage) / $SLURM_RUNS (Slurm) runs"
printf '%-34s %12s %12s %10s\n' "" nuage slurm "nuage adv."
row "jobs/s, one submit command each" "$(med n_cli)" "$(med s_cli)" 1 "jobs/s"
row "jobs/s, one array command" "$(med n_array)" "$(med s_array)" 1 "jobs/s"
row "submit command p50" "$(med n_sub50)" "$(med s_sub50)" 0 ms
row "submit command p99" "$(med n_sub99)" "$(med s_sub99)" 0 ms
row "queue-to-start p50" "$(med n_start50)" "$(med s_start50)" 0 ms
row "queue-to-start p99" "$(med n_start99)" "$(med s_start99)" 0 ms
row "queued-to-started (own records) p50" "$(med n_rec50)" "$(med s_rec50)" 0 ms
row "queued-to-started (own records) p99" "$(med n_rec99)" "$(med s_rec99)" 0 ms
echo
tracing_report
