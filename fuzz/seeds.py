#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the fuzz targets into corpus/<target>/seed-*.

The binary (rkyv) seeds are encodings of the JSON ones, written by
`cargo test -p shardchat-codec --test fuzz_corpus -- --ignored`. What `cargo fuzz` adds to a
corpus directory (files named by their SHA-1) is not committed (.gitignore)."""
import json, os

here = os.path.dirname(os.path.abspath(__file__))

def write(target, name, data):
    d = os.path.join(here, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

frames = [
    {"t": "send", "cmid": "c1", "to": "bob", "body": "hi"},
    {"t": "send", "cmid": "c2", "conv": "g:123", "body": "hello group", "kind": "text"},
    {"t": "delivered", "conv": "d:alice:bob", "seq": 3},
    {"t": "read", "conv": "d:alice:bob", "seq": 3},
    {"t": "typing", "conv": "g:123"},
    {"t": "sync", "cursors": {"d:alice:bob": 2, "g:123": 0}, "limit": 100},
    {"t": "sync"},
    {"t": "history", "conv": "g:123", "before": 50, "limit": 20, "ref": "h1"},
    {"t": "group_create", "name": "crew", "members": ["bob", "carol"], "ref": "g1"},
    {"t": "group_add", "conv": "g:123", "users": ["dave"], "ref": 7},
    {"t": "group_remove", "conv": "g:123", "users": ["dave"], "ref": "r"},
    {"t": "group_leave", "conv": "g:123"},
    {"t": "group_rename", "conv": "g:123", "name": "new name"},
    {"t": "receipt_query", "conv": "g:123", "seq": 4, "ref": "q"},
    {"t": "ping", "ref": "p"},
    {"t": "presence_sub", "users": ["bob", "carol"]},
    {"t": "presence_unsub", "users": ["bob"]},
]
for i, f in enumerate(frames):
    write("codec_json", f"frame-{i:02}.json", json.dumps(f))
bad = [
    '{"t":"send","cmid":"x"}', '{"t":"nope"}', '[]', '{"cmid":"c9"}',
    '{"t":"send","cmid":"c","to":"bob","body":"' + "x" * 70000 + '"}',
    '{"t":"sync","cursors":{"a":-1}}', '{"t":"send","cmid":"c","to":"b\\u0000ob","body":"x"}',
]
for i, b in enumerate(bad):
    write("codec_json", f"bad-{i:02}.json", b)
write("codec_binary", "bad-00.bin", b"garbage-not-rkyv")

def frame(op, payload, fin=True, masked=True, mask=b"\x01\x02\x03\x04"):
    b = bytearray([(0x80 if fin else 0) | op])
    n, m = len(payload), 0x80 if masked else 0
    if n < 126:
        b.append(m | n)
    elif n < 65536:
        b.append(m | 126); b += n.to_bytes(2, "big")
    else:
        b.append(m | 127); b += n.to_bytes(8, "big")
    if masked:
        b += mask + bytes(p ^ mask[i % 4] for i, p in enumerate(payload))
    else:
        b += payload
    return bytes(b)

# ws_stream input: a count of cut points (first byte, mod 8), the cuts, then the bytes.
streams = {
    "text": frame(1, b'{"t":"ping"}'),
    "binary": frame(2, bytes(range(40))),
    "fragments": frame(1, b"hel", fin=False) + frame(9, b"p") + frame(0, b"lo"),
    "ping-close": frame(9, b"abc") + frame(8, (1000).to_bytes(2, "big") + b"bye"),
    "medium": frame(1, b"x" * 300),
    "unmasked": frame(1, b"hi", masked=False),
    "bad-utf8": frame(1, b"\xff\xfe"),
    "too-big": frame(2, b"y" * 5000),
    "bad-close": frame(8, (999).to_bytes(2, "big")),
    "continuation-alone": frame(0, b"x"),
    "long-control": frame(9, b"z" * 126),
}
for i, (k, v) in enumerate(streams.items()):
    n = i % 8
    write("ws_stream", k, bytes([n]) + bytes([40, 120, 200, 250, 10, 90, 170][:n]) + v)

key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
heads = {
    "valid": "GET /ws?user=alice&device=phone HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" + key + "\r\n",
    "token": "GET /ws?token=a.b.c HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n" + key + "Authorization: Bearer a.b.c\r\n\r\n",
    "partial": "GET /ws HTTP/1.1\r\nHost: x\r\nUpgr",
    "post": "POST /ws HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
    "no-key": "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    "percent": "GET /ws?user=%E2%9C%93%zz&x HTTP/1.1\r\nHost: x\r\n\r\n",
}
for k, v in heads.items():
    write("upgrade_head", k, v)
write("upgrade_head", "tls-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")

# shard_machine input: shards (mod 3), an 8-byte seed, a settings byte (1: a tiny commit queue,
# 2: a tight send rate, 4: commit pacing, 8: a clean stop at the end), then steps: an opcode byte (mod 12) and its argument bytes (see
# shard/src/fuzzing.rs). Hand-written scenarios, then pseudo-random ones from a fixed seed.
import random
def steps(*ops):
    return bytes(b for op in ops for b in op)
SEND, GSEND, RETRY, MARK, CREATE, CHANGE, LEAVE, READ, RECONNECT, TICK, RAW = 0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
head = lambda shards, settings: bytes([shards]) + bytes(range(1, 9)) + bytes([settings])
write("shard_machine", "direct", head(2, 0) + steps(*[(SEND, d, t) for d in range(6) for t in range(3)], (TICK, 0, 50), (MARK, 1, 0, 1, 1, 3)))
write("shard_machine", "retries", head(1, 1) + steps(*[(SEND, 0, 1), (RETRY, 0, 0), (SEND, 2, 0), (RETRY, 2, 0)] * 6))
write("shard_machine", "groups", head(3, 0) + steps((CREATE, 0, 1, 1, 1), (GSEND, 2, 0), (CHANGE, 0, 0, 2, 1), (GSEND, 4, 0), (CHANGE, 0, 0, 2, 0), (GSEND, 5, 0), (LEAVE, 3, 0), (MARK, 2, 1, 0, 0, 2), (READ, 4, 1, 0, 2, 1)))
write("shard_machine", "reconnects", head(2, 2) + steps(*[(SEND, 1, 2), (RECONNECT, 1), (SEND, 4, 0), (READ, 4, 0, 0, 1, 0), (TICK, 3, 200)] * 4))
# Paced commits: sends pile up behind the wake-up between ticks; one run ends on its wake-ups,
# the other on a clean stop.
paced = steps(*[(SEND, d, t) for d in range(6) for t in range(3)], (RETRY, 0, 0), (CREATE, 0, 1, 1, 1), (GSEND, 2, 1, 0), (TICK, 0, 1), (SEND, 1, 2), (GSEND, 4, 1, 0))
write("shard_machine", "paced", head(1, 4) + paced)
write("shard_machine", "paced-stop", head(2, 4 | 8) + paced)
raw = b'{"t":"send","cmid":"r1","to":"cat","body":"raw"}'
write("shard_machine", "raw", head(1, 0) + bytes([RAW, 2, len(raw)]) + raw + steps((SEND, 2, 2)))
rng = random.Random(7)
for i in range(6):
    write("shard_machine", f"random-{i}", bytes(rng.randrange(256) for _ in range(rng.randrange(20, 300))))
