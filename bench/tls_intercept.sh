#!/usr/bin/env bash
# Issue 3 benchmark: TLS interception per CPU-second of the proxy, against nginx
# (terminating and re-encrypting, the practical limit) and mitmproxy.
#
#   worker (10.99.0.2) --veth-- (10.99.0.1) gateway (198.51.100.1) --veth-- (198.51.100.2) internet
#     wrk, origin.test           proxy on :15001                               nginx HTTPS origin
#     -> 203.0.113.10            (nft redirect of tcp dport 443)               203.0.113.10:443, /1k /64k
#                                                                              (cert for origin.test, "Origin CA")
# Proxies, each pinned to one CPU; Tollgate and nginx alternate for --rounds rounds (runs
# on this 2-CPU VM drift by +-10% over minutes: the ratios are medians of per-round ratios):
#   1. Tollgate: transparent listener, workers: 1, its own CA (tollgate ca init),
#      tls.upstream_ca = the Origin CA, flow log on;
#   2. nginx: TLS terminated with a static origin.test certificate ("Bench Proxy CA"),
#      re-encrypted to the origin with verification, upstream keepalive 64, 1 worker;
#   3. mitmproxy: mitmdump --mode transparent, verifying upstream against the Origin CA;
#   and, each round, Tollgate without its flow log and nginx with its access log: the
#   like-for-like pairings (neither logging, both logging) next to 1 / 2.
# Cases (wrk from worker, pinned to another CPU): keep-alive 1 KiB; a new connection per
# request (Connection: close), 1 KiB; keep-alive 64 KiB. For each: requests/s, p99,
# the proxy's CPU-seconds (utime+stime of all its processes) and requests per CPU-second,
# then Tollgate/nginx and Tollgate/mitmproxy per CPU-second. Then Tollgate's resident
# memory per idle intercepted connection (5,000 idle TLS connections).
#
# Run as root:  bench/tls_intercept.sh [--write-docs] [options]     (see --help)
# Everything (namespaces, processes, /etc/netns files, temp dir) is removed on exit.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
COMMAND_LINE="bench/tls_intercept.sh${*:+ $*}"

DURATION=10
WARMUP=3
CONNECTIONS=50
THREADS=1
MITM_DURATION=5
MITM_WARMUP=2
MITM_CONNECTIONS=10
IDLE_CONNS=5000
PROXY_CPU=0
LOAD_CPU=1
ORIGIN_CPU=""
WRITE_DOCS=0
WAIT_IDLE=0
ROUNDS=3
SKIP_MITM=0
MITM_VENV=${MITM_VENV:-/var/cache/tollgate-bench/mitmproxy-venv}
SNI=origin.test

usage() {
  cat <<EOF
usage: $0 [options]            (run as root)
  --write-docs          also append/replace the section in docs/benchmarks.md
  -d, --duration S      measured wrk run per case, Tollgate and nginx (default $DURATION)
  -w, --warmup S        unmeasured warm-up run before each, 0 to skip (default $WARMUP)
  -c, --connections N   wrk connections, Tollgate and nginx (default $CONNECTIONS)
  -t, --threads N       wrk threads (default $THREADS)
  --mitm-duration S     measured run per case for mitmproxy (default $MITM_DURATION)
  --mitm-warmup S       its warm-up (default $MITM_WARMUP)
  --mitm-connections N  wrk connections for mitmproxy (default $MITM_CONNECTIONS)
  --mitm-venv DIR       venv with mitmproxy; created with pip when missing (default $MITM_VENV)
  --skip-mitmproxy      measure Tollgate and nginx only
  --idle-conns N        idle TLS connections for Tollgate's memory figure, 0 to skip (default $IDLE_CONNS)
  --proxy-cpu N         CPU the proxy is pinned to (default $PROXY_CPU)
  --load-cpu N          CPU wrk is pinned to (default $LOAD_CPU)
  --origin-cpu N        CPU the origin nginx is pinned to (default: 2 if present, else --load-cpu)
  --rounds N            rounds of Tollgate then nginx, all cases each (default $ROUNDS)
  --tollgate PATH       Tollgate binary (default \$TOLLGATE_BIN or .build/release/tollgate)
  --wait-idle S         first wait up to S seconds for builds/test runs to finish (default $WAIT_IDLE)
  --keep-tmp            keep the temp dir (certificates, configs, logs, raw wrk output)
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --mitm-duration) MITM_DURATION=$2; shift 2 ;;
    --mitm-warmup) MITM_WARMUP=$2; shift 2 ;;
    --mitm-connections) MITM_CONNECTIONS=$2; shift 2 ;;
    --mitm-venv) MITM_VENV=$2; shift 2 ;;
    --skip-mitmproxy) SKIP_MITM=1; shift ;;
    --idle-conns) IDLE_CONNS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) bench_common_option "$@" || { echo "unknown argument: $1" >&2; usage >&2; exit 2; }; shift "$SHIFT_BY" ;;
  esac
done

# ---------------------------------------------------------------------------
# Preconditions
bench_require ip nft nginx wrk taskset curl awk openssl python3
bench_require_tollgate
bench_check_cpus
# 5,000 idle connections need ~10,000 descriptors in Tollgate and 5,000 in the client.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -ge $((IDLE_CONNS * 2 + 1024)) ] || log "warning: ulimit -n is $(ulimit -n), too low for $IDLE_CONNS idle connections"

