// The real engine for the tests: the `shardchat` binary (SHARDCHAT_BIN, else the workspace's
// debug build) on free loopback ports with a fresh data directory, dev auth, restartable on the
// same ports and data (gracefully or with kill -9).

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));
export const BIN = process.env.SHARDCHAT_BIN ?? resolve(here, '../../../target/debug/shardchat');

export async function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => ok(port));
    });
  });
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export class Engine {
  port = 0;
  http = 0;
  readonly dir = mkdtempSync(join(tmpdir(), 'shardchat-js-'));
  private proc: ChildProcess | null = null;

  static async start(extra: string[] = []): Promise<Engine> {
    const e = new Engine(extra);
    e.port = await freePort();
    e.http = await freePort();
    await e.spawn();
    return e;
  }

  private constructor(private readonly extra: string[]) {}

  get url(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  get httpUrl(): string {
    return `http://127.0.0.1:${this.http}`;
  }

  /** Starts the engine again after `stop` or `kill`, on the same ports and data. */
  async spawn(): Promise<void> {
    const args = ['serve', '--listen', `127.0.0.1:${this.port}`, '--http', `127.0.0.1:${this.http}`,
      '--data-dir', join(this.dir, 'data'), '--dev-auth', '--shards', '2', ...this.extra];
    const proc = spawn(BIN, args, { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, RUST_LOG: 'warn', NO_COLOR: '1' } });
    this.proc = proc;
    // No engine outlives its test process, however that ends.
    process.once('exit', () => proc.kill('SIGKILL'));
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`shardchat exited at start (${proc.exitCode}): ${BIN}`);
      try {
        if ((await fetch(`${this.httpUrl}/readyz`)).ok) return;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error('shardchat not ready within 20 s');
      await sleep(25);
    }
  }

  private async exit(signal: NodeJS.Signals): Promise<void> {
    const proc = this.proc;
    this.proc = null;
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill(signal);
    await exited;
  }

  /** A graceful stop (SIGTERM): the engine closes its connections with 1001. */
  async stop(): Promise<void> {
    await this.exit('SIGTERM');
  }

  /** kill -9: nothing is closed, whatever was in flight is lost unless it was acked. */
  async kill(): Promise<void> {
    await this.exit('SIGKILL');
  }

  async restart(how: 'stop' | 'kill' = 'stop'): Promise<void> {
    await (how === 'kill' ? this.kill() : this.stop());
    await this.spawn();
  }

  async dispose(): Promise<void> {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
