//! Media end to end: an upload URL, the PUT, a message sharing the file, download links for
//! members only (a former member for what they could read), thumbnails, bounds, and what bad
//! uploads (too long, short, cut off, forged, expired, over the day's quota, a decompression
//! bomb) leave: nothing, and an engine that goes on.

use crate::common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 239) as u8]));
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img).write_to(&mut out, image::ImageOutputFormat::Png).unwrap();
    out.into_inner()
}

fn sha256(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// Asks for an upload URL; the status and the answer.
async fn grant(s: &Server, user: &str, ct: &str, size: usize, name: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(s.rest("/v1/uploads", user))
        .json(&json!({"content_type":ct,"size":size,"name":name}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

async fn put(s: &Server, url: &str, ct: &str, bytes: Vec<u8>) -> (u16, Value) {
    let r = reqwest::Client::new()
        .put(format!("http://127.0.0.1:{}{url}", s.http))
        .header("content-type", ct)
        .body(bytes)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

/// Uploads `bytes`; the `media` object.
async fn upload(s: &Server, user: &str, ct: &str, name: &str, bytes: &[u8]) -> Value {
    let (status, g) = grant(s, user, ct, bytes.len(), name).await;
    assert_eq!(status, 200, "{g}");
    let (status, media) = put(s, g["url"].as_str().unwrap(), ct, bytes.to_vec()).await;
    assert_eq!(status, 200, "{media}");
    media
}

async fn links(s: &Server, user: &str, conv: &str, seq: u64) -> (u16, Value) {
    let r = reqwest::get(s.rest(&format!("/v1/conversations/{conv}/messages/{seq}/media"), user)).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

async fn fetch(s: &Server, url: &str) -> (u16, Option<String>, Vec<u8>) {
    let r = reqwest::get(format!("http://127.0.0.1:{}{url}", s.http)).await.unwrap();
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
    (r.status().as_u16(), ct, r.bytes().await.unwrap().to_vec())
}

fn objects(s: &Server) -> usize {
    let Ok(dirs) = std::fs::read_dir(s.data_dir().join("media/objects")) else { return 0 };
    dirs.flatten().map(|d| std::fs::read_dir(d.path()).unwrap().count()).sum()
}

fn unfinished(s: &Server) -> usize {
    std::fs::read_dir(s.data_dir().join("media/tmp")).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test]
async fn files_are_shared_with_members_by_signed_links_and_stored_once() {
    let s = Server::start(&[]);
    let mut alice = Client::connect(&s, "alice", "d").await;
    alice.send(json!({"t":"group_create","name":"pics","members":["bob","carol"],"ref":"g"})).await;
    let g = alice.recv_where(|v| v["t"] == "group").await["conv"].as_str().unwrap().to_string();

    let picture = png(800, 600);
    let media = upload(&s, "alice", "image/png", "sunset.png", &picture).await;
    assert_eq!(media["id"], sha256(&picture), "the id is the bytes' SHA-256");
    assert_eq!(
        (media["width"].as_u64(), media["height"].as_u64(), media["size"].as_u64()),
        (Some(800), Some(600), Some(picture.len() as u64))
    );
    assert!(media["thumbnail"].is_string(), "{media}");
    alice.send(json!({"t":"send","cmid":"p1","conv":g,"kind":"image","body":"look","media":media})).await;
    let first = seq(&alice.recv_where(|v| v["t"] == "ack").await);

    // A member gets links; the bytes are the bytes; the thumbnail is a small JPEG.
    let (status, l) = links(&s, "bob", &g, first).await;
    assert_eq!(status, 200, "{l}");
    assert_eq!(l["media"], media);
    let (status, ct, bytes) = fetch(&s, l["url"].as_str().unwrap()).await;
    assert_eq!((status, ct.as_deref(), bytes == picture), (200, Some("image/png"), true));
    let (status, ct, thumb) = fetch(&s, l["thumbnail_url"].as_str().unwrap()).await;
    assert_eq!((status, ct.as_deref()), (200, Some("image/jpeg")));
    let t = image::load_from_memory(&thumb).unwrap();
    assert_eq!((t.width(), t.height()), (256, 192));
    // A stranger gets nothing; a forged or truncated link nothing either.
    assert_eq!(links(&s, "zed", &g, first).await.0, 403);
    let url = l["url"].as_str().unwrap();
    let forged = format!("{}{}", &url[..url.len() - 1], if url.ends_with('0') { '1' } else { '0' });
    assert_eq!(fetch(&s, &forged).await.0, 403);
    assert_eq!(fetch(&s, "/v1/media/nonsense").await.0, 403);

    // A former member keeps what they could read, and only that.
    let mut alice2 = Client::connect(&s, "alice", "d2").await;
    alice2.send(json!({"t":"group_remove","conv":g,"users":["carol"],"ref":"r"})).await;
    alice2.recv_where(|v| v["ref"] == "r").await;
    let again = upload(&s, "bob", "image/png", "same.png", &picture).await;
    assert_eq!(again["id"], media["id"], "the same bytes, uploaded again (a forward), are one object");
    let mut bob = Client::connect(&s, "bob", "d").await;
    bob.send(json!({"t":"send","cmid":"p2","conv":g,"kind":"image","body":"again","media":again})).await;
    let second = seq(&bob.recv_where(|v| v["t"] == "ack").await);
    assert_eq!(links(&s, "carol", &g, first).await.0, 200, "shared while carol was a member");
    assert_eq!(links(&s, "carol", &g, second).await.0, 404, "shared after she left");
    assert_eq!(objects(&s), 2, "the picture and its thumbnail, once each");
    // A message without a file has no links; a deleted one neither.
    alice.send(json!({"t":"send","cmid":"d1","conv":g,"kind":"delete","target":first,"body":""})).await;
    alice.recv_where(|v| v["t"] == "ack" && v["cmid"] == "d1").await;
    assert_eq!(links(&s, "bob", &g, first).await.0, 404);
    assert_eq!(links(&s, "bob", &g, 1).await.0, 404, "the group's creation shares nothing");

    // A file that is not an image: served as an attachment, in chunks, whole.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let doc = upload(&s, "bob", "application/pdf", "report final.pdf", &big).await;
    assert!(doc.get("thumbnail").is_none() && doc.get("width").is_none());
    bob.send(json!({"t":"send","cmid":"f1","conv":g,"kind":"file","body":"the report","media":doc})).await;
    let third = seq(&bob.recv_where(|v| v["t"] == "ack").await);
    let l = links(&s, "alice", &g, third).await.1;
    let r = reqwest::get(format!("http://127.0.0.1:{}{}", s.http, l["url"].as_str().unwrap())).await.unwrap();
    assert_eq!(r.headers()["content-disposition"], "attachment; filename*=UTF-8''report+final.pdf");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(r.bytes().await.unwrap() == big);

    // Over REST: a file message by POST, its kind from the content type.
    let r = reqwest::Client::new()
        .post(s.rest(&format!("/v1/conversations/{g}/files"), "bob"))
        .json(&json!({"cmid":"f2","body":"again, over REST","media":doc}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let fourth = seq(&r.json::<Value>().await.unwrap());
    let (status, l) = links(&s, "alice", &g, fourth).await;
    assert_eq!((status, &l["media"]), (200, &doc));
    let r = reqwest::Client::new()
        .post(s.rest(&format!("/v1/conversations/{g}/files"), "bob"))
        .json(&json!({"cmid":"f3","body":"","media":{"id":"nothex","content_type":"a/b","size":1,"name":"x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // `media` goes with image and file messages only, well formed.
    alice.send(json!({"t":"send","cmid":"x1","conv":g,"body":"hi","media":doc})).await;
    assert_eq!(alice.recv_where(|v| v["t"] == "error").await["code"], "bad_request");
    alice.send(json!({"t":"send","cmid":"x2","conv":g,"kind":"file","body":"hi","media":{"id":"nothex","content_type":"a/b","size":1,"name":"x"}})).await;
    assert_eq!(alice.recv_where(|v| v["t"] == "error").await["code"], "bad_request");
}

#[tokio::test]
async fn bad_uploads_leave_nothing_and_bounds_hold() {
    let s = Server::start(&["--media-bytes-max", "100000", "--media-user-bytes-per-day", "150000"]);
    // Over the per-file bound: refused before a byte is sent.
    assert_eq!(grant(&s, "alice", "application/zip", 100_001, "big.zip").await.0, 413);
    // More bytes than granted, fewer, another content type: refused, nothing stored.
    let (_, g) = grant(&s, "alice", "application/zip", 1000, "a.zip").await;
    let url = g["url"].as_str().unwrap().to_string();
    assert_eq!(put(&s, &url, "application/zip", vec![1; 1001]).await.0, 413);
    assert_eq!(put(&s, &url, "application/zip", vec![1; 999]).await.0, 400);
    assert_eq!(put(&s, &url, "text/html", vec![1; 1000]).await.0, 400);
    // Cut off mid-body: the client says 1000 bytes, sends 100 and goes away.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", s.http)).unwrap();
    write!(raw, "PUT {url} HTTP/1.1\r\nHost: x\r\nContent-Type: application/zip\r\nContent-Length: 1000\r\n\r\n").unwrap();
    raw.write_all(&[7; 100]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(raw);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric_sum(&s, "shardchat_media_refused_total", "incomplete").await < 2.0 {
        assert!(std::time::Instant::now() < deadline, "the cut-off upload was never counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!((objects(&s), unfinished(&s)), (0, 0), "nothing stored, nothing left half-written");
    // A decompression bomb: a PNG declaring 100,000 × 100,000 pixels. Stored as bytes, without
    // dimensions or thumbnail; the engine answers the next request as before.
    let mut bomb = png(2, 2);
    let at = bomb.windows(4).position(|w| w == b"IHDR").unwrap() + 4;
    bomb[at..at + 8].copy_from_slice(&[0, 1, 0x86, 0xa0, 0, 1, 0x86, 0xa0]);
    let m = upload(&s, "alice", "image/png", "bomb.png", &bomb).await;
    assert!(m.get("width").is_none() && m.get("thumbnail").is_none(), "{m}");
    let m = upload(&s, "alice", "image/jpeg", "garbage.jpg", b"not a jpeg at all").await;
    assert!(m.get("thumbnail").is_none(), "{m}");
    assert_eq!(metric_sum(&s, "shardchat_media_thumbnails_total", "failed").await, 2.0);
    // The day's quota: 150,000 bytes; what the uploads above stored counts.
    upload(&s, "alice", "application/zip", "ok.zip", &vec![3; 90_000]).await;
    let (status, e) = grant(&s, "alice", "application/zip", 90_000, "over.zip").await;
    assert_eq!((status, e["code"].as_str()), (429, Some("rate_limited")), "{e}");
    assert_eq!(metric_sum(&s, "shardchat_media_refused_total", "quota").await, 1.0);
    assert_eq!(grant(&s, "bob", "application/zip", 90_000, "bobs.zip").await.0, 200, "another user's day is theirs");
}

#[tokio::test]
async fn links_expire() {
    let s = Server::start(&["--media-url-ttl-s", "1"]);
    let (_, g) = grant(&s, "alice", "text/plain", 5, "a.txt").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, e) = put(&s, g["url"].as_str().unwrap(), "text/plain", b"hello".to_vec()).await;
    assert_eq!((status, e["code"].as_str()), (403, Some("forbidden")), "{e}");
}
