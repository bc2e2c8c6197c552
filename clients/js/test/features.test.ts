// The client's other duties against the real engine: an outbox and cursors that outlive the
// client (a page closed and opened again), sends refused for good, groups, receipts, presence
// and typing, token refresh, several devices of one user.

import { test, after, before } from 'node:test';
import { createHash, createHmac } from 'node:crypto';
import assert from 'node:assert/strict';
import { applyEvent, isEvent, MemoryStorage, ShardchatRest, ShardchatError, type Ack, type Message, type Group, type Presence, type ReceiptCounts, type SendFailure, type Typing } from '../dist/index.js';
import { Engine, sleep } from './engine.js';
import { client, Inbox, until, assertOnceInOrder } from './helpers.js';

let engine: Engine;
before(async () => {
  engine = await Engine.start();
});
after(async () => {
  await engine.dispose();
});

test('sends made while the engine is down survive a restart of the client', async () => {
  await engine.stop();
  const storage = new MemoryStorage();
  const first = client(engine.url, 'erin', { storage });
  void first.connect();
  const refused = ['one', 'two', 'three'].map((b) => first.send({ to: 'fred' }, b).catch((e: ShardchatError) => e.code));
  await until(() => first.pending().length === 3, 'the outbox to hold three sends');
  const sent = first.pending().map((f) => f.cmid);
  first.close(); // the page is closed before the engine is back
  assert.deepEqual(await Promise.all(refused), ['closed', 'closed', 'closed']);
  await engine.spawn();

  const fred = client(engine.url, 'fred');
  const fredIn = new Inbox(fred);
  await fred.connect();
  const second = client(engine.url, 'erin', { storage });
  assert.equal(second.pending().length, 0, 'nothing is read from storage before connect');
  const acks: Ack[] = [];
  second.on('ack', (a) => acks.push(a));
  await second.connect();
  await until(() => acks.length === 3 && fredIn.messages.length === 3, 'three acks and three messages');
  assert.deepEqual(acks.map((a) => a.cmid), sent, 'the acks are for the sends the first client stored');
  assertOnceInOrder(fredIn.of('d:erin:fred'), 3, ['one', 'two', 'three'], 'fred');
  assert.deepEqual(fredIn.messages.map((m) => m.body), ['one', 'two', 'three'], 'in the order they were sent');
  assert.equal(second.pending().length, 0);
  second.close();
  fred.close();
});

test('cursors outlive the client: a restarted client gets only what it has not had', async () => {
  const storage = new MemoryStorage();
  const gina = client(engine.url, 'gina');
  const hank1 = client(engine.url, 'hank', { storage });
  const hankIn1 = new Inbox(hank1);
  await Promise.all([gina.connect(), hank1.connect()]);
  for (const b of ['a', 'b', 'c']) await gina.send({ to: 'hank' }, b);
  await until(() => hankIn1.messages.length === 3, 'hank to get three');
  await sleep(50); // the cursor write is one tick behind the app
  hank1.close();
  for (const b of ['d', 'e']) await gina.send({ to: 'hank' }, b);
  const hank2 = client(engine.url, 'hank', { storage });
  const hankIn2 = new Inbox(hank2);
  await hank2.connect();
  await until(() => hankIn2.messages.length >= 2, 'hank to get the two new ones');
  await sleep(200);
  assert.deepEqual(hankIn2.messages.map((m) => [m.seq, m.body]), [[4, 'd'], [5, 'e']]);
  assert.deepEqual(hank2.cursors(), { 'd:gina:hank': 5 });
  gina.close();
  hank2.close();
});

test('a send refused for good rejects with the code and leaves the outbox', async () => {
  const ivy = client(engine.url, 'ivy');
  const failed: SendFailure[] = [];
  ivy.on('failed', (f) => failed.push(f));
  await ivy.connect();
  await assert.rejects(ivy.send({ conv: 'g:12345' }, 'hello'), (e: ShardchatError) => e.code === 'not_found');
  await assert.rejects(ivy.send({ to: 'not a valid id!' }, 'hello'), (e: ShardchatError) => e.code === 'bad_request');
  await assert.rejects(ivy.send({ to: 'jack' }, 'x'.repeat(70_000)), (e: ShardchatError) => e.code === 'too_large');
  assert.deepEqual(failed.map((f) => f.error.code), ['not_found', 'bad_request', 'too_large']);
  assert.equal(ivy.pending().length, 0);
  // A request refused: the promise rejects, the connection stays.
  await assert.rejects(ivy.history('d:ivy:nobody'), (e: ShardchatError) => e.code === 'not_found');
  assert.ok((await ivy.ping()) >= 0);
  ivy.close();
});