# mitmproxy 12 needs Python >= 3.12; the venv lives outside the temp dir so later
# runs reuse it. Set up before the namespaces exist (pip needs the network).
MITM_REASON=""
find_python312() {
  local py
  for py in python3.13 python3.12 python3 /root/.pyenv/versions/3.1[2-9]*/bin/python3 /usr/local/bin/python3.1[2-9]; do
    command -v "$py" >/dev/null 2>&1 || [ -x "$py" ] || continue
    "$py" -c 'import sys, venv; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && { command -v "$py" || echo "$py"; return 0; }
  done
  return 1
}
if [ "$SKIP_MITM" -eq 1 ]; then
  MITM_REASON="skipped (--skip-mitmproxy)"
elif [ ! -x "$MITM_VENV/bin/mitmdump" ]; then
  if PY312=$(find_python312); then
    log "creating $MITM_VENV with $PY312 and installing mitmproxy (pip)"
    if ! { mkdir -p "$(dirname "$MITM_VENV")" && "$PY312" -m venv "$MITM_VENV" \
           && "$MITM_VENV/bin/pip" install -q mitmproxy; } >"/tmp/tollgate-bench-mitm-install.log" 2>&1; then
      MITM_REASON="pip install mitmproxy into $MITM_VENV failed: $(tail -n 2 /tmp/tollgate-bench-mitm-install.log | tr '\n' ' ' | cut -c1-300)"
    fi
  else
    MITM_REASON="mitmproxy 12 needs Python >= 3.12 and none was found"
  fi
fi
if [ -z "$MITM_REASON" ]; then
  MITM_VERSION=$("$MITM_VENV/bin/mitmdump" --version 2>/dev/null | awk '/^Mitmproxy:/ {print $2}')
  [ -n "$MITM_VERSION" ] || MITM_REASON="$MITM_VENV/bin/mitmdump --version failed"
fi
[ -z "$MITM_REASON" ] || log "mitmproxy: $MITM_REASON"

bench_wait_idle "$WAIT_IDLE"
bench_init
bench_snapshot_tollgate
bench_topology 443
bench_hosts "$NS_W" "$ORIGIN_IP $SNI"

# ---------------------------------------------------------------------------
# Certificates: the Origin CA and origin.test; the Bench Proxy CA and nginx's static
# origin.test certificate; Tollgate's CA. All ECDSA P-256.
PKI=$TMP/pki
mkdir -p "$PKI" "$TMP/www"
make_ca() {  # stem "CN"
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -days 30 \
    -subj "/CN=$2" -keyout "$PKI/$1-key.pem" -out "$PKI/$1.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}
make_leaf() {  # stem ca-stem subjectAltName
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
    -subj "/CN=$SNI" -keyout "$PKI/$1-key.pem" -out "$PKI/$1.csr" 2>/dev/null
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' "$3" \
    >"$PKI/$1.ext"
  openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/$2.pem" -CAkey "$PKI/$2-key.pem" -set_serial "0x$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')" \
    -sha256 -days 20 -extfile "$PKI/$1.ext" -out "$PKI/$1.pem" 2>/dev/null
}
make_ca origin-ca "Origin CA"
make_leaf origin origin-ca "DNS:$SNI,IP:$ORIGIN_IP"
make_ca proxy-ca "Bench Proxy CA"
make_leaf proxy-leaf proxy-ca "DNS:$SNI"
ORIGIN_CA=$PKI/origin-ca.pem
"$TOLLGATE_BIN" ca init --dir "$TMP/ca" >"$TMP/ca-init.log" 2>&1 || die "tollgate ca init failed: $(cat "$TMP/ca-init.log")"
TOLLGATE_CA=$TMP/ca/ca.pem

head -c 1024 /dev/urandom >"$TMP/www/1k"
head -c 65536 /dev/urandom >"$TMP/www/64k"

# ---------------------------------------------------------------------------
# Origin (HTTPS) and the nginx proxy
bench_nginx_conf "$TMP/origin" 16384 "  server {
    listen $ORIGIN_IP:443 ssl backlog=4096;
    ssl_certificate $PKI/origin.pem;
    ssl_certificate_key $PKI/origin-key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:ORIGIN:10m;
    root $TMP/www;
    location = /1k { default_type application/octet-stream; }
    location = /64k { default_type application/octet-stream; }
  }
$STATUS_SERVER"

proxy_nginx_conf() {  # dir access-log-directive
  bench_nginx_conf "$1" 4096 "  upstream origin_up {
    server $ORIGIN_IP:443;
    keepalive 64;
    keepalive_requests 100000000;
  }
  server {
    listen 0.0.0.0:$PORT ssl backlog=4096;
    ssl_certificate $PKI/proxy-leaf.pem;
    ssl_certificate_key $PKI/proxy-leaf-key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    $2
    location / {
      proxy_pass https://origin_up;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host \$host;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $ORIGIN_CA;
      proxy_ssl_name $SNI;
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
      proxy_ssl_protocols TLSv1.2 TLSv1.3;
    }
  }"
}
proxy_nginx_conf "$TMP/proxy" ""
# The like-for-like peer of Tollgate logging every request: nginx writing its access log.
proxy_nginx_conf "$TMP/proxy-log" "access_log $TMP/proxy-log/access.log combined buffer=64k flush=1s;"

