// The REST API's reads that a client app needs beside the WebSocket (docs/protocol.md, "REST
// API"): the conversation list with unread counts, one conversation's members, search and the
// receipts of one message. Uses the platform's `fetch`.

import type { ConvId, Media, Member, Message } from './frames.js';
import { ShardchatError, tokenOf, type TokenSource } from './client.js';

export interface ConversationSummary {
  conv: ConvId;
  /** Groups only. */
  name?: string | null;
  last_seq: number;
  last?: Message | null;
  /** Messages from others after the caller's read mark (up to 1000). */
  unread: number;
  /** False for a group the caller left or was removed from. */
  member: boolean;
}

export interface ConversationInfo {
  conv: ConvId;
  name?: string | null;
  members: Member[];
  last_seq: number;
}

export interface SearchHit {
  score: number;
  conv: ConvId;
  id: string;
  seq: number;
  from: string;
  body: string;
  ts: number;
}

export interface RestOptions {
  /** The control plane's base URL, e.g. `http://127.0.0.1:7701` (empty: the page's own origin). */
  baseUrl: string;
  token?: TokenSource;
  /** `--dev-auth` only, without a token. */
  user?: string;
}

export class ShardchatRest {
  constructor(private readonly o: RestOptions) {}

  async conversations(): Promise<ConversationSummary[]> {
    return (await this.get<{ conversations: ConversationSummary[] }>('/v1/conversations')).conversations;
  }

  async conversation(conv: ConvId): Promise<ConversationInfo> {
    return this.get(`/v1/conversations/${encodeURIComponent(conv)}`);
  }

  async search(q: string, o: { conv?: ConvId; limit?: number; offset?: number } = {}): Promise<SearchHit[]> {
    const p = new URLSearchParams({ q });
    if (o.conv) p.set('conv', o.conv);
    if (o.limit) p.set('limit', String(o.limit));
    if (o.offset) p.set('offset', String(o.offset));
    return (await this.get<{ hits: SearchHit[] }>(`/v1/search?${p}`)).hits;
  }

  async receipts(conv: ConvId, seq: number): Promise<{ of: number; delivered: string[]; read: string[] }> {
    return this.get(`/v1/conversations/${encodeURIComponent(conv)}/messages/${seq}/receipts`);
  }

  /** Uploads a file and resolves with the media object to send with an `image` or `file`
   * message: `chat.send({conv}, caption, {kind: 'image', media})`. Asks for a signed URL naming
   * the bytes' SHA-256, PUTs them there with the headers the grant names (to this server, or
   * straight to the object store when the server keeps media in S3), then completes the upload.
   * Where WebCrypto is missing (a page served over plain HTTP from another host) it names no
   * SHA-256, which only a server with the embedded store accepts. */
  async upload(bytes: Blob | Uint8Array, contentType: string, name: string): Promise<Media> {
    const blob = bytes instanceof Blob ? bytes : new Blob([bytes as BlobPart]);
    const sha256 = await sha256Hex(blob);
    const grant = await this.call<{ url: string; headers?: Record<string, string>; complete_url?: string | null }>(
      'POST',
      '/v1/uploads',
      { content_type: contentType, size: blob.size, name, ...(sha256 ? { sha256 } : {}) },
    );
    const headers = grant.headers ?? { 'content-type': contentType };
    const r = await fetch(this.resolve(grant.url), { method: 'PUT', headers, body: blob });
    if (!grant.complete_url) return ShardchatRest.answer<Media>(r);
    if (!r.ok) throw new ShardchatError(r.status === 403 ? 'forbidden' : 'bad_request', `upload refused by the store: HTTP ${r.status}`);
    return ShardchatRest.answer<Media>(await fetch(this.resolve(grant.complete_url), { method: 'POST' }));
  }

  /** A URL the server answered, as fetch takes it: paths are on the control plane; object store
   * URLs (`--media-s3`) are absolute. */
  resolve(url: string): string {
    return /^https?:\/\//.test(url) ? url : this.o.baseUrl + url;
  }

  /** Signed download URLs for the file message `seq` shares: paths on the control plane, or the
   * object store's own URLs (see {@link ShardchatRest.resolve}). */
  async mediaLinks(conv: ConvId, seq: number): Promise<{ url: string; thumbnail_url: string | null; expires_at: number; media: Media }> {
    return this.get(`/v1/conversations/${encodeURIComponent(conv)}/messages/${seq}/media`);
  }

  private get<T>(path: string): Promise<T> {
    return this.call<T>('GET', path);
  }

  private async call<T>(method: string, path: string, json?: unknown): Promise<T> {
    const token = await tokenOf(this.o.token);
    let url = this.o.baseUrl + path;
    if (!token && this.o.user) url += (path.includes('?') ? '&' : '?') + 'user=' + encodeURIComponent(this.o.user);
    const headers: Record<string, string> = token ? { Authorization: `Bearer ${token}` } : {};
    if (json !== undefined) headers['Content-Type'] = 'application/json';
    const r = await fetch(url, { method, headers, body: json === undefined ? undefined : JSON.stringify(json) });
    return ShardchatRest.answer<T>(r);
  }

  private static async answer<T>(r: Response): Promise<T> {
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new ShardchatError(body.code ?? 'internal', body.msg ?? `HTTP ${r.status}`);
    return body as T;
  }
}

/** The SHA-256 of `blob`, lowercase hex; null where WebCrypto is not available. */
async function sha256Hex(blob: Blob): Promise<string | null> {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) return null;
  const digest = new Uint8Array(await subtle.digest('SHA-256', await blob.arrayBuffer()));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}
