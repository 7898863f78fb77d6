#!/usr/bin/env bash
# Router load benchmark: Wharf, nginx and HAProxy as proxies in front of the same upstream, with
# the same number of worker threads, driven by wrk (HTTP/1.1) and h2load (h2) in the same run.
# Prints rps, p50/p99 and the ratios Wharf/nginx and Wharf/HAProxy.
#
#   benches/router.sh            # 10 s per case, 1 worker per proxy, 1 round
#   DURATION=30 WORKERS=2 ROUNDS=3 benches/router.sh
#
# With ROUNDS=N every case runs N times, the proxies alternated within each round (the one that
# goes first moves round by round), and the figures printed are each proxy's medians, then the
# ratio of every round on its own: on 2 cores one run moves by ±30 % with what else is running.
#
# Everything listens on 127.0.0.1; every process is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
need_build_deps
need_apt nginx nginx
need_apt haproxy haproxy
need_apt wrk wrk
need_apt h2load nghttp2-client
need_apt openssl openssl

DURATION=${DURATION:-10}
WORKERS=${WORKERS:-1}
ROUNDS=${ROUNDS:-1}
CONNS=${CONNS:-64}
work=$(mktemp -d /tmp/wharf-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

if [ -n "${WHARF_BIN:-}" ]; then
  wharf=$WHARF_BIN  # a binary built elsewhere, e.g. to compare two commits in one sitting
else
  say "building the release binary"
  cargo build --release --locked --bin wharf >/dev/null
  wharf="$CARGO_TARGET_DIR/release/wharf"
fi

# Ports.
UP=18080; W_HTTP=18181; W_HTTPS=18443; W_ADMIN=18190; W_REDIR=18182
N_HTTP=18281; N_HTTPS=18543; H_HTTP=18381; H_HTTPS=18643
HOST=bench-prod.wharf.test

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=$HOST" \
  -addext "subjectAltName=DNS:$HOST,DNS:*.wharf.test" -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" > "$work/both.pem"

# A JWT signing key, its JWKS (served on 127.0.0.1) and a token, for the filtered-route case.
JWKS=18090
python3 -c 'import cryptography' 2>/dev/null || pip install -q cryptography
python3 - "$work" <<'PY'
import base64, json, sys, time
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
work = sys.argv[1]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
key = ec.generate_private_key(ec.SECP256R1())
n = key.public_key().public_numbers()
jwk = {"kty": "EC", "crv": "P-256", "kid": "bench", "alg": "ES256",
       "x": b64(n.x.to_bytes(32, "big")), "y": b64(n.y.to_bytes(32, "big"))}
open(f"{work}/jwks.json", "w").write(json.dumps({"keys": [jwk]}))
head = b64(json.dumps({"alg": "ES256", "typ": "JWT", "kid": "bench"}).encode())
body = b64(json.dumps({"iss": "https://auth.bench.test/", "aud": "api", "sub": "bench",
                       "exp": int(time.time()) + 7200}).encode())
r, s = decode_dss_signature(key.sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256())))
open(f"{work}/token", "w").write(f"{head}.{body}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}")
PY
TOKEN=$(cat "$work/token")
(cd "$work" && exec python3 -m http.server "$JWKS" --bind 127.0.0.1 >/dev/null 2>&1) & pids+=($!)

# The upstream: nginx answering a small body, one worker (the same for every proxy).
mkdir -p "$work/up" "$work/nx"
cat > "$work/up/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $work/up/pid; error_log $work/up/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { return 200 "hello from the dyno\n"; } } }
NGX
nginx -c "$work/up/nginx.conf" -p "$work/up" & pids+=($!)

