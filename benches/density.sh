#!/usr/bin/env bash
# Density across several engine processes on one host: the most idle connections this machine
# holds when no process may open more than its open-file cap (20,000 here). ENGINES independent
# engines run side by side, each with its own port and embedded store (no cluster: cluster mode
# needs a store every node shares, and idle connections need none); the load generator spreads
# CONNECTIONS over them round-robin from PROCS worker processes and the loopback addresses in
# SOURCE_IPS (past the ephemeral port range of one address).
#
#   benches/density.sh                                  # 5 engines, 95,000 connections
#   ENGINES=3 CONNECTIONS=57000 PROCS=3 benches/density.sh
#
# Prints a table and writes benches/results/<date>-<host>/density-<N>.json (the load generator's
# report plus the engines' RSS).
set -euo pipefail
cd "$(dirname "$0")/.."

ENGINES=${ENGINES:-5}
CONNECTIONS=${CONNECTIONS:-95000}
PROCS=${PROCS:-$ENGINES}
DURATION=${DURATION:-20} # at least 10: the engines are weighed inside the hold
RAMP=${RAMP:-8000}
SOURCE_IPS=${SOURCE_IPS:-127.0.0.2-127.0.0.41}
SHARDS=${SHARDS:-1}
out="benches/results/$(date +%Y-%m-%d)-$(hostname -s)"
mkdir -p "$out"

echo "== building (release)"
cargo build --release -q -p shardchat -p shardchat-loadgen
bin=target/release

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
data=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT

targets=(); engine_pids=(); ports_hex=
for ((k = 0; k < ENGINES; k++)); do
  port=$(free_port)
  "$bin/shardchat" serve --dev-auth --no-http --shards "$SHARDS" --node-id "$k" --listen "127.0.0.1:$port" \
    --data-dir "$data/e$k" --heartbeat-timeout-ms 120000 > "$data/e$k.log" 2>&1 &
  pids+=($!); engine_pids+=($!)
  targets+=("ws://127.0.0.1:$port/ws")
  ports_hex+=$(printf '0100007F:%04X ' "$port")
done
sleep 2
rss_kib() { local t=0; for p in "${engine_pids[@]}"; do t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$p/status"))); done; echo $t; }
before=$(rss_kib)

json="$out/density-$CONNECTIONS.json"
echo "== $ENGINES engines, $CONNECTIONS idle connections from $PROCS load generator processes"
( IFS=,; "$bin/shardchat-loadgen" --target "${targets[*]}" --scenario idle --connections "$CONNECTIONS" \
    --procs "$PROCS" --source-ips "$SOURCE_IPS" --ramp "$RAMP" --duration "$DURATION" --json "$json.loadgen" ) &
lg=$!
# Weigh the engines while every connection is held: once the ramp is over (CONNECTIONS / RAMP
# seconds, plus a margin) and inside the DURATION s hold. /proc/net/tcp is not a snapshot (read
# during heavy churn it can list a socket twice), so the count is taken when nothing changes.
sleep $((CONNECTIONS / RAMP + 6))
count() { awk -v ports="$ports_hex" 'NR > 1 && $4 == "01" { if (index(ports, $2 " ")) c++ } END { print c + 0 }' /proc/net/tcp; }
held=$(count); after=$(rss_kib)
wait "$lg"
per=$(( held > 0 ? (after - before) * 1024 / held : 0 ))
connected=$(python3 -c "import json; print(json.load(open('$json.loadgen'))['connected'])")
python3 - "$json.loadgen" "$json" "$ENGINES" "$held" "$before" "$after" "$per" <<'EOF'
import json, sys
src, dst, engines, held, before, after, per = sys.argv[1:]
r = json.load(open(src))
r["density"] = {"engines": int(engines), "connections_held_at_once": int(held), "engines_rss_before_kib": int(before),
                "engines_rss_held_kib": int(after), "engine_bytes_per_connection": int(per)}
json.dump(r, open(dst, "w"), indent=2)
EOF
rm -f "$json.loadgen"
printf '\n| figure | value |\n|---|---|\n'
printf '| engine processes | %s |\n' "$ENGINES"
printf '| connected (load generator) | %s of %s |\n' "$connected" "$CONNECTIONS"
printf '| held at once (kernel: established sockets on the engines'"'"' ports) | %s |\n' "$held"
printf '| engines RSS before / while held | %s / %s MiB |\n' "$((before / 1024))" "$((after / 1024))"
printf '| engine bytes per connection | %s |\n' "$per"
echo "JSON: $json"
