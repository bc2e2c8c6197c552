// @shardchat/client: the library's public face. See clients/js/README.md.
export * from './frames.js';
export { ShardchatClient, ShardchatError, jwtClaims, tokenOf, HISTORY_LIMIT_MAX, TYPING_INTERVAL_MS } from './client.js';
export { ShardchatRest } from './rest.js';
export { ConvOrder, HELD_MAX_MESSAGES } from './order.js';
export { applyEvent, isEvent } from './revise.js';
export { Backoff, BACKOFF_INITIAL_MS, BACKOFF_MAX_MS } from './backoff.js';
export { MemoryStorage, WebStorage } from './storage.js';
