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
    /** Uploads a file and resolves with the media object to send with an `image` or `file`
     * message: `chat.send({conv}, caption, {kind: 'image', media})`. Asks for a signed URL naming
     * the bytes' SHA-256, PUTs them there with the headers the grant names (to this server, or
     * straight to the object store when the server keeps media in S3), then completes the upload.
     * Where WebCrypto is missing (a page served over plain HTTP from another host) it names no
     * SHA-256, which only a server with the embedded store accepts. */
    upload(bytes: Blob | Uint8Array, contentType: string, name: string): Promise<Media>;
    /** A URL the server answered, as fetch takes it: paths are on the control plane; object store
     * URLs (`--media-s3`) are absolute. */
    resolve(url: string): string;
    /** Signed download URLs for the file message `seq` shares: paths on the control plane, or the
     * object store's own URLs (see {@link ShardchatRest.resolve}). */
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
