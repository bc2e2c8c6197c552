#!/usr/bin/env python3
"""What an outsider can do to one engine, measured: descriptors, memory, stalls.

Starts a release engine (2 shards, --jwt-secret: no development login) and runs, one after the
other:

- flood: FLOOD TCP connections that never send a request head (spread over worker processes, as
  each may open only so many descriptors), then a real client with a token sends 20 messages
  (retrying a refused upgrade with backoff, as clients do). Reports how many the engine refused,
  how long the client took to get in, whether the engine stayed up and acked, and its log's
  growth.
- partial: PARTIAL connections each sending 390 KB of a 397 KB message and stopping (what
  pinned 1.2 GiB before per-shard bounds). Reports the engine's RSS before and after and how
  many it closed.
- stall: a connection sends MB of unsolicited pongs then a ping. Reports how long the pong took.

    benches/abuse.py [--flood 21000] [--partial 3000] [--json FILE]

Prints a table; --json writes the figures. Needs target/release/shardchat.
"""

import argparse
import base64
import hashlib
import hmac
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

SECRET = "abuse-secret"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def token(user):
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": user, "exp": int(time.time()) + 3600}).encode())
    sig = b64(hmac.new(SECRET.encode(), head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()


def metric(http, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5).read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name + "{"))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))


def mask(payload, offset=0):
    m = b"\x12\x34\x56\x78"
    return bytes(b ^ m[(offset + i) % 4] for i, b in enumerate(payload))


def frame_head(opcode, length, fin=True):
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return bytes([first, 0x80 | length]) + b"\x12\x34\x56\x78"
    if length < 65536:
        return bytes([first, 0x80 | 126]) + length.to_bytes(2, "big") + b"\x12\x34\x56\x78"
    return bytes([first, 0x80 | 127]) + length.to_bytes(8, "big") + b"\x12\x34\x56\x78"


