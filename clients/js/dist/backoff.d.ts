export interface BackoffOptions {
    /** First delay, ms (before jitter). */
    initialMs?: number;
    /** Largest delay, ms (before jitter). */
    maxMs?: number;
}
export declare const BACKOFF_INITIAL_MS = 250;
export declare const BACKOFF_MAX_MS = 10000;
export declare class Backoff {
    private readonly initialMs;
    private readonly maxMs;
    private attempt;
    constructor(o?: BackoffOptions);
    /** The delay before the next attempt, ms: the base doubles per failure up to `maxMs`, and the
     * delay is drawn uniformly from half to one and a half times it. `random` is in [0, 1). */
    next(random: number): number;
    /** A connection got through: the next failure starts from the first delay again. */
    reset(): void;
}
