// The runnable example stays runnable: two terminal chats (examples/chat.mjs) talk through the
// engine, and a line typed before the peer is there reaches it.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Engine } from './engine.js';
import { until } from './helpers.js';

const example = resolve(fileURLToPath(new URL('.', import.meta.url)), '../examples/chat.mjs');

function chat(url: string, user: string, peer: string, cwd: string) {
  const p = spawn(process.execPath, ['--experimental-websocket', example, url, user, peer], { cwd });
  let out = '';
  p.stdout.on('data', (d) => (out += d));
  p.stderr.on('data', () => {});
  return { p, out: () => out };
}

test('the example chat delivers a line typed to a peer who joins later', async () => {
  const engine = await Engine.start();
  const cwd = mkdtempSync(join(tmpdir(), 'shardchat-example-'));
  try {
    const alice = chat(engine.url, 'alice', 'bob', cwd);
    await until(() => alice.out().includes('[online]'), 'alice online');
    alice.p.stdin.write('hello from the example\n');
    await until(() => alice.out().includes('alice: hello from the example'), 'alice to see her line acked');
    const bob = chat(engine.url, 'bob', 'alice', cwd);
    await until(() => bob.out().includes('alice: hello from the example'), 'bob to get it through sync');
    assert.match(bob.out(), /#1 alice: hello from the example/);
    alice.p.kill();
    bob.p.kill();
  } finally {
    await engine.dispose();
  }
});
