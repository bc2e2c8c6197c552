// A TCP proxy between clients and the engine that plays a bad network: it delays every chunk,
// cuts every connection on demand, stalls (passes nothing, closes nothing), and can drop or
// duplicate whole WebSocket frames from the server (it parses them: server frames are unmasked,
// RFC 6455 §5.2), which a real network never does to TCP, but a buggy middlebox, a replaying
// load balancer or a server bug would, and which the client must survive.

import { createServer, connect, type Server, type Socket } from 'node:net';

export type FrameVerdict = 'pass' | 'drop' | 'twice';

export interface ProxyOptions {
  /** Delay of every chunk, both ways, ms. */
  delayMs?: number;
  /** Decides the fate of each text frame from the server (its payload as a string). */
  serverFrame?: (text: string) => FrameVerdict;
}

export class Proxy {
  port = 0;
  stalled = false;
  private server: Server;
  private readonly sockets = new Set<Socket>();

  constructor(
    private readonly upstream: () => number,
    private readonly o: ProxyOptions = {},
  ) {
    this.server = createServer((client) => this.pipe(client));
  }

  async listen(): Promise<this> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.port = (this.server.address() as { port: number }).port;
    return this;
  }

  get url(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  /** Resets every connection now open. */
  cut(): void {
    for (const s of this.sockets) s.resetAndDestroy();
    this.sockets.clear();
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise((r) => this.server.close(r));
  }

  private pipe(client: Socket): void {
    const server = connect(this.upstream(), '127.0.0.1');
    for (const s of [client, server]) {
      this.sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => {
        this.sockets.delete(s);
        client.destroy();
        server.destroy();
      });
    }
    const later = (to: Socket, data: Buffer) => {
      if (this.stalled) return; // swallowed: the stall is a black hole, not a queue
      const go = () => !to.destroyed && to.write(data);
      if (this.o.delayMs) setTimeout(go, this.o.delayMs);
      else go();
    };
    client.on('data', (d) => later(server, d));
    const frames = this.o.serverFrame ? new FrameSplitter(this.o.serverFrame) : null;
    server.on('data', (d) => {
      if (!frames) return later(client, d);
      for (const out of frames.push(d)) later(client, out);
    });
  }
}

/** Splits the server's byte stream into the HTTP response head and whole frames. */
class FrameSplitter {
  private buf = Buffer.alloc(0);
  private headDone = false;

  constructor(private readonly verdict: (text: string) => FrameVerdict) {}

  push(d: Buffer): Buffer[] {
    this.buf = Buffer.concat([this.buf, d]);
    const out: Buffer[] = [];
    if (!this.headDone) {
      const end = this.buf.indexOf('\r\n\r\n');
      if (end < 0) return out;
      out.push(this.buf.subarray(0, end + 4));
      this.buf = this.buf.subarray(end + 4);
      this.headDone = true;
    }
    for (;;) {
      if (this.buf.length < 2) break;
      const opcode = this.buf[0] & 0x0f;
      let len = this.buf[1] & 0x7f;
      let at = 2;
      if (len === 126) {
        if (this.buf.length < 4) break;
        len = this.buf.readUInt16BE(2);
        at = 4;
      } else if (len === 127) {
        if (this.buf.length < 10) break;
        len = Number(this.buf.readBigUInt64BE(2));
        at = 10;
      }
      if (this.buf.length < at + len) break;
      const frame = this.buf.subarray(0, at + len);
      const fin = (this.buf[0] & 0x80) !== 0;
      this.buf = this.buf.subarray(at + len);
      const v = opcode === 1 && fin ? this.verdict(frame.subarray(at).toString('utf8')) : 'pass';
      if (v !== 'drop') out.push(Buffer.from(frame));
      if (v === 'twice') out.push(Buffer.from(frame));
    }
    return out;
  }
}
