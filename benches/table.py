"""The table of `benches/run.sh`: every run's JSON in OUT, read back into OUT/README.md.

    python3 benches/table.py OUT "GROUP RATES" "SERVERS" SERVER_CORES LOADGEN_CORES

SERVERS names the servers run (shardchat first); SERVER_CORES and LOADGEN_CORES are the cores
each side had (on a 1-core machine both are 1: they share it). IDLE_HOLD in the environment is
how long the idle connections were held (seconds), for the label; PLACEMENT, which CPUs each
side ran on (run.sh's sentence), for the header.
"""
import json, sys, os, platform
out, rates, servers = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
server_cores, lg_cores = int(sys.argv[4]), int(sys.argv[5])
names = {"shardchat": "shardchat", "relay": "tokio-relay", "node": "node-relay"}
def load(who, n):
    with open(os.path.join(out, f"{who}-{n}.json")) as f: return json.load(f)
runs = ["direct"] + [f"group100-{r}" for r in rates]
head = " | ".join(names[w] for w in servers)
# How the load generator paced its senders (`--send-tick-us`, in every report since it was added).
def send_tick():
    tick = load(servers[0], "direct").get("send_tick_us") if os.path.exists(os.path.join(out, f"{servers[0]}-direct.json")) else None
    if tick is None:
        return ""
    if tick == 0:
        return " The load generator sent each message at its own due time (`--send-tick-us 0`)."
    return (f" The load generator's senders woke on a {tick:,} µs grid (`--send-tick-us`), each sending what fell"
            " due within a tick of when it woke (on the grid, or earlier to read a frame), stamped with when it left.")
lines = [f"# shardchat vs baseline relays ({os.path.basename(out)}, {os.cpu_count()} cores, {platform.machine()})", "",
         "Same load generator, same scenarios, one run. The relays store nothing (they ack before any",
         "fsync); shardchat acks after its group-commit fsync. Latency is end to end, send to delivery,",
         "open loop. tokio-relay runs tokio-tungstenite's default configuration, whose read buffer is",
         "128 KiB a connection; node-relay is one Node.js process with `ws`. CPU per message is per",
         "message sent, over the sending phase." + (f" Placement: {os.environ['PLACEMENT']}." if os.environ.get("PLACEMENT") else "")
         + send_tick(), "",
         f"| scenario | figure | {head} | shardchat / best relay |", "|---|---|" + "---|" * len(servers) + "---|"]
def cell(v, unit=""):
    return "-" if v is None else (f"{v:,.0f}{unit}" if v >= 100 else f"{v:.2f}{unit}")
def ratio(a, b):
    return "-" if not a or not b else f"{a / b:.2f}x"
def row(n, label, values, unit, lower_is_better):
    best = [v for w, v in zip(servers, values) if w != "shardchat" and v]
    best = (min(best) if lower_is_better else max(best)) if best else None
    cells = " | ".join(cell(v, unit) for v in values)
    lines.append(f"| {n} | {label} | {cells} | {ratio(values[0], best)} |")
# Cores a side (the server, the load generator) burned over a run's sending phase: its CPU
# seconds over the phase's (None if unmeasured). The CPU per message the report also gives is the
# same CPU over the messages sent, so this is that times the rate.
def cores(r, side="server"):
    cpu = r.get(f"{side}_cpu_seconds")
    return cpu and cpu / r["send_seconds"]
# What measuring cost beside what it measured: a run's load generator CPU a message over its
# server's (issue 16 asks for at most 0.5).
def lg_over(r):
    srv, lgen = r.get("server_cpu_s_per_1000_msgs"), r.get("loadgen_cpu_s_per_1000_msgs")
    return f"{lgen / srv:.2f}" if srv and lgen is not None else "-"
if os.path.exists(os.path.join(out, f"{servers[0]}-sustained.json")):
    sustained = [load(w, "sustained") for w in servers]
    row("direct", "highest msg/s with no loss, p99 < 50 ms", [s["rate"] or None for s in sustained], "", False)
    # At the first rate that failed, the share of its cores each side was busy; a side at 0.9 or
    # more is named: what ran out. Where the load generator is named, the server's limit may lie
    # higher than the row above says.
    def busy(who, s):
        if "failed_at" not in s:
            return "-"  # a run from before this row
        if s["failed_at"] is None:
            return "none failed"
        r = load(who, f"sustain-{s['failed_at']}")
        srv = cores(r) and cores(r) / server_cores
        lgen = cores(r, "loadgen") / lg_cores
        full = [name for name, v in (("server", srv or 0), ("load generator", lgen)) if v >= 0.9]
        side = f" ({' and '.join(full)})" if full else ""
        return f"{s['failed_at']:,}: {cell(srv)} / {lgen:.2f}{side}"
    lines.append(f"| direct | first rate that failed: share of its cores busy, server / load generator | "
                 + " | ".join(busy(w, s) for w, s in zip(servers, sustained)) + " | |")
    # The load generator's cost at every rate of the ladder.
    def lg_over_server(who):
        prefix = f"{who}-sustain-"
        rungs = sorted(int(f[len(prefix):-len(".json")]) for f in os.listdir(out) if f.startswith(prefix) and f.endswith(".json"))
        return "; ".join(f"{r:,}: {lg_over(load(who, f'sustain-{r}'))}" for r in rungs) or "-"
    lines.append("| direct | load generator / server CPU a message, each rate tried | "
                 + " | ".join(lg_over_server(w) for w in servers) + " | |")
