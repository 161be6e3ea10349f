# Shared helpers for the namespace benchmarks (bench/http_keepalive.sh, bench/es_overhead.sh,
# bench/tls_intercept.sh). Source it, don't run it:
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Provides logging and notes, the preconditions (root, commands, CPUs, no parallel
# build), the worker -- gateway -- internet topology with its nftables redirect and
# a cleanup trap that removes everything, process starting and CPU accounting, wrk
# output parsing, nginx configuration skeletons and the docs/benchmarks.md writer.
# Variables a script may set before calling the functions: PROXY_CPU, LOAD_CPU,
# ORIGIN_CPU, KEEP_TMP, TOLLGATE_BIN, DOCS_FILE.

# The options the namespace benches share (each script's usage text describes them for it).
# Takes the script's remaining arguments, applies "$1" (and its value), and sets SHIFT_BY;
# returns 1 for an option it does not know, for the script's own ones.
bench_common_option() {
  SHIFT_BY=2
  case "$1" in
    --write-docs) WRITE_DOCS=1; SHIFT_BY=1 ;;
    -d|--duration) DURATION=$2 ;;
    -w|--warmup) WARMUP=$2 ;;
    -c|--connections) CONNECTIONS=$2 ;;
    -t|--threads) THREADS=$2 ;;
    --proxy-cpu) PROXY_CPU=$2 ;;
    --proxy-quota) PROXY_QUOTA=$2 ;;
    --load-cpu) LOAD_CPU=$2 ;;
    --origin-cpu) ORIGIN_CPU=$2 ;;
    --tollgate) TOLLGATE_BIN=$2 ;;
    --wait-idle) WAIT_IDLE=$2 ;;
    --keep-tmp) KEEP_TMP=1; SHIFT_BY=1 ;;
    *) return 1 ;;
  esac
}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DOCS_FILE=${DOCS_FILE:-$REPO/docs/benchmarks.md}
TOLLGATE_BIN=${TOLLGATE_BIN:-$REPO/.build/release/tollgate}
KEEP_TMP=${KEEP_TMP:-0}
# Percent of one CPU the proxy may use (a cgroup CPU quota), 0 for no cap. With a cap the
# proxy, not the load generator sharing the other CPU, is what limits requests/s.
PROXY_QUOTA=${PROXY_QUOTA:-0}
CGROUP_DIR=

# Addresses: the same as Tests/Integration/testbed.py.
WORKER_IP=10.99.0.2
GW_WORKER_IP=10.99.0.1
GW_INTERNET_IP=198.51.100.1
INTERNET_IP=198.51.100.2
ORIGIN_IP=203.0.113.10
PORT=15001

log() { echo "bench: $*" >&2; }
die() { echo "bench: error: $*" >&2; exit 1; }
# fail MESSAGE: die, or with SOFT_FAIL=1 note it and return 1 (the caller returns).
fail() { if [ "${SOFT_FAIL:-0}" -eq 1 ]; then note "$*"; return 1; fi; die "$*"; }
NOTES=()
note() { NOTES+=("$*"); log "note: $*"; }

# ---------------------------------------------------------------------------
# Preconditions

bench_require() {  # commands...
  [ "$(id -u)" -eq 0 ] || die "run as root (network namespaces, nftables)"
  local cmd
  for cmd in "$@"; do
    command -v "$cmd" >/dev/null 2>&1 || die "$cmd not found (scripts/bootstrap.sh installs wrk, nginx-light, nftables)"
  done
}

bench_require_tollgate() {
  [ -x "$TOLLGATE_BIN" ] || die "Tollgate binary $TOLLGATE_BIN not found: build it with 'swift build -c release'"
}

# Fills in ORIGIN_CPU (2 when the machine has 3+ CPUs, else LOAD_CPU) and checks the CPUs.
bench_check_cpus() {
  NPROC=$(nproc)
  [ -n "${ORIGIN_CPU:-}" ] || { if [ "$NPROC" -ge 3 ]; then ORIGIN_CPU=2; else ORIGIN_CPU=$LOAD_CPU; fi; }
  local cpu
  for cpu in "$PROXY_CPU" "$LOAD_CPU" "$ORIGIN_CPU"; do
    [ "$cpu" -lt "$NPROC" ] || die "CPU $cpu does not exist (nproc = $NPROC); see --proxy-cpu/--load-cpu/--origin-cpu"
  done
  [ "$PROXY_CPU" != "$LOAD_CPU" ] || log "warning: proxy and wrk share CPU $PROXY_CPU"
}

