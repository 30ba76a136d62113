//! Pub/sub over the wire (issue 14): many subscribers on both cores get every publication in
//! order, a reconnecting client recovers what it missed (or is told it cannot), each
//! slow-consumer policy does what it says to a client that stops reading while the others go
//! on, and bad requests get their reason.
//!
//! Clients are tokio-tungstenite over TLS; publishers carry an HS256 token with the `publish`
//! scope (minted here, see `admission_jwt`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

use crate::admission_jwt::{claims, hs, jwt_config, key_files, unique_jti, with, KeyFiles};
use crate::harness::*;

/// `[jwt]` with the test keys, `/md` as a pub/sub route, and `pubsub` / `limits` extras.
pub(crate) fn config(files: &KeyFiles, pubsub: &str, limits: &str) -> String {
    jwt_config(
        files,
        &[],
        &format!(
            "[pubsub]\n{pubsub}\n[limits]\n{limits}\n[[routes]]\nprefix = \"/md\"\npubsub = true\n"
        ),
    )
}

fn token(scope: &str) -> String {
    hs(with(
        claims("md-client", &unique_jti("md")),
        "scope",
        json!(scope),
    ))
}

pub(crate) async fn connect(srv: &Server, scope: &str) -> Ws {
    let mut req = format!("wss://{}/md", srv.addr)
        .into_client_request()
        .expect("request");
    let auth = format!("Bearer {}", token(scope));
    req.headers_mut()
        .insert("authorization", auth.parse().expect("header"));
    let tls = srv.tls().await;
    let (ws, resp) = within(
        WAIT,
        "pub/sub upgrade",
        tokio_tungstenite::client_async_with_config(req, tls, Some(unlimited_ws_config())),
    )
    .await
    .expect("upgrade");
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

pub(crate) async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

/// The next text frame as JSON.
pub(crate) async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let m = within(WAIT, "a pub/sub frame", ws.next())
            .await
            .expect("stream open")
            .expect("frame");
        match m {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON from the edge"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Subscribes to `topics` (with `since` when given) and returns the `subscribed` answer.
pub(crate) async fn subscribe(
    ws: &mut Ws,
    id: u64,
    topics: &[&str],
    since: Option<Value>,
) -> Value {
    let mut req = json!({"op": "subscribe", "id": id, "topics": topics});
    if let Some(since) = since {
        req["since"] = since;
    }
    send(ws, req).await;
    let answer = next_json(ws).await;
    assert_eq!(answer["op"], "subscribed", "{answer}");
    assert_eq!(answer["id"], id, "{answer}");
    answer
}

/// Publishes `data` and returns the seq the edge gave it.
pub(crate) async fn publish(ws: &mut Ws, id: u64, topic: &str, data: Value) -> u64 {
    send(
        ws,
        json!({"op": "publish", "id": id, "topic": topic, "data": data}),
    )
    .await;
    let answer = next_json(ws).await;
    assert_eq!(answer["op"], "published", "{answer}");
    assert_eq!(answer["id"], id);
    answer["seq"].as_u64().expect("seq")
}

fn micros_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as u64
}

/// 1000 publications on two topics to 500 subscribers spread over both cores: every
/// subscriber gets every publication exactly once, each topic's seqs 1, 2, 3… without a gap,
/// and the publisher's `data` byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_publications_reach_five_hundred_subscribers_in_order() {
    const SUBSCRIBERS: usize = 500;
    const PER_TOPIC: u64 = 500;
    let files = key_files();
    let srv = ServerBuilder::new()
        .config(&config(&files, "", ""))
        .cores(2)
        .start();
    let topics = ["trades.BTC-USD", "trades.ETH-USD"];
    let mut subs = Vec::new();
    for chunk in 0..SUBSCRIBERS / 50 {
        let opened = futures_util::future::join_all((0..50).map(|i| {
            let srv = &srv;
            async move {
                let mut ws = connect(srv, "read").await;
                let a = subscribe(&mut ws, (chunk * 50 + i) as u64, &topics, None).await;
                for t in a["topics"].as_array().expect("topics") {
                    assert_eq!(t["seq"], 0, "nothing published yet: {a}");
                    assert_eq!(t["recovered"], false);
                }
                ws
            }
        }))
        .await;
        subs.extend(opened);
    }
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut last: HashMap<String, u64> = HashMap::new();
                for _ in 0..2 * PER_TOPIC {
                    let p = next_json(&mut ws).await;
                    let topic = p["topic"].as_str().expect("topic").to_owned();
                    let seq = p["seq"].as_u64().expect("seq");
                    let prev = last.insert(topic.clone(), seq).unwrap_or(0);
                    assert_eq!(seq, prev + 1, "{topic}: gap or reorder: {p}");
                    assert_eq!(p["data"]["n"], seq, "{p}");
                }
                (ws, last)
            })
        })
        .collect();
    let mut publisher = connect(&srv, "read publish").await;
    let started = Instant::now();
    // Pipelined: the edge answers in order, at most 64 asks out per connection.
    let (mut tx, mut rx) = publisher.split();
    let sender = tokio::spawn(async move {
        for n in 1..=PER_TOPIC {
            for (k, topic) in topics.iter().enumerate() {
                let id = n * 2 + k as u64;
                let req = json!({"op":"publish","id":id,"topic":topic,"data":{"n":n,"pad":"x"}});
                tx.send(Message::text(req.to_string()))
                    .await
                    .expect("publish");
            }
        }
        tx
    });
    for _ in 0..2 * PER_TOPIC {
        let m = within(WAIT, "published", rx.next())
            .await
            .expect("open")
            .expect("frame");
        let v: Value = serde_json::from_str(m.to_text().expect("text")).expect("json");
        assert_eq!(v["op"], "published", "{v}");
    }
    let tx = sender.await.expect("sender");
    publisher = tx.reunite(rx).expect("same stream");
    let mut open = Vec::new();
    for r in readers {
        let (ws, last) = within(Duration::from_secs(60), "a subscriber's 1000", r)
            .await
            .expect("reader");
        open.push(ws);
        assert_eq!(last.len(), 2);
        assert!(last.values().all(|&s| s == PER_TOPIC), "{last:?}");
    }
    let deliveries = 2 * PER_TOPIC as usize * SUBSCRIBERS;
    eprintln!(
        "pubsub fan-out: {deliveries} deliveries in {:?}",
        started.elapsed()
    );
    srv.wait_metric("wssedge_pubsub_deliveries_total", &[], deliveries as f64)
        .await;
    srv.wait_metric("wssedge_pubsub_publications_total", &[], 1000.0)
        .await;
    assert_eq!(srv.metric("wssedge_pubsub_topics", &[]).await, 2.0);
    assert_eq!(
        srv.metric("wssedge_pubsub_subscriptions", &[]).await,
        (2 * SUBSCRIBERS) as f64
    );
    let _ = publisher.close(None).await;
    drop(open);
    // Every subscription is given back when its connection goes.
    within(WAIT, "every subscription given back", async {
        while srv.metric("wssedge_pubsub_subscriptions", &[]).await != 0.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// A client that reconnects with `since` gets the publications it missed in order, then the
/// live ones, none twice.
#[tokio::test]
async fn a_reconnecting_client_recovers_the_gap_then_goes_live() {
    let files = key_files();
    let srv = Server::with_config(&config(&files, "history = 100", ""));
    let topic = "trades.SOL-USD";
    let mut publisher = connect(&srv, "publish").await;
    let mut sub = connect(&srv, "read").await;
    let a = subscribe(&mut sub, 1, &[topic], None).await;
    let epoch = a["topics"][0]["epoch"].as_str().expect("epoch").to_owned();
    for n in 1..=5 {
        assert_eq!(publish(&mut publisher, n, topic, json!({"n": n})).await, n);
    }
    for n in 1..=5 {
        assert_eq!(next_json(&mut sub).await["seq"], n);
    }
    drop(sub);
    for n in 6..=10 {
        publish(&mut publisher, n, topic, json!({"n": n})).await;
    }
    let mut back = connect(&srv, "read").await;
    let since = json!({ topic: {"epoch": epoch, "seq": 5} });
    let a = subscribe(&mut back, 2, &[topic], Some(since)).await;
    assert_eq!(a["topics"][0]["recovered"], true, "{a}");
    assert_eq!(a["topics"][0]["seq"], 10, "{a}");
    assert_eq!(a["topics"][0]["epoch"], epoch.as_str());
    publish(&mut publisher, 11, topic, json!({"n": 11})).await;
    let mut seen = Vec::new();
    for _ in 6..=11 {
        let p = next_json(&mut back).await;
        assert_eq!(p["data"]["n"], p["seq"], "{p}");
        seen.push(p["seq"].as_u64().expect("seq"));
    }
    assert_eq!(
        seen,
        (6..=11).collect::<Vec<u64>>(),
        "the gap, then live, once each"
    );
}

/// `recovered:false` when the history no longer covers the gap, when the epoch is another,
/// and after a restart (a new epoch; the client must resync).
#[tokio::test]
async fn recovery_is_refused_beyond_the_history_and_across_epochs() {
    let files = key_files();
    let cfg = config(&files, "history = 3", "");
    let srv = Server::with_config(&cfg);
    let topic = "book.AAPL";
    let mut publisher = connect(&srv, "publish").await;
    let mut sub = connect(&srv, "read").await;
    let a = subscribe(&mut sub, 1, &[topic], None).await;
    let epoch = a["topics"][0]["epoch"].as_str().expect("epoch").to_owned();
    for n in 1..=10 {
        publish(&mut publisher, n, topic, json!(n)).await;
    }
    let cases = [
        (
            json!({ topic: {"epoch": epoch, "seq": 2} }),
            false,
            "beyond a history of 3",
        ),
        (
            json!({ topic: {"epoch": epoch, "seq": 7} }),
            true,
            "within the history",
        ),
        (
            json!({ topic: {"epoch": "another", "seq": 9} }),
            false,
            "another epoch",
        ),
        (
            json!({ topic: {"epoch": epoch, "seq": 11} }),
            false,
            "a seq never given",
        ),
    ];
    for (i, (since, recovered, why)) in cases.into_iter().enumerate() {
        let mut c = connect(&srv, "read").await;
        let a = subscribe(&mut c, i as u64, &[topic], Some(since)).await;
        assert_eq!(a["topics"][0]["recovered"], recovered, "{why}: {a}");
        assert_eq!(a["topics"][0]["seq"], 10, "{why}: {a}");
        if recovered {
            for seq in 8..=10 {
                assert_eq!(next_json(&mut c).await["seq"], seq, "{why}");
            }
        }
    }
    drop(srv);
    let srv = Server::with_config(&cfg);
    let mut c = connect(&srv, "read").await;
    let since = json!({ topic: {"epoch": epoch, "seq": 10} });
    let a = subscribe(&mut c, 9, &[topic], Some(since)).await;
    assert_eq!(a["topics"][0]["recovered"], false, "{a}");
    assert_ne!(
        a["topics"][0]["epoch"],
        epoch.as_str(),
        "a restart is a new epoch"
    );
}

/// Requests the edge refuses, each with its reason and the request's id; the session stays.
#[tokio::test]
async fn bad_requests_are_refused_with_their_reason() {
    let files = key_files();
    let srv = Server::with_config(&config(
        &files,
        "max_topics_per_connection = 2\nmax_publication_bytes = 1024",
        "",
    ));
    let mut reader = connect(&srv, "read").await;
    send(
        &mut reader,
        json!({"op":"publish","id":1,"topic":"t","data":1}),
    )
    .await;
    let e = next_json(&mut reader).await;
    assert_eq!(e, json!({"op":"error","id":1,"reason":"not_allowed"}));
    reader.send(Message::text("{not json")).await.expect("send");
    assert_eq!(
        next_json(&mut reader).await,
        json!({"op":"error","id":null,"reason":"bad_request"})
    );
    reader
        .send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    assert_eq!(next_json(&mut reader).await["reason"], "bad_request");
    send(
        &mut reader,
        json!({"op":"subscribe","id":4,"topics":["a","b","c"]}),
    )
    .await;
    assert_eq!(
        next_json(&mut reader).await,
        json!({"op":"error","id":4,"reason":"too_many_topics"})
    );
    subscribe(&mut reader, 5, &["a", "b"], None).await;
    send(&mut reader, json!({"op":"subscribe","id":6,"topics":["c"]})).await;
    assert_eq!(next_json(&mut reader).await["reason"], "too_many_topics");
    send(
        &mut reader,
        json!({"op":"subscribe","id":7,"topics":["bad topic"]}),
    )
    .await;
    assert_eq!(next_json(&mut reader).await["reason"], "topic_invalid");
    send(
        &mut reader,
        json!({"op":"unsubscribe","id":8,"topics":["a"]}),
    )
    .await;
    assert_eq!(
        next_json(&mut reader).await,
        json!({"op":"unsubscribed","id":8})
    );
    subscribe(&mut reader, 9, &["c"], None).await;

    let mut publisher = connect(&srv, "publish").await;
    let big = "x".repeat(2000);
    send(
        &mut publisher,
        json!({"op":"publish","id":10,"topic":"c","data":big}),
    )
    .await;
    assert_eq!(
        next_json(&mut publisher).await,
        json!({"op":"error","id":10,"reason":"data_too_large"})
    );
    // Still served: a good publication goes through to the subscriber, byte for byte.
    let raw = r#"{"op":"publish","id":11,"topic":"c","data":{"px":1.50,"q":[1, 2]}}"#;
    publisher.send(Message::text(raw)).await.expect("send");
    assert_eq!(next_json(&mut publisher).await["op"], "published");
    let Message::Text(frame) = within(WAIT, "publication", reader.next())
        .await
        .expect("open")
        .expect("frame")
    else {
        panic!("text expected")
    };
    assert_eq!(
        frame.as_str(),
        r#"{"topic":"c","seq":1,"data":{"px":1.50,"q":[1, 2]}}"#
    );
    for (reason, n) in [
        ("not_allowed", 1.0),
        ("bad_request", 2.0),
        ("too_many_topics", 2.0),
        ("topic_invalid", 1.0),
        ("data_too_large", 1.0),
    ] {
        srv.wait_metric("wssedge_pubsub_refused_total", &[("reason", reason)], n)
            .await;
    }
}

/// One client stops reading under each policy while another reads on: `disconnect` closes
/// the stalled one (1008 slow_consumer), `drop` skips publications for it (the seq gap shows),
/// `conflate` keeps only the newest per topic. The reader misses nothing; queues stay at
/// their cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_slow_policy_bounds_a_client_that_stops_reading() {
    const QUEUE: usize = 8;
    const N: u64 = 1500;
    let files = key_files();
    let srv = Server::with_config(&config(
        &files,
        &format!(
            "queue_messages = {QUEUE}\n[[pubsub.topics]]\nprefix = \"drop.\"\nslow = \"drop\"\n\
             [[pubsub.topics]]\nprefix = \"book.\"\nslow = \"conflate\"\n"
        ),
        "max_outbound_bytes = 16384\nsocket_send_buffer_bytes = 4096",
    ));
    let pad = "p".repeat(8 << 10);
    for (topic, policy) in [
        ("md.ticks", "disconnect"),
        ("drop.ticks", "drop"),
        ("book.ticks", "conflate"),
    ] {
        let mut stalled = connect(&srv, "read").await;
        subscribe(&mut stalled, 1, &[topic], None).await;
        let mut reader = connect(&srv, "read").await;
        subscribe(&mut reader, 1, &[topic], None).await;
        // In lockstep with the reader: each publication once the reader has the one before,
        // so the reader is never behind and only the stalled client falls back.
        let (seen_tx, mut seen) = futures_channel::mpsc::unbounded::<u64>();
        let reading = tokio::spawn(async move {
            let mut lat = Vec::new();
            for seq in 1..=N {
                let p = next_json(&mut reader).await;
                assert_eq!(p["seq"], seq, "the reader misses nothing");
                let sent = p["data"]["t"].as_u64().expect("t");
                lat.push(micros_now().saturating_sub(sent));
                let _ = seen_tx.unbounded_send(seq);
            }
            lat.sort_unstable();
            (reader, lat[lat.len() * 99 / 100])
        });
        let mut publisher = connect(&srv, "publish").await;
        for n in 1..=N {
            let data = json!({"t": micros_now(), "pad": pad});
            assert_eq!(publish(&mut publisher, n, topic, data).await, n);
            let got = within(WAIT, "the reader's copy", seen.next()).await;
            assert_eq!(got, Some(n));
        }
        let (mut reader, p99) = within(Duration::from_secs(60), "the reader", reading)
            .await
            .expect("reader");
        eprintln!("slow policy {policy}: the reading subscriber's p99 {p99} µs");
        let high = srv.metric("wssedge_pubsub_queue_high_water", &[]).await;
        assert!(high <= QUEUE as f64, "queue high water {high} over its cap");
        match policy {
            "disconnect" => {
                srv.wait_metric("wssedge_pubsub_slow_consumer_closes_total", &[], 1.0)
                    .await;
                srv.wait_metric(
                    "wssedge_pubsub_dropped_total",
                    &[("reason", "slow_consumer")],
                    1.0,
                )
                .await;
                // What it reads now ends with our close: 1008 slow_consumer.
                let closed = within(Duration::from_secs(30), "the close", async {
                    while let Some(m) = stalled.next().await {
                        match m {
                            Ok(Message::Close(Some(f))) => return Some(f),
                            Ok(_) => continue,
                            Err(_) => return None,
                        }
                    }
                    None
                })
                .await
                .expect("a close frame");
                assert_eq!(u16::from(closed.code), 1008);
                assert_eq!(closed.reason.as_str(), "slow_consumer");
            }
            _ => {
                let metric = if policy == "drop" {
                    "wssedge_pubsub_dropped_total"
                } else {
                    "wssedge_pubsub_conflated_total"
                };
                let labels: &[(&str, &str)] = if policy == "drop" {
                    &[("reason", "queue_full")]
                } else {
                    &[]
                };
                srv.wait_metric(metric, labels, 1.0).await;
                // It reads again: increasing seqs with gaps. Under `drop` a publication that
                // finds its queue still full is skipped too, so markers are published until
                // one arrives (each one waited for briefly: the queue drains in microseconds
                // once the client reads).
                let (seq_tx, mut seq_rx) = futures_channel::mpsc::unbounded::<u64>();
                let draining = tokio::spawn(async move {
                    loop {
                        let p = next_json(&mut stalled).await;
                        if seq_tx
                            .unbounded_send(p["seq"].as_u64().expect("seq"))
                            .is_err()
                        {
                            return stalled;
                        }
                    }
                });
                let mut seqs = Vec::new();
                let mut first_marker = None;
                let mut marker = N;
                'markers: for _ in 0..50 {
                    marker = publish(&mut publisher, marker + 1, topic, json!({"t":0})).await;
                    first_marker.get_or_insert(marker);
                    while let Ok(Some(seq)) =
                        tokio::time::timeout(Duration::from_millis(200), seq_rx.next()).await
                    {
                        seqs.push(seq);
                        if Some(seq) >= first_marker {
                            break 'markers;
                        }
                    }
                }
                drop(seq_rx);
                draining.abort();
                let first_marker = first_marker.expect("a marker");
                assert!(
                    seqs.last().is_some_and(|&s| s >= first_marker),
                    "{policy}: a marker arrived: {seqs:?}"
                );
                for seq in first_marker..=marker {
                    assert_eq!(
                        next_json(&mut reader).await["seq"],
                        seq,
                        "the reader has the markers"
                    );
                }
                assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{policy}: in order");
                assert!((seqs.len() as u64) < N, "{policy}: some were skipped");
            }
        }
    }
}

