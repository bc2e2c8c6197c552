// Where the client keeps what must outlive a connection and a page: its cursors (the last seq
// handed to the app per conversation) and its outbox (sends not yet acknowledged). Pluggable:
// anything with `load` and `save` works, synchronous or not (IndexedDB, a file, a database).

export interface ClientStorage {
  load(key: string): string | null | Promise<string | null>;
  /** Stores `value` under `key`; null removes it. */
  save(key: string, value: string | null): void | Promise<void>;
}

/** Kept in memory: lost with the process, shared by clients given the same instance. */
export class MemoryStorage implements ClientStorage {
  private readonly map = new Map<string, string>();
  load(key: string): string | null {
    return this.map.get(key) ?? null;
  }
  save(key: string, value: string | null): void {
    if (value === null) this.map.delete(key);
    else this.map.set(key, value);
  }
}

/** The Web Storage API's shape (`localStorage`, `sessionStorage`). */
export interface WebStorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** Kept in `localStorage` (or anything shaped like it): survives reloads and restarts of the
 * page. Keys are prefixed so that several clients can share one origin. */
export class WebStorage implements ClientStorage {
  constructor(
    private readonly store: WebStorageLike,
    private readonly prefix = 'shardchat:',
  ) {}
  load(key: string): string | null {
    return this.store.getItem(this.prefix + key);
  }
  save(key: string, value: string | null): void {
    if (value === null) this.store.removeItem(this.prefix + key);
    else this.store.setItem(this.prefix + key, value);
  }
}