def upgrade(port, user):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(
        (f"GET /ws?token={token(user)} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    )
    got = b""
    while b"\r\n\r\n" not in got:
        c = s.recv(4096)
        if not c:
            raise OSError("closed during upgrade")
        got += c
    if not got.startswith(b"HTTP/1.1 101"):
        raise OSError(got[:40])
    return s, got.split(b"\r\n\r\n", 1)[1]


def send_text(s, text):
    p = text.encode()
    s.sendall(frame_head(0x1, len(p)) + mask(p))


def read_until(s, needle, rest=b"", wait=10):
    s.settimeout(wait)
    end = time.time() + wait
    while needle not in rest and time.time() < end:
        try:
            c = s.recv(65536)
        except (socket.timeout, OSError):
            break
        if not c:
            break
        rest += c
    return needle in rest


def hold_silent(args):
    port, n, hold_s, q = args
    socks, failed = [], 0
    for _ in range(n):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            failed += 1
    q.put((len(socks), failed))
    time.sleep(hold_s)


def flood(binary, n):
    out = {}
    with tempfile.TemporaryDirectory() as d:
        port, http = free_port(), free_port()
        log = os.path.join(d, "log")
        with open(log, "w") as lf:
            p = subprocess.Popen([binary, "serve", "--jwt-secret", SECRET, "--shards", "2", "--listen", f"127.0.0.1:{port}",
                                  "--http", f"127.0.0.1:{http}", "--data-dir", os.path.join(d, "data")], stdout=lf, stderr=subprocess.STDOUT)
        wait_ready(http)
        log_before = os.path.getsize(log)
        procs = max(1, (n + 9_999) // 10_000)
        q = multiprocessing.Queue()
        workers = [multiprocessing.Process(target=hold_silent, args=((port, n // procs, 8, q),)) for _ in range(procs)]
        t = time.time()
        for w in workers:
            w.start()
        connected = failed = 0
        for _ in workers:
            c, f = q.get()
            connected, failed = connected + c, failed + f
        out["flood_connections_opened"] = connected
        out["flood_connect_failures"] = failed
        out["flood_seconds"] = round(time.time() - t, 1)
        # A real client while the flood holds its sockets. Like a real client it retries a
        # refused upgrade (a 503: every handshake slot is held by sockets under a second old,
        # which the engine does not evict for a newcomer) with backoff: 0.25, 0.5, 1, 2, 4 s.
        acked, attempts, t0 = 0, 0, time.time()
        try:
            for backoff in [0.25, 0.5, 1, 2, 4, None]:
                attempts += 1
                try:
                    s, rest = upgrade(port, "alice")
                    break
                except OSError as e:
                    out.setdefault("client_first_error", str(e)[:60])
                    if backoff is None:
                        raise
                    time.sleep(backoff)
            out["client_attempts"] = attempts
            out["client_admitted_after_s"] = round(time.time() - t0, 2)
            for i in range(20):
                send_text(s, json.dumps({"t": "send", "cmid": f"c{i}", "to": "bob", "body": "still here"}))
                if read_until(s, f'"cmid":"c{i}"'.encode(), wait=10):
                    acked += 1
        except OSError as e:
            out["client_error"] = str(e)
        out["client_acked_of_20"] = acked
        out["engine_up"] = p.poll() is None
        out["refused_at_bound"] = int(metric(http, "shardchat_connections_refused_full_total")) if p.poll() is None else None
        out["log_bytes_during_flood"] = os.path.getsize(log) - log_before
        for w in workers:
            w.join()
        p.terminate()
        p.wait()
    return out


def wait_ready(http):
    end = time.time() + 20
    while time.time() < end:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz", timeout=1).status == 200:
                return
        except Exception:
            time.sleep(0.05)
    sys.exit("engine did not become ready")


def partial(binary, n):
    out = {}
    with tempfile.TemporaryDirectory() as d:
        port, http = free_port(), free_port()
        p = subprocess.Popen([binary, "serve", "--jwt-secret", SECRET, "--shards", "2", "--listen", f"127.0.0.1:{port}",
                              "--http", f"127.0.0.1:{http}", "--data-dir", os.path.join(d, "data")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(http)
        before = rss_kib(p.pid)
        chunk = mask(b"a" * 390_000)
        socks, closed = [], 0
        for i in range(n):
            try:
                s, _ = upgrade(port, f"p{i}")
                s.sendall(frame_head(0x1, 397_000) + chunk)
                socks.append(s)
            except OSError:
                closed += 1
            if i % 500 == 499:
                print(f"\r  partial: {i + 1}/{n}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        time.sleep(2)
        out["partial_connections"] = n
        out["rss_before_mib"] = before // 1024
        out["rss_after_mib"] = rss_kib(p.pid) // 1024
        out["partial_bytes_held_mib"] = round(metric(http, "shardchat_partial_message_bytes") / 2**20, 1)
        out["closed_for_the_bound"] = int(metric(http, "shardchat_closes_incomplete_total"))
        for s in socks:
            s.close()
        p.terminate()
        p.wait()
    return out


def stall(binary, mb):
    out = {}
    with tempfile.TemporaryDirectory() as d:
        port, http = free_port(), free_port()
        p = subprocess.Popen([binary, "serve", "--jwt-secret", SECRET, "--shards", "2", "--listen", f"127.0.0.1:{port}",
                              "--http", f"127.0.0.1:{http}", "--data-dir", os.path.join(d, "data")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(http)
        for m in mb:
            s, rest = upgrade(port, f"stall{m}")
            pong = frame_head(0xA, 125) + mask(b"\x07" * 125)
            burst = pong * ((m << 20) // len(pong))
            ping = json.dumps({"t": "ping", "ref": "after"}).encode()
            t = time.time()
            s.sendall(burst + frame_head(0x1, len(ping)) + mask(ping))
            ok = read_until(s, b'"ref":"after"', rest, wait=15)
            out[f"pong_after_{m}_mib_ms"] = round((time.time() - t) * 1000) if ok else None
            s.close()
        p.terminate()
        p.wait()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/release/shardchat")
    ap.add_argument("--flood", type=int, default=21_000)
    ap.add_argument("--partial", type=int, default=3_000)
    ap.add_argument("--json")
    a = ap.parse_args()
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    r = {}
    print("== flood", file=sys.stderr)
    r.update(flood(a.binary, a.flood))
    print("== partial", file=sys.stderr)
    r.update(partial(a.binary, a.partial))
    print("== stall", file=sys.stderr)
    r.update(stall(a.binary, [1, 4]))
    print("\n| figure | value |\n|---|---|")
    for k, v in r.items():
        print(f"| {k} | {v} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
