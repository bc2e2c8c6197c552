//! The baseline shardchat is measured against: a chat relay written the way most Rust WebSocket
//! chat servers are, plainly and fairly. tokio's multi-threaded runtime, tokio-tungstenite, one
//! task per connection plus a writer task fed by an unbounded channel, shared state behind a
//! `Mutex`, each frame encoded once and the string shared by every recipient.
//!
//! On `/echo` it is a plain echo server instead, for the load generator's `echo` scenario.
//!
//! It speaks the subset of shardchat's protocol the load generator's `direct` and `group:SIZE`
//! scenarios use (`?user=` login, `send` by `to` or `conv`, `group_create`, `ack`, `msg` with a
//! per-conversation `seq`), so both servers run the same scenarios. It is deliberately *not* a
//! chat server: nothing is stored (an `ack` is sent when the message is relayed, not after an
//! fsync), there is no auth, history, receipts, presence or backpressure. Read its figures as an
//! upper bound for what a relay without durability does on the same cores.

use clap::Parser;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(name = "tokio-relay", about = "Baseline relay for shardchat benchmarks (in memory, no durability)")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:7710")]
    listen: String,
}

#[derive(Default)]
struct State {
    /// user → the writer channels of that user's connections.
    users: HashMap<String, Vec<UnboundedSender<Message>>>,
    /// conversation → members and the last seq.
    convs: HashMap<String, (Vec<String>, u64)>,
    next_group: u64,
}

type Shared = Arc<Mutex<State>>;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let listener = TcpListener::bind(&args.listen).await.expect("bind --listen");
    eprintln!("tokio-relay listening on {}", args.listen);
    let state = Shared::default();
    loop {
        let Ok((sock, _)) = listener.accept().await else { continue };
        tokio::spawn(connection(sock, state.clone()));
    }
}

async fn connection(sock: TcpStream, state: Shared) {
    let _ = sock.set_nodelay(true);
    let mut user = String::new();
    let mut echo = false;
    // tungstenite's callback type returns its (large) error response by value.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| {
        echo = req.uri().path() == "/echo";
        let q = req.uri().query().unwrap_or("");
        user = q.split('&').find_map(|kv| kv.strip_prefix("user=")).unwrap_or("anonymous").to_string();
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(sock, callback).await else { return };
    let (mut sink, mut stream) = ws.split();
    if echo {
        // `/echo`: every data frame straight back (the load generator's `echo` scenario).
        while let Some(Ok(m)) = stream.next().await {
            if (m.is_text() || m.is_binary()) && sink.send(m).await.is_err() {
                break;
            }
        }
        return;
    }
    let (tx, mut rx) = unbounded_channel::<Message>();
    state.lock().unwrap().users.entry(user.clone()).or_default().push(tx.clone());
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
        handle(&state, &user, &tx, &v);
    }
    if let Some(list) = state.lock().unwrap().users.get_mut(&user) {
        list.retain(|s| !s.same_channel(&tx));
    }
    writer.abort();
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn handle(state: &Shared, user: &str, me: &UnboundedSender<Message>, v: &Value) {
    match v["t"].as_str() {
        Some("group_create") => {
            let mut members: Vec<String> =
                v["members"].as_array().into_iter().flatten().filter_map(|m| m.as_str().map(String::from)).collect();
            members.push(user.to_string());
            let mut st = state.lock().unwrap();
            st.next_group += 1;
            let conv = format!("g:relay{}", st.next_group);
            // seq 1 is the "group created" system message, as in shardchat.
            st.convs.insert(conv.clone(), (members.clone(), 1));
            let system = json!({"t":"msg","conv":conv,"seq":1,"from":user,"kind":"system","body":"created","ts":now_ms()}).to_string();
            for m in &members {
                for s in st.users.get(m).into_iter().flatten() {
                    let _ = s.send(Message::Text(system.clone().into()));
                }
            }
            let _ = me.send(Message::Text(json!({"t":"group","conv":conv,"ref":v["ref"]}).to_string().into()));
        }
        Some("send") => {
            let conv = match (v["conv"].as_str(), v["to"].as_str()) {
                (Some(c), _) => c.to_string(),
                (None, Some(to)) => {
                    let (a, b) = if user < to { (user, to) } else { (to, user) };
                    format!("d:{a}:{b}")
                }
                _ => return,
            };
            let mut st = state.lock().unwrap();
            let (members, seq) = match st.convs.get_mut(&conv) {
                Some((members, seq)) => {
                    *seq += 1;
                    (members.clone(), *seq)
                }
                None if conv.starts_with("d:") => {
                    let members: Vec<String> = conv[2..].split(':').map(String::from).collect();
                    st.convs.insert(conv.clone(), (members.clone(), 1));
                    (members, 1)
                }
                None => return,
            };
            let frame = json!({"t":"msg","conv":conv,"seq":seq,"from":user,"kind":"text","body":v["body"],"ts":now_ms(),"cmid":v["cmid"]});
            let text: tokio_tungstenite::tungstenite::Utf8Bytes = frame.to_string().into();
            for m in members.iter().filter(|m| m.as_str() != user) {
                for s in st.users.get(m).into_iter().flatten() {
                    let _ = s.send(Message::Text(text.clone()));
                }
            }
            drop(st);
            let _ = me.send(Message::Text(json!({"t":"ack","cmid":v["cmid"],"conv":conv,"seq":seq}).to_string().into()));
        }
        _ => {}
    }
}
