// Reconnection delays: exponential with jitter, so that a restarted engine is not met by every
// client at the same instant. Pure: the random draw is passed in.
export const BACKOFF_INITIAL_MS = 250;
export const BACKOFF_MAX_MS = 10000;
export class Backoff {
    constructor(o = {}) {
        this.attempt = 0;
        this.initialMs = o.initialMs ?? BACKOFF_INITIAL_MS;
        this.maxMs = o.maxMs ?? BACKOFF_MAX_MS;
    }
    /** The delay before the next attempt, ms: the base doubles per failure up to `maxMs`, and the
     * delay is drawn uniformly from half to one and a half times it. `random` is in [0, 1). */
    next(random) {
        const base = Math.min(this.maxMs, this.initialMs * 2 ** Math.min(this.attempt, 30));
        this.attempt += 1;
        return Math.round(base * (0.5 + random));
    }
    /** A connection got through: the next failure starts from the first delay again. */
    reset() {
        this.attempt = 0;
    }
}
