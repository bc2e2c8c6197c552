// The wire contract's frames (docs/protocol.md), as the JSON text frames carry them. Types only:
// nothing here exists at run time.

/** `g:<id>` for groups, `d:<a>:<b>` (the two users in byte-wise order) for direct chats. */
export type ConvId = string;

/** `text`, `image`, `file`: messages proper. `system`: the server's (group changes).
 * `edit`, `delete`, `reaction`: events about the earlier message their `target` names. */
export type MessageKind = 'text' | 'image' | 'file' | 'system' | 'edit' | 'delete' | 'reaction';

/** The file an `image` or `file` message shares: what an upload answered (docs/protocol.md,
 * "Media"). */
export interface Media {
  /** The SHA-256 of the bytes, hex. */
  id: string;
  content_type: string;
  size: number;
  name: string;
  width?: number;
  height?: number;
  /** The thumbnail's media id (PNG and JPEG images). */
  thumbnail?: string;
}

/** One user's reaction to a message. */
export interface Reaction {
  user: string;
  emoji: string;
}

/** A stored message, as `msg`, `sync`, `history` and acks (completed by the client) carry it. */
export interface Message {
  conv: ConvId;
  /** Snowflake id, a decimal string. */
  id: string;
  /** Dense per conversation, from 1. */
  seq: number;
  from: string;
  cmid: string;
  body: string;
  kind: MessageKind;
  /** The server's acceptance time, Unix ms. */
  ts: number;
  /** Events: the seq of the message they are about. */
  target?: number;
  /** The seq of the message this one answers. */
  reply_to?: number;
  /** When the body was last edited (Unix ms): history and sync give messages as they are now. */
  edited_at?: number;
  /** A tombstone: the message was deleted and its body is gone. */
  deleted?: boolean;
  /** One per user who reacted, ordered by user. */
  reactions?: Reaction[];
  /** The file an `image` or `file` message shares. */
  media?: Media;
}

export interface Ack {
  cmid: string;
  conv: ConvId;
  id: string;
  seq: number;
  ts: number;
}

export type ReceiptKind = 'delivered' | 'read';

export interface Receipt {
  conv: ConvId;
  user: string;
  kind: ReceiptKind;
  seq: number;
}

export interface ReceiptCounts {
  conv: ConvId;
  /** The current members other than the author. */
  of: number;
  counts: { seq: number; delivered: number; read: number }[];
}

export interface ReceiptDetail {
  conv: ConvId;
  seq: number;
  of: number;
  delivered: string[];
  read: string[];
}

export interface Presence {
  user: string;
  status: 'online' | 'offline';
  /** Unix ms, with `offline` when known. */
  last_seen?: number;
}

export interface Typing {
  conv: ConvId;
  user: string;
}

export interface Member {
  user: string;
  role: 'admin' | 'member';
}

export interface Group {
  conv: ConvId;
  name: string;
  members: Member[];
}

export type ErrorCode =
  | 'bad_request'
  | 'forbidden'
  | 'not_found'
  | 'too_large'
  | 'rate_limited'
  | 'group_full'
  | 'unavailable'
  | 'internal';

export type Ref = string | number;

/** An `error` frame: the request it answers is named by `cmid` (sends) or `ref`. */
export interface ErrorFrame {
  code: ErrorCode;
  msg: string;
  cmid?: string | null;
  ref?: Ref | null;
}

export type ServerFrame =
  | ({ t: 'ack' } & Ack)
  | ({ t: 'msg' } & Message)
  | ({ t: 'receipt' } & Receipt)
  | ({ t: 'receipt_counts' } & ReceiptCounts)
  | ({ t: 'receipt_detail'; ref?: Ref | null } & ReceiptDetail)
  | { t: 'sync'; conv: ConvId; messages: Message[]; more: boolean }
  | { t: 'synced'; convs: Record<ConvId, number> }
  | { t: 'history'; conv: ConvId; messages: Message[]; ref?: Ref | null }
  | { t: 'pong'; ref?: Ref | null }
  | ({ t: 'group'; ref?: Ref | null } & Group)
  | ({ t: 'presence' } & Presence)
  | ({ t: 'typing' } & Typing)
  | ({ t: 'error' } & ErrorFrame);

/** A `send` frame: to a user (the direct chat is made on first use) or to a conversation. */
export type SendFrame = { t: 'send'; cmid: string; body: string; kind?: MessageKind; target?: number; reply_to?: number; media?: Media } & (
  | { to: string; conv?: undefined }
  | { conv: ConvId; to?: undefined }
);

export type ClientFrame =
  | SendFrame
  | { t: 'delivered' | 'read'; conv: ConvId; seq: number }
  | { t: 'sync'; cursors: Record<ConvId, number>; limit?: number }
  | { t: 'history'; conv: ConvId; before?: number; limit?: number; ref?: Ref }
  | { t: 'ping'; ref?: Ref }
  | { t: 'group_create'; name: string; members: string[]; ref?: Ref }
  | { t: 'group_add' | 'group_remove'; conv: ConvId; users: string[]; ref?: Ref }
  | { t: 'group_leave'; conv: ConvId; ref?: Ref }
  | { t: 'group_rename'; conv: ConvId; name: string; ref?: Ref }
  | { t: 'presence_sub' | 'presence_unsub'; users: string[] }
  | { t: 'typing'; conv: ConvId }
  | { t: 'receipt_query'; conv: ConvId; seq: number; ref?: Ref };
