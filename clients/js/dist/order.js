// Delivery order of one conversation: a pure state machine (no I/O, no clock), so that every
// path through it is testable alone. The client feeds it every message it sees, from any source
// (live `msg`, `sync`, `history`, its own acks), as often as they come; it hands each seq to the
// app once, in order, and says which range is missing.
/** Messages held past a gap, per conversation; beyond it the newest are dropped (and fetched
 * again once the gap below them is filled: `gap()` reaches up to the highest seq known). */
export const HELD_MAX_MESSAGES = 5000;
export class ConvOrder {
    constructor(delivered = 0) {
        this.held = new Map();
        this.delivered = delivered;
        this.known = delivered;
    }
    /** Takes one message; returns those that are now next in order (often none, or just it). */
    accept(m) {
        this.learn(m.seq);
        if (m.seq <= this.delivered || this.held.has(m.seq))
            return [];
        if (m.seq !== this.delivered + 1 && this.held.size >= HELD_MAX_MESSAGES)
            return [];
        this.held.set(m.seq, m);
        const out = [];
        for (let next = this.held.get(this.delivered + 1); next; next = this.held.get(this.delivered + 1)) {
            this.held.delete(next.seq);
            this.delivered = next.seq;
            out.push(next);
        }
        return out;
    }
    /** Records that `seq` exists (an ack, or the last seq `synced` names). */
    learn(seq) {
        if (seq > this.known)
            this.known = seq;
    }
    /** The missing messages nearest to what was handed over, as one `history` request can ask for
     * them (newest first, `before` exclusive, at most `limitMax`); null when nothing is missing. */
    gap(limitMax) {
        if (this.known <= this.delivered)
            return null;
        let before = this.known + 1;
        for (const seq of this.held.keys())
            if (seq < before)
                before = seq;
        const missing = before - 1 - this.delivered;
        if (missing <= 0)
            return null;
        // The oldest missing first, so that each answer lets delivery move on.
        const limit = Math.min(missing, limitMax);
        return { before: this.delivered + 1 + limit, limit };
    }
    /** Messages waiting behind a gap. */
    get heldCount() {
        return this.held.size;
    }
}
