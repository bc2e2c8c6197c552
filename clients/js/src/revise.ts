// Events about messages (`edit`, `delete`, `reaction`) applied to the message they target, the
// way the server applies them to its stored record (docs/protocol.md, "Edits, deletes,
// replies, reactions"). Pure: an app keeps messages by seq and replaces the target with what
// `applyEvent` returns when an event arrives; history and sync already give the current state.

import type { Message, Reaction } from './frames.js';

/** Whether `m` is an event about another message rather than a message. */
export function isEvent(m: Message): boolean {
  return m.kind === 'edit' || m.kind === 'delete' || m.kind === 'reaction';
}

/** The state of `target` after `event` (a new object; `target` is not changed). An event about
 * another message, or one the target already reflects (a deleted target), changes nothing. */
export function applyEvent(target: Message, event: Message): Message {
  if (!isEvent(event) || event.target !== target.seq || event.conv !== target.conv || target.deleted) return target;
  const next: Message = { ...target };
  switch (event.kind) {
    case 'edit':
      next.body = event.body;
      next.edited_at = event.ts;
      break;
    case 'delete':
      next.body = '';
      next.deleted = true;
      delete next.reactions;
      break;
    case 'reaction': {
      const rest: Reaction[] = (target.reactions ?? []).filter((r) => r.user !== event.from);
      if (event.body !== '') {
        rest.push({ user: event.from, emoji: event.body });
        // Ordered by user, as the server stores them (user ids are ASCII: the same order).
        rest.sort((a, b) => (a.user < b.user ? -1 : a.user > b.user ? 1 : 0));
      }
      if (rest.length > 0) next.reactions = rest;
      else delete next.reactions;
      break;
    }
  }
  return next;
}
