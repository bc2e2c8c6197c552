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
    /** Uploads a file (asks for a signed URL, PUTs the bytes there) and resolves with the media
     * object to send with an `image` or `file` message: `chat.send({conv}, caption, {kind: 'image',
     * media})`. */
    async upload(bytes, contentType, name) {
        const blob = bytes instanceof Blob ? bytes : new Blob([bytes]);
        const grant = await this.call('POST', '/v1/uploads', { content_type: contentType, size: blob.size, name });
        const r = await fetch(this.o.baseUrl + grant.url, { method: 'PUT', headers: { 'Content-Type': contentType }, body: blob });
        return ShardchatRest.answer(r);
    }
    /** Signed download URLs (paths on the control plane) for the file message `seq` shares. */
    async mediaLinks(conv, seq) {
        return this.get(`/v1/conversations/${encodeURIComponent(conv)}/messages/${seq}/media`);
    }
    get(path) {
        return this.call('GET', path);
    }
    async call(method, path, json) {
        const token = await tokenOf(this.o.token);
        let url = this.o.baseUrl + path;
        if (!token && this.o.user)
            url += (path.includes('?') ? '&' : '?') + 'user=' + encodeURIComponent(this.o.user);
        const headers = token ? { Authorization: `Bearer ${token}` } : {};
        if (json !== undefined)
            headers['Content-Type'] = 'application/json';
        const r = await fetch(url, { method, headers, body: json === undefined ? undefined : JSON.stringify(json) });
        return ShardchatRest.answer(r);
    }
    static async answer(r) {
        const body = await r.json().catch(() => ({}));
        if (!r.ok)
            throw new ShardchatError(body.code ?? 'internal', body.msg ?? `HTTP ${r.status}`);
        return body;
    }
}
