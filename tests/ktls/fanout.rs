//! Pub/sub fan-out when the kernel encrypts: a feed's publications reach every subscriber in
//! order through kTLS, and the records the kernel wrote cover the bytes they carried. The
//! shared frame of each publication goes from the subscriber's queue to the socket without a
//! user-space copy of its own (the kernel encrypts it).

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;
use crate::kernel::*;

const SUBSCRIBERS: usize = 4;
const PUBLICATIONS: u64 = 2000;
/// The most plaintext one TLS record carries.
const RECORD_PLAINTEXT: usize = 16384;

async fn subscriber(srv: &Server, topic: &str) -> Ws {
    let req = format!("wss://{}/md", srv.addr)
        .into_client_request()
        .expect("request");
    let (mut ws, resp) = within(
        WAIT,
        "pub/sub upgrade",
        tokio_tungstenite::client_async_with_config(
            req,
            srv.tls().await,
            Some(unlimited_ws_config()),
        ),
    )
    .await
    .expect("upgrade");
    assert_eq!(resp.status().as_u16(), 101);
    let sub = json!({"op":"subscribe","id":1,"topics":[topic]}).to_string();
    ws.send(Message::text(sub)).await.expect("subscribe");
    let answer = next_json(&mut ws).await;
    assert_eq!(answer["op"], "subscribed", "{answer}");
    ws
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let m = within(WAIT, "a frame", ws.next())
            .await
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).expect("JSON");
        }
    }
}

/// Sizes that put publications inside, across and beyond record boundaries.
fn pad_len(n: u64) -> usize {
    [10, 200, 5000, RECORD_PLAINTEXT + 7][(n % 4) as usize]
}

#[tokio::test]
async fn a_feeds_publications_reach_every_subscriber_in_order_through_the_kernel() {
    if !ktls_kernel_or_skip() {
        return;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("feed listener");
    let port = listener.local_addr().expect("addr").port();
    let topic = "trades.BTC-USD";
    let cfg = format!(
        "{KTLS_REQUIRED}[[pubsub.feeds]]\nurl = \"ws://127.0.0.1:{port}/feed\"\n\
         [[routes]]\nprefix = \"/md\"\npubsub = true\n"
    );
    let srv = ServerBuilder::new().config(&cfg).start();
    // The feed's side answers the edge at once (the edge gives a connect 1 s), while the
    // subscribers connect.
    let feed = tokio::spawn(async move {
        let (tcp, _) = within(WAIT, "the edge connects to its feed", listener.accept())
            .await
            .expect("accept");
        within(WAIT, "feed upgrade", tokio_tungstenite::accept_async(tcp))
            .await
            .expect("feed upgrade")
    });
    let base = OffloadBaseline::take(&srv).await;
    let mut subs = Vec::new();
    for _ in 0..SUBSCRIBERS {
        subs.push(subscriber(&srv, topic).await);
    }
    let mut feed = feed.await.expect("feed side");
    srv.wait_metric("wssedge_pubsub_feed_connects_total", &[], 1.0)
        .await;
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut bytes = 0usize;
                for seq in 1..=PUBLICATIONS {
                    let p = next_json(&mut ws).await;
                    assert_eq!(p["seq"], seq, "in order, none missing: {}", p["topic"]);
                    let pad = p["data"]["pad"].as_str().expect("pad");
                    assert_eq!(pad.len(), pad_len(seq), "the data byte for byte");
                    bytes += pad.len();
                }
                (ws, bytes)
            })
        })
        .collect();
    for n in 1..=PUBLICATIONS {
        let data = json!({"topic": topic, "data": {"n": n, "pad": "q".repeat(pad_len(n))}});
        feed.send(Message::text(data.to_string()))
            .await
            .expect("feed frame");
    }
    let mut total = 0usize;
    let mut open = Vec::new();
    for r in readers {
        let (ws, bytes) = within(std::time::Duration::from_secs(60), "a subscriber", r)
            .await
            .expect("reader");
        total += bytes;
        open.push(ws);
    }
    base.assert_offloaded(&srv, SUBSCRIBERS as u64).await;
    // Every publication went out through the kernel's record layer: at least as many records
    // as the bytes need (the counter is exact for tx).
    srv.wait_metric(
        "wssedge_ktls_records_total",
        &[("direction", "tx")],
        total.div_ceil(RECORD_PLAINTEXT) as f64,
    )
    .await;
    srv.wait_metric(
        "wssedge_pubsub_deliveries_total",
        &[],
        (SUBSCRIBERS as u64 * PUBLICATIONS) as f64,
    )
    .await;
    for mut ws in open {
        within(WAIT, "close", ws.close(None)).await.expect("close");
    }
}
