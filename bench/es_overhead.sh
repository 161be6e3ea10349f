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
# configurations, measured in turn, round after round (--rounds; runs on this
# 2-CPU VM drift by +-10% over minutes, so each round's ratios compare runs a
# minute apart and the report gives the median over rounds):
#   1. no flow sinks (no log.file, no log.elasticsearch: requests are counted, no record is encoded);
#   2. log.file in the temp dir;
#   3. log.elasticsearch -> Tests/Integration/fake_es.py in gateway on 127.0.0.1
#      (gzip _bulk, count_only mode: items counted, not parsed), spool in the temp
#      dir; fake_es pinned to the proxy's CPU when the proxy is capped (it runs in the
#      30% Tollgate may not use, and takes nothing from wrk), else to wrk's CPU.
# Tollgate may use 70% of its CPU (--proxy-quota, a cgroup CPU quota): uncapped, it kept
# up with wrk and the origin on the other CPU at about 90% busy, so requests/s measured
# the load side as much as the proxy, and in configuration 3 the fake's decompressing took
# CPU from wrk alone. Capped, the proxy is the bottleneck in every configuration (the
# report gives the share of 10 ms periods it used its whole quota in).
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
PROXY_QUOTA=70
LOAD_CPU=1
ORIGIN_CPU=""      # default: 2 when the machine has 3+ CPUs, else LOAD_CPU
ES_CPU=""          # default: PROXY_CPU under --proxy-quota, else LOAD_CPU
FLUSH_WAIT=20      # seconds to wait for the last documents to reach the fake
ROUNDS=3           # each round measures the three configurations in turn
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
  --proxy-quota P     Tollgate may use P% of that CPU (cgroup quota; 0: no cap; default $PROXY_QUOTA)
  --load-cpu N        CPU wrk is pinned to (default $LOAD_CPU)
  --origin-cpu N      CPU the origin nginx is pinned to (default: 2 if present, else --load-cpu)
  --es-cpu N          CPU fake_es.py is pinned to (default: --proxy-cpu when capped, else --load-cpu)
  --flush-wait S      wait up to S seconds for the last bulk requests (default $FLUSH_WAIT)
  --rounds N          rounds of the three configurations (default $ROUNDS)
  --tollgate PATH     Tollgate binary (default \$TOLLGATE_BIN or .build/release/tollgate)
  --wait-idle S       first wait up to S seconds for builds/test runs to finish (default $WAIT_IDLE)
  --keep-tmp          keep the temp dir (configs, logs, raw wrk output)
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --es-cpu) ES_CPU=$2; shift 2 ;;
    --flush-wait) FLUSH_WAIT=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) bench_common_option "$@" || { echo "unknown argument: $1" >&2; usage >&2; exit 2; }; shift "$SHIFT_BY" ;;
  esac
done
# Capped, the proxy's CPU has room the proxy may not use: the fake's gzip decompression runs
# there instead of slowing wrk and the origin, which made the proxy wait in some periods.
if [ "$PROXY_QUOTA" -gt 0 ]; then ES_CPU=${ES_CPU:-$PROXY_CPU}; else ES_CPU=${ES_CPU:-$LOAD_CPU}; fi

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
bench_require ip nft nginx wrk taskset chrt curl awk python3
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

