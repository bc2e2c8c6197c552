// The wire contract's frames (docs/protocol.md), as the JSON text frames carry them. Types only:
// nothing here exists at run time.
export {};
