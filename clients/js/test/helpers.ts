// What the end-to-end tests share: clients with short beats and backoff, an app-side inbox, and
// the one assertion every scenario ends with (each message once, in seq order).

import assert from 'node:assert/strict';
import { ShardchatClient, type ClientOptions, type Message } from '../dist/index.js';

export function client(url: string, user: string, extra: Partial<ClientOptions> = {}): ShardchatClient {
  return new ShardchatClient({
    url,
    user,
    device: 'js',
    heartbeatMs: 400,
    requestTimeoutMs: 5000,
    backoff: { initialMs: 50, maxMs: 400 },
    ...extra,
  });
}

/** Everything the app was handed, in the order it was handed. */
export class Inbox {
  readonly messages: Message[] = [];
  constructor(c: ShardchatClient) {
    c.on('message', (m) => this.messages.push(m));
  }
  of(conv: string): Message[] {
    return this.messages.filter((m) => m.conv === conv);
  }
}

export async function until(pred: () => boolean, what: string, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The app got seqs 1..n of `conv`, each once and in order, and exactly the bodies sent. */
export function assertOnceInOrder(got: Message[], n: number, bodies: string[], who: string): void {
  assert.deepEqual(
    got.map((m) => m.seq),
    Array.from({ length: n }, (_, i) => i + 1),
    `${who}: seqs not 1..${n} once each in order`,
  );
  assert.deepEqual([...got.map((m) => m.body)].sort(), [...bodies].sort(), `${who}: not exactly the bodies sent`);
}

export const range = (n: number) => Array.from({ length: n }, (_, i) => i);