HEAVY='swift-build|swift-frontend|pytest|Tests/Integration/'
heavy_procs() { pgrep -fa "$HEAVY" | grep -vE '^[0-9]+ ([^ ]*/)?(pgrep|grep) ' || true; }

tree_ticks() {  # pid -> CPU ticks of it and its descendants, reaped children included
  local total=0 p stat
  local -a f
  for p in $(proc_tree "$1"); do
    stat=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    stat=${stat##*) }
    read -r -a f <<<"$stat"
    total=$((total + f[11] + f[12] + f[13] + f[14]))   # utime stime cutime cstime
  done
  echo "$total"
}

# busy_procs: the heavy processes (builds, test runs; see HEAVY) that, with their
# children, used at least 2 clock ticks of CPU during a 1-second window. An idle
# leftover (a test's fake server) is not busy; a process first seen in this window
# counts from the next one.
busy_procs() {
  local pid rest
  local -A t0=()
  while read -r pid rest; do t0[$pid]=$(tree_ticks "$pid"); done < <(heavy_procs)
  [ "${#t0[@]}" -gt 0 ] || { sleep 1; return 0; }
  sleep 1
  while read -r pid rest; do
    [ -n "${t0[$pid]:-}" ] || continue
    [ $(( $(tree_ticks "$pid") - t0[$pid] )) -lt 2 ] || echo "$pid $rest"
  done < <(heavy_procs)
}

# Namespaces of other bench/ scripts running at the same time (named tgb*; the busy
# watcher does not see those), by their base name.
other_benches() {
  ip netns list 2>/dev/null | awk '{print $1}' | grep '^tgb' | grep -v "^${BASE:-none}-" | sed 's/-[wgi]$//' | sort -u || true
}

# Waits up to $1 seconds (polling every 30 s) for builds, test runs and other
# benchmarks to finish; then (or with 0) only warns that the figures will be noisy.
bench_wait_idle() {
  local limit=${1:-0} busy deadline=$((SECONDS + ${1:-0}))
  while busy=$( { busy_procs; other_benches | sed 's/^/another benchmark: /'; } | head -3) && [ -n "$busy" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "warning: other heavy processes are running, figures will be noisy:"
      printf '  %s\n' "$busy" >&2
      return 0
    fi
    log "waiting for heavy processes to finish (up to ${limit}s in all):"
    printf '  %s\n' "$busy" >&2
    sleep 30
  done
}

# ---------------------------------------------------------------------------
# Names, temp dir, cleanup

# Sets ID, the namespace and interface names and TMP; installs the cleanup trap.
bench_init() {
  ID=$(od -An -N2 -tx1 /dev/urandom | tr -d ' \n')
  BASE="tgb$ID"
  NS_W="$BASE-w"; NS_G="$BASE-g"; NS_I="$BASE-i"
  IF_W="$BASE-wg"; IF_GW="$BASE-gw"; IF_GI="$BASE-gi"; IF_I="$BASE-ig"
  TMP=$(mktemp -d "/tmp/tollgate-bench-$ID-XXXXXX")
  chmod 755 "$TMP"
  PIDS=()
  CLK_TCK=$(getconf CLK_TCK)
  trap bench_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

bench_cleanup() {
  local rc=$? pid ns
  set +e
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  done
  for ns in "$NS_W" "$NS_G" "$NS_I"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
  done
  for ns in "$NS_W" "$NS_G" "$NS_I"; do
    ip netns del "$ns" 2>/dev/null
    # only the per-namespace files this script created (bench_hosts)
    case "$ns" in tgb*) rm -rf "/etc/netns/$ns" ;; esac
  done
  [ -z "$CGROUP_DIR" ] || rmdir "$CGROUP_DIR" 2>/dev/null
  if [ "$KEEP_TMP" -eq 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
  exit "$rc"
}

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# ---------------------------------------------------------------------------
# Topology

# bench_topology DPORT: worker (10.99.0.2) -- gateway -- internet (203.0.113.10),
# with the gateway's redirect of the worker's tcp dport DPORT to :$PORT.
bench_topology() {
  local dport=$1 ns
  log "building namespaces $NS_W / $NS_G / $NS_I"
  for ns in "$NS_W" "$NS_G" "$NS_I"; do ip netns add "$ns"; done
  ip link add "$IF_W" netns "$NS_W" type veth peer name "$IF_GW" netns "$NS_G"
  ip link add "$IF_GI" netns "$NS_G" type veth peer name "$IF_I" netns "$NS_I"
  ip -n "$NS_W" addr add "$WORKER_IP/24" dev "$IF_W"
  ip -n "$NS_W" link set "$IF_W" up
  ip -n "$NS_W" link set lo up
  ip -n "$NS_W" route add default via "$GW_WORKER_IP"
  ip -n "$NS_G" addr add "$GW_WORKER_IP/24" dev "$IF_GW"
  ip -n "$NS_G" addr add "$GW_INTERNET_IP/24" dev "$IF_GI"
  ip -n "$NS_G" link set "$IF_GW" up
  ip -n "$NS_G" link set "$IF_GI" up
  ip -n "$NS_G" link set lo up
  ip -n "$NS_G" route add 203.0.113.0/24 via "$INTERNET_IP"
  ip -n "$NS_I" addr add "$INTERNET_IP/24" dev "$IF_I"
  ip -n "$NS_I" addr add "$ORIGIN_IP/24" dev "$IF_I"
  ip -n "$NS_I" link set "$IF_I" up
  ip -n "$NS_I" link set lo up
  ip -n "$NS_I" route add 10.99.0.0/24 via "$GW_INTERNET_IP"
  in_ns "$NS_G" sysctl -qw net.ipv4.ip_forward=1
  in_ns "$NS_G" nft -f - <<EOF
table ip nat {
  chain prerouting {
    type nat hook prerouting priority -100; policy accept;
    iifname "$IF_GW" tcp dport $dport redirect to :$PORT
  }
}
EOF
}

# bench_hosts NS "ip name"...: an /etc/hosts for the namespace (ip netns exec
# bind-mounts /etc/netns/NS/hosts over /etc/hosts); removed by the cleanup.
bench_hosts() {
  local ns=$1; shift
  mkdir -p "/etc/netns/$ns"
  { printf '127.0.0.1 localhost\n::1 localhost\n'; printf '%s\n' "$@"; } >"/etc/netns/$ns/hosts"
}

# ---------------------------------------------------------------------------
# nginx configuration skeleton: bench_nginx_conf DIR WORKER_CONNECTIONS HTTP_BODY
# writes DIR/nginx.conf (no daemon, 1 worker, access log off, long keep-alive).
bench_nginx_conf() {
  local dir=$1 conns=$2 body=$3
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process on;
user root;
worker_processes 1;
worker_rlimit_nofile $((conns * 2 + 64));
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections $conns; }
http {
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  client_body_temp_path $dir/client_body;
  proxy_temp_path $dir/proxy;
$body
}
EOF
}

bench_nginx_check() {  # ns dir what
  in_ns "$1" nginx -t -q -p "$2" -c "$2/nginx.conf" -e "$2/error.log" || die "$3 nginx config rejected"
}

bench_nginx_start() {  # ns cpu dir -> STARTED_PID
  start_in "$1" "$2" "$3/stderr.log" nginx -p "$3" -c "$3/nginx.conf" -e "$3/error.log"
}

# The origin's stub_status (on its loopback) counts accepted connections: the number
# of upstream connections each proxy opened during a run. Put $STATUS_SERVER in the
# origin's http block.
STATUS_URL=""
STATUS_SERVER=""
if nginx -V 2>&1 | grep -q stub_status; then
  STATUS_URL="http://127.0.0.1:8080/status"
  STATUS_SERVER="  server { listen 127.0.0.1:8080; location = /status { stub_status; } }"
fi

origin_accepts() {  # connections the origin has accepted so far (empty if unknown)
  [ -n "$STATUS_URL" ] || return 0
  in_ns "$NS_I" curl -sf -m 2 "$STATUS_URL" | awk 'NR == 3 {print $1}'
}

# ---------------------------------------------------------------------------
# Processes

# Start a process in a namespace, pinned; `ip netns exec` and `taskset` exec in
# place, so $! is the process's own pid.
start_in() {  # ns cpu logfile argv...
  local ns=$1 cpu=$2 out=$3; shift 3
  ip netns exec "$ns" taskset -c "$cpu" "$@" </dev/null >>"$out" 2>&1 &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
}

wait_for() {  # seconds description command...   (dies, or returns 1 with SOFT_FAIL=1)
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || { fail "timed out waiting for $what"; return 1; }
    sleep 0.1
  done
}

wait_port_free() {  # ns port
  wait_for 10 "port $2 to be free in $1" bash -c "! ip netns exec '$1' ss -Hltn 'sport = :$2' | grep -q ."
}

proc_tree() {  # pid -> the pid and all its descendants
  local pid=$1 child
  echo "$pid"
  for child in $(pgrep -P "$pid" 2>/dev/null); do proc_tree "$child"; done
}

stat_ticks() {  # a /proc/.../stat file -> "utime+stime utime" in clock ticks (nothing if gone)
  local stat
  local -a f
  stat=$(cat "$1" 2>/dev/null) || return 0
  stat=${stat##*) }
  read -r -a f <<<"$stat"
  echo "$((f[11] + f[12])) ${f[11]}"   # fields 14 and 15 of stat(5)
}

cpu_ticks() {  # pids... -> "utime+stime utime" summed (all threads), in clock ticks
  local pid
  for pid in "$@"; do stat_ticks "/proc/$pid/stat"; done | awk '{t += $1; u += $2} END {print t + 0, u + 0}'
}

thread_ticks() {  # pids... -> "name ticks" per thread name (utime+stime, same-named threads summed), sorted
  local pid task comm ticks
  for pid in "$@"; do
    for task in /proc/"$pid"/task/*; do
      comm=$(cat "$task/comm" 2>/dev/null) || continue
      ticks=$(stat_ticks "$task/stat")
      [ -n "$ticks" ] && echo "$comm ${ticks% *}"
    done
  done | awk '{t[$1] += $2} END {for (c in t) print c, t[c]}' | sort
}

rss_kib() {  # pids... -> VmRSS summed, KiB
  local total=0 pid v
  for pid in "$@"; do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || continue
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

# bench_start_tollgate CONFIG STDERR LABEL [CHECK_PATH_ARGS...]: Tollgate with CONFIG in
# gateway on PROXY_CPU (admin on 127.0.0.1:9901), ready once /healthz answers and the
# script's check_path fetch through it returns the origin's bytes; sets TG_PID.
bench_start_tollgate() {
  local config=$1 stderr=$2 label=$3
  shift 3
  wait_port_free "$NS_G" "$PORT"
  wait_port_free "$NS_G" 9901
  log "$label: tollgate (workers: 1) in $NS_G on CPU $PROXY_CPU"
  start_in "$NS_G" "$PROXY_CPU" "$stderr" "$TOLLGATE_BIN" run --config "$config"
  TG_PID=$STARTED_PID
  bench_cap_proxy "$TG_PID"
  wait_for 20 "tollgate /healthz ($label)" in_ns "$NS_G" curl -sf -m 2 -o /dev/null http://127.0.0.1:9901/healthz
  wait_for 10 "a correct fetch through tollgate ($label)" check_path "$@"
}

# bench_cap_proxy PID: with --proxy-quota, moves the process (all its threads, and those it
# starts later) into this run's cgroup, which may use PROXY_QUOTA% of one CPU per 10 ms.
bench_cap_proxy() {
  [ "$PROXY_QUOTA" -gt 0 ] || return 0
  if [ -z "$CGROUP_DIR" ]; then
    local period=10000 quota=$((PROXY_QUOTA * 100))
    if [ -f /sys/fs/cgroup/cgroup.controllers ]; then  # cgroup v2
      grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control || echo +cpu >/sys/fs/cgroup/cgroup.subtree_control
      CGROUP_DIR=/sys/fs/cgroup/$BASE
      mkdir "$CGROUP_DIR" && echo "$quota $period" >"$CGROUP_DIR/cpu.max"
    elif [ -d /sys/fs/cgroup/cpu ]; then  # cgroup v1
      CGROUP_DIR=/sys/fs/cgroup/cpu/$BASE
      mkdir "$CGROUP_DIR" && echo "$period" >"$CGROUP_DIR/cpu.cfs_period_us" && echo "$quota" >"$CGROUP_DIR/cpu.cfs_quota_us"
    else
      die "--proxy-quota needs the cgroup cpu controller (/sys/fs/cgroup)"
    fi || die "cannot set up the CPU quota in $CGROUP_DIR"
    log "proxy capped at ${PROXY_QUOTA}% of a CPU ($CGROUP_DIR)"
  fi
  echo "$1" >"$CGROUP_DIR/cgroup.procs"
}

throttle_stat() {  # -> "periods throttled" of the proxy's cgroup so far
  awk '$1 == "nr_periods" {p = $2} $1 == "nr_throttled" {t = $2} END {print p + 0, t + 0}' "$CGROUP_DIR/cpu.stat"
}

# Figures per case and round, for the benches that run in rounds: keep_result KEY ROUND
# keeps the measured run's (measure's R_* globals); result_field KEY ROUND N reads the Nth:
# 1 requests/s, 2 requests per CPU-s, 3 proxy CPU-s, 4 p99, 5 requests, 6 non-2xx,
# 7 socket errors, 8 upstream conns opened, 9 user CPU µs per request (utime only),
# 10 percent of 10 ms periods the proxy used its whole --proxy-quota in (n/a uncapped),
# 11 CPU µs per request of the event-loop threads, 12 of all other threads.
declare -A RESULT
keep_result() { RESULT[$1,$2]="$R_RPS $R_PER_CPU $R_CPU $R_P99 $R_REQS $R_NON2XX $R_SOCKERR $R_UPCONN $R_USER_US ${R_THROTTLED:-n/a} ${R_LOOP_US:-n/a} ${R_AUX_US:-n/a}"; }
result_field() { echo "${RESULT[$1,$2]}" | awk -v i="$3" '{print $i}'; }

# bench_stop_tollgate PID: SIGTERM, wait up to 10 s (then SIGKILL); notes a bad exit.
bench_stop_tollgate() {
  local pid=$1 rc
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    note "Tollgate did not exit within 10 s of SIGTERM; killed"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null && rc=0 || rc=$?
  [ "$rc" -eq 0 ] || note "Tollgate exited with status $rc after SIGTERM"
}

# bench_tollgate_stderr FILE [IGNORE_ERE]: notes errors, and warnings logged once
# serving, except lines matching IGNORE_ERE. Startup warnings (no rules) are expected.
bench_tollgate_stderr() {
  local suspect ignore=${2:-^\$}
  suspect=$( { grep -iE 'error|fatal|panic|crash' "$1";
               awk 'seen && /warn/; /serving:/ {seen = 1}' "$1"; } | { grep -vE -- "$ignore" || true; } | sort -u | head -3 | cut -c1-300)
  [ -z "$suspect" ] || note "Tollgate stderr: $(echo "$suspect" | tr '\n' ' ')"
  log "tollgate stderr (last lines):"
  tail -n 5 "$1" | sed 's/^/    /' >&2 || true
}

# ---------------------------------------------------------------------------
# wrk

to_ms() {  # wrk latency like 812.00us / 1.23ms / 1.50s -> ms
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /m$/) n *= 60000; else if (v ~ /s$/) n *= 1000
    printf "%.2f", n }'
}

# parse_wrk FILE: sets R_RPS R_REQS R_P99 (ms) R_MBPS (wrk Transfer/sec in MiB/s)
# R_NON2XX R_SOCKERR R_SOCKERR_LINE.
parse_wrk() {
  local out=$1
  R_RPS=$(awk '/^Requests\/sec:/ {print $2}' "$out")
  R_REQS=$(awk '/requests in/ {print $1; exit}' "$out")
  R_P99=$(to_ms "$(awk '$1 == "99%" {print $2; exit}' "$out")")
  R_MBPS=$(awk '/^Transfer\/sec:/ {
      v = $2; n = v + 0
      if (v ~ /GB$/) n *= 1024; else if (v ~ /KB$/) n /= 1024; else if (v ~ /[0-9]B$/) n /= 1048576
      printf "%.1f", n }' "$out")
  R_NON2XX=$(awk -F: '/Non-2xx or 3xx responses/ {gsub(/ /, "", $2); print $2}' "$out")
  R_NON2XX=${R_NON2XX:-0}
  R_SOCKERR=$(awk '/Socket errors:/ {
      s = 0; for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) s += $i; print s }' "$out")
  R_SOCKERR=${R_SOCKERR:-0}
  R_SOCKERR_LINE=$(grep 'Socket errors:' "$out" | sed 's/^ *//' || true)
  [ -n "$R_RPS" ] && [ -n "$R_REQS" ] || { fail "could not parse wrk output $out"; return 1; }
}

# measure NAME WARMUP DURATION "PIDS" WRK_ARGS...: an unmeasured warm-up run
# (skipped when 0), then the measured run of `wrk WRK_ARGS -dDURATIONs` from worker
# on LOAD_CPU, with the CPU-seconds of PIDS (space-separated) around it. Sets the
# parse_wrk globals plus R_CPU R_PER_CPU R_UPCONN; notes heavy processes that ran.
measure() {
  local name=$1 warmup=$2 duration=$3
  local -a pids
  read -r -a pids <<<"$4"
  shift 4
  if [ "$warmup" -gt 0 ]; then
    log "$name: warm-up ${warmup}s"
    in_ns "$NS_W" taskset -c "$LOAD_CPU" wrk "$@" -d"${warmup}s" >"$TMP/wrk-$name-warmup.txt" 2>&1 \
      || { fail "$name: wrk warm-up failed: $(head -c 600 "$TMP/wrk-$name-warmup.txt")"; return 1; }
  fi
  log "$name: measuring ${duration}s: wrk $* -d${duration}s"
  local before after acc_before acc_after out=$TMP/wrk-$name.txt watcher
  ( while :; do busy_procs >>"$TMP/busy-$name.txt"; done ) &
  watcher=$!
  taskset -pc "$LOAD_CPU" "$watcher" >/dev/null 2>&1 || true   # off the proxy's CPU
  PIDS+=("$watcher")
  acc_before=$(origin_accepts)
  all_proc_ticks >"$TMP/procs-$name.before"
  local busy_before busy_after
  busy_before=$(cpu_busy_ticks "$PROXY_CPU")
  before=$(cpu_ticks "${pids[@]}")
  thread_ticks "${pids[@]}" >"$TMP/threads-$name.before"
  local throttle_before=
  [ -z "$CGROUP_DIR" ] || throttle_before=$(throttle_stat)
  local wrk_ok=1 profiler=
  if [ -n "${BENCH_PERF:-}" ]; then  # a directory: profile the proxy during the measured run
    mkdir -p "$BENCH_PERF"
    perf record -q ${BENCH_PERF_OPTS:--g} -p "$(IFS=,; echo "${pids[*]}")" -o "$BENCH_PERF/$name.perf" -- sleep "$duration" >/dev/null 2>&1 &
    profiler=$!
  fi
  in_ns "$NS_W" taskset -c "$LOAD_CPU" wrk "$@" -d"${duration}s" >"$out" 2>&1 || wrk_ok=0
  [ -z "$profiler" ] || wait "$profiler" 2>/dev/null || true
  after=$(cpu_ticks "${pids[@]}")
  thread_ticks "${pids[@]}" >"$TMP/threads-$name.after"
  busy_after=$(cpu_busy_ticks "$PROXY_CPU")
  all_proc_ticks >"$TMP/procs-$name.after"
  acc_after=$(origin_accepts)
  kill "$watcher" 2>/dev/null || true
  wait "$watcher" 2>/dev/null || true
  [ "$wrk_ok" -eq 1 ] || { fail "$name: wrk failed: $(head -c 600 "$out")"; return 1; }
  if [ -s "$TMP/busy-$name.txt" ]; then
    note "$name: other heavy processes ran during the measured run, figures are noisy: $(sort -u "$TMP/busy-$name.txt" | head -2 | cut -c1-120 | tr '\n' ' ')"
  fi
  # minus 1: the stub_status request itself
  if [ -n "$acc_before" ] && [ -n "$acc_after" ]; then R_UPCONN=$((acc_after - acc_before - 1)); else R_UPCONN="n/a"; fi
  sed 's/^/    /' "$out" >&2
  parse_wrk "$out" || return 1
  R_CPU=$(awk -v t=$((${after% *} - ${before% *})) -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", t / hz}')
  # The proxy's own code (user time) per request: kernel networking is most of the rest.
  R_USER_US=$(awk -v t=$((${after#* } - ${before#* })) -v hz="$CLK_TCK" -v r="$R_REQS" 'BEGIN {printf "%.2f", t / hz / r * 1e6}')
  R_PER_CPU=$(awk -v r="$R_REQS" -v c="$R_CPU" 'BEGIN { if (c > 0) printf "%.0f", r / c; else print "n/a" }')
  # CPU per request of the event loops (threads named *-loopN) and of every other thread
  # (Tollgate's flow-log, spool and sender threads): what a sink costs, without the whole
  # proxy's run-to-run noise.
  read -r R_LOOP_US R_AUX_US < <(join "$TMP/threads-$name.before" "$TMP/threads-$name.after" |
    awk -v hz="$CLK_TCK" -v r="$R_REQS" '{d = $3 - $2; if ($1 ~ /-loop[0-9]+$/) l += d; else a += d}
      END {if (r > 0) printf "%.2f %.2f\n", l / hz / r * 1e6, a / hz / r * 1e6; else print "n/a n/a"}')
  # Everything the proxy's CPU did meanwhile (the proxy, softirq network work that ran
  # outside it, anything else scheduled there), and who used the most CPU.
  R_CPU_BUSY=$(awk -v t=$((busy_after - busy_before)) -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", t / hz}')
  R_TOP=$(top_consumers "$TMP/procs-$name.before" "$TMP/procs-$name.after")
  log "$name: proxy ${R_CPU} CPU-s (user ${R_USER_US} µs per request); CPU $PROXY_CPU busy ${R_CPU_BUSY} s; top: $R_TOP"
  R_THROTTLED=
  if [ -n "$throttle_before" ]; then
    # The share of 10 ms periods in which the proxy used its whole quota: near 100% means it
    # was the bottleneck, as the cap intends.
    R_THROTTLED=$(throttle_stat | awk -v b="$throttle_before" '{split(b, x, " "); p = $1 - x[1]; t = $2 - x[2]; printf "%.0f%%", (p > 0 ? 100 * t / p : 0)}')
    log "$name: the proxy used its whole ${PROXY_QUOTA}% quota in ${R_THROTTLED} of the 10 ms periods"
  fi
  # (Under a quota the proxy gets its share whatever else runs on its CPU.)
  if [ "$PROXY_QUOTA" -eq 0 ] && awk -v b="$R_CPU_BUSY" -v p="$R_CPU" -v d="$duration" 'BEGIN { exit !(b - p > 0.05 * d) }'; then
    note "$name: CPU $PROXY_CPU was shared: busy ${R_CPU_BUSY} s, the proxy ${R_CPU} CPU-s (requests/s understated; top: $R_TOP)"
  fi
}

# wrk_notes LABEL NAME: notes non-2xx and socket errors of the measured and warm-up runs.
wrk_notes() {
  local label=$1 name=$2
  [ "$R_NON2XX" -eq 0 ] || note "$label: $R_NON2XX non-2xx/3xx responses in wrk's measured run"
  [ "$R_SOCKERR" -eq 0 ] || note "$label: wrk $R_SOCKERR_LINE"
  if [ -f "$TMP/wrk-$name-warmup.txt" ] && grep -qE 'Non-2xx|Socket errors' "$TMP/wrk-$name-warmup.txt"; then
    note "$label warm-up: $(grep -E 'Non-2xx|Socket errors' "$TMP/wrk-$name-warmup.txt" | sed 's/^ *//' | tr '\n' ' ')"
  fi
}

cpu_busy_ticks() {  # cpu -> its busy ticks so far (user nice system irq softirq steal) from /proc/stat
  awk -v c="cpu$1" '$1 == c {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat
}

all_proc_ticks() {  # "pid ticks comm" for every process (all threads), to diff
  local f stat comm
  local -a v
  for f in /proc/[0-9]*/stat; do
    stat=$(cat "$f" 2>/dev/null) || continue
    comm=${stat#*(}; comm=${comm%%)*}
    stat=${stat##*) }
    read -r -a v <<<"$stat"
    echo "${f//[^0-9]/} $((v[11] + v[12])) ${comm// /_}"
  done
}

top_consumers() {  # before-file after-file -> the 5 processes that used the most CPU between them
  awk 'NR == FNR {b[$1] = $2; next} {d = $2 - b[$1]; if (d > 0) print d, $1, $3}' "$1" "$2" \
    | sort -rn | head -5 | awk -v hz="$CLK_TCK" '{printf "%s(%s) %.2fs; ", $3, $2, $1 / hz}'
}

ratio() {  # a b -> a/b with 2 decimals, or n/a
  awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && a > 0 && b > 0) printf "%.2f", a / b; else print "n/a" }'
}

median() {  # numbers on stdin (space- or newline-separated) -> their median, or n/a
  tr ' ' '\n' | grep -E '^[0-9.]+$' | sort -g \
    | awk '{v[NR] = $1} END { if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

fmt_int() { awk -v n="$1" 'BEGIN { if (n ~ /^[0-9.]+$/) printf "%.0f", n; else print n }'; }

# ---------------------------------------------------------------------------
# docs/benchmarks.md

# Sets DATE NPROC_LINE (machine line) COMMIT (HEAD short hash, plus a mark for an
# uncommitted Sources/) and BIN_DATE (of $TOLLGATE_BIN or $1).
bench_provenance() {
  local bin=${1:-$TOLLGATE_BIN} cpu_model
  DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
  cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
  MACHINE_LINE="\`nproc\` = $(nproc) (${cpu_model:-unknown CPU}), kernel $(uname -r)"
  COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ -n "$(git -C "$REPO" status --porcelain -- Sources Package.swift 2>/dev/null)" ]; then
    COMMIT="$COMMIT + uncommitted changes in Sources/"
  fi
  BIN_DATE=$(date -u -r "$bin" '+%Y-%m-%d %H:%M UTC' 2>/dev/null || echo unknown)
}

# bench_snapshot_tollgate: records the provenance (bench_provenance) now and runs a copy
# of the binary from the temp dir, so that a rebuild during the run changes neither
# what is measured nor what the docs say was measured.
bench_snapshot_tollgate() {
  bench_provenance "$TOLLGATE_BIN"
  mkdir -p "$TMP/bin"
  cp "$TOLLGATE_BIN" "$TMP/bin/tollgate"
  TOLLGATE_BIN=$TMP/bin/tollgate
}

# bench_write_section KEY FILE: puts FILE's content between
# <!-- bench:KEY:begin --> and <!-- bench:KEY:end --> in docs/benchmarks.md,
# replacing the previous section of that key or appending a new one.
bench_write_section() {
  local key=$1 section=$2
  local begin="<!-- bench:$key:begin -->" end="<!-- bench:$key:end -->" tmp
  tmp=$(mktemp "${TMPDIR:-/tmp}/benchmarks-md-XXXXXX")
  { echo "$begin"; cat "$section"; echo "$end"; } >"$tmp.section"
  if [ ! -f "$DOCS_FILE" ]; then
    printf '# Benchmarks\n\nFigures written by the scripts in `bench/` (see bench/README.md). Each section is replaced when its script is rerun with `--write-docs`.\n\n' >"$DOCS_FILE"
  fi
  if grep -qF "$begin" "$DOCS_FILE"; then
    awk -v b="$begin" -v e="$end" -v sf="$tmp.section" '
      $0 == b { while ((getline line < sf) > 0) print line; skip = 1; next }
      $0 == e { skip = 0; next }
      !skip { print }' "$DOCS_FILE" >"$tmp"
    cat "$tmp" >"$DOCS_FILE"
  else
    { [ -s "$DOCS_FILE" ] && [ -n "$(tail -c1 "$DOCS_FILE")" ] && echo; echo; cat "$tmp.section"; } >>"$DOCS_FILE"
  fi
  rm -f "$tmp" "$tmp.section"
  log "wrote the $key section to $DOCS_FILE"
}