tollgate_config() {  # flow-log-file
  cat <<EOF
# generated by bench/tls_intercept.sh
listen:
  transparent: ["0.0.0.0:$PORT"]
  admin: "127.0.0.1:9901"
workers: 1
ca: { cert: "$TOLLGATE_CA", key: "$TMP/ca/ca-key.pem" }
tls: { upstream_ca: "$ORIGIN_CA" }
log:
  file: $1
agents:
  bench:
    sources: ["$WORKER_IP"]
timeouts:
  drain: 3s
EOF
}
tollgate_config "$TMP/tollgate-flows.ndjson" >"$TMP/tollgate.yaml"
tollgate_config "$TMP/tollgate-idle-flows.ndjson" >"$TMP/tollgate-idle.yaml"
# A diagnostic: the same without the log section (no record encoded), as nginx runs without
# its access log.
grep -v -e '^log:' -e '^  file:' "$TMP/tollgate.yaml" >"$TMP/tollgate-nolog.yaml"

bench_nginx_check "$NS_I" "$TMP/origin" origin
bench_nginx_check "$NS_G" "$TMP/proxy" proxy
bench_nginx_check "$NS_G" "$TMP/proxy-log" "proxy (access log)"
"$TOLLGATE_BIN" check-config --config "$TMP/tollgate.yaml" >/dev/null \
  || die "tollgate check-config rejected $TMP/tollgate.yaml"

log "starting the HTTPS origin in $NS_I on CPU $ORIGIN_CPU"
bench_nginx_start "$NS_I" "$ORIGIN_CPU" "$TMP/origin"
wait_for 10 "origin on $ORIGIN_IP:443" in_ns "$NS_I" \
  curl -sf -o /dev/null --cacert "$ORIGIN_CA" --resolve "$SNI:443:$ORIGIN_IP" "https://$SNI/1k"

# ---------------------------------------------------------------------------
# Checks through a proxy

# check_path CA: from worker, trusting only CA, https://origin.test/1k returns the
# origin's exact bytes (so the certificate the worker saw was the proxy's).
check_path() {
  in_ns "$NS_W" curl -sf -m 5 --cacert "$1" -o "$TMP/check.body" "https://$SNI/1k" \
    && cmp -s "$TMP/check.body" "$TMP/www/1k"
}

# check_intercepted LABEL CA: the bytes match with the proxy's CA, trusting only the
# Origin CA fails (interception happened); notes otherwise. Sets TLS_SEEN.
check_intercepted() {
  local label=$1 ca=$2
  check_path "$ca" || note "$label: a fetch trusting only its CA failed or returned different bytes"
  if in_ns "$NS_W" curl -sf -m 5 --cacert "$ORIGIN_CA" -o /dev/null "https://$SNI/1k" 2>/dev/null; then
    note "$label: a fetch trusting only the Origin CA succeeded: the connection was not intercepted"
  fi
  TLS_SEEN=$(in_ns "$NS_W" curl -sv -m 5 --cacert "$ca" -o /dev/null "https://$SNI/1k" 2>&1 \
    | sed -n 's/.*SSL connection using \(.*\)$/\1/p; s/.*issuer: \(.*\)$/issuer \1/p' | tr '\n' ';' | sed 's/;$//; s/;/, /g')
  log "$label: client side: $TLS_SEEN"
  RESUMPTION=$(resumption "$ca")
  log "$label: session resumption: $RESUMPTION"
}

# resumption CA: whether a second connection resumes the session of the first
# (openssl s_client, TLS 1.3 and 1.2, the ticket or session read after one request).
resumption() {
  local ca=$1 v out=() sess=$TMP/sess.pem
  for v in tls1_3 tls1_2; do
    rm -f "$sess"
    printf 'GET /1k HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$SNI" | in_ns "$NS_W" timeout 5 \
      openssl s_client -"$v" -connect "$ORIGIN_IP:443" -servername "$SNI" -CAfile "$ca" -ign_eof -sess_out "$sess" >/dev/null 2>&1
    if [ -s "$sess" ] && printf 'GET /1k HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$SNI" | in_ns "$NS_W" timeout 5 \
         openssl s_client -"$v" -connect "$ORIGIN_IP:443" -servername "$SNI" -CAfile "$ca" -ign_eof -sess_in "$sess" 2>/dev/null \
         | grep -q '^Reused'; then
      out+=("${v/tls1_/TLS 1.}: resumed")
    else
      out+=("${v/tls1_/TLS 1.}: full handshake")
    fi
  done
  local IFS=,
  echo "${out[*]}" | sed 's/,/, /g'
}