test('groups, receipts, presence and typing', async () => {
  const [kim, lee, max] = ['kim', 'lee', 'max'].map((u) => client(engine.url, u));
  const groups: Group[] = [];
  lee.on('group', (g) => groups.push(g));
  const leeIn = new Inbox(lee);
  const counts: ReceiptCounts[] = [];
  kim.on('receipt_counts', (c) => counts.push(c));
  const presence: Presence[] = [];
  kim.on('presence', (p) => presence.push(p));
  const typing: Typing[] = [];
  kim.on('typing', (t) => typing.push(t));
  await Promise.all([kim.connect(), lee.connect(), max.connect()]);

  const g = await kim.createGroup('team', ['lee']);
  assert.equal(g.name, 'team');
  assert.deepEqual(g.members.map((m) => [m.user, m.role]), [['kim', 'admin'], ['lee', 'member']]);
  await until(() => groups.some((x) => x.conv === g.conv), 'lee to hear of the group');
  const added = await kim.addMembers(g.conv, ['max']);
  assert.equal(added.members.length, 3);
  assert.equal((await kim.renameGroup(g.conv, 'the team')).name, 'the team');

  const ack = await kim.send({ conv: g.conv }, 'hello team');
  await until(() => leeIn.of(g.conv).some((m) => m.seq === ack.seq), 'lee to get the message');
  lee.markRead(g.conv, ack.seq);
  await until(() => counts.some((c) => c.counts.some((x) => x.seq === ack.seq && x.read === 1)), 'kim to see one read');
  const detail = await kim.receipts(g.conv, ack.seq);
  assert.deepEqual(detail.read, ['lee']);
  assert.equal(detail.of, 2);

  lee.typing(g.conv);
  lee.typing(g.conv); // inside the 2 s: not sent
  await until(() => typing.length === 1, 'kim to see lee typing');
  await sleep(200);
  assert.deepEqual(typing, [{ conv: g.conv, user: 'lee' }]);

  kim.subscribePresence(['max']);
  await until(() => presence.some((p) => p.user === 'max' && p.status === 'online'), 'max online');
  max.close();
  await until(() => presence.some((p) => p.user === 'max' && p.status === 'offline' && !!p.last_seen), 'max offline with last seen', 10_000);

  const left = await lee.leaveGroup(g.conv);
  assert.deepEqual(left.members.map((m) => m.user).sort(), ['kim', 'max']);
  await assert.rejects(lee.send({ conv: g.conv }, 'still here?'), (e: ShardchatError) => e.code === 'forbidden');
  kim.close();
  lee.close();
});

/** An HS256 JWT, as a login service would sign it. */
function sign(secret: string, claims: object): string {
  const b64 = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}

test('an expiring token is refreshed before each reconnect, and nothing is lost', async () => {
  const secret = 'a-test-secret-of-at-least-32-bytes!!';
  const jwtEngine = await Engine.start(['--jwt-secret', secret, '--jwt-leeway-s', '0']);
  try {
    let issued = 0;
    // Each token lives two seconds: the engine closes the connection (1008) when it ends.
    const token = () => {
      issued += 1;
      return sign(secret, { sub: 'nora', dev: 'web', exp: Math.floor(Date.now() / 1000) + 2 });
    };
    // With a token function the user is named (storage is per user before any token exists).
    const nora = client(jwtEngine.url, 'nora', { token, device: 'web' });
    const olga = client(jwtEngine.url, 'olga');
    const olgaIn = new Inbox(olga);
    await Promise.all([nora.connect(), olga.connect()]);
    // One send every 100 ms until the token has been refreshed twice (two expiries, two
    // reconnects), and at least 50: on a loaded machine a reconnect can take a while, so the
    // run lasts as long as the refreshes take, up to 30 s.
    const bodies: string[] = [];
    const acks = [];
    while ((issued < 3 || bodies.length < 50) && bodies.length < 300) {
      const b = `t${bodies.length}`;
      bodies.push(b);
      acks.push(nora.send({ to: 'olga' }, b));
      await sleep(100);
    }
    assert.ok(issued >= 3, `the token was fetched ${issued} times over ${bodies.length / 10} s of 2 s tokens`);
    await Promise.all(acks);
    await until(() => olgaIn.messages.length >= bodies.length, `olga to get ${bodies.length}`);
    await sleep(200);
    assertOnceInOrder(olgaIn.of('d:nora:olga'), bodies.length, bodies, 'olga');
    nora.close();
    olga.close();
  } finally {
    await jwtEngine.dispose();
  }
});

test('a user with two devices: each has the other one’s messages, once, in order', async () => {
  const phone = client(engine.url, 'pia', { device: 'phone' });
  const laptop = client(engine.url, 'pia', { device: 'laptop' });
  const quinn = client(engine.url, 'quinn');
  const [phoneIn, laptopIn] = [new Inbox(phone), new Inbox(laptop)];
  await Promise.all([phone.connect(), laptop.connect(), quinn.connect()]);
  const conv = 'd:pia:quinn';
  await phone.send({ to: 'quinn' }, 'from the phone');
  await quinn.send({ to: 'pia' }, 'to both');
  await laptop.send({ conv }, 'from the laptop');
  const want = ['from the phone', 'to both', 'from the laptop'];
  await until(() => phoneIn.of(conv).length === 3 && laptopIn.of(conv).length === 3, 'both devices to have three');
  await sleep(200);
  assert.deepEqual(phoneIn.of(conv).map((m) => m.body), want);
  assert.deepEqual(laptopIn.of(conv).map((m) => m.body), want);
  for (const c of [phone, laptop, quinn]) c.close();
});

