#!/usr/bin/env bash
# Where the CPU time of Elasticsearch logging goes: bench/es_overhead.sh run with every measured
# run sampled by `perf record` (BENCH_PERF); prints, per thread and per symbol, the CPU
# nanoseconds per request of configurations 1 (no flow sinks) and 3 (log.elasticsearch) and
# their difference (what logging adds), over all rounds.
#
# The whole-proxy ratios of es_overhead.sh move by +-10% from run to run on a small VM; the
# per-symbol differences show which code a change made cheaper even when the ratio cannot.
# Perf's own overhead inflates every figure a little, both configurations alike.
#
# Run as root:  bench/profile_es.sh [--rounds N] [--top N] [--tollgate PATH]
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=3
TOP=40
TOLLGATE=${TOLLGATE_BIN:-$REPO/.build/release/tollgate}

usage() {
  cat <<EOF
usage: $0 [options]            (run as root; needs perf: apt-get install linux-perf)
  --rounds N       rounds of bench/es_overhead.sh to sample (default $ROUNDS)
  --top N          symbols listed, largest difference first (default $TOP)
  --tollgate PATH  Tollgate binary (default \$TOLLGATE_BIN or .build/release/tollgate)
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --top) TOP=$2; shift 2 ;;
    --tollgate) TOLLGATE=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
command -v perf >/dev/null || { echo "perf not found: apt-get install linux-perf" >&2; exit 1; }
[ -x "$TOLLGATE" ] || { echo "Tollgate binary $TOLLGATE not found" >&2; exit 1; }

OUT=$(mktemp -d /tmp/tollgate-profile-XXXXXX)
trap 'rm -rf "$OUT"' EXIT

# es_overhead.sh profiles every measured run itself (BENCH_PERF, see bench/README.md):
# DIR/<configuration>-r<round>.perf over exactly the run whose requests its table counts.
BENCH_PERF="$OUT" BENCH_PERF_OPTS="-F 1999" bash "$REPO/bench/es_overhead.sh" --rounds "$ROUNDS" --tollgate "$TOLLGATE" \
  >"$OUT/bench.txt" 2>"$OUT/bench.err" || { echo "bench/es_overhead.sh failed:" >&2; tail -20 "$OUT/bench.err" >&2; exit 1; }
for round in $(seq 1 "$ROUNDS"); do
  for config in nosink es; do
    perf report -i "$OUT/$config-r$round.perf" -n --no-children --sort comm,dso,sym -g none >"$OUT/report-$config-$round.txt" \
      || { echo "perf report failed for $config-r$round" >&2; exit 1; }
  done
done

python3 - "$OUT" "$ROUNDS" "$TOP" <<'EOF'
import collections, sys
out, rounds, top = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
FREQUENCY = 1999
LABELS = {"nosink": "no flow sinks", "es": "elasticsearch"}

def requests(round_, config):
    # The measured run's completed requests, from es_overhead.sh's table row.
    for line in open(f"{out}/bench.txt"):
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) > 5 and cells[1] == str(round_) and LABELS[config] in cells[2]:
            return float(cells[5].replace(",", ""))
    raise SystemExit(f"no request count for {config} in round {round_}")

def nanoseconds_per_request(config):
    samples, served = collections.Counter(), 0.0
    for round_ in range(1, rounds + 1):
        for line in open(f"{out}/report-{config}-{round_}.txt"):
            fields = line.split()
            if line.startswith("#") or len(fields) < 4 or not fields[0].endswith("%"):
                continue
            samples[" ".join(fields[2:])] += int(fields[1])
        served += requests(round_, config)
    return {symbol: count / FREQUENCY / served * 1e9 for symbol, count in samples.items()}

off, on = nanoseconds_per_request("nosink"), nanoseconds_per_request("es")
symbols = set(off) | set(on)
def total(table, keep=lambda symbol: True):
    return sum(value for symbol, value in table.items() if keep(symbol))
print(f"CPU ns per request over the measured runs of {rounds} round(s), sampled at {FREQUENCY} Hz")
print(f"| | logging off | Elasticsearch | difference |\n|---|---:|---:|---:|")
print(f"| whole process | {total(off):.0f} | {total(on):.0f} | {total(on) - total(off):+.0f} |")
for thread in sorted({symbol.split()[0] for symbol in symbols}):
    keep = lambda symbol: symbol.split()[0] == thread
    print(f"| thread {thread} | {total(off, keep):.0f} | {total(on, keep):.0f} | {total(on, keep) - total(off, keep):+.0f} |")
kernel = lambda symbol: "[k]" in symbol
print(f"| kernel | {total(off, kernel):.0f} | {total(on, kernel):.0f} | {total(on, kernel) - total(off, kernel):+.0f} |")
print()
print("| difference | logging off | Elasticsearch | thread, object, symbol |\n|---:|---:|---:|---|")
for symbol in sorted(symbols, key=lambda s: on.get(s, 0) - off.get(s, 0), reverse=True)[:top]:
    print(f"| {on.get(symbol, 0) - off.get(symbol, 0):+.1f} | {off.get(symbol, 0):.1f} | {on.get(symbol, 0):.1f} | `{symbol[:140]}` |")
EOF
