//! A push webhook receiver for tests: records every notification, refuses the first `refuse`
//! requests with 500, and can be slow to answer.

use axum::routing::post;
use axum::{extract::State, http::StatusCode, Json, Router};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
pub struct Receiver {
    pub got: Arc<Mutex<Vec<Value>>>,
    /// Where it listens (the port asked for, or the one the kernel gave for 0).
    pub port: u16,
    /// Requests to refuse (500) before accepting.
    refuse: Arc<Mutex<u32>>,
    /// How long each accepted request takes to answer (recorded at once).
    delay: Duration,
}

async fn hook(State(r): State<Receiver>, Json(body): Json<Value>) -> StatusCode {
    {
        let mut refuse = r.refuse.lock().unwrap();
        if *refuse > 0 {
            *refuse -= 1;
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
    }
    r.got.lock().unwrap().extend(body["notifications"].as_array().unwrap().iter().cloned());
    tokio::time::sleep(r.delay).await;
    StatusCode::OK
}

/// Listens on `port` (path `/hook`) until the test ends. Port 0 takes a free one (`Receiver::port`):
/// better than a port picked earlier, which an outgoing connection may take meanwhile.
pub async fn receiver(port: u16, refuse: u32) -> Receiver {
    receiver_slow(port, refuse, Duration::ZERO).await
}

/// Like `receiver`, answering each accepted request after `delay`.
pub async fn receiver_slow(port: u16, refuse: u32, delay: Duration) -> Receiver {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let r = Receiver { refuse: Arc::new(Mutex::new(refuse)), delay, port, ..Default::default() };
    let app = Router::new().route("/hook", post(hook)).with_state(r.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    r
}

/// Waits (up to 10 s) until at least `n` notifications arrived; returns them all.
pub async fn wait_for(r: &Receiver, n: usize) -> Vec<Value> {
    for _ in 0..200 {
        let got = r.got.lock().unwrap().clone();
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the webhook got {:?}", r.got.lock().unwrap());
}
