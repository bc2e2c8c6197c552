#!/usr/bin/env bash
# The macro benchmark: shardchat and two baseline relays in two stacks (benches/baselines:
# tokio-relay, Rust with tokio-tungstenite; node-relay, Node.js with `ws`) side by side, through
# the same load generator scenarios, on this machine. Writes every run's JSON and a markdown
# table with the ratios to benches/results/<date>-<host>/. The Node relay runs when `node` and
# `npm` are installed (its one package, `ws`, is installed from the registry on first use).
# First, with nothing else running, `fsync-floor` measures what one journal append and fdatasync
# cost on this disk: at the light rate each of shardchat's commits holds one message, so its cores
# there can go no lower than the cheapest relay's plus that (the table's "durable floor" row).
# It then measures, on a glommio executor, a durable record the engine's way (a blocking-pool
# job) and the way a log of a shard's own would take (an O_DSYNC DMA write on the executor's
# ring): the row after the floor.
#
#   benches/run.sh                 # the default set (about 9 minutes)
#   IDLE=15000 DURATION=10 benches/run.sh
#   OUT=benches/results/mine benches/run.sh
#
# Client and server get cores of their own, as on any benchmark rig: every server runs confined
# (taskset) to half of the cores, the half that takes the data disk's interrupts (placement.py),
# with its default thread count there (shardchat one shard per core it is given, tokio one
# worker per core, Node its one thread), and the load generator, a thread a core, to the other
# half. Sharing cores, the server's threads and the load generator's preempted each other for
# milliseconds at a time.
# On a 1-core machine everything shares the one core.
set -euo pipefail
cd "$(dirname "$0")/.."

IDLE=${IDLE:-10000}
# How long the idle connections are held before the second weighing: past shardchat's parking
# delay (--park-idle-ms, 5 s) and jemalloc's page decay (10 s), so "idle" is an engine's steady
# state with idle clients, not the moment after they connected.
IDLE_HOLD=${IDLE_HOLD:-20}
DURATION=${DURATION:-6}
DIRECT_RATE=${DIRECT_RATE:-10000}
# 8,000 msg/s in 100-member groups is 792,000 deliveries a second: issue 16's fan-out bar.
GROUP_RATES=${GROUP_RATES:-"1000 4000 8000"}
# A light one-on-one load: what an engine with little traffic costs (cores, in the table).
LOW_RATE=${LOW_RATE:-1000}
# One-on-one rates tried in turn, for the highest each server sustains with no loss and p99
# under 50 ms (the first that fails ends the search; empty skips it). Steps of 5,000 up to
# 40,000, where this kind of machine's limits lie: in steps of 10,000 a gap of 1.2x between two
# servers could read as 1.5x (20,000 against 30,000).
SUSTAIN_RATES=${SUSTAIN_RATES-"5000 10000 15000 20000 25000 30000 35000 40000 50000 60000 80000"}
# OUT names another folder (a second run the same day that should not replace the first).
out="${OUT:-benches/results/$(date +%Y-%m-%d)-$(hostname -s)}"
# A second run on the same day replaces the first whole: a file the ladder did not reach this
# time (a rate past the first failure) would otherwise stay beside the new ones.
rm -rf "$out"
mkdir -p "$out"

echo "== building (release)"
cargo build --release -q -p shardchat -p shardchat-loadgen -p tokio-relay
cargo build --release -q -p shardchat-benches --bin fsync-floor
bin=target/release
# Confined to its CPUs, one thread on each (it would take half of what it is given otherwise).
lg() { "${lg_confine[@]}" "$bin/shardchat-loadgen" ${lg_confine:+--threads "$lg_cores"} "$@"; }

port_sc=17700; port_relay=17710; port_node=17720
servers="shardchat relay"
if command -v node > /dev/null && command -v npm > /dev/null; then
  (cd benches/baselines/node-relay && [ -d node_modules ] || npm ci --no-audit --no-fund --silent)
  servers="$servers node"
else
  echo "== node-relay skipped: no node/npm on this machine"
fi
data=$(mktemp -d)
cores=$(nproc)
server_cores=$(( cores / 2 ))
lg_cores=$(( cores - server_cores ))
# Prefixes, not functions: `$!` must be the server's pid (taskset execs it), not a subshell's.
# The servers get the half of the cores that takes the data disk's interrupts (placement.py says
# why: the other side would be charged for the servers' fsync completions).
confine=() lg_confine=()
if [ "$server_cores" -ge 1 ] && command -v taskset > /dev/null; then
  read -r server_cpus lg_cpus < <(python3 benches/placement.py "$data") || true
  [ -n "${lg_cpus:-}" ] || { echo "benches/placement.py gave no placement" >&2; exit 1; }
  confine=(taskset -c "$server_cpus")
  lg_confine=(taskset -c "$lg_cpus")
  placement="servers on CPUs $server_cpus, the load generator on CPUs $lg_cpus"
  echo "== $placement"
