// The connection's life, owned for the app: connect with a token, reconnect with backoff and
// jitter, resume with `sync` from persisted cursors, an outbox that retries unacked sends with the
// same cmid (across reconnects and restarts of the page), and exactly-once, in-order delivery per
// conversation (duplicates dropped by seq, gaps filled with `history`). The wire contract is
// docs/protocol.md; this file adds no behaviour the server does not define.
import { Backoff } from './backoff.js';
import { ConvOrder } from './order.js';
import { MemoryStorage } from './storage.js';
/** `WebSocket.OPEN`. */
const OPEN = 1;
/** The server's bound on `history`'s `limit`. */
export const HISTORY_LIMIT_MAX = 200;
/** The server's bound on users in one `presence_sub` frame. */
export const PRESENCE_USERS_PER_FRAME_MAX = 1024;
/** The server relays one `typing` per user and conversation per 2 s; more would be dropped. */
export const TYPING_INTERVAL_MS = 2000;
/** The token to use now, if any. */
export async function tokenOf(t) {
    return typeof t === 'function' ? await t() : t;
}
export class ShardchatError extends Error {
    constructor(
    /** The server's error code, or `disconnected`, `timeout`, `closed` from the client. */
    code, message) {
        super(`${code}: ${message}`);
        this.code = code;
        this.name = 'ShardchatError';
    }
}
/** Send errors after which the same cmid is sent again later; any other is final. */
const RETRY_LATER = new Set(['rate_limited', 'unavailable', 'internal']);
/** A send refused with "retry later" goes again after 0.5 s, doubling up to 30 s (with jitter). */
const SEND_RETRY = { initialMs: 500, maxMs: 30000 };
export class ShardchatClient {
    constructor(opts) {
        this.ws = null;
        this.current = 'offline';
        this.stopped = false;
        this.started = false;
        this.lastHeard = 0;
        this.heartbeat = null;
        this.reconnectTimer = null;
        this.orders = new Map();
        /** Conversations with a gap-filling `history` in flight. */
        this.filling = new Set();
        /** Sends not yet acked, in the order they were made (a Map keeps insertion order). */
        this.outbox = new Map();
        this.waiters = new Map();
        this.requests = new Map();
        this.refSeq = 0;
        /** `sync` rounds sent since the connection opened (another while `limit` was reached). */
        this.syncRounds = 0;
        this.presenceSubs = new Set();
        /** The highest `delivered` / `read` mark asked for per conversation, and those not yet sent. */
        this.marks = new Map();
        this.unsentMarks = new Set();
        this.lastTyping = new Map();
        this.deliveredFlush = null;
        this.saveQueued = false;
        this.writes = Promise.resolve();
        this.onOnline = [];
        this.handlers = new Map();
        this.opts = opts;
        const claims = typeof opts.token === 'string' ? jwtClaims(opts.token) : {};
        const user = claims.sub ?? opts.user;
        if (!user)
            throw new Error('shardchat: give `user` (dev auth, or beside a token function) or a token whose `sub` names it');
        this.user = user;
        this.device = claims.dev ?? opts.device ?? 'default';
        this.storage = opts.storage ?? new MemoryStorage();
        const WS = opts.WebSocket ?? globalThis.WebSocket;
        if (!WS) {
            throw new Error('shardchat: no WebSocket here: pass options.WebSocket (Node 20: run with --experimental-websocket)');
        }
        this.WS = WS;
        this.heartbeatMs = opts.heartbeatMs ?? 20000;
        this.backoff = new Backoff(opts.backoff);
        this.loaded = this.load();
    }
    // ---- the app's side ----------------------------------------------------------------------
    /** Subscribes to an event; returns the function that unsubscribes. */
    on(event, fn) {
        let set = this.handlers.get(event);
        if (!set)
            this.handlers.set(event, (set = new Set()));
        set.add(fn);
        return () => set.delete(fn);
    }
    get state() {
        return this.current;
    }
    /** Starts connecting (and keeps reconnecting until `close`); resolves once the client is online
     * and synced. */
    async connect() {
        if (this.stopped)
            throw new ShardchatError('closed', 'this client was closed');
        if (this.current === 'online')
            return;
        const online = new Promise((resolve) => this.onOnline.push(resolve));
        if (!this.started) {
            this.started = true;
            await this.loaded;
            void this.open();
        }
        return online;
    }
    /** Closes the connection for good. Unacked sends stay in the storage's outbox: a client started
     * later on the same storage sends them. */
    close() {
        if (this.stopped)
            return;
        this.stopped = true;
        if (this.reconnectTimer)
            clearTimeout(this.reconnectTimer);
        this.stopHeartbeat();
        this.detach(1000);
        const closed = new ShardchatError('closed', 'the client was closed');
        for (const [ref, r] of this.requests)
            this.settleRequest(ref, r, closed);
        for (const cmid of [...this.waiters.keys()])
            this.settleWaiters(cmid, closed);
        this.setState('closed');
    }
    /** Sends a message: to a user (`{to}`, the direct chat is made on first use) or to a
     * conversation (`{conv}`). It is kept in the outbox until acked (sent again with the same cmid
     * after every reconnect, so it is stored once whatever happens) and resolves with the ack, or
     * rejects when the server refuses it for good (`bad_request`, `forbidden`, `not_found`,
     * `too_large`, `group_full`). */
    async send(target, body, opts = {}) {
        if (this.stopped)
            throw new ShardchatError('closed', 'this client was closed');
        await this.loaded;
        const cmid = opts.cmid ?? newCmid();
        const frame = 'to' in target ? { t: 'send', cmid, to: target.to, body } : { t: 'send', cmid, conv: target.conv, body };
        if (opts.kind)
            frame.kind = opts.kind;
        if (opts.replyTo !== undefined)
            frame.reply_to = opts.replyTo;
        if (opts.target !== undefined)
            frame.target = opts.target;
        if (opts.media)
            frame.media = opts.media;
        const acked = new Promise((resolve, reject) => {
            const list = this.waiters.get(cmid) ?? [];
            list.push({ resolve, reject });
            this.waiters.set(cmid, list);
        });
        if (!this.outbox.has(cmid)) {
            this.outbox.set(cmid, { frame });
            // Stored before it leaves: a page closed now still sends it next time.
            await this.saveOutbox();
            this.raw(frame);
        }
        return acked;
    }
    /** Edits message `seq` of `conv` (the author's own): an event with a seq of its own, kept in
     * the outbox like any send. Members see it as a `message` of kind `edit`; `applyEvent` turns it
     * into the target's new state. */
    edit(conv, seq, body, opts = {}) {
        return this.send({ conv }, body, { ...opts, kind: 'edit', target: seq });
    }
    /** Deletes message `seq` of `conv` (the author's own; any message for a group admin). */
    deleteMessage(conv, seq, opts = {}) {
        return this.send({ conv }, '', { ...opts, kind: 'delete', target: seq });
    }
    /** Reacts to message `seq` of `conv` with one emoji, replacing the user's earlier reaction;
     * `''` takes it back. */
    react(conv, seq, emoji, opts = {}) {
        return this.send({ conv }, emoji, { ...opts, kind: 'reaction', target: seq });
    }
    /** The sends not acked yet, oldest first (also those a previous run of the page left). */
    pending() {
        return [...this.outbox.values()].map((e) => e.frame);
    }
    /** The last seq handed to the app per conversation (what the next `sync` starts from). */
    cursors() {
        const out = {};
        for (const [conv, o] of this.orders)
            if (o.delivered > 0)
                out[conv] = o.delivered;
        return out;
    }
    markDelivered(conv, seq) {
        this.mark('delivered', conv, seq);
    }
    markRead(conv, seq) {
        this.mark('read', conv, seq);
    }
    /** Tells the conversation's other members that the user is typing (at most once per 2 s;
     * dropped while offline: typing is never stored). */
    typing(conv) {
        const now = Date.now();
        if (now - (this.lastTyping.get(conv) ?? 0) < TYPING_INTERVAL_MS)
            return;
        this.lastTyping.set(conv, now);
        this.raw({ t: 'typing', conv });
    }
    /** Presence of these users: their current state at once, then changes (kept across reconnects). */
    subscribePresence(users) {
        const fresh = users.filter((u) => !this.presenceSubs.has(u));
        for (const u of fresh)
            this.presenceSubs.add(u);
        this.presence('presence_sub', fresh);
    }
    unsubscribePresence(users) {
        const gone = users.filter((u) => this.presenceSubs.delete(u));
        this.presence('presence_unsub', gone);
    }
    /** A page of a conversation, newest first, before `before` (exclusive; default the latest). */
    async history(conv, o = {}) {
        const f = await this.request({ t: 'history', conv, before: o.before, limit: o.limit, ref: '' }, true);
        return f.t === 'history' ? f.messages : [];
    }
    /** Creates a group with the user as admin. Not retried after a lost connection (a retry would
     * make a second group): rejects with `disconnected` if the answer was lost. */
    async createGroup(name, members) {
        return groupOf(await this.request({ t: 'group_create', name, members, ref: '' }, false));
    }
    async addMembers(conv, users) {
        return groupOf(await this.request({ t: 'group_add', conv, users, ref: '' }, true));
    }
    async removeMembers(conv, users) {
        return groupOf(await this.request({ t: 'group_remove', conv, users, ref: '' }, true));
    }
    async renameGroup(conv, name) {
        return groupOf(await this.request({ t: 'group_rename', conv, name, ref: '' }, true));
    }
    /** Leaves a group; resolves with the group as it is without the user. */
    async leaveGroup(conv) {
        return groupOf(await this.request({ t: 'group_leave', conv, ref: '' }, true));
    }
    /** Who has delivered and read message `seq`. */
    async receipts(conv, seq) {
        const f = await this.request({ t: 'receipt_query', conv, seq, ref: '' }, true);
        if (f.t !== 'receipt_detail')
            throw new ShardchatError('internal', `unexpected answer ${f.t}`);
        const { t: _t, ref: _r, ...detail } = f;
        return detail;
    }
    /** A round trip to the engine, in ms. */
    async ping() {
        const t0 = Date.now();
        await this.request({ t: 'ping', ref: '' }, true);
        return Date.now() - t0;
    }
    // ---- the connection ----------------------------------------------------------------------
    async load() {
        const cursors = parse(await this.storage.load(this.key('cursors')), {});
        for (const [conv, seq] of Object.entries(cursors))
            if (typeof seq === 'number')
                this.orders.set(conv, new ConvOrder(seq));
        for (const frame of parse(await this.storage.load(this.key('outbox')), [])) {
            if (frame && frame.t === 'send' && typeof frame.cmid === 'string')
                this.outbox.set(frame.cmid, { frame });
        }
    }
    key(what) {
        return `${this.user}/${this.device}/${what}`;
    }
    async open() {
        if (this.stopped)
            return;
        this.setState('connecting');
        let ws;
        try {
            ws = new this.WS(await this.socketUrl());
        }
        catch {
            this.retryLater();
            return;
        }
        if (this.stopped) {
            ws.close(1000);
            return;
        }
        this.ws = ws;
        // The beat runs from the first byte: a handshake that never completes (a black-holed path)
        // is given up after two beats like a silent connection.
        this.lastHeard = Date.now();
        this.startHeartbeat();
        ws.onopen = () => this.ws === ws && this.opened();
        ws.onmessage = (e) => this.ws === ws && this.data(e.data);
        ws.onclose = () => this.ws === ws && this.lost();
        ws.onerror = () => { }; // a close follows
    }
    async socketUrl() {
        const url = new URL(this.opts.url);
        const token = await tokenOf(this.opts.token);
        if (token) {
            url.searchParams.set('token', token);
        }
        else {
            url.searchParams.set('user', this.user);
            url.searchParams.set('device', this.device);
        }
        return url.toString();
    }
    opened() {
        this.lastHeard = Date.now();
        this.setState('syncing');
        this.sendSync();
        // Unacked sends go again, oldest first, with their cmids: the server stores each once.
        for (const e of this.outbox.values())
            this.raw(e.frame);
        for (const r of this.requests.values()) {
            if (r.idempotent || !r.sent) {
                r.sent = true;
                this.raw(r.frame);
            }
        }
        this.presence('presence_sub', [...this.presenceSubs]);
        for (const conv of this.unsentMarks) {
            const m = this.marks.get(conv);
            if (m.delivered)
                this.raw({ t: 'delivered', conv, seq: m.delivered });
            if (m.read)
                this.raw({ t: 'read', conv, seq: m.read });
        }
        this.unsentMarks.clear();
    }
    /** The socket closed (or was given up as dead): requests that must not be sent twice fail, the
     * rest wait for the next connection. */
    lost() {
        this.ws = null;
        this.stopHeartbeat();
        this.filling.clear();
        const lost = new ShardchatError('disconnected', 'the connection was lost before the answer came');
        for (const [ref, r] of this.requests)
            if (r.sent && !r.idempotent)
                this.settleRequest(ref, r, lost);
        this.retryLater();
    }
    retryLater() {
        if (this.stopped)
            return;
        this.setState('offline');
        if (this.reconnectTimer)
            clearTimeout(this.reconnectTimer);
        this.reconnectTimer = setTimeout(() => {
            this.reconnectTimer = null;
            void this.open();
        }, this.backoff.next(Math.random()));
    }
    startHeartbeat() {
        this.stopHeartbeat();
        this.heartbeat = setInterval(() => {
            if (Date.now() - this.lastHeard > 2 * this.heartbeatMs) {
                // Nothing for two beats: the peer or the path is gone, whether or not TCP knows it.
                this.detach();
                this.lost();
            }
            else {
                this.raw({ t: 'ping' });
            }
        }, this.heartbeatMs);
    }
    /** Lets go of the socket: closed without its events reaching the client any more. */
    detach(code) {
        const ws = this.ws;
        this.ws = null;
        if (!ws)
            return;
        ws.onclose = ws.onmessage = ws.onopen = null;
        ws.close(code);
    }
    stopHeartbeat() {
        if (this.heartbeat)
            clearInterval(this.heartbeat);
        this.heartbeat = null;
    }
    raw(f) {
        const ws = this.ws;
        if (!ws || ws.readyState !== OPEN)
            return false;
        ws.send(JSON.stringify(f));
        return true;
    }
    setState(s) {
        if (s === this.current)
            return;
        this.current = s;
        this.emit('state', s);
        if (s === 'online')
            for (const resolve of this.onOnline.splice(0))
                resolve();
    }
    // ---- what arrives --------------------------------------------------------------------------
    data(data) {
        this.lastHeard = Date.now();
        if (typeof data !== 'string')
            return; // binary frames are never asked for
        let f;
        try {
            f = JSON.parse(data);
        }
        catch {
            return;
        }
        switch (f.t) {
            case 'msg': {
                const { t: _t, ...m } = f;
                this.feed(m.conv, [m]);
                break;
            }
            case 'sync':
                this.feed(f.conv, f.messages.map((m) => ({ ...m, conv: f.conv })));
                break;
            case 'synced':
                this.synced(f.convs);
                break;
            case 'ack':
                this.acked({ cmid: f.cmid, conv: f.conv, id: f.id, seq: f.seq, ts: f.ts });
                break;
            case 'history': {
                const messages = f.messages.map((m) => ({ ...m, conv: f.conv }));
                this.feed(f.conv, messages);
                this.answer({ ...f, messages });
                break;
            }
            case 'pong':
            case 'receipt_detail':
                this.answer(f);
                break;
            case 'group': {
                const { t: _t, ref: _r, ...g } = f;
                this.emit('group', g);
                this.answer(f);
                break;
            }
            case 'receipt':
            case 'receipt_counts':
            case 'presence':
            case 'typing': {
                const { t, ...rest } = f;
                this.emit(t, rest);
                break;
            }
            case 'error':
                this.errored(f);
                break;
        }
    }
    order(conv) {
        let o = this.orders.get(conv);
        if (!o)
            this.orders.set(conv, (o = new ConvOrder()));
        return o;
    }
    /** Messages from anywhere: each reaches the app once, in seq order; own sends seen here (a sync
     * after an ack was lost) count as acked. */
    feed(conv, messages) {
        const order = this.order(conv);
        const ready = [];
        for (const m of messages) {
            if (m.from === this.user && this.outbox.has(m.cmid))
                this.settleSend(m.cmid, { cmid: m.cmid, conv, id: m.id, seq: m.seq, ts: m.ts });
            ready.push(...order.accept(m));
        }
        if (ready.length)
            this.deliver(conv, ready);
        this.fillGap(conv);
    }
    deliver(conv, messages) {
        for (const m of messages)
            this.emit('message', m);
        this.saveCursorsSoon();
        if (this.opts.autoDelivered === false)
            return;
        if (!messages.some((m) => m.from !== this.user))
            return;
        // One mark per conversation per tick, however many messages the tick brought.
        if (!this.deliveredFlush) {
            this.deliveredFlush = new Set();
            queueMicrotask(() => {
                const convs = this.deliveredFlush;
                this.deliveredFlush = null;
                for (const c of convs)
                    this.mark('delivered', c, this.order(c).delivered);
            });
        }
        this.deliveredFlush.add(conv);
    }
    synced(convs) {
        let behind = false;
        for (const [conv, last] of Object.entries(convs)) {
            const o = this.order(conv);
            o.learn(last);
            if (o.delivered < last)
                behind = true;
        }
        // `limit` was reached somewhere: another round from the new cursors.
        if (behind && this.syncRounds < SYNC_ROUNDS_MAX) {
            this.syncRounds += 1;
            this.sendSync();
            return;
        }
        this.syncRounds = 0;
        this.backoff.reset();
        this.setState('online');
        this.emit('synced', convs);
        for (const conv of this.orders.keys())
            this.fillGap(conv);
    }
    sendSync() {
        this.raw({ t: 'sync', cursors: this.cursors(), limit: this.opts.syncLimit });
    }
    /** While online, a conversation known to have messages past what was handed over gets them
     * with `history`, one request at a time. During a sync the sync fills it. */
    fillGap(conv) {
        if (this.current !== 'online' || this.filling.has(conv))
            return;
        const order = this.order(conv);
        const gap = order.gap(HISTORY_LIMIT_MAX);
        if (!gap)
            return;
        this.filling.add(conv);
        const before = order.delivered;
        const done = () => {
            this.filling.delete(conv);
            // No progress (an answer without the missing seqs): wait for the next event or sync
            // instead of asking again at once.
            if (order.delivered > before)
                this.fillGap(conv);
        };
        this.request({ t: 'history', conv, before: gap.before, limit: gap.limit, ref: '' }, true).then(done, done);
    }
    acked(a) {
        const entry = this.outbox.get(a.cmid);
        if (!entry) {
            // A second ack for the same send (a retry's, or a frame seen twice): known already.
            this.order(a.conv).learn(a.seq);
            this.fillGap(a.conv);
            return;
        }
        this.settleSend(a.cmid, a);
        const f = entry.frame;
        const own = { conv: a.conv, id: a.id, seq: a.seq, from: this.user, cmid: a.cmid, body: f.body, kind: f.kind ?? 'text', ts: a.ts };
        if (f.target !== undefined)
            own.target = f.target;
        if (f.reply_to !== undefined)
            own.reply_to = f.reply_to;
        if (f.media)
            own.media = f.media;
        this.feed(a.conv, [own]);
    }
    settleSend(cmid, a) {
        this.leaveOutbox(cmid);
        this.emit('ack', a);
        this.settleWaiters(cmid, a);
    }
    /** A send is done with, stored or refused for good: out of the outbox and its storage. */
    leaveOutbox(cmid) {
        this.outbox.delete(cmid);
        void this.saveOutbox();
    }
    /** The promises of `send` calls for this cmid. */
    settleWaiters(cmid, outcome) {
        const list = this.waiters.get(cmid) ?? [];
        this.waiters.delete(cmid);
        for (const w of list) {
            if (outcome instanceof ShardchatError)
                w.reject(outcome);
            else
                w.resolve(outcome);
        }
    }
    errored(f) {
        const entry = f.cmid ? this.outbox.get(f.cmid) : undefined;
        if (f.cmid && entry) {
            const cmid = f.cmid;
            if (RETRY_LATER.has(f.code)) {
                // Nothing was stored: the same cmid goes again later (or on the next connection).
                entry.retry ?? (entry.retry = new Backoff(SEND_RETRY));
                const delay = entry.retry.next(Math.random());
                setTimeout(() => this.outbox.get(cmid) === entry && this.raw(entry.frame), delay);
                return;
            }
            this.leaveOutbox(cmid);
            const error = new ShardchatError(f.code, f.msg);
            this.settleWaiters(cmid, error);
            this.emit('failed', { cmid, frame: entry.frame, error });
            return;
        }
        const r = f.ref != null ? this.requests.get(String(f.ref)) : undefined;
        if (r) {
            this.settleRequest(String(f.ref), r, new ShardchatError(f.code, f.msg));
            return;
        }
        this.emit('error', f);
    }
    // ---- requests and marks --------------------------------------------------------------------
    request(frame, idempotent) {
        if (this.stopped)
            return Promise.reject(new ShardchatError('closed', 'this client was closed'));
        const ref = `r${++this.refSeq}`;
        frame.ref = ref;
        return new Promise((resolve, reject) => {
            const timeoutMs = this.opts.requestTimeoutMs ?? 30000;
            const timer = setTimeout(() => {
                const r = this.requests.get(ref);
                if (r)
                    this.settleRequest(ref, r, new ShardchatError('timeout', `no answer within ${timeoutMs} ms`));
            }, timeoutMs);
            const r = { frame, idempotent, sent: false, resolve, reject, timer };
            this.requests.set(ref, r);
            r.sent = this.raw(frame);
        });
    }
    answer(f) {
        if (f.ref == null)
            return;
        const ref = String(f.ref);
        const r = this.requests.get(ref);
        if (r)
            this.settleRequest(ref, r, f);
    }
    settleRequest(ref, r, outcome) {
        this.requests.delete(ref);
        clearTimeout(r.timer);
        if (outcome instanceof ShardchatError)
            r.reject(outcome);
        else
            r.resolve(outcome);
    }
    /** Presence frames for these users, as many as the per-frame bound needs. */
    presence(t, users) {
        for (const chunk of chunks(users, PRESENCE_USERS_PER_FRAME_MAX))
            this.raw({ t, users: chunk });
    }
    mark(kind, conv, seq) {
        const m = this.marks.get(conv) ?? { delivered: 0, read: 0 };
        if (seq <= m[kind])
            return;
        m[kind] = seq;
        this.marks.set(conv, m);
        if (!this.raw({ t: kind, conv, seq }))
            this.unsentMarks.add(conv);
    }
    // ---- storage -------------------------------------------------------------------------------
    saveOutbox() {
        const value = this.outbox.size ? JSON.stringify(this.pending()) : null;
        return this.write('outbox', value);
    }
    /** Cursors are written once per tick, after the app had the messages. */
    saveCursorsSoon() {
        if (this.saveQueued)
            return;
        this.saveQueued = true;
        queueMicrotask(() => {
            this.saveQueued = false;
            void this.write('cursors', JSON.stringify(this.cursors()));
        });
    }
    /** Writes in the order they were asked for, whatever the storage's own timing. */
    write(what, value) {
        this.writes = this.writes.then(() => this.storage.save(this.key(what), value)).catch(() => { });
        return this.writes;
    }
    emit(event, value) {
        for (const fn of this.handlers.get(event) ?? []) {
            try {
                fn(value);
            }
            catch (e) {
                // The app's bug must not break delivery: reported, and the next handler still runs.
                setTimeout(() => {
                    throw e;
                });
            }
        }
    }
}
/** Sync rounds in a row after which the client goes online anyway (the rest comes by `history`). */
const SYNC_ROUNDS_MAX = 1000;
function groupOf(f) {
    if (f.t !== 'group')
        throw new ShardchatError('internal', `unexpected answer ${f.t}`);
    return { conv: f.conv, name: f.name, members: f.members };
}
function chunks(items, size) {
    const out = [];
    for (let i = 0; i < items.length; i += size)
        out.push(items.slice(i, i + size));
    return out;
}
function parse(text, fallback) {
    if (!text)
        return fallback;
    try {
        return JSON.parse(text);
    }
    catch {
        return fallback;
    }
}
/** 96 random bits: unique per sender and conversation for all practical purposes. */
function newCmid() {
    const bytes = new Uint8Array(12);
    globalThis.crypto.getRandomValues(bytes);
    return 'c' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}
/** The claims of a JWT, read without checking it (the server checks it). */
export function jwtClaims(token) {
    try {
        const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
        return JSON.parse(atob(part + '='.repeat((4 - (part.length % 4)) % 4)));
    }
    catch {
        return {};
    }
}
