// Where the client keeps what must outlive a connection and a page: its cursors (the last seq
// handed to the app per conversation) and its outbox (sends not yet acknowledged). Pluggable:
// anything with `load` and `save` works, synchronous or not (IndexedDB, a file, a database).
/** Kept in memory: lost with the process, shared by clients given the same instance. */
export class MemoryStorage {
    constructor() {
        this.map = new Map();
    }
    load(key) {
        return this.map.get(key) ?? null;
    }
    save(key, value) {
        if (value === null)
            this.map.delete(key);
        else
            this.map.set(key, value);
    }
}
/** Kept in `localStorage` (or anything shaped like it): survives reloads and restarts of the
 * page. Keys are prefixed so that several clients can share one origin. */
export class WebStorage {
    constructor(store, prefix = 'shardchat:') {
        this.store = store;
        this.prefix = prefix;
    }
    load(key) {
        return this.store.getItem(this.prefix + key);
    }
    save(key, value) {
        if (value === null)
            this.store.removeItem(this.prefix + key);
        else
            this.store.setItem(this.prefix + key, value);
    }
}