# run_config CONFIG NAME: Tollgate with $TMP/tollgate-CONFIG.yaml, warm-up + measured
# run (files named NAME); leaves measure's R_* globals of the measured run and
# Tollgate running in TG_PID.
run_config() {
  local config=$1 name=$2
  bench_start_tollgate "$TMP/tollgate-$config.yaml" "$TMP/tollgate-$name.stderr" "config $name"
  local others
  others=$(other_benches)
  measure "$name" "$WARMUP" "$DURATION" "$TG_PID" "${WRK_ARGS[@]}"
  others=$(printf '%s\n%s\n' "$others" "$(other_benches)" | sort -u | grep . | tr '\n' ' ' || true)
  [ -z "$others" ] || note "$name: another benchmark's namespaces existed around the measured run, figures are noisy: $others"
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

# The configurations. 3: log.elasticsearch -> fake_es.py in gateway on 127.0.0.1.
# A copy of the fake in the temp dir: lib.sh's watcher for builds and test runs
# (HEAVY) would otherwise take it, by its path under Tests/Integration/, for a test run.
FLOWS=$TMP/tollgate-flows.ndjson
cp "$FAKE_ES" "$TMP/fake_es.py"
log "starting fake_es.py in $NS_G on CPU $ES_CPU"
# SCHED_IDLE beside the capped proxy: the fake runs only in the time the proxy's quota leaves
# idle (a real Elasticsearch is on other machines); at normal priority its bursts preempted
# the proxy, which then used its quota in fewer periods and found its caches cold.
ES_SCHED=()
ES_SCHED_NOTE=""
if [ "$PROXY_QUOTA" -gt 0 ] && [ "$ES_CPU" = "$PROXY_CPU" ]; then
  ES_SCHED=(chrt --idle 0)
  ES_SCHED_NOTE=" at SCHED_IDLE (it runs only when that CPU would otherwise be idle)"
fi
start_in "$NS_G" "$ES_CPU" "$TMP/fake_es.log" "${ES_SCHED[@]}" python3 "$TMP/fake_es.py" --listen 127.0.0.1:0 --ready "$TMP/fake_es.ready" \
  --mode '{"count_only": true}'
ES_PID=$STARTED_PID
wait_for 15 "fake_es.py ready file" test -s "$TMP/fake_es.ready"
ES_PORT=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["port"])' "$TMP/fake_es.ready")
wait_for 10 "fake_es.py on 127.0.0.1:$ES_PORT" in_ns "$NS_G" curl -sf -m 2 -o /dev/null "http://127.0.0.1:$ES_PORT/_fake/stats"
tollgate_conf nosink "# no log section: requests are counted, no record is encoded"
tollgate_conf file "log:
  file: $FLOWS"
