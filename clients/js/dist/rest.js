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
    /** Uploads a file and resolves with the media object to send with an `image` or `file`
     * message: `chat.send({conv}, caption, {kind: 'image', media})`. Asks for a signed URL naming
     * the bytes' SHA-256, PUTs them there with the headers the grant names (to this server, or
     * straight to the object store when the server keeps media in S3), then completes the upload.
     * Where WebCrypto is missing (a page served over plain HTTP from another host) it names no
     * SHA-256, which only a server with the embedded store accepts. */
    async upload(bytes, contentType, name) {
        const blob = bytes instanceof Blob ? bytes : new Blob([bytes]);
        const sha256 = await sha256Hex(blob);
        const grant = await this.call('POST', '/v1/uploads', { content_type: contentType, size: blob.size, name, ...(sha256 ? { sha256 } : {}) });
        const headers = grant.headers ?? { 'content-type': contentType };
        const r = await fetch(this.resolve(grant.url), { method: 'PUT', headers, body: blob });
        if (!grant.complete_url)
            return ShardchatRest.answer(r);
        if (!r.ok)
            throw new ShardchatError(r.status === 403 ? 'forbidden' : 'bad_request', `upload refused by the store: HTTP ${r.status}`);
        return ShardchatRest.answer(await fetch(this.resolve(grant.complete_url), { method: 'POST' }));
    }
    /** A URL the server answered, as fetch takes it: paths are on the control plane; object store
     * URLs (`--media-s3`) are absolute. */
    resolve(url) {
        return /^https?:\/\//.test(url) ? url : this.o.baseUrl + url;
    }
    /** Signed download URLs for the file message `seq` shares: paths on the control plane, or the
     * object store's own URLs (see {@link ShardchatRest.resolve}). */
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
/** The SHA-256 of `blob`, lowercase hex; null where WebCrypto is not available. */
async function sha256Hex(blob) {
    const subtle = globalThis.crypto?.subtle;
    if (!subtle)
        return null;
    const digest = new Uint8Array(await subtle.digest('SHA-256', await blob.arrayBuffer()));
    return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}
