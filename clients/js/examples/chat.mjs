#!/usr/bin/env node
// A terminal chat on @shardchat/client: every line you type goes to PEER; every message of
// yours arrives here once, in order, across engine restarts and network cuts.
//
//   node --experimental-websocket examples/chat.mjs ws://127.0.0.1:7700/ws alice bob
//
// With an engine run with --dev-auth the user id is enough; otherwise set SHARDCHAT_TOKEN to a
// JWT (its `sub` is the user). Cursors and unsent lines are kept in ./.chat-<user>.json, so a
// line typed while the engine is down is sent when it is back, even after a restart of this.

import { readFileSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { ShardchatClient } from '../dist/index.js';

const [url, user, peer] = process.argv.slice(2);
if (!url || !user || !peer) {
  console.error('usage: chat.mjs WS_URL USER PEER');
  process.exit(2);
}

// A file-backed storage: anything with load and save will do.
const file = `.chat-${user}.json`;
const kept = (() => {
  try {
    return JSON.parse(readFileSync(file, 'utf8'));
  } catch {
    return {};
  }
})();
const storage = {
  load: (key) => kept[key] ?? null,
  save: (key, value) => {
    if (value === null) delete kept[key];
    else kept[key] = value;
    writeFileSync(file, JSON.stringify(kept));
  },
};

const token = process.env.SHARDCHAT_TOKEN;
const chat = new ShardchatClient({ url, user, token, storage });
const time = (ts) => new Date(ts).toLocaleTimeString();

chat.on('state', (s) => console.log(`[${s}]`));
chat.on('message', (m) => {
  if (m.kind === 'system') return;
  console.log(`${time(m.ts)} #${m.seq} ${m.from}: ${m.body}`);
  if (m.from !== chat.user) chat.markRead(m.conv, m.seq);
});
chat.on('receipt', (r) => console.log(`  (${r.user} ${r.kind} up to #${r.seq})`));
chat.on('failed', (f) => console.log(`  not sent: ${f.frame.body} (${f.error.message})`));

for (const p of chat.pending()) console.log(`  (still to send: ${p.body})`);
await chat.connect();
chat.subscribePresence([peer]);
chat.on('presence', (p) => console.log(`  (${p.user} is ${p.status})`));

createInterface({ input: process.stdin }).on('line', (line) => {
  if (line.trim()) chat.send({ to: peer }, line).catch(() => {});
}).on('close', () => setTimeout(() => { chat.close(); process.exit(0); }, 500));
