export interface ClientStorage {
    load(key: string): string | null | Promise<string | null>;
    /** Stores `value` under `key`; null removes it. */
    save(key: string, value: string | null): void | Promise<void>;
}
/** Kept in memory: lost with the process, shared by clients given the same instance. */
export declare class MemoryStorage implements ClientStorage {
    private readonly map;
    load(key: string): string | null;
    save(key: string, value: string | null): void;
}
/** The Web Storage API's shape (`localStorage`, `sessionStorage`). */
export interface WebStorageLike {
    getItem(key: string): string | null;
    setItem(key: string, value: string): void;
    removeItem(key: string): void;
}
/** Kept in `localStorage` (or anything shaped like it): survives reloads and restarts of the
 * page. Keys are prefixed so that several clients can share one origin. */
export declare class WebStorage implements ClientStorage {
    private readonly store;
    private readonly prefix;
    constructor(store: WebStorageLike, prefix?: string);
    load(key: string): string | null;
    save(key: string, value: string | null): void;
}
