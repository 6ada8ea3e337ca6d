#!/usr/bin/env bash
# The whole nuage test suite, exactly as CI runs it (.ci/run calls this script).
#
# Run it as root: the lab tests make network namespaces, bridges and nftables rules.
# It installs the Debian packages the tests need (.ci/packages), checks formatting and
# lints, runs every test, and ends with the test runner's summary line.
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" != 0 ]; then
  echo "test.sh: run it as root (the lab tests make network namespaces), e.g. sudo -E env PATH=\"\$PATH\" ./test.sh" >&2
  exit 1
fi
command -v cargo >/dev/null || { echo "test.sh: cargo not found; install the Rust toolchain (rustup)" >&2; exit 1; }

mapfile -t packages < <(grep -v '^\s*#' .ci/packages | grep -v '^\s*$')
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q </dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
fi

# Free space where the build and the tests' temporary files go: the disk may be shared,
# and a failure with ENOSPC is easier to read with this line above it.
echo "== free space: $(df -h --output=avail "${TMPDIR:-/tmp}" | tail -n 1 | tr -d ' ') in ${TMPDIR:-/tmp}, $(df -h --output=avail . | tail -n 1 | tr -d ' ') in $(pwd)"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== doc tests (examples in the docs must compile)"
if ! doc_out=$(cargo test --workspace --doc --locked 2>&1); then
  echo "$doc_out"
  exit 1
fi

echo "== tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if command -v cargo-nextest >/dev/null; then
  set +e
  cargo nextest run --workspace --locked --profile ci 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  set -e
  summary=$(grep -E '^\s*Summary \[' "$log" | tail -n 1 | sed 's/^ *//')
else
  set +e
  cargo test --workspace --locked 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  set -e
  summary=$(awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "Summary: %d tests run: %d passed, %d failed, %d ignored\n", p + f, p, f, i }' "$log")
fi
echo
echo "nuage test suite: ${summary:-no summary (the test run did not complete)}"
exit "$status"
