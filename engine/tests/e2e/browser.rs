//! The browser client (`GET /`) in headless Chromium, driven over WebDriver: two browser
//! sessions as two users exchange a message and see the receipt. `.ci/run` installs Debian's
//! `chromium` and `chromium-driver`; without them the test is skipped locally and fails in CI.

use crate::common::*;
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn browser(port: u16, profile: &std::path::Path) -> Browser {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     format!("--user-data-dir={}", profile.display())]
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector).capabilities(caps).connect(&format!("http://127.0.0.1:{port}")).await.expect("WebDriver session")
}

/// Waits until the element's text satisfies `pred`.
async fn wait_text(b: &Browser, css: &str, pred: impl Fn(&str) -> bool, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        seen.clear();
        if let Ok(els) = b.find_all(Locator::Css(css)).await {
            for e in els {
                if let Ok(t) = e.text().await {
                    if pred(&t) {
                        return t;
                    }
                    seen.push(t);
                }
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what} ({css}); it shows {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn log_in(b: &Browser, http: u16, user: &str) {
    b.goto(&format!("http://127.0.0.1:{http}/")).await.unwrap();
    let field = b.find(Locator::Id("user")).await.unwrap();
    // A page that was logged in before fills the field itself.
    field.clear().await.unwrap();
    field.send_keys(user).await.unwrap();
    b.find(Locator::Id("connect")).await.unwrap().click().await.unwrap();
    wait_text(b, "#status", |t| t == format!("online as {user}"), "login").await;
}

/// Keeps what the page looks like now as `target/browser-screenshots/<name>.png` (CI artifacts
/// for a person to look at; nothing compares them).
async fn screenshot(b: &Browser, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), b.screenshot().await.unwrap()).unwrap();
}

/// A number the page's script computes.
async fn eval_u64(b: &Browser, js: &str) -> u64 {
    b.execute(js, vec![]).await.unwrap().as_u64().unwrap_or_else(|| panic!("{js} is not a number"))
}

/// Waits until the script's number is `want`.
async fn wait_eval(b: &Browser, js: &str, want: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while eval_u64(b, js).await != want {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many of the log's lines contain `text`.
async fn lines_with(b: &Browser, text: &str) -> u64 {
    let js = format!("return [...document.querySelectorAll('#log .msg')].filter(d => d.textContent.includes({text:?})).length");
    eval_u64(b, &js).await
}

/// Clicks button `act` (reply, like, edit, delete) on the line that shows `text`.
async fn act(b: &Browser, text: &str, act: &str) {
    let js = format!(
        "const d = [...document.querySelectorAll('#log .msg')].find(d => d.textContent.includes({text:?})); \
         const b = d && d.querySelector('button[data-act={act}]'); if (b) b.click(); return b ? 1 : 0"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while eval_u64(b, &js).await != 1 {
        assert!(Instant::now() < deadline, "no {act} button on the line with {text:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn two_browsers_chat_and_see_the_read_receipt() {
    if !std::path::Path::new(CHROMEDRIVER).exists() || !std::path::Path::new(CHROMIUM).exists() {
        skip(&format!("{CHROMIUM} or {CHROMEDRIVER} not installed (.ci/run installs chromium and chromium-driver)"));
        return;
    }
    let mut s = Server::start(&[]);
    let port = free_port();
    let _driver = Driver(
        Command::new(CHROMEDRIVER).arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("chromedriver"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let profiles = tempfile::tempdir().unwrap();
    let alice = browser(port, &profiles.path().join("a")).await;
    let bob = browser(port, &profiles.path().join("b")).await;

    // Enter logs in.
    alice.goto(&format!("http://127.0.0.1:{}/", s.http)).await.unwrap();
    alice.find(Locator::Id("user")).await.unwrap().send_keys("alice\u{E007}").await.unwrap();
    wait_text(&alice, "#status", |t| t == "online as alice", "login with Enter").await;
    // The page asks for a favicon it has (no 404 in the console).
    assert_eq!(eval_u64(&alice, "return document.querySelectorAll('link[rel=icon]').length").await, 1);
    alice.find(Locator::Id("to")).await.unwrap().send_keys("bob").await.unwrap();
    alice.find(Locator::Id("start")).await.unwrap().click().await.unwrap();
    // A chat nobody has written in yet is empty, not an error.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(alice.find(Locator::Id("status")).await.unwrap().text().await.unwrap(), "online as alice");
    alice.find(Locator::Id("text")).await.unwrap().send_keys("hello from a browser").await.unwrap();
    alice.find(Locator::Id("send")).await.unwrap().click().await.unwrap();
    // Sent: stored and acknowledged.
    wait_text(&alice, ".msg.mine .state", |t| t == "✓" || t == "✓✓" || t == "read", "the ack").await;

    log_in(&bob, s.http, "bob").await;
    // Logging in again replaces the first socket: messages come once.
    log_in(&bob, s.http, "bob").await;
    bob.find(Locator::Id("user")).await.unwrap().send_keys("\u{E007}").await.unwrap();
    wait_text(&bob, "#status", |t| t == "online as bob", "the second login").await;
    // Bob's list shows the conversation with an unread count, and so does the tab's title;
    // opening it shows the message.
    wait_text(&bob, "#convs li", |t| t.contains("alice") && t.contains('1'), "the conversation with its unread count").await;
    assert_eq!(bob.title().await.unwrap(), "(1) shardchat");
    bob.find(Locator::Css("#convs li")).await.unwrap().click().await.unwrap();
    wait_text(&bob, "#log .msg", |t| t.ends_with("alice: hello from a browser"), "the message").await;
    // Opening it read it: alice's page shows the read receipt.
    wait_text(&alice, ".msg.mine .state", |t| t == "read", "the read receipt").await;
    // A reload keeps the login and, once the chat is open again, the read state.
    alice.refresh().await.unwrap();
    wait_text(&alice, "#status", |t| t == "online as alice", "still logged in after a reload").await;
    wait_text(&alice, "#convs li", |t| t.contains("bob") && t.contains("hello from a browser"), "the list with its preview").await;
    alice.find(Locator::Css("#convs li")).await.unwrap().click().await.unwrap();
    wait_text(&alice, ".msg.mine .state", |t| t == "read", "the read state after a reload").await;

    // And a reply comes back live.
    bob.find(Locator::Id("text")).await.unwrap().send_keys("hi alice").await.unwrap();
    bob.find(Locator::Id("send")).await.unwrap().click().await.unwrap();
    wait_text(&alice, "#log .msg", |t| t.ends_with("bob: hi alice"), "the reply").await;
    assert_eq!(lines_with(&alice, "bob: hi alice").await, 1, "the reply shows once");
    // Opened, the chat carries no unread badge and the title no count.
    wait_eval(&bob, "return document.querySelectorAll('#convs .unread').length", 0, "the badge cleared").await;
    assert_eq!(bob.title().await.unwrap(), "shardchat");

    // Replies, edits, reactions and deletes from the lines' buttons, seen live on the other page.
    act(&bob, "hello from a browser", "reply").await;
    bob.find(Locator::Id("text")).await.unwrap().send_keys("answering you\u{E007}").await.unwrap();
    wait_text(
        &alice,
        "#log .msg",
        |t| t.contains("↪ alice: hello from a browser") && t.contains("bob: answering you"),
        "the reply with its quote",
    )
    .await;
    act(&alice, "hello from a browser", "edit").await;
    let text = alice.find(Locator::Id("text")).await.unwrap();
    assert_eq!(text.prop("value").await.unwrap().as_deref(), Some("hello from a browser"), "the text to edit is in the box");
    text.clear().await.unwrap();
    text.send_keys("hello, edited\u{E007}").await.unwrap();
    wait_text(&bob, "#log .msg", |t| t.contains("alice: hello, edited") && t.contains("(edited)"), "the edit").await;
    act(&bob, "hello, edited", "like").await;
    wait_text(&alice, "#log .msg .reacts", |t| t == "👍 bob", "the reaction").await;
    act(&alice, "hello, edited", "delete").await;
    wait_text(&bob, "#log .msg", |t| t.contains("alice: message deleted"), "the tombstone").await;
    assert_eq!(lines_with(&bob, "hello, edited").await, 0, "the text is gone from bob's page");
    // A page opened now gets the same from history: the tombstone, the reply's mark.
    bob.refresh().await.unwrap();
    wait_text(&bob, "#status", |t| t == "online as bob", "bob back after a reload").await;
    wait_text(&bob, "#convs li", |t| t.contains("alice"), "the list after a reload").await;
    bob.find(Locator::Css("#convs li")).await.unwrap().click().await.unwrap();
    wait_text(&bob, "#log .msg", |t| t.contains("alice: message deleted"), "the tombstone from history").await;
    wait_text(&bob, "#log .msg", |t| t.contains("↪") && t.contains("bob: answering you"), "the reply from history").await;
    screenshot(&bob, "chat-revisions").await;

    // A picture attached on alice's page: uploaded, shared, shown to bob as its thumbnail.
    let picture = profiles.path().join("dot.png");
    let img = image::RgbImage::from_fn(600, 300, |x, _| image::Rgb([(x % 256) as u8, 90, 200]));
    img.save(&picture).unwrap();
    // The chooser is hidden behind the 📎 button; WebDriver types the path into the input itself.
    alice.execute("document.getElementById('file').hidden = false; return 0", vec![]).await.unwrap();
    alice.find(Locator::Id("text")).await.unwrap().send_keys("a picture").await.unwrap();
    alice.find(Locator::Id("file")).await.unwrap().send_keys(picture.to_str().unwrap()).await.unwrap();
    alice.execute("document.getElementById('file').hidden = true; return 0", vec![]).await.unwrap();
    wait_text(&bob, "#log .msg", |t| t.contains("alice: a picture") && t.contains("📎 dot.png"), "the shared picture").await;
    wait_eval(
        &bob,
        "return [...document.querySelectorAll('#log .msg .media img')].filter(i => i.complete && i.naturalWidth === 256).length",
        1,
        "its thumbnail shown",
    )
    .await;
    screenshot(&bob, "chat-media").await;

    // One long word wraps: the page never gets wider than the window.
    bob.find(Locator::Id("text")).await.unwrap().send_keys(&format!("{}\u{E007}", "w".repeat(400))).await.unwrap();
    wait_text(&alice, "#log .msg", |t| t.contains("wwwwwwwwww"), "the long word").await;
    let (scroll, inner) =
        (eval_u64(&alice, "return document.documentElement.scrollWidth").await, eval_u64(&alice, "return window.innerWidth").await);
    assert!(scroll <= inner, "the page is {scroll} px wide in a {inner} px window");
    screenshot(&alice, "chat-desktop").await;
    // A phone's width: the list above the chat, nothing wider than the screen, the composer on it.
    bob.set_window_size(390, 844).await.unwrap();
    let (scroll, inner) =
        (eval_u64(&bob, "return document.documentElement.scrollWidth").await, eval_u64(&bob, "return window.innerWidth").await);
    assert!(scroll <= inner, "at phone width the page is {scroll} px wide in a {inner} px window");
    let composer_right = eval_u64(&bob, "return Math.ceil(document.getElementById('send').getBoundingClientRect().right)").await;
    assert!(composer_right <= inner, "the send button ends at {composer_right} px, off a {inner} px screen");
    screenshot(&bob, "chat-phone").await;

    // The engine restarts under the pages: a message sent while it is down is stored once it is
    // back (the page reconnects and sends it again with its cmid), and reaches bob once.
    s.kill();
    wait_text(&alice, "#status", |t| t.starts_with("offline"), "the page noticing").await;
    alice.find(Locator::Id("text")).await.unwrap().send_keys("sent while down\u{E007}").await.unwrap();
    s.restart();
    wait_text(&alice, "#status", |t| t == "online as alice", "the page reconnecting").await;
    wait_text(&alice, "#log .msg:last-child .state", |t| t == "✓" || t == "✓✓" || t == "read", "the ack after the restart").await;
    wait_text(&bob, "#log .msg", |t| t.ends_with("alice: sent while down"), "the message sent while down").await;
    assert_eq!(lines_with(&bob, "sent while down").await, 1, "delivered once");

    // A page closed while its message waits for the engine: the message is in the library's
    // outbox in localStorage, and the page opened again once the engine is back sends it.
    s.kill();
    wait_text(&alice, "#status", |t| t.starts_with("offline"), "the page noticing again").await;
    alice.find(Locator::Id("text")).await.unwrap().send_keys("sent before closing\u{E007}").await.unwrap();
    let outbox = "return Object.keys(localStorage).filter((k) => k.endsWith('/outbox')).length";
    wait_eval(&alice, outbox, 1, "the send kept in localStorage").await;
    alice.goto("about:blank").await.unwrap();
    s.restart();
    alice.goto(&format!("http://127.0.0.1:{}/", s.http)).await.unwrap();
    wait_text(&alice, "#status", |t| t == "online as alice", "logged in again on opening").await;
    wait_text(&bob, "#log .msg", |t| t.ends_with("alice: sent before closing"), "the message the closed page left").await;
    wait_eval(&alice, outbox, 0, "the outbox emptied by the ack").await;
    assert_eq!(lines_with(&bob, "sent before closing").await, 1, "delivered once");

    // Groups from the page: create one with bob, who sees it and its first line in words;
    // rename it from the group's tools.
    alice.find(Locator::Id("gname")).await.unwrap().send_keys("team").await.unwrap();
    alice.find(Locator::Id("gmembers")).await.unwrap().send_keys("bob").await.unwrap();
    alice.find(Locator::Id("gcreate")).await.unwrap().click().await.unwrap();
    wait_text(&alice, "#title", |t| t == "team", "the new group open").await;
    wait_text(&alice, "#gmembers-list", |t| t == "alice (admin), bob", "the members").await;
    wait_text(&bob, "#convs li", |t| t.contains("team") && t.contains("alice created the group “team” with bob"), "the group at bob's")
        .await;
    alice.execute("window.prompt = () => 'crew'; return 0", vec![]).await.unwrap();
    alice.find(Locator::Id("grename")).await.unwrap().click().await.unwrap();
    wait_text(&bob, "#convs li", |t| t.contains("crew"), "the renamed group at bob's").await;

    // Logging out forgets the login: a reload stays out.
    bob.find(Locator::Id("logout")).await.unwrap().click().await.unwrap();
    wait_text(&bob, "#status", |t| t == "logged out", "the logout").await;
    bob.refresh().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(bob.find(Locator::Id("status")).await.unwrap().text().await.unwrap(), "offline");

    alice.close().await.unwrap();
    bob.close().await.unwrap();
}