# nginx as the proxy.
cat > "$work/nx/nginx.conf" <<NGX
worker_processes $WORKERS; daemon off; pid $work/nx/pid; error_log $work/nx/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream dyno { server 127.0.0.1:$UP; keepalive 128; }
  server { listen 127.0.0.1:$N_HTTP; listen 127.0.0.1:$N_HTTPS ssl http2;
    ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem; ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://dyno; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; proxy_set_header X-Request-Id \$request_id; } } }
NGX
nginx -c "$work/nx/nginx.conf" -p "$work/nx" & pids+=($!); nginx_pid=$!

# HAProxy as the proxy.
cat > "$work/haproxy.cfg" <<HAP
global
  nbthread $WORKERS
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:$H_HTTP
  bind 127.0.0.1:$H_HTTPS ssl crt $work/both.pem alpn h2,http/1.1 ssl-min-ver TLSv1.2
  option forwardfor
  unique-id-format %{+X}o\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid
  http-request set-header X-Request-Id %[unique-id]
  default_backend dyno
backend dyno
  http-reuse always
  server d1 127.0.0.1:$UP
HAP
haproxy -f "$work/haproxy.cfg" -db & pids+=($!); haproxy_pid=$!

# Wharf: the same upstream as one app's web dyno; its internal listener serves plain HTTP.
cat > "$work/wharf.toml" <<TOML
version = 1
domain = "wharf.test"
[[spaces]]
name = "prod"
[[spaces]]
name = "int"
compliance = ["internal"]
[[apps]]
name = "bench"
space = "prod"
release = 1
[[apps]]
name = "bench"
space = "int"
release = 1
[[releases]]
app = "bench-prod"
version = 1
artifact = { image = "bench:1" }
[[releases]]
app = "bench-int"
version = 1
artifact = { image = "bench:1" }
[[endpoints]]
app = "bench-prod"
release = 1
process = "web.1"
address = "127.0.0.1:$UP"
[[endpoints]]
app = "bench-int"
release = 1
process = "web.1"
address = "127.0.0.1:$UP"
[[apps]]
name = "plain"
space = "prod"
release = 1
[[apps]]
name = "guarded"
space = "prod"
release = 1
[[releases]]
app = "plain-prod"
version = 1
artifact = { image = "bench:1" }
[[releases]]
app = "guarded-prod"
version = 1
artifact = { image = "bench:1" }
[[endpoints]]
app = "plain-prod"
release = 1
process = "web.1"
address = "127.0.0.1:$UP"
[[endpoints]]
app = "guarded-prod"
release = 1
process = "web.1"
address = "127.0.0.1:$UP"
[[sites]]
domain = "plain.wharf.test"
[[sites]]
domain = "guarded.wharf.test"
[[routes]]
site = "plain.wharf.test"
source_path = "/api"
app = "plain-prod"
target_path = "/"
[[routes]]
site = "guarded.wharf.test"
source_path = "/api"
app = "guarded-prod"
target_path = "/"
[[filters]]
type = "jwt"
name = "auth"
jwks_uri = "http://127.0.0.1:$JWKS/jwks.json"
issuer = "https://auth.bench.test/"
audiences = ["api"]
algorithms = ["ES256"]
[[filters]]
type = "cors"
name = "web"
allow_origin = ["https://app.bench.test"]
allow_methods = ["GET"]
expose_headers = ["X-Request-Id"]
[[attachments]]
app = "guarded-prod"
filter = "auth"
[[attachments]]
app = "guarded-prod"
filter = "web"
[[certificates]]
name = "bench"
names = ["*.wharf.test"]
cert_file = "cert.pem"
key_file = "key.pem"
default = true
TOML
RUST_LOG=warn "$wharf" router --config "$work/wharf.toml" --https 127.0.0.1:$W_HTTPS --http 127.0.0.1:$W_REDIR \
  --internal 127.0.0.1:$W_HTTP --admin 127.0.0.1:$W_ADMIN --threads "$WORKERS" > /dev/null 2> "$work/wharf.log" & pids+=($!); wharf_pid=$!

# The same Wharf with its own HTTP/1 path turned off: every request through pingora's proxy.
P_HTTP=18481; P_HTTPS=18743; P_ADMIN=18490; P_REDIR=18482
RUST_LOG=warn "$wharf" router --config "$work/wharf.toml" --https 127.0.0.1:$P_HTTPS --http 127.0.0.1:$P_REDIR \
  --internal 127.0.0.1:$P_HTTP --admin 127.0.0.1:$P_ADMIN --threads "$WORKERS" --pingora-only > /dev/null 2> "$work/wharf-pingora.log" & pids+=($!); pingora_pid=$!

for port in $UP $N_HTTP $N_HTTPS $H_HTTP $H_HTTPS $W_HTTP $W_HTTPS $P_HTTP $P_HTTPS; do
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done
curl -sf --resolve "$HOST:$W_HTTPS:127.0.0.1" -k "https://$HOST:$W_HTTPS/" >/dev/null || { cat "$work/wharf.log"; exit 1; }

# CPU time (clock ticks, user + system) of a proxy: the process and its children (nginx workers).
cpu_ticks() {
  local p t=0
  for p in "$1" $(pgrep -P "$1" || true); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}
TICK=$(getconf CLK_TCK)
# wrk against the proxy with this PID → "rps p50_ms p99_ms cpu_us_per_request"
run_wrk() {
  local pid=$1; shift
  local out before after
  before=$(cpu_ticks "$pid")
  out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$@" 2>&1)
  after=$(cpu_ticks "$pid")
  local rps p50 p99 total
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  total=$(awk '/requests in/ {print $1}' <<<"$out")
  # Every case must measure 200s: a 404 (say, a host the listener does not serve) is cheap.
  if grep -q "Non-2xx or 3xx responses" <<<"$out"; then
    echo "non-2xx answers in: wrk $* ($(grep "Non-2xx" <<<"$out"))" >> "$work/non2xx"
  fi
  echo "$rps $(to_ms "$p50") $(to_ms "$p99") $(awk -v t=$((after - before)) -v n="${total:-0}" -v hz="$TICK" \
    'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "nan" }')"
}
to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us$/,"",v); print v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v); print v+0 } else if (v ~ /s$/) { sub(/s$/,"",v); print v*1000 } else print "nan" }'; }
run_h2load() {
  local pid=$1; shift
  local out before after
  before=$(cpu_ticks "$pid")
  out=$(h2load -D "$DURATION" -c "$CONNS" -m 10 -t 1 "$@" 2>&1)
  after=$(cpu_ticks "$pid")
  if awk '/^status codes:/ { if ($7 + $9 > 0) bad = 1 } END { exit !bad }' <<<"$out"; then
    echo "non-2xx answers in: h2load $* ($(grep "^status codes" <<<"$out"))" >> "$work/non2xx"
  fi
  local rps p50 p99
  rps=$(awk '/^finished in/ {for(i=1;i<=NF;i++) if ($i=="req/s,") print $(i-1)}' <<<"$out")
  # h2load reports mean and sd; mean stands in for p50, max for p99's column.
  p50=$(awk '/^time for request:/ {print $6}' <<<"$out")
  p99=$(awk '/^time for request:/ {print $5}' <<<"$out")
  echo "${rps:-0} $(to_ms "${p50:-0us}") $(to_ms "${p99:-0us}") $(awk -v t=$((after - before)) -v r="${rps:-0}" \
    -v d="$DURATION" -v hz="$TICK" 'BEGIN { if (r > 0) printf "%.1f", t / hz * 1e6 / (r * d); else print "nan" }')"
}