tollgate_conf es "log:
  elasticsearch:
    url: [\"http://127.0.0.1:$ES_PORT\"]
    spool: $TMP/spool"
ES_TICKS0=$(cpu_ticks "$ES_PID"); ES_TICKS0=${ES_TICKS0% *}

E_DOCS_TOTAL=0 E_SERVED_TOTAL=0 E_SHIPPED_TOTAL=0 E_QUEUED=0 E_RETRIED=0 E_DEAD=0 E_DROPPED=0 E_WRK_TOTAL=0
es_metric() { metric_of "$TMP/metrics-es.txt" "$1" | grep . || echo 0; }

for round in $(seq 1 "$ROUNDS"); do
  # 1: no flow sinks
  run_config nosink "nosink-r$round"
  keep_result nosink "$round"
  bench_stop_tollgate "$TG_PID"
  bench_tollgate_stderr "$TMP/tollgate-nosink-r$round.stderr"

  # 2: log.file
  rm -f "$FLOWS"
  run_config file "file-r$round"
  keep_result file "$round"
  tg_metrics >"$TMP/metrics-file.txt" || note "file: GET /metrics failed"
  F_SERVED=$(metric_of "$TMP/metrics-file.txt" tollgate_http_requests_total)
  bench_stop_tollgate "$TG_PID"
  bench_tollgate_stderr "$TMP/tollgate-file-r$round.stderr"
  F_HTTP=$(grep -c '"action":"http_request"' "$FLOWS" 2>/dev/null || true)
  log "file round $round: flow log has ${F_HTTP:-0} http_request records (Tollgate served ${F_SERVED:-?} HTTP requests)"
  [ -z "$F_SERVED" ] || [ "${F_HTTP:-0}" -ge "$F_SERVED" ] \
    || note "file round $round: flow log has ${F_HTTP:-0} http_request records, fewer than the $F_SERVED requests Tollgate served"

  # 3: log.elasticsearch
  docs_before=$(fake_stat docs)
  run_config es "es-r$round"
  keep_result es "$round"
  # Wait for the last flush: until nothing is queued and the fake's count stands still.
  log "es round $round: waiting up to ${FLUSH_WAIT}s for the last bulk requests"
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
    [ "$SECONDS" -lt "$deadline" ] || { note "es round $round: after ${FLUSH_WAIT}s the fake still received documents or Tollgate still had ${queued:-?} queued"; break; }
    sleep 1
  done
  served=$(metric_of "$TMP/metrics-es.txt" tollgate_http_requests_total)
  shipped=$(metric_of "$TMP/metrics-es.txt" tollgate_es_records_shipped_total)
  docs=$(fake_stat docs)
  E_QUEUED=$((E_QUEUED + $(es_metric tollgate_es_records_queued)))
  E_RETRIED=$((E_RETRIED + $(es_metric tollgate_es_records_retried_total)))
  E_DEAD=$((E_DEAD + $(es_metric tollgate_es_records_dead_lettered_total)))
  E_DROPPED=$((E_DROPPED + $(es_metric tollgate_es_records_dropped_total)))
  E_WRK_TOTAL=$((E_WRK_TOTAL + $(wrk_total "es-r$round")))
  bench_stop_tollgate "$TG_PID"
  bench_tollgate_stderr "$TMP/tollgate-es-r$round.stderr"
  docs_after_stop=$(fake_stat docs)
  if [ -z "$docs" ] || [ -z "$docs_before" ] || [ -z "$served" ] || [ -z "$shipped" ]; then
    note "es round $round: could not read the fake's document count or Tollgate's metrics"
  else
    round_docs=$((docs - docs_before))
    # One document per flow record: at least one per HTTP request served.
    [ "$round_docs" -ge "$served" ] || note "es round $round: the fake stored $round_docs documents, fewer than the $served HTTP requests Tollgate served"
    [ "$round_docs" -eq "$shipped" ] || note "es round $round: the fake stored $round_docs documents but Tollgate counts $shipped shipped"
    [ "$docs_after_stop" = "$docs" ] || note "es round $round: $((docs_after_stop - docs)) more documents arrived after SIGTERM"
    E_DOCS_TOTAL=$((E_DOCS_TOTAL + round_docs)) E_SERVED_TOTAL=$((E_SERVED_TOTAL + served)) E_SHIPPED_TOTAL=$((E_SHIPPED_TOTAL + shipped))
  fi
done
E_BULKS=$(fake_stat bulk_requests)
ES_TICKS1=$(cpu_ticks "$ES_PID"); ES_CPU_S=$(awk -v t=$(( ${ES_TICKS1% *} - ES_TICKS0 )) -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", t / hz}')
log "es: the fake stored $E_DOCS_TOTAL documents in ${E_BULKS:-?} bulk requests over $ROUNDS rounds; Tollgate served $E_SERVED_TOTAL" \
    "HTTP requests (wrk completed $E_WRK_TOTAL), shipped $E_SHIPPED_TOTAL, left queued $E_QUEUED, retried $E_RETRIED," \
    "dead-lettered $E_DEAD, dropped $E_DROPPED; fake_es used $ES_CPU_S CPU-s"
[ "$E_DEAD" = 0 ] && [ "$E_DROPPED" = 0 ] || note "es: $E_DEAD dead-lettered, $E_DROPPED dropped records"
kill -TERM "$ES_PID" 2>/dev/null || true

# ---------------------------------------------------------------------------
# Report: a row per configuration and round; ratios to configuration 1 of the same round.
pct() { awk -v r="$1" 'BEGIN { if (r ~ /^[0-9.]+$/) printf "%+.0f%%", (r - 1) * 100; else print "n/a" }'; }
label_of() {
  case $1 in
    nosink) echo "1. no flow sinks" ;;
    file) echo "2. \`log.file\`" ;;
    es) echo "3. \`log.elasticsearch\` (fake_es.py, count_only)" ;;
  esac
}
ROWS="" F_RPS_RATIOS="" F_CPU_RATIOS="" E_RPS_RATIOS="" E_CPU_RATIOS=""
for round in $(seq 1 "$ROUNDS"); do
  for config in nosink file es; do
    rps=$(result_field "$config" "$round" 1) per=$(result_field "$config" "$round" 2)
    r_rps=$(ratio "$rps" "$(result_field nosink "$round" 1)") r_per=$(ratio "$per" "$(result_field nosink "$round" 2)")
    case $config in
      file) F_RPS_RATIOS+=" $r_rps" F_CPU_RATIOS+=" $r_per" ;;
      es) E_RPS_RATIOS+=" $r_rps" E_CPU_RATIOS+=" $r_per" ;;
    esac
    ROWS+="| $round | $(label_of "$config") | $(fmt_int "$rps") | $(result_field "$config" "$round" 4) ms | $(result_field "$config" "$round" 5) | $(result_field "$config" "$round" 3) | $per | $r_rps | $r_per | $(result_field "$config" "$round" 10) | $(result_field "$config" "$round" 11) | $(result_field "$config" "$round" 12) | $(result_field "$config" "$round" 6) | $(result_field "$config" "$round" 7) |"$'\n'
  done
