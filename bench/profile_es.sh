#!/usr/bin/env bash
# Where the CPU time of Elasticsearch logging goes: bench/es_overhead.sh's configurations 1 (no
# flow sinks) and 3 (log.elasticsearch), each sampled with `perf record` for a few seconds of its
# measured run, round after round. Prints, per thread and per symbol, the CPU nanoseconds per
# request of each configuration and their difference (what logging adds), summed over rounds.
#
# The whole-proxy ratios of es_overhead.sh move by +-10% from run to run on a small VM; the
# per-symbol differences show which code a change made cheaper even when the ratio cannot.
# Perf's own overhead inflates every figure a little, both configurations alike.
#
# Run as root:  bench/profile_es.sh [--rounds N] [--seconds S] [--top N] [--tollgate PATH]
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=3
SECONDS_SAMPLED=8
TOP=40
TOLLGATE=${TOLLGATE_BIN:-$REPO/.build/release/tollgate}

usage() {
  cat <<EOF
usage: $0 [options]            (run as root; needs perf: apt-get install linux-perf)
  --rounds N       rounds of bench/es_overhead.sh to sample (default $ROUNDS)
  --seconds S      seconds sampled of each measured run (default $SECONDS_SAMPLED; the run lasts 10)
  --top N          symbols listed, largest difference first (default $TOP)
  --tollgate PATH  Tollgate binary (default \$TOLLGATE_BIN or .build/release/tollgate)
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --seconds) SECONDS_SAMPLED=$2; shift 2 ;;
    --top) TOP=$2; shift 2 ;;
    --tollgate) TOLLGATE=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
command -v perf >/dev/null || { echo "perf not found: apt-get install linux-perf" >&2; exit 1; }
[ -x "$TOLLGATE" ] || { echo "Tollgate binary $TOLLGATE not found" >&2; exit 1; }

OUT=$(mktemp -d /tmp/tollgate-profile-XXXXXX)
BENCH_PID=""
cleanup() {
  if [ -n "$BENCH_PID" ]; then kill "$BENCH_PID" 2>/dev/null || true; wait "$BENCH_PID" 2>/dev/null || true; fi
  rm -rf "$OUT"
}
trap cleanup EXIT

# The daemon of a configuration, once es_overhead.sh has started it (not its check-config run).
daemon_of() {  # config -> pid (waits)
  local pid=""
  while [ -z "$pid" ]; do
    pid=$(pgrep -f "run --config .*/tollgate-$1\.yaml" | head -1 || true)
    [ -n "$pid" ] || sleep 0.2
  done
  echo "$pid"
}

for round in $(seq 1 "$ROUNDS"); do
  bash "$REPO/bench/es_overhead.sh" --rounds 1 --tollgate "$TOLLGATE" >"$OUT/bench-$round.txt" 2>"$OUT/bench-$round.err" &
  BENCH_PID=$!
  for config in nosink es; do
    pid=$(daemon_of "$config")
    sleep 4  # past the start-up and into the warm-up run's end
    perf record -q -F 1999 -p "$pid" -o "$OUT/perf-$config-$round.data" -- sleep "$SECONDS_SAMPLED" 2>/dev/null
    perf report -i "$OUT/perf-$config-$round.data" -n --no-children --sort comm,dso,sym -g none 2>/dev/null \
      >"$OUT/report-$config-$round.txt"
  done
  wait "$BENCH_PID" || { echo "bench/es_overhead.sh failed in round $round:" >&2; tail -20 "$OUT/bench-$round.err" >&2; exit 1; }
  BENCH_PID=""
  echo "round $round of $ROUNDS sampled" >&2
done

python3 - "$OUT" "$ROUNDS" "$SECONDS_SAMPLED" "$TOP" <<'EOF'
import collections, sys
out, rounds, seconds, top = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
FREQUENCY = 1999
LABELS = {"nosink": "no flow sinks", "es": "elasticsearch"}

def requests_per_second(round_, config):
    # The measured run's requests/s from es_overhead.sh's table row of this configuration.
    for line in open(f"{out}/bench-{round_}.txt"):
        if line.startswith("| 1 |") and LABELS[config] in line:
            return float(line.split("|")[3].replace(",", ""))
    raise SystemExit(f"no requests/s for {config} in round {round_}")

def nanoseconds_per_request(config):
    samples, requests = collections.Counter(), 0.0
    for round_ in range(1, rounds + 1):
        for line in open(f"{out}/report-{config}-{round_}.txt"):
            fields = line.split()
            if line.startswith("#") or len(fields) < 4 or not fields[0].endswith("%"):
                continue
            samples[" ".join(fields[2:])] += int(fields[1])
        requests += requests_per_second(round_, config) * seconds
    return {symbol: count / FREQUENCY / requests * 1e9 for symbol, count in samples.items()}

off, on = nanoseconds_per_request("nosink"), nanoseconds_per_request("es")
symbols = set(off) | set(on)
def total(table, keep=lambda symbol: True):
    return sum(value for symbol, value in table.items() if keep(symbol))
print(f"CPU ns per request, {rounds} round(s) of {seconds:g} s sampled per configuration")
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