printf '\n%-22s %12s %12s %12s %14s %14s\n' case wharf nginx haproxy wharf/nginx wharf/haproxy
row() {
  local name=$1 w=$2 n=$3 h=$4
  read -r wr w50 w99 wc <<<"$w"; read -r nr n50 n99 nc <<<"$n"; read -r hr h50 h99 hc <<<"$h"
  printf '%-22s %12s %12s %12s %14s %14s\n' "$name rps" "$wr" "$nr" "$hr" \
    "$(awk -v a="$wr" -v b="$nr" 'BEGIN{printf "%.2f", a/b}')" "$(awk -v a="$wr" -v b="$hr" 'BEGIN{printf "%.2f", a/b}')"
  printf '%-22s %12s %12s %12s %14s %14s\n' "  p50 ms" "$w50" "$n50" "$h50" "" ""
  printf '%-22s %12s %12s %12s %14s %14s\n' "  p99 ms" "$w99" "$n99" "$h99" "" ""
  printf '%-22s %12s %12s %12s %14s %14s\n' "  cpu us/request" "$wc" "$nc" "$hc" \
    "$(awk -v a="$wc" -v b="$nc" 'BEGIN{printf "%.2f", a/b}')" "$(awk -v a="$wc" -v b="$hc" 'BEGIN{printf "%.2f", a/b}')"
}
# Median, field by field, of lines "rps p50 p99 cpu".
median() {
  python3 -c '
import statistics, sys
rows = [l.split() for l in sys.stdin if l.strip()]
def med(i):
    vals = []
    for r in rows:
        try:
            vals.append(float(r[i]))
        except (IndexError, ValueError):
            pass
    return f"{statistics.median(vals):g}" if vals else "nan"
print(" ".join(med(i) for i in range(4)))'
}
# compare NAME CMD... : run every CMD (a function printing "rps p50 p99 cpu") ROUNDS times,
# alternated, and print one row of medians; with more than one round, each round's rps ratio
# to the second and third commands.
compare() {
  local name=$1; shift
  local -a cmds=("$@") outs=() per=()
  local n=${#cmds[@]} r i k
  for ((r = 0; r < ROUNDS; r++)); do
    local -a this=()
    for ((k = 0; k < n; k++)); do
      i=$(((k + r) % n))
      this[$i]=$("${cmds[$i]}")
      outs[$i]+="${this[$i]}"$'\n'
    done
    per+=("$(awk -v a="${this[0]%% *}" -v b="${this[1]%% *}" -v c="${this[2]%% *}" 'BEGIN{printf "%.2f/%.2f", a/b, a/c}')")
  done
  row "$name" "$(median <<<"${outs[0]}")" "$(median <<<"${outs[1]}")" "$(median <<<"${outs[2]}")"
  if ((ROUNDS > 1)); then
    printf '%-22s %s\n' "  rps ratio by round" "${per[*]}"
  fi
}
H="Host: $HOST"
# Wharf's plain HTTP/1 listener is its internal one, which serves the app in the internal space.
http1_wharf() { run_wrk "$wharf_pid" -H "Host: bench-int.wharf.test" "http://127.0.0.1:$W_HTTP/"; }
http1_nginx() { run_wrk "$nginx_pid" -H "$H" "http://127.0.0.1:$N_HTTP/"; }
http1_haproxy() { run_wrk "$haproxy_pid" -H "$H" "http://127.0.0.1:$H_HTTP/"; }
tls_wharf() { run_wrk "$wharf_pid" -H "$H" "https://127.0.0.1:$W_HTTPS/"; }
tls_nginx() { run_wrk "$nginx_pid" -H "$H" "https://127.0.0.1:$N_HTTPS/"; }
tls_haproxy() { run_wrk "$haproxy_pid" -H "$H" "https://127.0.0.1:$H_HTTPS/"; }
new_wharf() { run_wrk "$wharf_pid" -H "$H" -H "Connection: close" "https://127.0.0.1:$W_HTTPS/"; }
new_nginx() { run_wrk "$nginx_pid" -H "$H" -H "Connection: close" "https://127.0.0.1:$N_HTTPS/"; }
new_haproxy() { run_wrk "$haproxy_pid" -H "$H" -H "Connection: close" "https://127.0.0.1:$H_HTTPS/"; }
h2_wharf() { run_h2load "$wharf_pid" "https://127.0.0.1:$W_HTTPS/" --header=":authority: $HOST"; }
h2_nginx() { run_h2load "$nginx_pid" "https://127.0.0.1:$N_HTTPS/" --header=":authority: $HOST"; }
h2_haproxy() { run_h2load "$haproxy_pid" "https://127.0.0.1:$H_HTTPS/" --header=":authority: $HOST"; }
compare "http1 keep-alive" http1_wharf http1_nginx http1_haproxy
compare "tls keep-alive" tls_wharf tls_nginx tls_haproxy
compare "tls new conn/request" new_wharf new_nginx new_haproxy
compare "h2 (h2load, mean/max)" h2_wharf h2_nginx h2_haproxy

# Wharf's own HTTP/1 path against pingora's proxy path, same binary, same run.
printf '\n%-22s %12s %12s %14s\n' "wharf path" direct pingora direct/pingora
path_row() {
  local name=$1 d=$2 p=$3
  read -r dr d50 d99 dc <<<"$d"; read -r pr p50 p99 pc <<<"$p"
  printf '%-22s %12s %12s %14s\n' "$name rps" "$dr" "$pr" "$(awk -v a="$dr" -v b="$pr" 'BEGIN{printf "%.2f", a/b}')"
  printf '%-22s %12s %12s %14s\n' "  p99 ms" "$d99" "$p99" ""
  printf '%-22s %12s %12s %14s\n' "  cpu us/request" "$dc" "$pc" "$(awk -v a="$dc" -v b="$pc" 'BEGIN{printf "%.2f", a/b}')"
}
path_row "http1 keep-alive" "$(run_wrk $wharf_pid -H "Host: bench-int.wharf.test" "http://127.0.0.1:$W_HTTP/")" "$(run_wrk $pingora_pid -H "Host: bench-int.wharf.test" "http://127.0.0.1:$P_HTTP/")"
path_row "tls keep-alive" "$(run_wrk $wharf_pid -H "$H" "https://127.0.0.1:$W_HTTPS/")" "$(run_wrk $pingora_pid -H "$H" "https://127.0.0.1:$P_HTTPS/")"

# Filters: the same site route with JWT + CORS on, against it with none, in this run.
plain=$(run_wrk $wharf_pid -H "Host: plain.wharf.test" "https://127.0.0.1:$W_HTTPS/api/x")
guarded=$(run_wrk $wharf_pid -H "Host: guarded.wharf.test" -H "Authorization: Bearer $TOKEN" -H "Origin: https://app.bench.test" "https://127.0.0.1:$W_HTTPS/api/x")
curl -s -o /dev/null -w '%{http_code}' --resolve "guarded.wharf.test:$W_HTTPS:127.0.0.1" -k -H "Authorization: Bearer $TOKEN" \
  "https://guarded.wharf.test:$W_HTTPS/api/x" | grep -q 200 || { echo "the filtered route did not answer 200" >&2; exit 1; }
read -r pr p50 p99 _ <<<"$plain"; read -r gr g50 g99 _ <<<"$guarded"
printf '\n%-34s %12s %12s %12s\n' "wharf, TLS keep-alive, site route" rps "p50 ms" "p99 ms"
printf '%-34s %12s %12s %12s\n' "no filters" "$pr" "$p50" "$p99"
printf '%-34s %12s %12s %12s\n' "JWT + CORS" "$gr" "$g50" "$g99"
printf '%-34s %12s\n' "filtered / unfiltered" "$(awk -v a="$gr" -v b="$pr" 'BEGIN{printf "%.2f", a/b}')"

echo
echo "workers per proxy: $WORKERS, connections: $CONNS, duration: ${DURATION}s per case, rounds: $ROUNDS (medians), machine: $(nproc) cores"
if [ -s "$work/non2xx" ]; then
  cat "$work/non2xx" >&2
  echo "a case got answers other than 2xx/3xx: its figures are not comparable" >&2
  exit 1
fi