/// A feed (`[[pubsub.feeds]]`) is published like a client's publish; when it drops, the edge
/// says so (log, `wssedge_pubsub_feed_up`), reconnects with backoff, and the topic goes on in
/// the same epoch. Frames that are not publications are counted and skipped.
#[tokio::test]
async fn a_feed_that_drops_and_comes_back_is_published_again() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("feed listener");
    let port = listener.local_addr().expect("addr").port();
    let url = format!("ws://127.0.0.1:{port}/feed");
    let files = key_files();
    let srv = Server::with_config(&config(
        &files,
        &format!("[[pubsub.feeds]]\nurl = \"{url}\""),
        "",
    ));
    let topic = "fx.EURUSD";
    let listener = std::sync::Arc::new(listener);
    // The feed's side answers the edge at once (the edge gives a connect 1 s).
    let first = tokio::spawn({
        let listener = listener.clone();
        async move { accept(&listener).await }
    });
    let mut sub = connect(&srv, "read").await;
    let a = subscribe(&mut sub, 1, &[topic], None).await;
    let epoch = a["topics"][0]["epoch"].clone();

    async fn accept(
        listener: &tokio::net::TcpListener,
    ) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
        let (tcp, _) = within(WAIT, "the edge connects to its feed", listener.accept())
            .await
            .expect("accept");
        within(
            WAIT,
            "the feed upgrade",
            tokio_tungstenite::accept_async(tcp),
        )
        .await
        .expect("feed upgrade")
    }

    let mut feed = first.await.expect("the feed's side");
    srv.wait_metric("wssedge_pubsub_feed_up", &[("url", &url)], 1.0)
        .await;
    for n in 1..=3 {
        if n == 2 {
            feed.send(Message::text(r#"{"nope":1}"#))
                .await
                .expect("bad frame");
        }
        let frame = json!({"topic": topic, "data": {"bid": n}}).to_string();
        feed.send(Message::text(frame)).await.expect("feed frame");
    }
    for n in 1..=3u64 {
        let p = next_json(&mut sub).await;
        assert_eq!(
            (p["seq"].as_u64(), p["data"]["bid"].as_u64()),
            (Some(n), Some(n)),
            "{p}"
        );
    }
    srv.wait_metric(
        "wssedge_pubsub_feed_bad_frames_total",
        &[("url", &url)],
        1.0,
    )
    .await;

    drop(feed);
    let mut feed = accept(&listener).await;
    srv.wait_metric("wssedge_pubsub_feed_connects_total", &[("url", &url)], 2.0)
        .await;
    assert!(
        srv.proc.stderr().contains("pub/sub feed down"),
        "the drop is logged: {}",
        srv.proc.stderr()
    );
    for n in 4..=5 {
        let frame = json!({"topic": topic, "data": {"bid": n}}).to_string();
        feed.send(Message::text(frame)).await.expect("feed frame");
    }
    for n in 4..=5u64 {
        let p = next_json(&mut sub).await;
        assert_eq!(p["seq"].as_u64(), Some(n), "the topic goes on: {p}");
    }
    // A reconnecting client in the same epoch recovers the feed's publications.
    let mut late = connect(&srv, "read").await;
    let since = json!({ topic: {"epoch": epoch, "seq": 3} });
    let a = subscribe(&mut late, 2, &[topic], Some(since)).await;
    assert_eq!(a["topics"][0]["recovered"], true, "{a}");
    for n in 4..=5u64 {
        assert_eq!(next_json(&mut late).await["seq"].as_u64(), Some(n));
    }
    assert_eq!(
        srv.metric("wssedge_pubsub_feed_publications_total", &[("url", &url)])
            .await,
        5.0
    );
}

/// A burst far larger than the outbound cap, then silence: what the pumps had no room for is
/// still delivered once the socket takes the rest, down to the last publication (no later
/// arrival is needed to wake the connection).
#[tokio::test]
async fn a_burst_beyond_the_outbound_cap_is_delivered_to_its_last_publication() {
    const N: u64 = 300;
    let files = key_files();
    let srv = Server::with_config(&config(&files, "", "max_outbound_bytes = 16384"));
    let topic = "md.burst";
    let mut sub = connect(&srv, "read").await;
    subscribe(&mut sub, 1, &[topic], None).await;
    let mut publisher = connect(&srv, "publish").await;
    let (mut tx, mut rx) = publisher.split();
    let pad = "b".repeat(8 << 10);
    let sending = tokio::spawn(async move {
        for n in 1..=N {
            let req = json!({"op":"publish","id":n,"topic":topic,"data":{"n":n,"pad":pad}});
            tx.send(Message::text(req.to_string()))
                .await
                .expect("publish");
        }
        tx
    });
    for _ in 0..N {
        within(WAIT, "published", rx.next())
            .await
            .expect("open")
            .expect("frame");
    }
    publisher = sending.await.expect("sender").reunite(rx).expect("same");
    for seq in 1..=N {
        let p = next_json(&mut sub).await;
        assert_eq!(p["seq"], seq, "in order up to the last one");
    }
    let _ = publisher.close(None).await;
}

/// Hostile timing: a client lets hundreds of publications queue up, then unsubscribes from
/// that topic. What it no longer wants is skipped without a write, and the queue behind it
/// (another topic's publications) still reaches it, to the last one.
#[tokio::test]
async fn an_unsubscribe_behind_a_full_queue_does_not_hold_up_the_other_topics() {
    const QUEUED: u64 = 600;
    const AFTER: u64 = 5;
    let files = key_files();
    let srv = Server::with_config(&config(&files, "", "max_outbound_bytes = 16384"));
    let (gone, kept) = ("md.gone", "md.kept");
    let mut sub = connect(&srv, "read").await;
    subscribe(&mut sub, 1, &[gone, kept], None).await;
    let mut publisher = connect(&srv, "publish").await;
    let pad = "g".repeat(8 << 10);
    for n in 1..=QUEUED {
        publish(&mut publisher, n, gone, json!({"pad": pad})).await;
    }
    // Not read yet: the edge holds the rest in the subscriber's queue.
    send(&mut sub, json!({"op":"unsubscribe","id":2,"topics":[gone]})).await;
    let (done_tx, mut done) = futures_channel::mpsc::unbounded::<()>();
    let reader = tokio::spawn(async move {
        let mut kept_seqs = Vec::new();
        let mut unsubscribed = false;
        while kept_seqs.len() < AFTER as usize {
            let p = next_json(&mut sub).await;
            if p["op"] == "unsubscribed" {
                unsubscribed = true;
                let _ = done_tx.unbounded_send(());
            } else if p["topic"] == kept {
                assert!(
                    unsubscribed,
                    "kept publications come after the unsubscribe: {p}"
                );
                kept_seqs.push(p["seq"].as_u64().expect("seq"));
            } else {
                assert_eq!(p["topic"], gone, "{p}");
                assert!(
                    !unsubscribed,
                    "nothing of a topic after its unsubscribed: {p}"
                );
            }
        }
        kept_seqs
    });
    within(WAIT, "the unsubscribe answered", done.next()).await;
    for n in 1..=AFTER {
        publish(&mut publisher, QUEUED + n, kept, json!(n)).await;
    }
    let kept_seqs = within(WAIT, "the kept topic's publications", reader)
        .await
        .expect("reader");
    assert_eq!(kept_seqs, (1..=AFTER).collect::<Vec<u64>>());
}
