//! Media end to end: an upload URL, the PUT, a message sharing the file, download links for
//! members only (a former member for what they could read), thumbnails, bounds, and what bad
//! uploads (too long, short, cut off, forged, expired, over the day's quota, a decompression
//! bomb) leave: nothing, and an engine that goes on.

use crate::common::s3::{S3Server, S3_ACCESS_KEY, S3_SECRET_KEY};
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

/// The flags that put an engine's media in `s3`.
/// `x-amz-checksum-sha256` of `bytes`.
fn checksum_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    use sha2::Digest;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(bytes))
}

fn s3_flags(s3: &S3Server) -> Vec<String> {
    ["--media-s3", &s3.url(), "--media-s3-access-key", S3_ACCESS_KEY, "--media-s3-secret-key", S3_SECRET_KEY].map(String::from).to_vec()
}

/// Asks for an upload URL naming the bytes' SHA-256.
async fn grant_named(s: &Server, user: &str, ct: &str, bytes: &[u8], name: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(s.rest("/v1/uploads", user))
        .json(&json!({"content_type":ct,"size":bytes.len(),"name":name,"sha256":sha256(bytes)}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

/// PUTs `bytes` where grant `g` says, with the headers it names, optionally one of them changed.
async fn put_granted(g: &Value, bytes: Vec<u8>, change: Option<(&str, &str)>) -> u16 {
    let mut req = reqwest::Client::new().put(g["url"].as_str().unwrap()).body(bytes);
    for (k, v) in g["headers"].as_object().unwrap() {
        let v = match change {
            Some((name, to)) if name == k => to.to_string(),
            _ => v.as_str().unwrap().to_string(),
        };
        req = req.header(k.as_str(), v);
    }
    req.send().await.unwrap().status().as_u16()
}

async fn complete(s: &Server, g: &Value) -> (u16, Value) {
    let url = format!("http://127.0.0.1:{}{}", s.http, g["complete_url"].as_str().expect("a complete_url"));
    let r = reqwest::Client::new().post(url).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

#[tokio::test]
async fn with_an_s3_store_clients_move_the_bytes_by_its_signed_urls_and_the_engine_checks_them() {
    let Some(s3) = S3Server::start() else { return };
    let flags = s3_flags(&s3);
    let s = Server::start(&flags.iter().map(String::as_str).collect::<Vec<_>>());
    let mut alice = Client::connect(&s, "alice", "d").await;
    alice.send(json!({"t":"group_create","name":"pics","members":["bob"],"ref":"g"})).await;
    let g = alice.recv_where(|v| v["t"] == "group").await["conv"].as_str().unwrap().to_string();
    let picture = png(800, 600);

    // S3 needs the name of the bytes up front; the engine's own PUT path is not there.
    assert_eq!(grant(&s, "alice", "image/png", picture.len(), "a.png").await.0, 400);
    let (status, up) = grant_named(&s, "alice", "image/png", &picture, "sunset.png").await;
    assert_eq!(status, 200, "{up}");
    let url = up["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{}/objects/{}?", s3.url(), sha256(&picture))), "the object store's own URL: {url}");
    assert_eq!(put(&s, &format!("/v1/uploads/{}", url.rsplit('/').next().unwrap()), "image/png", vec![1]).await.0, 403);
    assert_eq!(complete(&s, &up).await.0, 404, "nothing uploaded yet");

    // What the URL signs holds: another type or size is refused by the store itself.
    assert_eq!(put_granted(&up, picture.clone(), Some(("content-type", "text/html"))).await, 403);
    assert_eq!(put_granted(&up, picture[..picture.len() - 1].to_vec(), None).await, 403);
    assert_eq!(s3.objects(), 0);
    assert_eq!(put_granted(&up, picture.clone(), None).await, 200);
    let (status, media) = complete(&s, &up).await;
    assert_eq!(status, 200, "{media}");
    assert_eq!(
        (media["id"].as_str(), media["width"].as_u64(), media["height"].as_u64()),
        (Some(sha256(&picture).as_str()), Some(800), Some(600))
    );
    assert!(media["thumbnail"].is_string(), "{media}");
    assert_eq!(s3.objects(), 2, "the picture and its thumbnail, in the object store");

    // Shared, then downloaded by a member from the object store directly; a stranger gets no link.
    alice.send(json!({"t":"send","cmid":"p1","conv":g,"kind":"image","body":"look","media":media})).await;
    let first = seq(&alice.recv_where(|v| v["t"] == "ack").await);
    let (status, l) = links(&s, "bob", &g, first).await;
    assert_eq!(status, 200, "{l}");
    assert_eq!(links(&s, "zed", &g, first).await.0, 403);
    let get = |url: String| async move {
        let r = reqwest::get(url).await.unwrap();
        let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
        (r.status().as_u16(), ct, r.bytes().await.unwrap().to_vec())
    };
    let file_url = l["url"].as_str().unwrap().to_string();
    assert!(file_url.starts_with(&s3.url()), "{file_url}");
    let (status, ct, bytes) = get(file_url.clone()).await;
    assert_eq!((status, ct.as_deref(), bytes == picture), (200, Some("image/png"), true));
    let (status, ct, thumb) = get(l["thumbnail_url"].as_str().unwrap().to_string()).await;
    assert_eq!((status, ct.as_deref()), (200, Some("image/jpeg")));
    assert_eq!(image::load_from_memory(&thumb).unwrap().width(), 256);
    // A link changed by its holder (another object, or a forged signature) is the store's 403.
    let other = file_url.replace(&sha256(&picture), &"00".repeat(32));
    assert_eq!(get(other).await.0, 403);
    let sig = file_url.rfind("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let flipped = format!("{}{}{}", &file_url[..sig], if &file_url[sig..sig + 1] == "0" { "1" } else { "0" }, &file_url[sig + 1..]);
    assert_eq!(get(flipped).await.0, 403);

    // Other bytes under a name: the store itself refuses them against the signed checksum.
    let named = b"the bytes the grant names".to_vec();
    let mut other = named.clone();
    other[0] ^= 1;
    let (_, up) = grant_named(&s, "alice", "application/octet-stream", &named, "n.bin").await;
    assert_eq!(put_granted(&up, other.clone(), None).await, 400, "BadDigest");
    assert_eq!(put_granted(&up, named.clone(), Some(("x-amz-checksum-sha256", &checksum_of(&other)))).await, 403, "the checksum is signed");
    // A store that took them anyway (one that verifies no checksum, or bytes changed behind its
    // back): the engine finds them out at completion, removes them and answers 400.
    let impostor = s3.dir.path().join("media/objects").join(sha256(&named));
    std::fs::write(&impostor, &other).unwrap();
    let (status, e) = complete(&s, &up).await;
    assert_eq!((status, e["code"].as_str()), (400, Some("bad_request")), "{e}");
    assert!(!impostor.exists(), "the impostor is gone");
    assert_eq!(metric_sum(&s, "shardchat_media_refused_total", "why=\"mismatched\"").await, 1.0);
    assert_eq!(put_granted(&up, named.clone(), None).await, 200);
    let (status, m) = complete(&s, &up).await;
    assert_eq!((status, m["id"].as_str(), m["thumbnail"].is_null()), (200, Some(sha256(&named).as_str()), true), "{m}");
    assert_eq!(s3.objects(), 3);

    // A second engine on the same store, with short-lived URLs and a small daily quota: the
    // store refuses an expired URL; S3 uploads count against the quota when granted.
    let mut short = flags.clone();
    short.extend(["--media-url-ttl-s", "1", "--media-user-bytes-per-day", "100"].map(String::from));
    let s2 = Server::start(&short.iter().map(String::as_str).collect::<Vec<_>>());
    let (status, up) = grant_named(&s2, "carol", "text/plain", &[b'x'; 60], "x.txt").await;
    assert_eq!(status, 200, "{up}");
    assert_eq!(grant_named(&s2, "carol", "text/plain", &[b'y'; 60], "y.txt").await.0, 429, "60 + 60 bytes granted > 100");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(put_granted(&up, vec![b'x'; 60], None).await, 403, "expired");
    assert_eq!(complete(&s2, &up).await.0, 403, "the completion link expired too");
}

#[tokio::test]
async fn on_the_embedded_store_an_upload_that_names_its_sha256_takes_only_those_bytes_and_completes() {
    let s = Server::start(&[]);
    let named = b"the bytes named up front".to_vec();
    let (status, up) = grant_named(&s, "alice", "text/plain", &named, "a.txt").await;
    assert_eq!(status, 200, "{up}");
    assert_eq!(up["headers"]["content-type"], "text/plain");
    assert_eq!(complete(&s, &up).await.0, 404, "nothing uploaded yet");
    let mut other = named.clone();
    other[3] ^= 1;
    let (status, e) = put(&s, up["url"].as_str().unwrap(), "text/plain", other).await;
    assert_eq!((status, e["code"].as_str()), (400, Some("bad_request")), "{e}");
    assert_eq!((objects(&s), unfinished(&s)), (0, 0), "other bytes leave nothing");
    assert_eq!(metric_sum(&s, "shardchat_media_refused_total", "why=\"mismatched\"").await, 1.0);
    let (status, media) = put(&s, up["url"].as_str().unwrap(), "text/plain", named.clone()).await;
    assert_eq!((status, media["id"].as_str()), (200, Some(sha256(&named).as_str())), "{media}");
    let (status, completed) = complete(&s, &up).await;
    assert_eq!((status, &completed), (200, &media), "completing answers the same media object");
    // Without a name there is nothing to complete; a malformed name is refused.
    let (_, plain) = grant(&s, "alice", "text/plain", 3, "b.txt").await;
    assert!(plain["complete_url"].is_null(), "{plain}");
    let r = reqwest::Client::new()
        .post(s.rest("/v1/uploads", "alice"))
        .json(&json!({"content_type":"text/plain","size":3,"name":"c.txt","sha256":"ABC"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}
