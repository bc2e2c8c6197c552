// The REST API's reads that a client app needs beside the WebSocket (docs/protocol.md, "REST
// API"): the conversation list with unread counts, one conversation's members, search and the
// receipts of one message. Uses the platform's `fetch`.
import { ShardchatError, tokenOf } from './client.js';
export class ShardchatRest {
    constructor(o) {
        this.o = o;
    }
    async conversations() {
        return (await this.get('/v1/conversations')).conversations;
    }
    async conversation(conv) {
        return this.get(`/v1/conversations/${encodeURIComponent(conv)}`);
    }
    async search(q, o = {}) {
        const p = new URLSearchParams({ q });
        if (o.conv)
            p.set('conv', o.conv);
        if (o.limit)
            p.set('limit', String(o.limit));
        if (o.offset)
            p.set('offset', String(o.offset));
        return (await this.get(`/v1/search?${p}`)).hits;
    }
    async receipts(conv, seq) {
        return this.get(`/v1/conversations/${encodeURIComponent(conv)}/messages/${seq}/receipts`);
    }
    async get(path) {
        const token = await tokenOf(this.o.token);
        let url = this.o.baseUrl + path;
        if (!token && this.o.user)
            url += (path.includes('?') ? '&' : '?') + 'user=' + encodeURIComponent(this.o.user);
        const r = await fetch(url, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
        const body = await r.json().catch(() => ({}));
        if (!r.ok)
            throw new ShardchatError(body.code ?? 'internal', body.msg ?? `HTTP ${r.status}`);
        return body;
    }
}
