#!/usr/bin/env bash
# Issue 5 benchmark: proxy throughput with Elasticsearch logging on vs. logging off,
# in the same run.
#
#   worker (10.99.0.2) --veth-- (10.99.0.1) gateway (198.51.100.1) --veth-- (198.51.100.2) internet
#     wrk                        tollgate on :15001                            nginx origin
#                                (nft redirect of tcp dport 80)                203.0.113.10:80, /1k
#                                fake_es.py on 127.0.0.1 (config 3)
#
# The same topology and load as bench/http_keepalive.sh (plain HTTP keep-alive, 1 KiB,
# wrk from worker, Tollgate `workers: 1` pinned to one CPU). Three Tollgate
# configurations, one after another:
#   1. no flow sinks (no log.file, no log.elasticsearch: requests are counted, no record is encoded);
#   2. log.file in the temp dir;
#   3. log.elasticsearch -> Tests/Integration/fake_es.py in gateway on 127.0.0.1
#      (gzip _bulk, count_only mode: items counted, not parsed), spool in the temp
#      dir; fake_es pinned to wrk's CPU.
# For each: requests/s, p99, proxy CPU-seconds, requests per CPU-second and the ratios
# to configuration 1; for 3, the documents the fake stored against the requests
# Tollgate served and its tollgate_es_records_shipped_total.
#
# Run as root:  bench/es_overhead.sh [--write-docs] [options]     (see --help)
# Everything (namespaces, processes, temp dir) is removed on exit, even on failure.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
COMMAND_LINE="bench/es_overhead.sh${*:+ $*}"

DURATION=10        # seconds of the measured wrk run
WARMUP=3           # seconds of an unmeasured wrk run before it
CONNECTIONS=50
THREADS=1
PROXY_CPU=0
LOAD_CPU=1
ORIGIN_CPU=""      # default: 2 when the machine has 3+ CPUs, else LOAD_CPU
ES_CPU=""          # default: LOAD_CPU
FLUSH_WAIT=20      # seconds to wait for the last documents to reach the fake
WRITE_DOCS=0
WAIT_IDLE=0
FAKE_ES=$REPO/Tests/Integration/fake_es.py

usage() {
  cat <<EOF
usage: $0 [options]            (run as root)
  --write-docs        also append/replace the section in docs/benchmarks.md
  -d, --duration S    measured wrk run length in seconds, per configuration (default $DURATION)
  -w, --warmup S      unmeasured warm-up run before each, 0 to skip (default $WARMUP)
  -c, --connections N wrk connections (default $CONNECTIONS)
  -t, --threads N     wrk threads (default $THREADS)
  --proxy-cpu N       CPU Tollgate is pinned to (default $PROXY_CPU)
  --load-cpu N        CPU wrk is pinned to (default $LOAD_CPU)
  --origin-cpu N      CPU the origin nginx is pinned to (default: 2 if present, else --load-cpu)
  --es-cpu N          CPU fake_es.py is pinned to (default: --load-cpu)
  --flush-wait S      wait up to S seconds for the last bulk requests (default $FLUSH_WAIT)
  --tollgate PATH     Tollgate binary (default \$TOLLGATE_BIN or .build/release/tollgate)
  --wait-idle S       first wait up to S seconds for builds/test runs to finish (default $WAIT_IDLE)
  --keep-tmp          keep the temp dir (configs, logs, raw wrk output)
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --es-cpu) ES_CPU=$2; shift 2 ;;
    --flush-wait) FLUSH_WAIT=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) bench_common_option "$@" || { echo "unknown argument: $1" >&2; usage >&2; exit 2; }; shift "$SHIFT_BY" ;;
  esac
done
ES_CPU=${ES_CPU:-$LOAD_CPU}

