// Exactly once, in order, whatever happens between the app and the engine: engine restarts,
// kill -9, a slow network that is cut and stalls, frames dropped and repeated. Each scenario
// streams one-on-one messages from alice to bob and disrupts the stream half-way.

import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import type { Ack } from '../dist/index.js';
import { Engine, sleep } from './engine.js';
import { Proxy, type FrameVerdict } from './proxy.js';
import { client, Inbox, until, assertOnceInOrder, range } from './helpers.js';

const CONV = 'd:alice:bob';
let engine: Engine;
before(async () => {
  engine = await Engine.start();
});
after(async () => {
  await engine.dispose();
});

/** alice sends `n` messages, 5 ms apart; `disrupt` runs when half are sent; then every send must
 * be acked and bob (and alice's own stream) must hold each once, in order. */
async function stream(o: { n: number; aliceUrl?: string; bobUrl?: string; disrupt: () => Promise<void>; tag: string }) {
  const alice = client(o.aliceUrl ?? engine.url, 'alice', { device: `a-${o.tag}` });
  const bob = client(o.bobUrl ?? engine.url, 'bob', { device: `b-${o.tag}` });
  const aliceIn = new Inbox(alice);
  const bobIn = new Inbox(bob);
  await Promise.all([alice.connect(), bob.connect()]);
  // A fresh conversation per scenario: the direct chat between alice and bob grows across
  // tests, so each scenario counts from the seq it starts at.
  const base = (await alice.history(CONV, { limit: 1 }).catch(() => []))[0]?.seq ?? 0;
  const bodies = range(o.n).map((i) => `${o.tag} ${i}`);
  const acks: Promise<Ack>[] = [];
  let disrupted: Promise<void> | null = null;
  for (const [i, body] of bodies.entries()) {
    acks.push(alice.send({ to: 'bob' }, body));
    // The stream goes on while the disruption runs: sends made meanwhile wait in the outbox.
    if (i === o.n / 2) disrupted = o.disrupt();
    await sleep(5);
  }
  await disrupted;
  const acked = await Promise.all(acks);
  assert.deepEqual(new Set(acked.map((a) => a.seq)).size, o.n, 'every send has its own seq');
  const mine = (m: { seq: number }) => m.seq > base;
  await until(() => bobIn.of(CONV).filter(mine).length >= o.n, `bob to get ${o.n} messages`);
  await sleep(300); // a duplicate would come now
  const rebase = (ms: typeof bobIn.messages) => ms.filter(mine).map((m) => ({ ...m, seq: m.seq - base }));
  assertOnceInOrder(rebase(bobIn.of(CONV)), o.n, bodies, 'bob');
  assertOnceInOrder(rebase(aliceIn.of(CONV)), o.n, bodies, 'alice (own messages from acks)');
  assert.equal(alice.pending().length, 0, 'the outbox is empty');
  alice.close();
  bob.close();
}

test('every message reaches the app once, in order, own messages included', async () => {
  await stream({ n: 100, tag: 'plain', disrupt: async () => {} });
});

test('an engine restart mid-stream: every send acked, none delivered twice', async () => {
  await stream({ n: 200, tag: 'restart', disrupt: () => engine.restart('stop') });
});

test('kill -9 of the engine mid-stream: every send acked, none delivered twice', async () => {
  await stream({ n: 200, tag: 'kill', disrupt: () => engine.restart('kill') });
});

test('a slow network that is cut twice and stalls once', async () => {
  const proxy = await new Proxy(() => engine.port, { delayMs: 30 }).listen();
  try {
    await stream({
      n: 200,
      tag: 'network',
      aliceUrl: proxy.url,
      bobUrl: proxy.url,
      disrupt: async () => {
        proxy.cut();
        await sleep(200);
        // A black hole: TCP stays up, nothing passes. Only the heartbeat can tell.
        proxy.stalled = true;
        await sleep(1500);
        proxy.cut();
        proxy.stalled = false;
        await sleep(300);
        proxy.cut();
      },
    });
  } finally {
    await proxy.close();
  }
});

test('frames repeated and dropped on the way: duplicates ignored, gaps filled from history', async () => {
  let dropping = true;
  let msgs = 0;
  const verdict = (text: string): FrameVerdict => {
    const t = JSON.parse(text).t;
    if (t === 'msg' && dropping && ++msgs % 5 === 0) return 'drop';
    return t === 'msg' || t === 'ack' || t === 'sync' || t === 'history' ? 'twice' : 'pass';
  };
  const proxy = await new Proxy(() => engine.port, { serverFrame: verdict }).listen();
  try {
    const alice = client(proxy.url, 'alice', { device: 'a-dup' });
    const conv = 'd:alice:dave';
    const dave = client(proxy.url, 'dave', { device: 'd-dup' });
    const daveIn = new Inbox(dave);
    const aliceIn = new Inbox(alice);
    await Promise.all([alice.connect(), dave.connect()]);
    const bodies = range(100).map((i) => `dup ${i}`);
    const acks = await Promise.all(bodies.map((b) => alice.send({ to: 'dave' }, b)));
    assert.equal(acks.length, 100);
    // A dropped frame shows as a gap when the next message comes: the last one is sent clean.
    dropping = false;
    bodies.push('dup end');
    await alice.send({ to: 'dave' }, 'dup end');
    await until(() => daveIn.of(conv).length >= 101, 'dave to get 101 messages');
    await sleep(300);
    assertOnceInOrder(daveIn.of(conv), 101, bodies, 'dave');
    assertOnceInOrder(aliceIn.of(conv), 101, bodies, 'alice');
    assert.ok(msgs >= 100, 'the proxy saw the msg frames');
    for (const c of [alice, dave]) c.close();
  } finally {
    await proxy.close();
  }
});
