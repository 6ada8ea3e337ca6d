#!/usr/bin/env bash
# Mail side by side: relaying from the server of domain a to the server of domain b and
# delivering to a mailbox, with nuage (causal and fifo order) and with Postfix (two
# instances: a relays b's mail over SMTP to b, which delivers to a Maildir), in the same
# run, on this machine.
#
#   sudo bench/mail/run.sh [MESSAGES] [RUNS] [SIZE]     (defaults: 300 messages, 3 runs, 1000 bytes)
#
# One client submits MESSAGES messages of SIZE bytes back to back over one connection to
# a's server (nuage protocol, or SMTP for Postfix), addressed to brandon@b; a run ends
# when all of them are in Brandon's mailbox at b's server. Both systems make every
# message durable (fsync) before acknowledging it, at a and at b.
# Everything runs in a private network namespace on 127.0.0.1: nuage a:2525 b:2526,
# Postfix a:2625 b:2626. Prints every run, the medians, and the ratios nuage/Postfix.
# Needs: root, the Debian package postfix (not running; instances use their own config
# and queue directories under a temporary directory); builds nuage and the load
# generator (crates/nuage-mail/examples/mail_load.rs) in release mode.
set -euo pipefail

MESSAGES=${1:-300}
RUNS=${2:-3}
SIZE=${3:-1000}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

postfix_instance() { # DIR NAME PORT EXTRA_MAIN_CF
    local dir=$1 name=$2 port=$3 extra=$4
    mkdir -p "$dir"
    cat >"$dir/main.cf" <<EOF
compatibility_level = 3.6
meta_directory = /etc/postfix
queue_directory = $dir/spool
data_directory = $dir/data
mail_owner = postfix
setgid_group = postdrop
myhostname = $name.bench
mydomain = $name
myorigin = $name
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtp_dns_support_level = disabled
alias_maps =
alias_database =
local_recipient_maps =
biff = no
maillog_file_prefixes = /tmp
maillog_file = $dir/maillog
$extra
EOF
    # Debian's services, without chroot (no chroot jail is set up here), SMTP on $port.
    awk -v port="$port" '
        /^[^# \t]/ && NF >= 8 { $5 = "n"; if ($1 == "smtp" && $2 == "inet") $1 = "127.0.0.1:" port }
        { print }' /etc/postfix/master.cf >"$dir/master.cf"
    mkdir -p "$dir/spool" "$dir/data"
    chown postfix "$dir/data"
    postfix -c "$dir" check >/dev/null 2>&1 || true
    postfix -c "$dir" start >/dev/null 2>&1
}

if [[ ${1:-} == --inside ]]; then
    shift
    NUAGE=$1 LOAD=$2 MESSAGES=$3 RUNS=$4 SIZE=$5 WORK=$6
    ip link set lo up
    cat >"$WORK/servers" <<EOF
127.0.0.1:2525:a
127.0.0.1:2526:b
EOF
    median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
    field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p"; }
    declare -A out=()
    pids=()
    trap 'kill ${pids[*]:-} 2>/dev/null; for d in "$WORK"/pf-*/; do [[ -d $d ]] && postfix -c "$d" stop 2>/dev/null; done; wait 2>/dev/null' EXIT
    printf '%-22s %-14s %14s %14s\n' run system submitted/s delivered/s
    for ((r = 1; r <= RUNS; r++)); do
        # Alternate which mode goes first: the first measurement after Postfix stops is
        # slowed by its leftover disk writes.
        orders="causal fifo"
        ((r % 2)) || orders="fifo causal"
        for order in $orders; do
            d="$WORK/nuage-$order-$r"
            "$NUAGE" mail serve --bind 127.0.0.1 --port 2525 --domain a --servers "$WORK/servers" \
                --data-dir "$d-a" --order $order 2>/dev/null >/dev/null &
            pa=$!
            "$NUAGE" mail serve --bind 127.0.0.1 --port 2526 --domain b --servers "$WORK/servers" \
                --data-dir "$d-b" --order $order 2>/dev/null >/dev/null &
            pb=$!
            pids=($pa $pb)
            sync
            sleep 1
            line=$("$LOAD" nuage 127.0.0.1:2525 127.0.0.1:2526 "$MESSAGES" "$SIZE")
            kill $pa $pb
            wait $pa $pb 2>/dev/null || true
            out[nuage-$order]+="$line"$'\n'
            printf '%-22s %-14s %14s %14s\n' "$MESSAGES msgs (run $r)" "nuage $order" \
                "$(field submitted_per_s <<<"$line")" "$(field delivered_per_s <<<"$line")"
        done
        pf="$WORK/pf-$r"
        mkdir -p "$pf-b/mail"
        chown nobody:nogroup "$pf-b/mail"
        postfix_instance "$pf-a" a 2625 "transport_maps = inline:{ b=smtp:[127.0.0.1]:2626 }"
        postfix_instance "$pf-b" b 2626 "virtual_mailbox_domains = b
virtual_mailbox_base = $pf-b/mail
virtual_mailbox_maps = inline:{ brandon@b=brandon/ }
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
virtual_minimum_uid = 100"
        sync
        sleep 1
        line=$("$LOAD" smtp 127.0.0.1:2625 "$pf-b/mail/brandon" "$MESSAGES" "$SIZE")
        postfix -c "$pf-a" stop >/dev/null 2>&1
        postfix -c "$pf-b" stop >/dev/null 2>&1
        out[postfix]+="$line"$'\n'
        printf '%-22s %-14s %14s %14s\n' "$MESSAGES msgs (run $r)" postfix \
            "$(field submitted_per_s <<<"$line")" "$(field delivered_per_s <<<"$line")"
    done
    for sys in nuage-causal nuage-fifo postfix; do
        s=$(field submitted_per_s <<<"${out[$sys]}" | median)
        d=$(field delivered_per_s <<<"${out[$sys]}" | median)
        declare "sub_${sys//-/_}=$s" "del_${sys//-/_}=$d"
        printf '%-22s %-14s %14s %14s\n' MEDIAN "${sys/-/ }" "$s" "$d"
    done
    awk -v a="$del_nuage_causal" -v b="$del_postfix" -v c="$sub_nuage_causal" -v d="$sub_postfix" \
        'BEGIN {printf "ratio nuage causal/postfix: delivered %.2f, submitted %.2f\n", a/b, c/d}'
    awk -v a="$del_nuage_causal" -v b="$del_nuage_fifo" \
        'BEGIN {printf "ratio nuage causal/fifo: delivered %.2f\n", a/b}'
    exit 0
fi

if [[ $(id -u) != 0 ]]; then
    echo "run.sh: run as root (private network namespace, Postfix instances)" >&2
    exit 1
fi
command -v postfix >/dev/null || { echo "run.sh: install the Debian package postfix" >&2; exit 1; }
cd "$ROOT"
cargo build --release -q -p nuage --bin nuage
cargo build --release -q -p nuage-mail --example mail_load
WORK=$(mktemp -d /tmp/nuage-mail-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
chmod 755 "$WORK"
echo "mail bench: $MESSAGES messages of $SIZE bytes, $RUNS runs, $(nproc) cores, $(date -u +%FT%TZ)"
unshare --net -- "$0" --inside "$ROOT/target/release/nuage" "$ROOT/target/release/examples/mail_load" \
    "$MESSAGES" "$RUNS" "$SIZE" "$WORK"