# Namespaces of other bench/ scripts running at the same time (lib.sh names them tgb*);
# the builds-and-tests watcher does not see those.
other_benches() { ip netns list 2>/dev/null | awk '{print $1}' | grep '^tgb' | grep -v "^$BASE-" | sed 's/-[wgi]$//' | sort -u || true; }
wait_other_benches() {  # seconds
  local deadline=$((SECONDS + $1)) others
  while others=$(other_benches) && [ -n "$others" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "warning: another benchmark is running ($(echo "$others" | tr '\n' ' ')), figures will be noisy"; return 0
    fi
    log "waiting for another benchmark to finish: $(echo "$others" | tr '\n' ' ')"
    sleep 10
  done
}

# ---------------------------------------------------------------------------
# Preconditions, names, temp dir, cleanup trap, topology (bench/lib.sh)
bench_require ip nft nginx wrk taskset curl awk python3
bench_require_tollgate
[ -f "$FAKE_ES" ] || die "$FAKE_ES not found"
bench_check_cpus
[ "$ES_CPU" -lt "$NPROC" ] || die "CPU $ES_CPU does not exist (nproc = $NPROC); see --es-cpu"
bench_wait_idle "$WAIT_IDLE"
bench_init
wait_other_benches "$WAIT_IDLE"
bench_snapshot_tollgate
URL="http://$ORIGIN_IP/1k"
bench_topology 80

# ---------------------------------------------------------------------------
# Origin: nginx in internet serving 1 KiB at /1k
mkdir -p "$TMP/www"
head -c 1024 /dev/urandom > "$TMP/www/1k"
bench_nginx_conf "$TMP/origin" 4096 "  server {
    listen $ORIGIN_IP:80 backlog=4096;
    root $TMP/www;
    location = /1k { default_type application/octet-stream; }
  }
$STATUS_SERVER"
bench_nginx_check "$NS_I" "$TMP/origin" origin

# The three Tollgate configurations; only the log section differs.
tollgate_conf() {  # name log-section
  cat > "$TMP/tollgate-$1.yaml" <<EOF
# generated by bench/es_overhead.sh ($1)
listen:
  transparent: ["0.0.0.0:$PORT"]
  admin: "127.0.0.1:9901"
workers: 1
$2
agents:
  bench:
    sources: ["$WORKER_IP"]
timeouts:
  drain: 3s
EOF
  "$TOLLGATE_BIN" check-config --config "$TMP/tollgate-$1.yaml" >/dev/null \
    || die "tollgate check-config rejected $TMP/tollgate-$1.yaml"
}

log "starting origin nginx in $NS_I on CPU $ORIGIN_CPU"
bench_nginx_start "$NS_I" "$ORIGIN_CPU" "$TMP/origin"
wait_for 10 "origin on $ORIGIN_IP:80" in_ns "$NS_I" curl -sf -o /dev/null "$URL"

check_path() {  # the redirected fetch from worker returns the origin's exact bytes
  in_ns "$NS_W" curl -sf -m 5 -o "$TMP/check.body" "$URL" && cmp -s "$TMP/check.body" "$TMP/www/1k"
}
WRK_ARGS=(-t"$THREADS" -c"$CONNECTIONS" --latency "$URL")

tg_metrics() { in_ns "$NS_G" curl -sf -m 3 http://127.0.0.1:9901/metrics; }
metric_of() {  # file name -> value (empty if absent)
  awk -v n="$2" '$1 == n {print $2; exit}' "$1" 2>/dev/null || true
}
fake_stat() {  # key -> value from GET /_fake/stats (empty if unreachable)
  in_ns "$NS_G" curl -sf -m 3 "http://127.0.0.1:$ES_PORT/_fake/stats" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin).get(sys.argv[1], ""))' "$1" 2>/dev/null || true
}

# run_config NAME: Tollgate with $TMP/tollgate-NAME.yaml, warm-up + measured run;
# sets the C_* globals of the measured run and leaves Tollgate running in TG_PID.
run_config() {
  local name=$1
  wait_port_free "$NS_G" "$PORT"
  wait_port_free "$NS_G" 9901
  log "config $name: tollgate (workers: 1) in $NS_G on CPU $PROXY_CPU"
  start_in "$NS_G" "$PROXY_CPU" "$TMP/tollgate-$name.stderr" "$TOLLGATE_BIN" run --config "$TMP/tollgate-$name.yaml"
  TG_PID=$STARTED_PID
  wait_for 20 "tollgate /healthz ($name)" in_ns "$NS_G" curl -sf -m 2 -o /dev/null http://127.0.0.1:9901/healthz
  wait_for 10 "a correct fetch through tollgate ($name)" check_path
  local others
  others=$(other_benches)
  measure "$name" "$WARMUP" "$DURATION" "$TG_PID" "${WRK_ARGS[@]}"
  others=$(printf '%s\n%s\n' "$others" "$(other_benches)" | sort -u | grep . | tr '\n' ' ' || true)
  [ -z "$others" ] || note "$name: another benchmark's namespaces existed around the measured run, figures are noisy: $others"
  C_RPS=$R_RPS C_REQS=$R_REQS C_P99=$R_P99 C_CPU=$R_CPU C_PER_CPU=$R_PER_CPU
  C_NON2XX=$R_NON2XX C_SOCKERR=$R_SOCKERR
  kill -0 "$TG_PID" 2>/dev/null || note "$name: Tollgate died during the run (see its stderr)"
  check_path || note "$name: after the run, a fetch through Tollgate failed or returned different bytes"
  wrk_notes "Tollgate ($name)" "$name"
}

