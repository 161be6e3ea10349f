#!/usr/bin/env bash
# In-process benchmarks: `tollgate-bench policy` (issue 4), `tollgate-bench records`
# (issue 5) and `tollgate-bench heads` (the per-request head work behind issues 2 and 3). Their output is already markdown; this script adds the context and, with
# --write-docs, puts it in docs/benchmarks.md. Needs no root and no namespaces.
#
#   bench/inprocess.sh [--write-docs] [--cpu N] [--bench PATH] [--wait-idle S]
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
COMMAND_LINE="bench/inprocess.sh${*:+ $*}"

WRITE_DOCS=0
WAIT_IDLE=0
CPU=0
BENCH_BIN=${TOLLGATE_BENCH_BIN:-$REPO/.build/release/tollgate-bench}

usage() {
  cat <<EOF
usage: $0 [options]
  --write-docs     also append/replace the section in docs/benchmarks.md
  --cpu N          CPU to pin tollgate-bench to (default $CPU; "" for no pinning)
  --bench PATH     tollgate-bench binary (default \$TOLLGATE_BENCH_BIN or .build/release/tollgate-bench)
  --wait-idle S    first wait up to S seconds for builds/test runs to finish (default $WAIT_IDLE)
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --write-docs) WRITE_DOCS=1 ;;
    --cpu) CPU=$2; shift ;;
    --bench) BENCH_BIN=$2; shift ;;
    --wait-idle) WAIT_IDLE=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

[ -x "$BENCH_BIN" ] || die "$BENCH_BIN not found: build it with 'swift build -c release'"
bench_wait_idle "$WAIT_IDLE"
PIN=()
[ -z "$CPU" ] || { command -v taskset >/dev/null 2>&1 && PIN=(taskset -c "$CPU"); }

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
# Provenance now, and a copy of the binary: a rebuild meanwhile changes nothing.
bench_provenance "$BENCH_BIN"
cp "$BENCH_BIN" "$OUT/tollgate-bench"
BENCH_BIN=$OUT/tollgate-bench
run() {  # name -> $OUT/name.md; notes heavy processes seen while it ran
  local name=$1 busy=$OUT/$1.busy out=$OUT/$1.md
  ( while :; do busy_procs >>"$busy"; done ) &
  local watcher=$!
  log "tollgate-bench $name${PIN:+ (pinned to CPU $CPU)}"
  "${PIN[@]}" "$BENCH_BIN" "$name" >"$out" || { kill "$watcher"; die "tollgate-bench $name failed"; }
  kill "$watcher" 2>/dev/null || true
  wait "$watcher" 2>/dev/null || true
  [ ! -s "$busy" ] || note "$name: other heavy processes ran meanwhile, figures are noisy: $(sort -u "$busy" | head -2 | cut -c1-120 | tr '\n' ' ')"
}

run policy
run records
run heads
# A line of text right after a table would be read as one more row: separate them.
separate() { awk 'prev ~ /^\|/ && $0 !~ /^\|/ && $0 != "" {print ""} {print; prev = $0}' "$1"; }
POLICY=$(separate "$OUT/policy.md")
RECORDS=$(separate "$OUT/records.md")
HEADS=$(separate "$OUT/heads.md")

SECTION=$(
  echo "### Policy decisions (\`tollgate-bench policy\`)"
  echo
  echo "Issue 4's aim: with 10,000 rules and 1,000 agents, the median request decision under 1 µs."
  echo
  echo "$POLICY"
  echo
  echo "### Flow records (\`tollgate-bench records\`)"
  echo
  echo "Issue 5's aim: encoding plus batching at least 200,000 records/s on one core."
  echo
  echo "The record: a plain-HTTP request record with 5 request headers and the 9 response headers of an nginx \`/1k\` answer, its port, duration, timestamp and id varying per record (about 1.2 KB of JSON). The second row is the shipper's whole path without I/O: the loop's encoding into, and hand-off (ten records at a time, as a loop iteration does) to, the queue as \`_bulk\` lines (a \`create\` action, then the document), the spool writer's compression of 5,000 queued records into one spool entry (Tollgate's own deflate: one hash probe per position, one fixed-Huffman block; CRC-32 of the lines and CRC-32C of the entry), and the sender's gzip \`_bulk\` body, the entry's chunk joined between a gzip header and trailer without recompressing."
  echo
  echo "$RECORDS"
  echo
  echo "### HTTP heads (\`tollgate-bench heads\`)"
  echo
  echo "What the proxy does with the heads of each plain-HTTP exchange of the keep-alive benchmarks, without I/O: parse and validate the request head (wrk's \`GET /1k\`, with a User-Agent and Accept), write it toward the origin, parse and validate nginx's 9-field \`/1k\` response head, and write it toward the client (hop-by-hop fields dropped, Content-Length rewritten, Via added)."
  echo
  echo "$HEADS"
)
echo "$SECTION"
if [ "${#NOTES[@]}" -gt 0 ]; then
  echo
  printf -- '- note: %s\n' "${NOTES[@]}"
fi

if [ "$WRITE_DOCS" -eq 1 ]; then
  tmp=$OUT/section.md
  {
    echo "## In-process benchmarks (\`bench/inprocess.sh\`)"
    echo
    echo "- Date: $DATE"
    echo "- Command: \`$COMMAND_LINE\`${PIN:+ (tollgate-bench pinned to CPU $CPU)}"
    echo "- Machine: $MACHINE_LINE"
    echo "- tollgate-bench: tree at $COMMIT, release binary built $BIN_DATE"
    echo
    echo "$SECTION"
    if [ "${#NOTES[@]}" -gt 0 ]; then
      echo
      echo "Notes from this run:"
      printf -- '- %s\n' "${NOTES[@]}"
    fi
  } >"$tmp"
  bench_write_section inprocess "$tmp"
fi