CASES=(ka1k close1k ka64k)
declare -A CASE_TITLE=([ka1k]="keep-alive, 1 KiB" [close1k]="new connection per request, 1 KiB" [ka64k]="keep-alive, 64 KiB")
declare -A CASE_AIM=([ka1k]="≥ 1.0" [close1k]="≥ 0.8" [ka64k]="≥ 1.0")
case_args() {  # case conns -> wrk arguments (without -d)
  case "$1" in
    ka1k) echo "-t$THREADS -c$2 --latency https://$SNI/1k" ;;
    close1k) echo "-t$THREADS -c$2 --latency -H Connection:close https://$SNI/1k" ;;
    ka64k) echo "-t$THREADS -c$2 --latency https://$SNI/64k" ;;
  esac
}
wrk_argv() {  # case conns -> WRK_ARGV (the header as one argument)
  case "$1" in
    close1k) WRK_ARGV=(-t"$THREADS" -c"$2" --latency -H "Connection: close" "https://$SNI/1k") ;;
    ka64k) WRK_ARGV=(-t"$THREADS" -c"$2" --latency "https://$SNI/64k") ;;
    *) WRK_ARGV=(-t"$THREADS" -c"$2" --latency "https://$SNI/1k") ;;
  esac
}

declare -A RES
# run_cases PROXY LABEL WARMUP DURATION CONNS "PIDS" ROUND: the three cases; results in
# RES[PROXY.case.rROUND.field].
run_cases() {
  local proxy=$1 label=$2 warmup=$3 duration=$4 conns=$5 pids=$6 round=$7 c k
  for c in "${CASES[@]}"; do
    wrk_argv "$c" "$conns"
    log "$label, ${CASE_TITLE[$c]}, round $round"
    k=$proxy.$c.r$round
    if measure "$proxy-$c-r$round" "$warmup" "$duration" "$pids" "${WRK_ARGV[@]}"; then
      RES[$k.rps]=$R_RPS RES[$k.reqs]=$R_REQS RES[$k.p99]=$R_P99 RES[$k.mbps]=$R_MBPS
      RES[$k.cpu]=$R_CPU RES[$k.percpu]=$R_PER_CPU RES[$k.upconn]=$R_UPCONN
      RES[$k.non2xx]=$R_NON2XX RES[$k.sockerr]=$R_SOCKERR RES[$k.conns]=$conns
      wrk_notes "$label (${CASE_TITLE[$c]}, round $round)" "$proxy-$c-r$round"
    fi
  done
}

# ---------------------------------------------------------------------------
# 1 and 2, round after round: Tollgate (its flow log grows across the rounds), then nginx.
# Only the first round checks what the clients see (the unknown-CA check leaves one
# rejection in the flow log).
tollgate_round() {  # round [config key]: key tgnolog is the diagnostic run without the flow log
  local round=$1 config=${2:-tollgate} key=${3:-tollgate}
  bench_start_tollgate "$TMP/$config.yaml" "$TMP/$key-r$round.stderr" "1. $config, intercepting, round $round" "$TOLLGATE_CA"
  if [ "$round" -eq 1 ] && [ "$key" = tollgate ]; then
    check_intercepted Tollgate "$TOLLGATE_CA"
    TG_TLS="$TLS_SEEN; session resumption $RESUMPTION"
  fi
  run_cases "$key" "Tollgate ($config)" "$WARMUP" "$DURATION" "$CONNECTIONS" "$TG_PID" "$round"
  kill -0 "$TG_PID" 2>/dev/null || note "Tollgate ($config) died during the runs of round $round (see its stderr below)"
  check_path "$TOLLGATE_CA" || note "after the runs of round $round, a fetch through Tollgate ($config) failed or returned different bytes"
  if [ "$key" = tollgate ]; then
    TG_RSS=$(rss_kib "$TG_PID")
    TG_THREADS=$(awk '/^Threads:/ {print $2}' "/proc/$TG_PID/status" 2>/dev/null || echo "?")
    in_ns "$NS_G" curl -sf -m 2 http://127.0.0.1:9901/metrics 2>/dev/null | grep -iE '^tollgate_(tls|upstream|conn)' | head -20 \
      >"$TMP/tollgate-metrics.txt" || true
  fi
  bench_stop_tollgate "$TG_PID"
  bench_tollgate_stderr "$TMP/$key-r$round.stderr" "$TG_EXPECTED_WARN"
}

nginx_round() {  # round [key]: key nginxlog is nginx with its access log on
  local round=$1 key=${2:-nginx} pids pids_after dir=$TMP/proxy
  [ "$key" = nginx ] || dir=$TMP/proxy-log
  wait_port_free "$NS_G" "$PORT"
  log "2. $key (1 worker, TLS re-encrypting, upstream keepalive 64) in $NS_G on CPU $PROXY_CPU, round $round"
  bench_nginx_start "$NS_G" "$PROXY_CPU" "$dir"
  NGX_PID=$STARTED_PID
  wait_for 10 "a correct fetch through nginx" check_path "$PKI/proxy-ca.pem"
  if [ "$round" -eq 1 ] && [ "$key" = nginx ]; then
    check_intercepted nginx "$PKI/proxy-ca.pem"
    NGX_TLS="$TLS_SEEN; session resumption $RESUMPTION"
  fi
  pids=$(proc_tree "$NGX_PID" | tr '\n' ' ')
  run_cases "$key" "$key" "$WARMUP" "$DURATION" "$CONNECTIONS" "$pids" "$round"
  pids_after=$(proc_tree "$NGX_PID" | tr '\n' ' ')
  [ "$pids" = "$pids_after" ] || note "nginx process set changed during the runs of round $round ($pids-> $pids_after)"
  kill -TERM "$NGX_PID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$NGX_PID" 2>/dev/null || break; sleep 0.1; done
}

