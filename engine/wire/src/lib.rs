//! The bytes a client sends before the codec sees a frame: the upgrade request head (`http`) and
//! the WebSocket framing (`ws`). Pure code, no I/O, apart from the engine so that the fuzz
//! targets (`fuzz/`) build it without the runtime.

pub mod http;
pub mod ws;

#[doc(hidden)]
pub mod fuzzing;
