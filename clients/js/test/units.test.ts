// The pure parts alone: delivery order, backoff, events applied to their messages.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { applyEvent, Backoff, ConvOrder, HELD_MAX_MESSAGES, isEvent, jwtClaims, type Message } from '../dist/index.js';

const msg = (seq: number): Message => ({ conv: 'd:a:b', id: String(seq), seq, from: 'a', cmid: `c${seq}`, body: `m${seq}`, kind: 'text', ts: 0 });

test('order: duplicates dropped, out-of-order held until the gap closes', () => {
  const o = new ConvOrder(0);
  assert.deepEqual(o.accept(msg(1)).map((m) => m.seq), [1]);
  assert.deepEqual(o.accept(msg(1)), [], 'a duplicate');
  assert.deepEqual(o.accept(msg(3)), [], 'held behind 2');
  assert.deepEqual(o.accept(msg(3)), [], 'a duplicate of a held one');
  assert.deepEqual(o.gap(200), { before: 3, limit: 1 });
  assert.deepEqual(o.accept(msg(2)).map((m) => m.seq), [2, 3]);
  assert.equal(o.gap(200), null);
  assert.equal(o.heldCount, 0);
});

test('order: a gap is asked for oldest first, at most a page at a time, up to the highest known', () => {
  const o = new ConvOrder(10);
  o.learn(1000);
  assert.deepEqual(o.gap(200), { before: 211, limit: 200 });
  o.accept(msg(500));
  assert.deepEqual(o.gap(200), { before: 211, limit: 200 }, 'still the oldest missing first');
  const o2 = new ConvOrder(10);
  o2.accept(msg(15));
  assert.deepEqual(o2.gap(200), { before: 15, limit: 4 });
});

test('order: what it holds is bounded, and what it dropped is asked for again', () => {
  const o = new ConvOrder(0);
  for (let s = 2; s < HELD_MAX_MESSAGES + 10; s++) o.accept(msg(s));
  assert.equal(o.heldCount, HELD_MAX_MESSAGES);
  const out = o.accept(msg(1));
  assert.equal(out.length, HELD_MAX_MESSAGES + 1);
  assert.deepEqual(o.gap(200), { before: HELD_MAX_MESSAGES + 10, limit: 8 }, 'the dropped tail');
});

test('backoff doubles to its bound, with jitter, and resets', () => {
  const b = new Backoff({ initialMs: 100, maxMs: 1000 });
  assert.deepEqual([0.5, 0.5, 0.5, 0.5, 0.5, 0.5].map((r) => b.next(r)), [100, 200, 400, 800, 1000, 1000]);
  assert.equal(b.next(0), 500, 'the low end of the jitter');
  assert.equal(b.next(0.999), 1499, 'the high end');
  b.reset();
  assert.equal(b.next(0.5), 100);
});

test('the user comes from the token', () => {
  const token = ['e30', Buffer.from(JSON.stringify({ sub: 'ann', dev: 'phone' })).toString('base64url'), 'sig'].join('.');
  assert.deepEqual(jwtClaims(token), { sub: 'ann', dev: 'phone' });
  assert.deepEqual(jwtClaims('garbage'), {});
});

/** A seeded generator (mulberry32): a failing trial names its seed and replays exactly. */
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test('order: any arrival of 1..n, shuffled and repeated, with gaps filled as asked, hands over 1..n once each', () => {
  for (let seed = 1; seed <= 300; seed++) {
    const r = rng(seed);
    const n = 1 + Math.floor(r() * 300);
    // Arrivals: every seq at least once (some several times), in a shuffled order, some lost.
    let arrivals: number[] = [];
    for (let s = 1; s <= n; s++) for (let k = r() < 0.2 ? 2 : 1; k > 0; k--) if (r() > 0.1) arrivals.push(s);
    arrivals = arrivals.map((s) => [r(), s]).sort((a, b) => a[0] - b[0]).map(([, s]) => s);
    const o = new ConvOrder(0);
    const out: number[] = [];
    for (const s of arrivals) out.push(...o.accept(msg(s)).map((m) => m.seq));
    o.learn(n); // the last seq, as `synced` would name it
    // The client's gap filling: what `gap` asks for, answered newest first as `history` is.
    for (let rounds = 0; o.gap(200); rounds++) {
      assert.ok(rounds < 100, `seed ${seed}: gap filling does not end`);
      const g = o.gap(200)!;
      for (let s = g.before - 1; s >= g.before - g.limit; s--) out.push(...o.accept(msg(s)).map((m) => m.seq));
    }
    assert.deepEqual(out, Array.from({ length: n }, (_, i) => i + 1), `seed ${seed}`);
    assert.equal(o.heldCount, 0, `seed ${seed}`);
  }
});

test('events applied to their message: edits, one reaction per user, deletes that stick', () => {
  const ev = (seq: number, from: string, kind: 'edit' | 'delete' | 'reaction', target: number, body: string): Message => ({
    ...msg(seq),
    from,
    kind,
    target,
    body,
    ts: 1000 + seq,
  });
  let m = msg(1);
  assert.ok(!isEvent(m) && isEvent(ev(2, 'a', 'edit', 1, 'x')));
  m = applyEvent(m, ev(2, 'a', 'edit', 1, 'fixed'));
  assert.deepEqual([m.body, m.edited_at], ['fixed', 1002]);
  m = applyEvent(m, ev(3, 'zed', 'reaction', 1, '👍'));
  m = applyEvent(m, ev(4, 'bob', 'reaction', 1, '🎉'));
  m = applyEvent(m, ev(5, 'zed', 'reaction', 1, '❤️'));
  assert.deepEqual(m.reactions, [{ user: 'bob', emoji: '🎉' }, { user: 'zed', emoji: '❤️' }], 'one per user, ordered by user');
  m = applyEvent(m, ev(6, 'bob', 'reaction', 1, ''));
  assert.deepEqual(m.reactions, [{ user: 'zed', emoji: '❤️' }], 'taken back');
  assert.equal(applyEvent(m, ev(7, 'a', 'edit', 9, 'other')), m, 'an event about another message changes nothing');
  const before = m;
  m = applyEvent(m, ev(8, 'a', 'delete', 1, ''));
  assert.deepEqual([m.body, m.deleted, m.reactions], ['', true, undefined]);
  assert.equal(before.body, 'fixed', 'the old state is not changed');
  assert.equal(applyEvent(m, ev(9, 'a', 'edit', 1, 'back')), m, 'a deleted message stays deleted');
});
