#!/usr/bin/env python3
"""Start loop: every start of the engine must serve within a deadline.

Starts the engine STARTS times and requires each start to answer /readyz 200 and accept a
WebSocket (a `101` to a real upgrade, then a `ping` frame answered with `pong`) within
--deadline-s. The starts rotate through the cases that hung before: 2 and 3 shards, a fresh data
directory and one left by `kill -9` of the previous engine, alone and with a second engine
starting at the same moment. --contend N runs N busy loops beside them (CPU contention: the hang
this guards against needed a preemption to land at the wrong moment).

    benches/startloop.py                           # 500 starts, release build
    benches/startloop.py --starts 40 --binary target/debug/shardchat   # the short form (.ci/run)

Prints progress, then a table; --json FILE writes the figures. Exits 1 if any start missed the
deadline (its log tail is printed, and the process is left for a debugger with --keep-hung).
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


_given = set()


def free_port():
    """A free port no engine of this run got before: the kernel may hand a port just released to
    the next bind, and an engine given the same port twice (WebSocket and HTTP) cannot start."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _given:
            _given.add(port)
            return port


def ready(http_port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=1) as r:
            return r.status == 200
    except Exception:
        return False


def websocket_answers(port, user):
    """A real upgrade, then a masked text `ping` frame answered by a `pong` frame."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(
                (
                    f"GET /ws?user={user}&device=loop HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            got = b""
            while b"\r\n\r\n" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    return False
                got += chunk
            if not got.startswith(b"HTTP/1.1 101"):
                return False
            body = b'{"t":"ping","ref":"loop"}'
            mask = os.urandom(4)
            s.sendall(bytes([0x81, 0x80 | len(body)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(body)))
            rest = got.split(b"\r\n\r\n", 1)[1]
            deadline = time.time() + 2
            while b"pong" not in rest and time.time() < deadline:
                chunk = s.recv(4096)
                if not chunk:
                    return False
                rest += chunk
            return b"pong" in rest
    except OSError:
        return False


class Engine:
    def __init__(self, binary, data_dir, shards, log_dir, name):
        self.port, self.http = free_port(), free_port()
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [binary, "serve", "--dev-auth", "--shards", str(shards), "--listen", f"127.0.0.1:{self.port}",
             "--http", f"127.0.0.1:{self.http}", "--data-dir", data_dir],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "info", "NO_COLOR": "1"},
        )
        self.started = time.monotonic()

    def wait_serving(self, deadline_s):
        """Seconds until /readyz 200 and a WebSocket answered, or None past the deadline."""
        end = self.started + deadline_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return None
            if ready(self.http) and websocket_answers(self.port, f"u{random.randrange(1 << 30)}"):
                return time.monotonic() - self.started
            time.sleep(0.02)
        return None

    def tail(self, n=15):
        with open(self.log_path) as f:
            return "".join(f.readlines()[-n:])

    def stop(self, kill):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/release/shardchat")
    ap.add_argument("--starts", type=int, default=500)
    ap.add_argument("--deadline-s", type=float, default=5.0)
    ap.add_argument("--contend", type=int, default=0, help="busy loops to run beside the engines")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--keep-hung", action="store_true", help="leave a hung engine running (for gdb) and stop")
    a = ap.parse_args()
    if not os.access(a.binary, os.X_OK):
        sys.exit(f"{a.binary}: not built (cargo build --release -p shardchat)")
    random.seed(a.seed)
    work = tempfile.mkdtemp(prefix="startloop-")
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.contend)]
    # The cases, in rotation: shards, data directory (fresh, or the last one killed), a twin.
    cases = [(shards, data, twin) for shards in (2, 3) for data in ("fresh", "killed") for twin in (False, True)]
    results = []  # (case, seconds or None)
    killed_dir = None
    failures = []
    t0 = time.monotonic()
    try:
        for i in range(a.starts):
            shards, data, twin = cases[i % len(cases)]
            if data == "killed" and killed_dir:
                d = killed_dir
            else:
                d = os.path.join(work, f"d{i}")
            engines = [Engine(a.binary, d, shards, work, f"e{i}")]
            if twin:
                engines.append(Engine(a.binary, os.path.join(work, f"t{i}"), shards, work, f"t{i}"))
            took = [e.wait_serving(a.deadline_s) for e in engines]
            case = f"{shards} shards, {data}{', twin' if twin else ''}"
            for e, t in zip(engines, took):
                results.append((case, t))
                if t is None:
                    failures.append((i, case, e))
            hung = any(t is None for t in took)
            if hung and a.keep_hung:
                print(f"\nstart {i} ({case}) hung: pids {[e.proc.pid for e in engines]} left running", file=sys.stderr)
                return 1
            for e in engines:
                # Every other start ends in kill -9, so the next "killed" case restarts on its directory.
                e.stop(kill=(i % 2 == 0))
            if i % 2 == 0:
                if killed_dir and killed_dir != d:
                    shutil.rmtree(killed_dir, ignore_errors=True)
                killed_dir = d
            elif d != killed_dir:
                shutil.rmtree(d, ignore_errors=True)
            for e in engines[1:]:
                shutil.rmtree(os.path.join(work, f"t{i}"), ignore_errors=True)
            done = i + 1
            rate = done / max(time.monotonic() - t0, 1e-9)
            print(f"\r  {done}/{a.starts} starts  {len(failures)} missed  {rate:.1f}/s", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
    finally:
        for b in burners:
            b.kill()
    for i, case, e in failures[:5]:
        print(f"\n== start {i} ({case}) missed the {a.deadline_s} s deadline; log tail:\n{e.tail()}")
    by_case = {}
    for case, t in results:
        by_case.setdefault(case, []).append(t)
    rows = []
    for case in sorted(by_case):
        ts = by_case[case]
        ok = sorted(t for t in ts if t is not None)
        rows.append({
            "case": case, "starts": len(ts), "missed": len(ts) - len(ok),
            "p50_ms": round(1000 * statistics.median(ok)) if ok else None,
            "p99_ms": round(1000 * ok[min(len(ok) - 1, int(len(ok) * 0.99))]) if ok else None,
            "max_ms": round(1000 * ok[-1]) if ok else None,
        })
    print(f"\n| case | engine starts | missed ({a.deadline_s} s) | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['starts']} | {r['missed']} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} |")
    total = sum(r["starts"] for r in rows)
    print(f"| **all** | {total} | {len(failures)} | | | |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"binary": a.binary, "starts": a.starts, "deadline_s": a.deadline_s, "contend": a.contend,
                       "engine_starts": total, "missed": len(failures), "cases": rows}, f, indent=2)
    shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