# Expected warnings: wrk closing handshakes when it stops, and the unknown-CA check.
TG_EXPECTED_WARN='rejected the intercepted certificate for origin.test: (peer closed the connection during the TLS handshake|tlsv1 alert unknown ca)'
for round in $(seq 1 "$ROUNDS"); do
  tollgate_round "$round"
  nginx_round "$round"
  tollgate_round "$round" tollgate-nolog tgnolog
  nginx_round "$round" nginxlog
done
while read -r l; do note "nginx error.log: ${l:0:300}"; done < <(grep -E '\[(error|crit|alert|emerg)\]' "$TMP/proxy/error.log" | head -2 || true)
# The flow log, sorted: what is expected (one http_request with status 200 per request;
# the end of each wrk run, which drops the connections it has open: requests whose
# client went away, handshakes it closed, connections that sent nothing; the one
# unknown-CA rejection of check_intercepted) and anything else, which is suspicious.
# Prints shell assignments F_*.
flow_summary() {  # file [wrk-output-glob]
  python3 - "$@" <<'PY'
import glob, json, shlex, sys
from collections import Counter
path, globs = sys.argv[1], sys.argv[2:]
def get(rec, dotted):
    cur = rec
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur
n = Counter()
other = Counter()
examples = []
with open(path) as f:
    for line in f:
        n["records"] += 1
        try:
            rec = json.loads(line)
        except ValueError:
            n["other"] += 1; other["unparsable line"] += 1; examples.append(line[:300]); continue
        action, status = get(rec, "event.action"), get(rec, "http.response.status_code")
        etype, emsg = get(rec, "error.type"), get(rec, "error.message") or ""
        if action == "http_request":
            n["http"] += 1
        if action == "http_request" and status == 200 and etype is None:
            n["http_ok"] += 1
        elif action == "http_request" and etype == "client_reset":
            n["client_gone"] += 1
        elif action == "tls.client_rejected_certificate" and "during the TLS handshake" in emsg:
            n["handshake_closed"] += 1
        elif action == "tls.client_rejected_certificate" and "unknown ca" in emsg:
            n["unknown_ca"] += 1
        elif action == "tcp_relay" and not get(rec, "source.bytes") and not get(rec, "destination.bytes"):
            n["empty_relay"] += 1
        else:
            n["other"] += 1
            other[f"{action} status={status} error={etype}: {emsg[:120]}"] += 1
            if len(examples) < 1:
                examples.append(line.strip()[:500])
wrk = runs = 0
for g in globs:
    for name in glob.glob(g):
        runs += 1
        for l in open(name):
            if "requests in" in l:
                wrk += int(l.split()[0])
out = {k: n[k] for k in ("records", "http", "http_ok", "client_gone", "handshake_closed", "unknown_ca", "empty_relay", "other")}
out.update(wrk=wrk, runs=runs)
for k, v in out.items():
    print(f"F_{k.upper()}={v}")
print("F_OTHER_KINDS=" + shlex.quote("; ".join(f"{v}x {k}" for k, v in other.most_common(3))))
print("F_EXAMPLE=" + shlex.quote(examples[0] if examples else ""))
PY
}
FLOWS=$TMP/tollgate-flows.ndjson
FLOW_LINE="no flow log"
if [ -f "$FLOWS" ]; then
  eval "$(flow_summary "$FLOWS" "$TMP/wrk-tollgate-*.txt")"
  TEARDOWN=$((F_CLIENT_GONE + F_HANDSHAKE_CLOSED + F_EMPTY_RELAY))
  FLOW_LINE="flow log: $F_RECORDS records; $F_HTTP_OK requests with status 200 (wrk completed $F_WRK, plus the curl checks); from the ends of the $F_RUNS wrk runs (connections wrk drops when it stops): $F_CLIENT_GONE requests whose client went away, $F_HANDSHAKE_CLOSED handshakes closed by the client (logged as tls.client_rejected_certificate), $F_EMPTY_RELAY connections that sent nothing; $F_UNKNOWN_CA unknown-CA rejection (the check trusting only the Origin CA); $F_OTHER other"
  log "$FLOW_LINE"
  [ "$F_OTHER" -eq 0 ] || note "Tollgate flow log: $F_OTHER unexpected record(s): $F_OTHER_KINDS; e.g. $F_EXAMPLE"
  [ "$F_HTTP" -ge "$F_WRK" ] || note "Tollgate flow log has $F_HTTP http_request records, fewer than the $F_WRK requests wrk completed"
  [ "$TEARDOWN" -le $((F_RUNS * (CONNECTIONS + 1))) ] || note "Tollgate flow log: $TEARDOWN aborted requests/handshakes/empty connections, more than the end of $F_RUNS wrk runs of $CONNECTIONS connections explains"
  [ "$F_UNKNOWN_CA" -eq 1 ] || note "Tollgate flow log: $F_UNKNOWN_CA unknown-CA rejections (expected 1, from the check)"
else
  note "Tollgate wrote no flow log at $FLOWS"
fi
[ -s "$TMP/tollgate-metrics.txt" ] && { log "tollgate metrics at the end of the runs:"; sed 's/^/    /' "$TMP/tollgate-metrics.txt" >&2; }

