import type { Message } from './frames.js';
/** Whether `m` is an event about another message rather than a message. */
export declare function isEvent(m: Message): boolean;
/** The state of `target` after `event` (a new object; `target` is not changed). An event about
 * another message, or one the target already reflects (a deleted target), changes nothing. */
export declare function applyEvent(target: Message, event: Message): Message;