elif [ "$server_cores" -ge 1 ]; then
  placement="no taskset (util-linux) here: servers share every core with the load generator"
  echo "== $placement"
fi
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$data"; }
pids=()
trap cleanup EXIT

# What durability alone costs here, measured before any server starts (so nothing else is busy),
# on the servers' cores and filesystem: one append and fdatasync per message at the light rate,
# the floor under shardchat's cores there beyond what a relay spends (see the table).
echo "== fsync-floor"
"${confine[@]}" "$bin/fsync-floor" --dir "$data" --rate "$LOW_RATE" --json "$out/fsync-floor.json"

# The per-connection and per-user send limits (200 and 400 a second by default) are off: one
# sender per group offers up to 400 messages a second here, which a real client would not.
"${confine[@]}" "$bin/shardchat" serve --dev-auth --no-http --listen 127.0.0.1:$port_sc --data-dir "$data/sc" \
    --send-rate-per-s 0 --user-send-rate-per-s 0 >"$out/shardchat.log" 2>&1 &
pids+=($!); sc_pid=$!
"${confine[@]}" "$bin/tokio-relay" --listen 127.0.0.1:$port_relay >"$out/relay.log" 2>&1 &
pids+=($!); relay_pid=$!
if [[ $servers == *node* ]]; then
  "${confine[@]}" node benches/baselines/node-relay/relay.js --listen 127.0.0.1:$port_node >"$out/node.log" 2>&1 &
  pids+=($!); node_pid=$!
fi
sleep 2

run() { # name server-port server-pid loadgen-args...
  local name=$1 port=$2 pid=$3; shift 3
  echo "== $name"
  # A server that loses messages (one that cannot keep up loses deliveries past the receivers'
  # deadline) is a result for the table, not the end of the benchmark: the load generator then
  # exits 2 after writing its report.
  # shardchat logs each commit that took over 50 ms (a stall inside the store shows there before
  # it shows in p99): how many this scenario added goes in the table.
  local slow_before=
  [[ $name == shardchat-* ]] && slow_before=$(slow_commits)
  lg --target "ws://127.0.0.1:$port/ws" --server-pid "$pid" --json "$out/$name.json" "$@" | tail -n 20 \
    || echo "== $name: the load generator reported loss (see the table)"
  if [ -n "$slow_before" ]; then echo $(( $(slow_commits) - slow_before )) > "$out/$name.slow-commits"; fi
}
# Lines of shardchat's log that say "slow commit" so far (grep -c prints 0 but fails when none).
slow_commits() { grep -c 'slow commit' "$out/shardchat.log" || true; }

for who in $servers; do
  case $who in
    shardchat) port=$port_sc; pid=$sc_pid ;;
    relay) port=$port_relay; pid=$relay_pid ;;
    node) port=$port_node; pid=$node_pid ;;
  esac
  run "$who-idle" $port $pid --scenario idle --connections "$IDLE" --duration "$IDLE_HOLD" --prefix "i$who"
  run "$who-direct" $port $pid --scenario direct --connections 1000 --rate "$DIRECT_RATE" --duration "$DURATION" --prefix "d$who"
  run "$who-direct-low" $port $pid --scenario direct --connections 1000 --rate "$LOW_RATE" --duration "$DURATION" --prefix "l$who"
  for r in $GROUP_RATES; do
    run "$who-group100-$r" $port $pid --scenario group:100 --connections 1000 --rate "$r" --duration "$DURATION" --prefix "g$r$who"
  done
  best=0 failed=null
  for r in $SUSTAIN_RATES; do
    run "$who-sustain-$r" $port $pid --scenario direct --connections 1000 --rate "$r" --duration "$DURATION" --prefix "s$r$who"
    ok=$(python3 -c "
import json, sys
try:
    r = json.load(open(sys.argv[1]))
    print(int(r['lost'] == 0 and r['duplicates'] == 0 and r['errors'] == 0 and r['latency_p99_ms'] < 50))
except Exception:
    print(0)" "$out/$who-sustain-$r.json")
    [ "$ok" = 1 ] || { failed=$r; break; }
    best=$r
  done
  # The first rate that failed is named too: the table says there whether the server or the
  # load generator ran out of cores.
  if [ -n "$SUSTAIN_RATES" ]; then echo "{\"rate\": $best, \"failed_at\": $failed}" > "$out/$who-sustained.json"; fi
done

# One core: the servers and the load generator share it.
[ "$server_cores" -ge 1 ] || { server_cores=$cores; lg_cores=$cores; }
PLACEMENT="${placement:-}" IDLE_HOLD="$IDLE_HOLD" python3 benches/table.py "$out" "$GROUP_RATES" "$servers" "$server_cores" "$lg_cores"
echo "results in $out"