test('sends refused with rate_limited are sent again later with the same cmid, and all land once', async () => {
  // 20 sends a second after a burst of 5: a burst of 30 is mostly refused at first.
  const slow = await Engine.start(['--send-rate-per-s', '20', '--send-burst', '5']);
  try {
    const rita = client(slow.url, 'rita');
    const sam = client(slow.url, 'sam');
    const samIn = new Inbox(sam);
    const refused: string[] = [];
    rita.on('error', (e) => refused.push(e.code));
    await Promise.all([rita.connect(), sam.connect()]);
    const bodies = Array.from({ length: 30 }, (_, i) => `r${i}`);
    const acks = await Promise.all(bodies.map((b) => rita.send({ to: 'sam' }, b)));
    assert.equal(new Set(acks.map((a) => a.seq)).size, 30);
    await until(() => samIn.messages.length >= 30, 'sam to get 30');
    await sleep(200);
    assertOnceInOrder(samIn.of('d:rita:sam'), 30, bodies, 'sam');
    assert.deepEqual(refused, [], 'the refusals were the sends’ own, not errors for the app');
    rita.close();
    sam.close();
  } finally {
    await slow.dispose();
  }
});

test('edits, reactions, replies and deletes: applied as they come, they give what history gives', async () => {
  const ivy = client(engine.url, 'ivy');
  const jon = client(engine.url, 'jon');
  const jonIn = new Inbox(jon);
  await Promise.all([ivy.connect(), jon.connect()]);
  const conv = 'd:ivy:jon';
  const first = await ivy.send({ to: 'jon' }, 'helo');
  await ivy.edit(conv, first.seq, 'hello');
  await jon.react(conv, first.seq, '👍');
  const reply = await jon.send({ conv }, 'hi ivy', { replyTo: first.seq });
  const gone = await ivy.send({ conv }, 'oops');
  await ivy.deleteMessage(conv, gone.seq);
  const refused = await jon.edit(conv, first.seq, 'mine').catch((e: ShardchatError) => e.code);
  assert.equal(refused, 'forbidden', 'only the author edits');
  await until(() => jonIn.of(conv).length === 6, 'jon to get every message and event');
  // Jon's view, built from what arrived live.
  const bySeq = new Map<number, Message>();
  for (const m of jonIn.of(conv)) {
    if (isEvent(m)) {
      const t = bySeq.get(m.target!);
      if (t) bySeq.set(t.seq, applyEvent(t, m));
    } else bySeq.set(m.seq, m);
  }
  const stored = new Map((await jon.history(conv)).filter((m) => !isEvent(m)).map((m) => [m.seq, m]));
  for (const seq of [first.seq, reply.seq, gone.seq]) {
    const live = bySeq.get(seq)!;
    const page = stored.get(seq)!;
    assert.deepEqual(
      [live.body, live.edited_at, live.deleted, live.reactions, live.reply_to],
      [page.body, page.edited_at, page.deleted, page.reactions, page.reply_to],
      `seq ${seq}: live and history agree`,
    );
  }
  assert.equal(stored.get(first.seq)!.body, 'hello');
  assert.deepEqual(stored.get(first.seq)!.reactions, [{ user: 'jon', emoji: '👍' }]);
  assert.equal(stored.get(reply.seq)!.reply_to, first.seq);
  assert.equal(stored.get(gone.seq)!.deleted, true);
  ivy.close();
  jon.close();
});

test('a file uploaded through the REST client is shared by a message and downloaded by a member', async () => {
  const kim = client(engine.url, 'kim');
  const lou = client(engine.url, 'lou');
  const louIn = new Inbox(lou);
  await Promise.all([kim.connect(), lou.connect()]);
  const kimRest = new ShardchatRest({ baseUrl: engine.httpUrl, user: 'kim' });
  const louRest = new ShardchatRest({ baseUrl: engine.httpUrl, user: 'lou' });
  const bytes = new TextEncoder().encode('a small report, in bytes');
  const media = await kimRest.upload(bytes, 'text/plain', 'report.txt');
  assert.equal(media.size, bytes.length);
  assert.equal(media.id, createHash('sha256').update(bytes).digest('hex'), 'named by its SHA-256, completed at complete_url');
  const ack = await kim.send({ to: 'lou' }, 'the report', { kind: 'file', media });
  await until(() => louIn.messages.length === 1, 'lou to get the file message');
  assert.deepEqual(louIn.messages[0].media, media);
  const links = await louRest.mediaLinks(ack.conv, ack.seq);
  const got = await fetch(louRest.resolve(links.url));
  assert.equal(got.headers.get('content-type'), 'text/plain');
  assert.equal(await got.text(), 'a small report, in bytes');
  const refused = await new ShardchatRest({ baseUrl: engine.httpUrl, user: 'mia' }).mediaLinks(ack.conv, ack.seq).catch((e: ShardchatError) => e.code);
  assert.equal(refused, 'forbidden', 'a stranger gets no link');
  kim.close();
  lou.close();
});
