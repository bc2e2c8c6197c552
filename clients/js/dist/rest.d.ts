import type { ConvId, Media, Member, Message } from './frames.js';
import { type TokenSource } from './client.js';
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
export declare class ShardchatRest {
    private readonly o;
    constructor(o: RestOptions);
    conversations(): Promise<ConversationSummary[]>;
    conversation(conv: ConvId): Promise<ConversationInfo>;
    search(q: string, o?: {
        conv?: ConvId;
        limit?: number;
        offset?: number;
    }): Promise<SearchHit[]>;
    receipts(conv: ConvId, seq: number): Promise<{
        of: number;
        delivered: string[];
        read: string[];
    }>;
    /** Uploads a file (asks for a signed URL, PUTs the bytes there) and resolves with the media
     * object to send with an `image` or `file` message: `chat.send({conv}, caption, {kind: 'image',
     * media})`. */
    upload(bytes: Blob | Uint8Array, contentType: string, name: string): Promise<Media>;
    /** Signed download URLs (paths on the control plane) for the file message `seq` shares. */
    mediaLinks(conv: ConvId, seq: number): Promise<{
        url: string;
        thumbnail_url: string | null;
        expires_at: number;
        media: Media;
    }>;
    private get;
    private call;
    private static answer;
}
