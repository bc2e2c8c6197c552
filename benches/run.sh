#!/usr/bin/env bash
# The macro benchmark: shardchat and the baseline relay (benches/baselines/tokio-relay) side by
# side, through the same load generator scenarios, on this machine. Writes every run's JSON and a
# markdown table with the ratios to benches/results/<date>-<host>/.
#
#   benches/run.sh                 # the default set (about 2 minutes)
#   IDLE=15000 DURATION=10 benches/run.sh
#
# Both servers run with their default thread counts on all cores, and so does the load generator:
# on a small machine all three compete for the same cores, which is the same for both servers.
set -euo pipefail
cd "$(dirname "$0")/.."

IDLE=${IDLE:-10000}
DURATION=${DURATION:-6}
DIRECT_RATE=${DIRECT_RATE:-10000}
GROUP_RATES=${GROUP_RATES:-"1000 4000"}
out="benches/results/$(date +%Y-%m-%d)-$(hostname -s)"
mkdir -p "$out"

echo "== building (release)"
cargo build --release -q -p shardchat -p shardchat-loadgen -p tokio-relay
bin=target/release
lg() { "$bin/shardchat-loadgen" "$@"; }

port_sc=17700; port_relay=17710
data=$(mktemp -d)
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$data"; }
pids=()
trap cleanup EXIT

# The per-connection and per-user send limits (200 and 400 a second by default) are off: one
# sender per group offers up to 400 messages a second here, which a real client would not.
"$bin/shardchat" serve --dev-auth --no-http --listen 127.0.0.1:$port_sc --data-dir "$data/sc" \
    --send-rate-per-s 0 --user-send-rate-per-s 0 >"$out/shardchat.log" 2>&1 &
pids+=($!); sc_pid=$!
"$bin/tokio-relay" --listen 127.0.0.1:$port_relay >"$out/relay.log" 2>&1 &
pids+=($!); relay_pid=$!
sleep 2

run() { # name server-port server-pid loadgen-args...
  local name=$1 port=$2 pid=$3; shift 3
  echo "== $name"
  lg --target "ws://127.0.0.1:$port/ws" --server-pid "$pid" --json "$out/$name.json" "$@" | tail -n 18
}

for who in shardchat relay; do
  if [ $who = shardchat ]; then port=$port_sc; pid=$sc_pid; else port=$port_relay; pid=$relay_pid; fi
  run "$who-idle" $port $pid --scenario idle --connections "$IDLE" --duration 3 --prefix "i$who"
  run "$who-direct" $port $pid --scenario direct --connections 1000 --rate "$DIRECT_RATE" --duration "$DURATION" --prefix "d$who"
  for r in $GROUP_RATES; do
    run "$who-group100-$r" $port $pid --scenario group:100 --connections 1000 --rate "$r" --duration "$DURATION" --prefix "g$r$who"
  done
done

python3 - "$out" "$GROUP_RATES" <<'PY'
import json, sys, os, platform
out, rates = sys.argv[1], sys.argv[2].split()
def load(n):
    with open(os.path.join(out, n + ".json")) as f: return json.load(f)
rows = [("idle connections: server bytes per connection", "idle", "server_bytes_per_connection", "lower")]
runs = ["direct"] + [f"group100-{r}" for r in rates]
lines = [f"# shardchat vs tokio-relay baseline ({os.path.basename(out)}, {os.cpu_count()} cores, {platform.machine()})", "",
         "Same load generator, same scenarios, one run. The relay stores nothing (acks before any fsync);",
         "shardchat acks after its group-commit fsync. Latency is end to end, send to delivery, open loop.",
         "The relay runs tokio-tungstenite's default configuration, whose read buffer is 128 KiB a connection.", "",
         "| scenario | figure | shardchat | tokio-relay | shardchat / relay |", "|---|---|---|---|---|"]
def cell(v, unit=""):
    return "-" if v is None else (f"{v:,.0f}{unit}" if v >= 100 else f"{v:.2f}{unit}")
def ratio(a, b):
    return "-" if not a or not b else f"{a / b:.2f}x"
s, r = load("shardchat-idle"), load("relay-idle")
lines.append(f"| idle ({s['connected']} conns) | RSS bytes per connection | {cell(s['server_bytes_per_connection'])} | {cell(r['server_bytes_per_connection'])} | {ratio(s['server_bytes_per_connection'], r['server_bytes_per_connection'])} |")
for n in runs:
    s, r = load("shardchat-" + n), load("relay-" + n)
    for label, key, unit in [("delivered/s", "delivered_per_second", ""), ("p50", "latency_p50_ms", " ms"), ("p99", "latency_p99_ms", " ms"), ("p99.9", "latency_p999_ms", " ms")]:
        lines.append(f"| {n} | {label} | {cell(s[key], unit)} | {cell(r[key], unit)} | {ratio(s[key], r[key])} |")
    # CPU per message (µs), the server's and the load generator's over the sending phase.
    for label, key in [("server CPU per message", "server_cpu_s_per_1000_msgs"), ("loadgen CPU per message", "loadgen_cpu_s_per_1000_msgs")]:
        a, b = (x.get(key) and x[key] * 1000 for x in (s, r))
        lines.append(f"| {n} | {label} | {cell(a, ' µs')} | {cell(b, ' µs')} | {ratio(a, b)} |")
    lines.append(f"| {n} | lost / duplicates | {s['lost']} / {s['duplicates']} | {r['lost']} / {r['duplicates']} | |")
table = "\n".join(lines) + "\n"
with open(os.path.join(out, "README.md"), "w") as f: f.write(table)
print(table)
PY
echo "results in $out"
