import { type BackoffOptions } from './backoff.js';
import type { Ack, ConvId, ErrorFrame, Group, Media, Message, MessageKind, Presence, Receipt, ReceiptCounts, ReceiptDetail, SendFrame, Typing } from './frames.js';
import { type ClientStorage } from './storage.js';
/** The part of the platform's WebSocket the client uses (browsers, Node ≥ 22, or `ws`). */
export interface WebSocketLike {
    readonly readyState: number;
    send(data: string): void;
    close(code?: number, reason?: string): void;
    onopen: ((ev: unknown) => void) | null;
    onclose: ((ev: {
        code: number;
    }) => void) | null;
    onmessage: ((ev: {
        data: unknown;
    }) => void) | null;
    onerror: ((ev: unknown) => void) | null;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;
/** The server's bound on `history`'s `limit`. */
export declare const HISTORY_LIMIT_MAX = 200;
/** The server's bound on users in one `presence_sub` frame. */
export declare const PRESENCE_USERS_PER_FRAME_MAX = 1024;
/** The server relays one `typing` per user and conversation per 2 s; more would be dropped. */
export declare const TYPING_INTERVAL_MS = 2000;
/** A JWT, or a function giving a fresh one (called before every connection or request). */
export type TokenSource = string | (() => string | Promise<string>);
/** The token to use now, if any. */
export declare function tokenOf(t: TokenSource | undefined): Promise<string | undefined>;
export interface ClientOptions {
    /** The engine's WebSocket endpoint, e.g. `ws://127.0.0.1:7700/ws`. */
    url: string;
    /** A JWT, or a function giving a fresh one; called again before every reconnect. */
    token?: TokenSource;
    /** The user id: for an engine run with `--dev-auth` (no token), and beside a token function
     * (cursors and the outbox are kept per user before any token is fetched). With a token string:
     * its `sub`. */
    user?: string;
    /** The device id (`--dev-auth` only; with a token: its `dev` claim). */
    device?: string;
    /** Where cursors and the outbox live; memory by default (lost with the process). */
    storage?: ClientStorage;
    /** The WebSocket constructor; the platform's by default. */
    WebSocket?: WebSocketConstructor;
    backoff?: BackoffOptions;
    /** A ping goes every this many ms; a connection silent for two of them is dropped and made
     * again (a dead peer or a stalled network never closes by itself). Default 20,000. */
    heartbeatMs?: number;
    /** A request (history, groups, receipt queries) not answered within this is rejected. Default
     * 30,000. */
    requestTimeoutMs?: number;
    /** Send `delivered` for every message handed to the app (the highest seq per conversation and
     * tick). Default true. */
    autoDelivered?: boolean;
    /** Messages per conversation per `sync` round (1–5000). Default 500. */
    syncLimit?: number;
}
export type ConnectionState = 'connecting' | 'syncing' | 'online' | 'offline' | 'closed';
/** A send the server refused for good (not retried): the outbox no longer holds it. */
export interface SendFailure {
    cmid: string;
    frame: SendFrame;
    error: ShardchatError;
}
/** The events the client emits, with what each carries. */
export interface ClientEvents {
    /** Every message of the user's conversations, their own included (from acks and from their
     * other devices), exactly once and in seq order per conversation, across reconnects. */
    message: Message;
    /** A send from the outbox is durably stored (also for sends made before a page restart). */
    ack: Ack;
    failed: SendFailure;
    receipt: Receipt;
    receipt_counts: ReceiptCounts;
    presence: Presence;
    typing: Typing;
    group: Group;
    /** A sync ended: every conversation of the user with its last seq. */
    synced: Record<ConvId, number>;
    state: ConnectionState;
    /** An error frame that answers no request of this client (e.g. a mark beyond the last seq). */
    error: ErrorFrame;
}
export declare class ShardchatError extends Error {
    /** The server's error code, or `disconnected`, `timeout`, `closed` from the client. */
    readonly code: string;
    constructor(
    /** The server's error code, or `disconnected`, `timeout`, `closed` from the client. */
    code: string, message: string);
}
type Handler<T> = (value: T) => void;
export declare class ShardchatClient {
    /** The user this client speaks for. */
    readonly user: string;
    readonly device: string;
    private readonly opts;
    private readonly storage;
    private readonly WS;
    private readonly heartbeatMs;
    private readonly backoff;
    private readonly loaded;
    private ws;
    private current;
    private stopped;
    private started;
    private lastHeard;
    private heartbeat;
    private reconnectTimer;
    private readonly orders;
    /** Conversations with a gap-filling `history` in flight. */
    private readonly filling;
    /** Sends not yet acked, in the order they were made (a Map keeps insertion order). */
    private readonly outbox;
    private readonly waiters;
    private readonly requests;
    private refSeq;
    /** `sync` rounds sent since the connection opened (another while `limit` was reached). */
    private syncRounds;
    private readonly presenceSubs;
    /** The highest `delivered` / `read` mark asked for per conversation, and those not yet sent. */
    private readonly marks;
    private readonly unsentMarks;
    private readonly lastTyping;
    private deliveredFlush;
    private saveQueued;
    private writes;
    private readonly onOnline;
    private readonly handlers;
    constructor(opts: ClientOptions);
    /** Subscribes to an event; returns the function that unsubscribes. */
    on<K extends keyof ClientEvents>(event: K, fn: Handler<ClientEvents[K]>): () => void;
    get state(): ConnectionState;
    /** Starts connecting (and keeps reconnecting until `close`); resolves once the client is online
     * and synced. */
    connect(): Promise<void>;
    /** Closes the connection for good. Unacked sends stay in the storage's outbox: a client started
     * later on the same storage sends them. */
    close(): void;
    /** Sends a message: to a user (`{to}`, the direct chat is made on first use) or to a
     * conversation (`{conv}`). It is kept in the outbox until acked (sent again with the same cmid
     * after every reconnect, so it is stored once whatever happens) and resolves with the ack, or
     * rejects when the server refuses it for good (`bad_request`, `forbidden`, `not_found`,
     * `too_large`, `group_full`). */
    send(target: {
        to: string;
    } | {
        conv: ConvId;
    }, body: string, opts?: {
        kind?: MessageKind;
        cmid?: string;
        replyTo?: number;
        target?: number;
        media?: Media;
    }): Promise<Ack>;
    /** Edits message `seq` of `conv` (the author's own): an event with a seq of its own, kept in
     * the outbox like any send. Members see it as a `message` of kind `edit`; `applyEvent` turns it
     * into the target's new state. */
    edit(conv: ConvId, seq: number, body: string, opts?: {
        cmid?: string;
    }): Promise<Ack>;
    /** Deletes message `seq` of `conv` (the author's own; any message for a group admin). */
    deleteMessage(conv: ConvId, seq: number, opts?: {
        cmid?: string;
    }): Promise<Ack>;
    /** Reacts to message `seq` of `conv` with one emoji, replacing the user's earlier reaction;
     * `''` takes it back. */
    react(conv: ConvId, seq: number, emoji: string, opts?: {
        cmid?: string;
    }): Promise<Ack>;
    /** The sends not acked yet, oldest first (also those a previous run of the page left). */
    pending(): SendFrame[];
    /** The last seq handed to the app per conversation (what the next `sync` starts from). */
    cursors(): Record<ConvId, number>;
    markDelivered(conv: ConvId, seq: number): void;
    markRead(conv: ConvId, seq: number): void;
    /** Tells the conversation's other members that the user is typing (at most once per 2 s;
     * dropped while offline: typing is never stored). */
    typing(conv: ConvId): void;
    /** Presence of these users: their current state at once, then changes (kept across reconnects). */
    subscribePresence(users: string[]): void;
    unsubscribePresence(users: string[]): void;
    /** A page of a conversation, newest first, before `before` (exclusive; default the latest). */
    history(conv: ConvId, o?: {
        before?: number;
        limit?: number;
    }): Promise<Message[]>;
    /** Creates a group with the user as admin. Not retried after a lost connection (a retry would
     * make a second group): rejects with `disconnected` if the answer was lost. */
    createGroup(name: string, members: string[]): Promise<Group>;
    addMembers(conv: ConvId, users: string[]): Promise<Group>;
    removeMembers(conv: ConvId, users: string[]): Promise<Group>;
    renameGroup(conv: ConvId, name: string): Promise<Group>;
    /** Leaves a group; resolves with the group as it is without the user. */
    leaveGroup(conv: ConvId): Promise<Group>;
    /** Who has delivered and read message `seq`. */
    receipts(conv: ConvId, seq: number): Promise<ReceiptDetail>;
    /** A round trip to the engine, in ms. */
    ping(): Promise<number>;
    private load;
    private key;
    private open;
    private socketUrl;
    private opened;
    /** The socket closed (or was given up as dead): requests that must not be sent twice fail, the
     * rest wait for the next connection. */
    private lost;
    private retryLater;
    private startHeartbeat;
    /** Lets go of the socket: closed without its events reaching the client any more. */
    private detach;
    private stopHeartbeat;
    private raw;
    private setState;
    private data;
    private order;
    /** Messages from anywhere: each reaches the app once, in seq order; own sends seen here (a sync
     * after an ack was lost) count as acked. */
    private feed;
    private deliver;
    private synced;
    private sendSync;
    /** While online, a conversation known to have messages past what was handed over gets them
     * with `history`, one request at a time. During a sync the sync fills it. */
    private fillGap;
    private acked;
    private settleSend;
    /** A send is done with, stored or refused for good: out of the outbox and its storage. */
    private leaveOutbox;
    /** The promises of `send` calls for this cmid. */
    private settleWaiters;
    private errored;
    private request;
    private answer;
    private settleRequest;
    /** Presence frames for these users, as many as the per-frame bound needs. */
    private presence;
    private mark;
    private saveOutbox;
    /** Cursors are written once per tick, after the app had the messages. */
    private saveCursorsSoon;
    /** Writes in the order they were asked for, whatever the storage's own timing. */
    private write;
    private emit;
}
/** The claims of a JWT, read without checking it (the server checks it). */
export declare function jwtClaims(token: string): {
    sub?: string;
    dev?: string;
};
export {};