idle = [load(w, "idle") for w in servers]
row(f"idle ({idle[0]['connected']} conns)", "RSS bytes per connection, connected", [r["server_bytes_per_connection"] for r in idle], "", True)
row(f"idle ({idle[0]['connected']} conns)", f"RSS bytes per connection, idle {os.environ.get('IDLE_HOLD', '20')} s", [r.get("server_bytes_per_connection_idle") for r in idle], "", True)
low = [load(w, "direct-low") for w in servers]
rate = lambda r: r["sent"] / r["send_seconds"]
low_name = f"direct-low ({rate(low[0]):,.0f} msg/s)"
low_cores = [cores(r) for r in low]
row(low_name, "server cores", low_cores, "", True)
row(low_name, "p99", [r["latency_p99_ms"] for r in low], " ms", True)
# The load generator's cost at the light load, as the ladder's row gives it at higher rates.
lines.append(f"| {low_name} | load generator / server CPU a message | " + " | ".join(lg_over(r) for r in low) + " | |")
# The durable floor at that rate: the cheapest relay's cores plus one journal append and
# fdatasync a message (fsync-floor, alone on the same cores and disk): at a light load each
# commit holds one message, so shardchat can go no lower without holding messages back.
floor_path = os.path.join(out, "fsync-floor.json")
relay_low = [c for w, c in zip(servers, low_cores) if w != "shardchat" and c]
if os.path.exists(floor_path) and relay_low:
    fl = json.load(open(floor_path))
    floor = min(relay_low) + fl["cpu_us_per_op"] * rate(low[0]) / 1e6
    cells = " | ".join(cell(floor) if w == "shardchat" else "-" for w in servers)
    # What one sync asked of the disk, where the probe could count it (a block device).
    disk = "" if fl.get("device_writes_per_sync") is None else \
        f"; a sync: {fl['device_writes_per_sync']:.1f} disk writes and {fl['device_flushes_per_sync']:.1f} cache flushes"
    lines.append(f"| {low_name} | durable floor: best relay's cores + one append and fdatasync a message ({fl['cpu_us_per_op']:.0f} µs, fsync-floor{disk}) | {cells} | shardchat / floor {ratio(low_cores[0], floor)} |")
    # The same durability on a shard's executor, the way the engine pays it (a blocking-pool hop
    # a commit) and the way a log of the shard's own would (a DMA write on its ring).
    if fl.get("pool_us_per_op") is not None:
        dma = "-" if fl.get("dma_us_per_op") is None else f"{fl['dma_us_per_op']:.0f} µs"
        lines.append(f"| {low_name} | a durable record on an executor (fsync-floor): blocking-pool append + fdatasync / O_DSYNC DMA write on its ring | "
                     + " | ".join(f"{fl['pool_us_per_op']:.0f} µs / {dma}" if w == "shardchat" else "-" for w in servers) + " | |")
for n in runs:
    rs = [load(w, n) for w in servers]
    row(n, "delivered/s", [r["delivered_per_second"] for r in rs], "", False)
    for label, key in [("p50", "latency_p50_ms"), ("p99", "latency_p99_ms"), ("p99.9", "latency_p999_ms")]:
        row(n, label, [r[key] for r in rs], " ms", True)
    # CPU per message (µs), the server's and the load generator's over the sending phase.
    for label, key in [("server CPU per message", "server_cpu_s_per_1000_msgs"), ("loadgen CPU per message", "loadgen_cpu_s_per_1000_msgs")]:
        row(n, label, [r.get(key) and r[key] * 1000 for r in rs], " µs", True)
    lines.append(f"| {n} | lost / duplicates | " + " | ".join(f"{r['lost']} / {r['duplicates']}" for r in rs) + " | |")
    slow = os.path.join(out, f"shardchat-{n}.slow-commits")
    if os.path.exists(slow):
        lines.append(f"| {n} | commits over 50 ms (shardchat's log) | " + " | ".join(open(slow).read().strip() if w == "shardchat" else "-" for w in servers) + " | |")
table = "\n".join(lines) + "\n"
with open(os.path.join(out, "README.md"), "w") as f: f.write(table)
print(table)