# wrk requests completed in NAME's warm-up and measured runs together
wrk_total() {
  local files=("$TMP/wrk-$1.txt")
  if [ -f "$TMP/wrk-$1-warmup.txt" ]; then files+=("$TMP/wrk-$1-warmup.txt"); fi  # none with -w 0
  awk '/requests in/ {s += $1} END {print s + 0}' "${files[@]}"
}

# ---------------------------------------------------------------------------
# 1: no flow sinks
tollgate_conf nosink "# no log section: flow records are only counted"
run_config nosink
N_RPS=$C_RPS N_REQS=$C_REQS N_P99=$C_P99 N_CPU=$C_CPU N_PER_CPU=$C_PER_CPU N_NON2XX=$C_NON2XX N_SOCKERR=$C_SOCKERR
tg_metrics >"$TMP/metrics-nosink.txt" || note "nosink: GET /metrics failed"
N_SERVED=$(metric_of "$TMP/metrics-nosink.txt" tollgate_http_requests_total)
bench_stop_tollgate "$TG_PID"
bench_tollgate_stderr "$TMP/tollgate-nosink.stderr"

# ---------------------------------------------------------------------------
# 2: log.file
FLOWS=$TMP/tollgate-flows.ndjson
tollgate_conf file "log:
  file: $FLOWS"
run_config file
F_RPS=$C_RPS F_REQS=$C_REQS F_P99=$C_P99 F_CPU=$C_CPU F_PER_CPU=$C_PER_CPU F_NON2XX=$C_NON2XX F_SOCKERR=$C_SOCKERR
tg_metrics >"$TMP/metrics-file.txt" || note "file: GET /metrics failed"
F_SERVED=$(metric_of "$TMP/metrics-file.txt" tollgate_http_requests_total)
bench_stop_tollgate "$TG_PID"
bench_tollgate_stderr "$TMP/tollgate-file.stderr"
if [ -f "$FLOWS" ]; then
  F_LINES=$(wc -l <"$FLOWS")
  F_HTTP=$(grep -c '"action":"http_request"' "$FLOWS" || true)
  log "file: flow log has $F_LINES records, $F_HTTP http_request (Tollgate served ${F_SERVED:-?} HTTP requests)"
  [ -z "$F_SERVED" ] || [ "$F_HTTP" -ge "$F_SERVED" ] \
    || note "file: flow log has $F_HTTP http_request records, fewer than the $F_SERVED requests Tollgate served"
else
  F_LINES=0 F_HTTP=0
  note "file: Tollgate wrote no flow log at $FLOWS"
fi

# ---------------------------------------------------------------------------
# 3: log.elasticsearch -> fake_es.py in gateway on 127.0.0.1
# A copy in the temp dir: lib.sh's watcher for builds and test runs (HEAVY) would
# otherwise take the fake, by its path under Tests/Integration/, for a test run.
cp "$FAKE_ES" "$TMP/fake_es.py"
log "starting fake_es.py in $NS_G on CPU $ES_CPU"
start_in "$NS_G" "$ES_CPU" "$TMP/fake_es.log" python3 "$TMP/fake_es.py" --listen 127.0.0.1:0 --ready "$TMP/fake_es.ready" \
  --mode '{"count_only": true}'