# ---------------------------------------------------------------------------
# Tollgate: resident memory per idle intercepted connection (a fresh process)
MEM_LINE="not measured (--idle-conns 0)"
if [ "$IDLE_CONNS" -gt 0 ]; then
  bench_start_tollgate "$TMP/tollgate-idle.yaml" "$TMP/tollgate-idle.stderr" "$IDLE_CONNS idle intercepted connections" "$TOLLGATE_CA"
  TGI_PID=$TG_PID
  sleep 2
  RSS_BEFORE=$(rss_kib "$TGI_PID")
  rm -f "$TMP/idle.ready"
  start_in "$NS_W" "$LOAD_CPU" "$TMP/idle-client.log" python3 "$REPO/bench/idle_tls_clients.py" \
    --host "$ORIGIN_IP" --sni "$SNI" --cafile "$TOLLGATE_CA" --path /1k -n "$IDLE_CONNS" --ready "$TMP/idle.ready"
  CLIENT_PID=$STARTED_PID
  wait_for 300 "$IDLE_CONNS connections through tollgate" test -s "$TMP/idle.ready"
  IDLE_JSON=$(cat "$TMP/idle.ready")
  log "idle client: $IDLE_JSON"
  IDLE_OPEN=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["open"])' "$IDLE_JSON")
  sleep 5   # let the proxy settle (buffers released on idle connections)
  RSS_IDLE=$(rss_kib "$TGI_PID")
  GW_ESTAB=$(in_ns "$NS_G" ss -Htn state established "( sport = :$PORT )" | wc -l)
  UP_ESTAB=$(in_ns "$NS_G" ss -Htn state established "( dport = :443 )" | wc -l)
  TGI_FDS=$(ls "/proc/$TGI_PID/fd" 2>/dev/null | wc -l)
  PER_CONN=$(awk -v a="$RSS_BEFORE" -v b="$RSS_IDLE" -v n="$IDLE_OPEN" 'BEGIN { if (n > 0) printf "%.1f", (b - a) / n; else print "n/a" }')
  [ "$IDLE_OPEN" -eq "$IDLE_CONNS" ] || note "idle test: only $IDLE_OPEN of $IDLE_CONNS connections completed their request: $IDLE_JSON"
  [ "$GW_ESTAB" -ge "$IDLE_OPEN" ] || note "idle test: Tollgate held $GW_ESTAB established client connections, fewer than the $IDLE_OPEN the client holds"
  kill -TERM "$CLIENT_PID" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$CLIENT_PID" 2>/dev/null || break; sleep 0.1; done
  CLOSED_IDLE=$(python3 -c '
import json, sys
for l in open(sys.argv[1]):
    if "closed_while_idle" in l: print(json.loads(l)["closed_while_idle"])' "$TMP/idle-client.log" 2>/dev/null | tail -1)
  [ "${CLOSED_IDLE:-0}" -eq 0 ] || note "idle test: Tollgate closed ${CLOSED_IDLE} of the idle connections while they were held"
  sleep 3
  RSS_AFTER=$(rss_kib "$TGI_PID")
  kill -0 "$TGI_PID" 2>/dev/null || note "Tollgate died during the idle-connection test"
  check_path "$TOLLGATE_CA" || note "after the idle-connection test, a fetch through Tollgate failed"
  bench_stop_tollgate "$TGI_PID"
  bench_tollgate_stderr "$TMP/tollgate-idle.stderr" "$TG_EXPECTED_WARN"
  if [ -f "$TMP/tollgate-idle-flows.ndjson" ]; then
    eval "$(flow_summary "$TMP/tollgate-idle-flows.ndjson")"
    log "idle test flow log: $F_RECORDS records, $F_HTTP_OK requests with status 200, $F_OTHER other"
    [ "$F_OTHER" -eq 0 ] || note "idle test flow log: $F_OTHER unexpected record(s): $F_OTHER_KINDS; e.g. $F_EXAMPLE"
  fi
  MEM_LINE="$(fmt_int "$IDLE_OPEN") idle intercepted connections (TLS handshake + one keep-alive request each): RSS $RSS_BEFORE KiB before, $RSS_IDLE KiB with them open → **$PER_CONN KiB per idle connection** (aim: under 64 KiB); $GW_ESTAB client and $UP_ESTAB upstream connections established, $TGI_FDS fds; RSS $RSS_AFTER KiB 3 s after the client closed them."
  log "memory: $MEM_LINE"
fi

# ---------------------------------------------------------------------------
# 3. mitmproxy
MITM_TLS=""
if [ -z "$MITM_REASON" ]; then
  wait_port_free "$NS_G" "$PORT"
  log "3. mitmproxy $MITM_VERSION (mitmdump --mode transparent) in $NS_G on CPU $PROXY_CPU"
  mkdir -p "$TMP/mitm"
  start_in "$NS_G" "$PROXY_CPU" "$TMP/mitm/mitmdump.log" "$MITM_VENV/bin/mitmdump" -q \
    --mode transparent --listen-port "$PORT" --set confdir="$TMP/mitm" \
    --set ssl_insecure=false --set ssl_verify_upstream_trusted_ca="$ORIGIN_CA"
  MITM_PID=$STARTED_PID
  MITM_CA=$TMP/mitm/mitmproxy-ca-cert.pem
  SOFT_FAIL=1
  if wait_for 60 "mitmproxy's CA and listener" bash -c "[ -s '$MITM_CA' ] && ip netns exec '$NS_G' ss -Hltn 'sport = :$PORT' | grep -q ." \
     && wait_for 20 "a correct fetch through mitmproxy" check_path "$MITM_CA"; then
    check_intercepted mitmproxy "$MITM_CA"
    MITM_TLS="$TLS_SEEN; session resumption $RESUMPTION"
    MITM_PIDS=$(proc_tree "$MITM_PID" | tr '\n' ' ')
    run_cases mitm "mitmproxy" "$MITM_WARMUP" "$MITM_DURATION" "$MITM_CONNECTIONS" "$MITM_PIDS" 1
    kill -0 "$MITM_PID" 2>/dev/null || note "mitmproxy died during the runs"
  else
    MITM_REASON="did not come up or did not serve a correct fetch (its log: $(tail -n 3 "$TMP/mitm/mitmdump.log" 2>/dev/null | tr '\n' ' ' | cut -c1-300))"
  fi
  SOFT_FAIL=0
  kill -TERM "$MITM_PID" 2>/dev/null || true
fi
[ -z "$MITM_REASON" ] || note "mitmproxy not measured: $MITM_REASON"

# ---------------------------------------------------------------------------
# Report
NGINX_VERSION=$(nginx -v 2>&1 | sed 's|.*nginx/||')
declare -A PROXY_LABEL=(
  [tollgate]="Tollgate (workers: 1, flow log on)"
  [nginx]="nginx $NGINX_VERSION (1 worker, re-encrypting, upstream keepalive 64)"
  [mitm]="mitmproxy ${MITM_VERSION:-} (mitmdump -q, transparent)"
  [tgnolog]="Tollgate (workers: 1, flow log off)"
  [nginxlog]="nginx as above, access log on (combined, buffer=64k)"
)
row() {  # proxy case round
  local p=$1 c=$2 r=$3 k="$1.$2.r$3"
  if [ -n "${RES[$k.rps]:-}" ]; then
    local mb="–"
    [ "$c" = ka64k ] && mb=${RES[$k.mbps]}
    echo "| ${CASE_TITLE[$c]} | $r | ${PROXY_LABEL[$p]} | ${RES[$k.conns]} | $(fmt_int "${RES[$k.rps]}") | $mb | ${RES[$k.p99]} ms | ${RES[$k.reqs]} | ${RES[$k.cpu]} | **${RES[$k.percpu]}** | ${RES[$k.upconn]} | ${RES[$k.non2xx]} | ${RES[$k.sockerr]} |"
  elif [ "$p" = mitm ] && [ -n "$MITM_REASON" ]; then
    echo "| ${CASE_TITLE[$c]} | $r | mitmproxy | – | not measured (see notes) | | | | | | | | |"
  else
    echo "| ${CASE_TITLE[$c]} | $r | ${PROXY_LABEL[$p]} | – | failed (see notes) | | | | | | | | |"
  fi
}
# ratios_of A B CASE: each round's A/B requests per CPU-s (B from round 1 for mitmproxy).
ratios_of() {
  local a=$1 b=$2 c=$3 r out=""
  for r in $(seq 1 "$ROUNDS"); do
    local br=$r
    [ "$b" = mitm ] && br=1
    out+=" $(ratio "${RES[$a.$c.r$r.percpu]:-}" "${RES[$b.$c.r$br.percpu]:-}")"
  done
  echo "$out"
}
TABLE=$(
  echo "| Case | Round | Proxy (1 CPU) | wrk conns | Requests/s | MiB/s | p99 latency | Requests | Proxy CPU-s | Requests per CPU-s | Upstream conns opened | Non-2xx/3xx | Socket errors |"
  echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for c in "${CASES[@]}"; do
    for r in $(seq 1 "$ROUNDS"); do
      for p in tollgate nginx tgnolog nginxlog; do row "$p" "$c" "$r"; done
    done
    row mitm "$c" 1
  done
  echo
  echo "Medians over the $ROUNDS rounds of each round's ratio (mitmproxy measured once):"
  echo
  echo "| Case | Tollgate / nginx, requests per CPU-s (Tollgate logging, nginx not) | its rounds | Tollgate / mitmproxy | Aim vs nginx (issue 3) | Both logging | Neither logging |"
  echo "|---|---:|---|---:|---:|---:|---:|"
  for c in "${CASES[@]}"; do
    nginx_ratios=$(ratios_of tollgate nginx "$c")
    echo "| ${CASE_TITLE[$c]} | **$(echo "$nginx_ratios" | median)** |$nginx_ratios | $(ratios_of tollgate mitm "$c" | median) | ${CASE_AIM[$c]} | $(ratios_of tollgate nginxlog "$c" | median) | $(ratios_of tgnolog nginx "$c" | median) |"
  done
  echo
  echo "Memory: $MEM_LINE"
)
DETAILS=$(
  echo "- Client side (curl from \`worker\`): Tollgate: ${TG_TLS:-?}; nginx: ${NGX_TLS:-?}${MITM_TLS:+; mitmproxy: $MITM_TLS}."
  echo "- Tollgate $FLOW_LINE; RSS at the end of the runs ${TG_RSS} KiB, $TG_THREADS threads."
)

echo
echo "$TABLE"
echo
echo "$DETAILS"
if [ "${#NOTES[@]}" -gt 0 ]; then
  echo
  echo "Notes:"
  printf -- '- %s\n' "${NOTES[@]}"
fi

if [ "$WRITE_DOCS" -eq 1 ]; then
  {
    echo "## TLS interception: Tollgate, nginx and mitmproxy (\`bench/tls_intercept.sh\`)"
    echo
    echo "- Date: $DATE"
    echo "- Command: \`$COMMAND_LINE\` (as root)"
    echo "- Machine: $MACHINE_LINE"
    echo "- Tollgate: tree at $COMMIT, release binary built $BIN_DATE"
    echo "- Topology: \`worker\` — \`gateway\` — \`internet\`; the gateway's nftables redirect of the worker's tcp dport 443 to :$PORT; an nginx HTTPS origin (1 worker, access log off, certificate for \`$SNI\` from a throwaway \"Origin CA\", ECDSA P-256) on $ORIGIN_IP:443 in \`internet\` on CPU $ORIGIN_CPU; \`$SNI\` resolves to $ORIGIN_IP in \`worker\`. Each proxy runs alone in \`gateway\` on CPU $PROXY_CPU and verifies the origin against the Origin CA and the name \`$SNI\`."
    echo "- Proxies: **Tollgate** \`run\` with the transparent listener, \`workers: 1\`, its own CA (\`tollgate ca init\`), \`tls.upstream_ca\` = the Origin CA, flow log to a file. **nginx** \`listen $PORT ssl\` with a static \`$SNI\` certificate (ECDSA P-256, \"Bench Proxy CA\"), \`proxy_pass https://origin_up\` with \`proxy_ssl_verify on\`, \`proxy_ssl_name $SNI\`, \`proxy_ssl_server_name on\`, \`proxy_ssl_session_reuse on\`, upstream \`keepalive 64\`, \`proxy_http_version 1.1\`, 1 worker, access log off. **mitmproxy** \`mitmdump -q --mode transparent --listen-port $PORT --set confdir=… --set ssl_insecure=false --set ssl_verify_upstream_trusted_ca=<Origin CA>\` (from a venv; \`-q\`: no per-flow console output)."
    echo "- Load: wrk from \`worker\` on CPU $LOAD_CPU (trusting nothing: wrk does not verify certificates; curl checks with each proxy's CA, and that trusting only the Origin CA fails, before the runs): \`wrk $(case_args ka1k "$CONNECTIONS") -d${DURATION}s\`; the same with \`-H 'Connection: close'\` (every request on a new TLS connection; wrk resumes its session, see TLS below); \`wrk $(case_args ka64k "$CONNECTIONS") -d${DURATION}s\`; each after a ${WARMUP}s warm-up; Tollgate (all three cases), nginx (all three), Tollgate without a \`log\` section, then nginx with its access log on (combined format, \`buffer=64k flush=1s\`: the like-for-like peer of Tollgate logging every request), repeated for $ROUNDS rounds, each proxy started fresh per round. mitmproxy is slow, so its runs are shorter and lighter: ${MITM_DURATION}s after a ${MITM_WARMUP}s warm-up, ${MITM_CONNECTIONS} connections (per-CPU-second figures stay comparable)."
    echo "- TLS: all three negotiate TLS 1.3 with the clients (nginx 1.22 offers only up to TLS 1.2 by default; the script sets \`ssl_protocols TLSv1.2 TLSv1.3\` on the nginx proxy and the origin, and \`proxy_ssl_protocols\` likewise). wrk keeps its TLS session across reconnects (it \`SSL_clear\`s and reuses the SSL object), so in the new-connection case every handshake is a resumption — in TLS 1.3 a PSK handshake that still does an ECDHE exchange; in TLS 1.2 an abbreviated handshake without one, about twice as cheap, which is why nginx with its TLS 1.2 default does about twice as many new connections per CPU-second. The session-resumption line below is \`openssl s_client -sess_out/-sess_in\` through each proxy."
    echo "- Proxy CPU-s: utime+stime from \`/proc/<pid>/stat\` of all the proxy's processes (all threads; nginx: master + worker) over the measured run. Requests per CPU-s = completed requests / proxy CPU-s, the figure to compare (it does not depend on whether wrk or the origin, which share CPU $LOAD_CPU, is the bottleneck). MiB/s = wrk's Transfer/sec. Upstream conns opened = connections the origin accepted during the measured run (its stub_status)."
    echo "- Memory: a fresh Tollgate; \`bench/idle_tls_clients.py\` in \`worker\` opens the connections (100 at a time), completes the handshake trusting the Tollgate CA, sends one keep-alive \`GET /1k\` on each and reads the response, then keeps them idle; per connection = (VmRSS with them open, 5 s after the last − VmRSS before) / connections."
    echo
    echo "$TABLE"
    echo
    echo "$DETAILS"
    if [ "${#NOTES[@]}" -gt 0 ]; then
      echo
      echo "Notes from this run:"
      printf -- '- %s\n' "${NOTES[@]}"
    fi
  } >"$TMP/section.md"
  bench_write_section tls_intercept "$TMP/section.md"
fi
