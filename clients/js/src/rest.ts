// The REST API's reads that a client app needs beside the WebSocket (docs/protocol.md, "REST
// API"): the conversation list with unread counts, one conversation's members, search and the
// receipts of one message. Uses the platform's `fetch`.

import type { ConvId, Member, Message } from './frames.js';
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

  private async get<T>(path: string): Promise<T> {
    const token = await tokenOf(this.o.token);
    let url = this.o.baseUrl + path;
    if (!token && this.o.user) url += (path.includes('?') ? '&' : '?') + 'user=' + encodeURIComponent(this.o.user);
    const r = await fetch(url, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new ShardchatError(body.code ?? 'internal', body.msg ?? `HTTP ${r.status}`);
    return body as T;
  }
}
