// A second baseline beside benches/baselines/tokio-relay, in another stack: Node.js with the
// `ws` package, the way most Node chat relays are written. One process (Node's event loop),
// state in plain maps, each frame encoded once and the string shared by every recipient.
//
// It speaks the subset of shardchat's protocol the load generator's `direct` and `group:SIZE`
// scenarios use (`?user=` login, `send` by `to` or `conv`, `group_create`, `ack`, `msg` with a
// per-conversation `seq`), and on `/echo` it is an echo server. Like the tokio relay it is
// deliberately not a chat server: nothing is stored (an `ack` goes out when the message is
// relayed, not after an fsync), no auth, history, receipts, presence or backpressure. Read its
// figures as what a relay without durability does on the same cores.
//
//   node relay.js --listen 127.0.0.1:7720

'use strict';
const { WebSocketServer } = require('ws');

const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : dflt;
};
const [host, port] = arg('--listen', '127.0.0.1:7720').split(':');

const users = new Map(); // user -> Set of sockets
const convs = new Map(); // conv -> { members: [user], seq }
let nextGroup = 0;

const deliver = (user, text) => {
  for (const s of users.get(user) || []) s.send(text);
};

function handle(ws, user, v) {
  if (v.t === 'group_create') {
    const members = (Array.isArray(v.members) ? v.members.filter((m) => typeof m === 'string') : []).concat([user]);
    const conv = `g:relay${++nextGroup}`;
    // seq 1 is the "group created" system message, as in shardchat.
    convs.set(conv, { members, seq: 1 });
    const system = JSON.stringify({ t: 'msg', conv, seq: 1, from: user, kind: 'system', body: 'created', ts: Date.now() });
    for (const m of members) deliver(m, system);
    ws.send(JSON.stringify({ t: 'group', conv, ref: v.ref }));
  } else if (v.t === 'send') {
    let conv = v.conv;
    if (typeof conv !== 'string') {
      if (typeof v.to !== 'string') return;
      conv = user < v.to ? `d:${user}:${v.to}` : `d:${v.to}:${user}`;
    }
    let c = convs.get(conv);
    if (c) {
      c.seq += 1;
    } else if (conv.startsWith('d:')) {
      c = { members: conv.slice(2).split(':'), seq: 1 };
      convs.set(conv, c);
    } else {
      return;
    }
    const text = JSON.stringify({ t: 'msg', conv, seq: c.seq, from: user, kind: 'text', body: v.body, ts: Date.now(), cmid: v.cmid });
    for (const m of c.members) if (m !== user) deliver(m, text);
    ws.send(JSON.stringify({ t: 'ack', cmid: v.cmid, conv, seq: c.seq }));
  }
}

const wss = new WebSocketServer({ host, port: Number(port), perMessageDeflate: false });
wss.on('connection', (ws, req) => {
  const url = new URL(req.url, 'http://relay');
  ws._socket.setNoDelay(true);
  if (url.pathname === '/echo') {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    return;
  }
  const user = url.searchParams.get('user') || 'anonymous';
  if (!users.has(user)) users.set(user, new Set());
  users.get(user).add(ws);
  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
    let v;
    try {
      v = JSON.parse(data.toString());
    } catch {
      return;
    }
    handle(ws, user, v);
  });
  ws.on('close', () => {
    const set = users.get(user);
    if (set) {
      set.delete(ws);
      if (set.size === 0) users.delete(user);
    }
  });
});
wss.on('listening', () => console.error(`node-relay listening on ${host}:${port}`));