ES_PID=$STARTED_PID
wait_for 15 "fake_es.py ready file" test -s "$TMP/fake_es.ready"
ES_PORT=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["port"])' "$TMP/fake_es.ready")
wait_for 10 "fake_es.py on 127.0.0.1:$ES_PORT" in_ns "$NS_G" curl -sf -m 2 -o /dev/null "http://127.0.0.1:$ES_PORT/_fake/stats"
tollgate_conf es "log:
  elasticsearch:
    url: [\"http://127.0.0.1:$ES_PORT\"]
    spool: $TMP/spool"
ES_TICKS0=$(cpu_ticks "$ES_PID")
run_config es
E_RPS=$C_RPS E_REQS=$C_REQS E_P99=$C_P99 E_CPU=$C_CPU E_PER_CPU=$C_PER_CPU E_NON2XX=$C_NON2XX E_SOCKERR=$C_SOCKERR

# Wait for the last flush: until nothing is queued and the fake's count stands still.
log "es: waiting up to ${FLUSH_WAIT}s for the last bulk requests"
deadline=$((SECONDS + FLUSH_WAIT)) prev=-1 stable=0
while :; do
  tg_metrics >"$TMP/metrics-es.txt" || true
  docs=$(fake_stat docs)
  queued=$(metric_of "$TMP/metrics-es.txt" tollgate_es_records_queued)
  if [ "${queued:-1}" = 0 ] && [ "$docs" = "$prev" ]; then
    stable=$((stable + 1)); [ "$stable" -lt 2 ] || break
  else
    stable=0
  fi
  prev=$docs
  [ "$SECONDS" -lt "$deadline" ] || { note "es: after ${FLUSH_WAIT}s the fake still received documents or Tollgate still had ${queued:-?} queued"; break; }
  sleep 1
done
E_SERVED=$(metric_of "$TMP/metrics-es.txt" tollgate_http_requests_total)
E_SHIPPED=$(metric_of "$TMP/metrics-es.txt" tollgate_es_records_shipped_total)
E_QUEUED=$(metric_of "$TMP/metrics-es.txt" tollgate_es_records_queued)
E_RETRIED=$(metric_of "$TMP/metrics-es.txt" tollgate_es_records_retried_total)
E_DEAD=$(metric_of "$TMP/metrics-es.txt" tollgate_es_records_dead_lettered_total)
E_DROPPED=$(metric_of "$TMP/metrics-es.txt" tollgate_es_records_dropped_total)
E_DOCS=$(fake_stat docs)
E_BULKS=$(fake_stat bulk_requests)
E_WRK_TOTAL=$(wrk_total es)
ES_CPU_S=$(awk -v t=$(( $(cpu_ticks "$ES_PID") - ES_TICKS0 )) -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", t / hz}')
bench_stop_tollgate "$TG_PID"
bench_tollgate_stderr "$TMP/tollgate-es.stderr"
E_DOCS_AFTER_STOP=$(fake_stat docs)
log "es: fake stored ${E_DOCS:-?} documents (${E_DOCS_AFTER_STOP:-?} after Tollgate stopped) in ${E_BULKS:-?} bulk requests;" \
    "Tollgate served ${E_SERVED:-?} HTTP requests (wrk completed $E_WRK_TOTAL), shipped ${E_SHIPPED:-?}, queued ${E_QUEUED:-?}," \
    "retried ${E_RETRIED:-?}, dead-lettered ${E_DEAD:-?}, dropped ${E_DROPPED:-?}; fake_es used $ES_CPU_S CPU-s"
if [ -z "$E_DOCS" ] || [ -z "$E_SERVED" ] || [ -z "$E_SHIPPED" ]; then
  note "es: could not read the fake's document count or Tollgate's metrics"
else
  # One document per flow record: at least one per HTTP request served.
  [ "$E_DOCS" -ge "$E_SERVED" ] || note "es: the fake stored $E_DOCS documents, fewer than the $E_SERVED HTTP requests Tollgate served"
  [ "$E_DOCS" -eq "$E_SHIPPED" ] || note "es: the fake stored $E_DOCS documents but Tollgate counts $E_SHIPPED shipped"
  [ "$E_DOCS_AFTER_STOP" = "$E_DOCS" ] || note "es: $((E_DOCS_AFTER_STOP - E_DOCS)) more documents arrived after SIGTERM"
  [ "${E_DEAD:-0}" = 0 ] && [ "${E_DROPPED:-0}" = 0 ] || note "es: ${E_DEAD:-?} dead-lettered, ${E_DROPPED:-?} dropped records"
fi
kill -TERM "$ES_PID" 2>/dev/null || true

# ---------------------------------------------------------------------------
# Report
F_RATIO=$(ratio "$F_PER_CPU" "$N_PER_CPU"); F_RPS_RATIO=$(ratio "$F_RPS" "$N_RPS"); F_CPU_RATIO=$(ratio "$F_CPU" "$N_CPU")
E_RATIO=$(ratio "$E_PER_CPU" "$N_PER_CPU"); E_RPS_RATIO=$(ratio "$E_RPS" "$N_RPS"); E_CPU_RATIO=$(ratio "$E_CPU" "$N_CPU")
E_VS_F=$(ratio "$E_PER_CPU" "$F_PER_CPU")
pct() { awk -v r="$1" 'BEGIN { if (r ~ /^[0-9.]+$/) printf "%+.0f%%", (r - 1) * 100; else print "n/a" }'; }

TABLE=$(cat <<EOF
| Tollgate (workers: 1, 1 CPU) | Requests/s | p99 latency | Requests | Proxy CPU-s | Requests per CPU-s | Requests/s vs 1 | CPU-s vs 1 | Requests per CPU-s vs 1 | Non-2xx/3xx | Socket errors |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| 1. no flow sinks | $(fmt_int "$N_RPS") | $N_P99 ms | $N_REQS | $N_CPU | $N_PER_CPU | 1.00 | 1.00 | 1.00 | $N_NON2XX | $N_SOCKERR |
| 2. \`log.file\` | $(fmt_int "$F_RPS") | $F_P99 ms | $F_REQS | $F_CPU | $F_PER_CPU | $F_RPS_RATIO | $F_CPU_RATIO | $F_RATIO | $F_NON2XX | $F_SOCKERR |
| 3. \`log.elasticsearch\` (fake_es.py, count_only) | $(fmt_int "$E_RPS") | $E_P99 ms | $E_REQS | $E_CPU | $E_PER_CPU | $E_RPS_RATIO | $E_CPU_RATIO | $E_RATIO | $E_NON2XX | $E_SOCKERR |

**Elasticsearch logging on / no sinks: requests/s $E_RPS_RATIO ($(pct "$E_RPS_RATIO")), requests per CPU-s $E_RATIO ($(pct "$E_RATIO"))** (aim: within 5%). Elasticsearch / \`log.file\`, requests per CPU-s: $E_VS_F.

Configuration 3 delivery: the fake counted ${E_DOCS:-?} documents in ${E_BULKS:-?} bulk requests; Tollgate served ${E_SERVED:-?} HTTP requests (wrk completed $E_WRK_TOTAL in the warm-up and measured runs, plus the curl checks) and reports \`tollgate_es_records_shipped_total\` ${E_SHIPPED:-?} (queued ${E_QUEUED:-?}, retried ${E_RETRIED:-?}, dead-lettered ${E_DEAD:-?}, dropped ${E_DROPPED:-?}). fake_es.py used $ES_CPU_S CPU-s on CPU $ES_CPU (shared with wrk).
EOF
)

echo
echo "$TABLE"
if [ "${#NOTES[@]}" -gt 0 ]; then
  echo
  echo "Notes:"
  printf -- '- %s\n' "${NOTES[@]}"
fi

if [ "$WRITE_DOCS" -eq 1 ]; then
  {
    echo "## Elasticsearch logging overhead, HTTP keep-alive 1 KiB (\`bench/es_overhead.sh\`)"
    echo
    echo "- Date: $DATE"
    echo "- Command: \`$COMMAND_LINE\` (as root)"
    echo "- Machine: $MACHINE_LINE"
    echo "- Tollgate: tree at $COMMIT, release binary built $BIN_DATE"
    echo "- Load, per configuration: \`wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency $URL\` from \`worker\` on CPU $LOAD_CPU, after a ${WARMUP}s warm-up;" \
         "origin nginx (1 worker, access log off) in \`internet\` on CPU $ORIGIN_CPU; Tollgate (\`workers: 1\`) in \`gateway\` on CPU $PROXY_CPU behind the nftables redirect of tcp dport 80 to :$PORT."
    echo "- Configurations, one after another in this run: 1. no \`log\` section (requests counted, no record encoded: logging off); 2. \`log.file\` in the temp dir; 3. \`log.elasticsearch\` with \`url: [\"http://127.0.0.1:PORT\"]\` and \`spool\` in the temp dir, pointing at \`Tests/Integration/fake_es.py\` (gzip \`_bulk\`) in \`gateway\` on CPU $ES_CPU, in \`count_only\` mode (it decompresses each bulk body and counts its items instead of parsing and storing every document in Python, which took as much CPU as wrk on the CPU they share)."
    echo "- Proxy CPU-s: utime+stime of Tollgate (all threads, the shipper's included) from \`/proc/<pid>/stat\` over the measured run. Requests per CPU-s = completed requests / proxy CPU-s."
    echo
    echo "$TABLE"
    if [ "${#NOTES[@]}" -gt 0 ]; then
      echo
      echo "Notes from this run:"
      printf -- '- %s\n' "${NOTES[@]}"
    fi
  } >"$TMP/section.md"
  bench_write_section es_overhead "$TMP/section.md"
fi
