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
# ENGINE_ENV (e.g. `_RJEM_MALLOC_CONF=background_thread:false`) is put in the engines'
# environment, for experiments.
#
# Prints a table and writes benches/results/<date>-<host>/density-<N>.json (the load generator's
# report plus the engines' RSS).
set -euo pipefail
cd "$(dirname "$0")/.."

ENGINES=${ENGINES:-5}
CONNECTIONS=${CONNECTIONS:-95000}
PROCS=${PROCS:-$ENGINES}
# Idle connections park after PARK_IDLE_MS (the engine's --park-idle-ms) and jemalloc gives the
# freed pages back on its 10 s decay: the engines are weighed once the ramp is over (every
# connection with its task, the peak) and again PARK_WAIT s later (parked: the steady state of
# an idle engine). PARK_IDLE_MS=0 measures connections that never park.
PARK_IDLE_MS=${PARK_IDLE_MS:-5000}
PARK_WAIT=${PARK_WAIT:-20}
DURATION=${DURATION:-$((PARK_WAIT + 20))} # covers the ramp and both weighings
# Application pings, each of which unparks its connection for PARK_IDLE_MS: by default none
# within the run, so the second weighing sees every connection parked. A client pinging every
# P s is parked (P - PARK_IDLE_MS/1000) / P of the time.
PING_INTERVAL=${PING_INTERVAL:-$((DURATION + 1))}
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
  env ${ENGINE_ENV:-} "$bin/shardchat" serve --dev-auth --no-http --shards "$SHARDS" --node-id "$k" --listen "127.0.0.1:$port" \
    --data-dir "$data/e$k" --heartbeat-timeout-ms 120000 --park-idle-ms "$PARK_IDLE_MS" > "$data/e$k.log" 2>&1 &
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
    --procs "$PROCS" --source-ips "$SOURCE_IPS" --ramp "$RAMP" --duration "$DURATION" --ping-interval "$PING_INTERVAL" --json "$json.loadgen" ) &
lg=$!
# Weigh the engines while every connection is held: once the ramp is over (CONNECTIONS / RAMP
# seconds, plus a margin) and inside the DURATION s hold. /proc/net/tcp is not a snapshot (read
# during heavy churn it can list a socket twice), so the count is taken when nothing changes.
sleep $((CONNECTIONS / RAMP + 6))
count() { awk -v ports="$ports_hex" 'NR > 1 && $4 == "01" { if (index(ports, $2 " ")) c++ } END { print c + 0 }' /proc/net/tcp; }
held=$(count); after=$(rss_kib)
per=$(( held > 0 ? (after - before) * 1024 / held : 0 ))
echo "== ramp over: $held held, $per bytes each; weighing again in $PARK_WAIT s (parked)"
sleep "$PARK_WAIT"
held_parked=$(count); parked_rss=$(rss_kib)
per_parked=$(( held_parked > 0 ? (parked_rss - before) * 1024 / held_parked : 0 ))
wait "$lg"
connected=$(python3 -c "import json; print(json.load(open('$json.loadgen'))['connected'])")
python3 - "$json.loadgen" "$json" "$ENGINES" "$held" "$before" "$after" "$per" "$held_parked" "$parked_rss" "$per_parked" "$PARK_IDLE_MS" <<'EOF'
import json, sys
src, dst, engines, held, before, after, per, held_parked, parked_rss, per_parked, park_idle_ms = sys.argv[1:]
r = json.load(open(src))
r["density"] = {"engines": int(engines), "connections_held_at_once": int(held), "engines_rss_before_kib": int(before),
                "engines_rss_held_kib": int(after), "engine_bytes_per_connection": int(per),
                "park_idle_ms": int(park_idle_ms), "connections_held_after_wait": int(held_parked),
                "engines_rss_after_wait_kib": int(parked_rss), "engine_bytes_per_connection_after_wait": int(per_parked)}
json.dump(r, open(dst, "w"), indent=2)
EOF
rm -f "$json.loadgen"
printf '\n| figure | value |\n|---|---|\n'
printf '| engine processes | %s |\n' "$ENGINES"
printf '| connected (load generator) | %s of %s |\n' "$connected" "$CONNECTIONS"
printf '| held at once (kernel: established sockets on the engines'"'"' ports) | %s |\n' "$held"
printf '| engines RSS before / while held | %s / %s MiB |\n' "$((before / 1024))" "$((after / 1024))"
printf '| engine bytes per connection at the end of the ramp (those idle for PARK_IDLE_MS parked already) | %s |\n' "$per"
printf '| engines RSS %s s later | %s MiB |\n' "$PARK_WAIT" "$((parked_rss / 1024))"
printf '| engine bytes per connection then (parked after %s ms idle; 0: never) | %s |\n' "$PARK_IDLE_MS" "$per_parked"
echo "JSON: $json"
