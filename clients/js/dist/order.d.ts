import type { Message } from './frames.js';
/** Messages held past a gap, per conversation; beyond it the newest are dropped (and fetched
 * again once the gap below them is filled: `gap()` reaches up to the highest seq known). */
export declare const HELD_MAX_MESSAGES = 5000;
export declare class ConvOrder {
    /** The highest seq handed to the app: every seq up to it was handed over exactly once. */
    delivered: number;
    /** The highest seq known to exist (seen, acked, or named by `synced`). */
    known: number;
    private readonly held;
    constructor(delivered?: number);
    /** Takes one message; returns those that are now next in order (often none, or just it). */
    accept(m: Message): Message[];
    /** Records that `seq` exists (an ack, or the last seq `synced` names). */
    learn(seq: number): void;
    /** The missing messages nearest to what was handed over, as one `history` request can ask for
     * them (newest first, `before` exclusive, at most `limitMax`); null when nothing is missing. */
    gap(limitMax: number): {
        before: number;
        limit: number;
    } | null;
    /** Messages waiting behind a gap. */
    get heldCount(): number;
}