done
E_RPS_MEDIAN=$(echo "$E_RPS_RATIOS" | median) E_CPU_MEDIAN=$(echo "$E_CPU_RATIOS" | median)
THREAD_ROWS=""
for config in nosink file es; do
  loop=$(for round in $(seq 1 "$ROUNDS"); do result_field "$config" "$round" 11; done | median)
  aux=$(for round in $(seq 1 "$ROUNDS"); do result_field "$config" "$round" 12; done | median)
  THREAD_ROWS+="| $(label_of "$config") | $loop | $aux |"$'\n'
done
F_RPS_MEDIAN=$(echo "$F_RPS_RATIOS" | median) F_CPU_MEDIAN=$(echo "$F_CPU_RATIOS" | median)

TABLE=$(cat <<EOF
| Round | Tollgate (workers: 1, 1 CPU) | Requests/s | p99 latency | Requests | Proxy CPU-s | Requests per CPU-s | Requests/s vs 1 | Requests per CPU-s vs 1 | Periods at quota | Event loop µs / request | Other threads µs / request | Non-2xx/3xx | Socket errors |
|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
${ROWS%$'\n'}

Medians over the $ROUNDS rounds of each round's ratio to configuration 1:

| Configuration | Requests/s vs no sinks | Requests per CPU-s vs no sinks |
|---|---:|---:|
| 2. \`log.file\` | $F_RPS_MEDIAN ($(pct "$F_RPS_MEDIAN")) | $F_CPU_MEDIAN ($(pct "$F_CPU_MEDIAN")) |
| 3. \`log.elasticsearch\` | **$E_RPS_MEDIAN ($(pct "$E_RPS_MEDIAN"))** | **$E_CPU_MEDIAN ($(pct "$E_CPU_MEDIAN"))** |

Aim (issue 5): Elasticsearch logging on within 5% of logging off.

Medians over the rounds of the CPU per request by thread (from \`/proc/<pid>/task/*/stat\`; steadier than the ratios above, which move with the whole proxy's run-to-run noise): the event loop encodes and hands records over, the other threads write and send them.

| Configuration | Event loop µs / request | Other threads µs / request |
|---|---:|---:|
${THREAD_ROWS%$'\n'}

Configuration 3 delivery, all rounds: the fake counted $E_DOCS_TOTAL documents in ${E_BULKS:-?} bulk requests; Tollgate served $E_SERVED_TOTAL HTTP requests (wrk completed $E_WRK_TOTAL in the warm-up and measured runs, plus the curl checks) and reports \`tollgate_es_records_shipped_total\` $E_SHIPPED_TOTAL (left queued $E_QUEUED, retried $E_RETRIED, dead-lettered $E_DEAD, dropped $E_DROPPED). fake_es.py used $ES_CPU_S CPU-s on CPU $ES_CPU$( [ "$ES_CPU" = "$LOAD_CPU" ] && echo " (shared with wrk)" || echo " (beside the capped proxy)").
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
         "origin nginx (1 worker, access log off) in \`internet\` on CPU $ORIGIN_CPU; Tollgate (\`workers: 1\`) in \`gateway\` on CPU $PROXY_CPU behind the nftables redirect of tcp dport 80 to :$PORT$( [ "$PROXY_QUOTA" -gt 0 ] && echo ", capped at ${PROXY_QUOTA}% of that CPU by a cgroup quota (period 10 ms) so that the proxy, not wrk and the origin on the other CPU, limits requests/s; \"Periods at quota\" is the share of periods in which it used the whole quota")."
    echo "- Configurations, measured in turn in each of $ROUNDS rounds (Tollgate restarted for each): 1. no \`log\` section (requests counted, no record encoded: logging off); 2. \`log.file\` in the temp dir; 3. \`log.elasticsearch\` with \`url: [\"http://127.0.0.1:PORT\"]\` and \`spool\` in the temp dir, pointing at \`Tests/Integration/fake_es.py\` (gzip \`_bulk\`) in \`gateway\` on CPU $ES_CPU$ES_SCHED_NOTE, in \`count_only\` mode (it decompresses each bulk body and counts its items instead of parsing and storing every document in Python, which took as much CPU as wrk on the CPU they share)."
    echo "- Proxy CPU-s: utime+stime of Tollgate (all threads, the shipper's included) from \`/proc/<pid>/stat\` over the measured run. Requests per CPU-s = completed requests / proxy CPU-s. Event loop and other threads µs / request: utime+stime of the \`tollgate-loopN\` threads and of all other threads (flow-log writer, spool writer, sender), per completed request."
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
