//! A fleet of edges on one real `redis-server` (issue 15): a publication accepted on any node
//! is sequenced once in Redis and delivered on every node with the same seq and epoch; a client
//! recovers on one node the gap that began on another; a node reports whether it reaches Redis
//! and connects once Redis is there.

use serde_json::{json, Value};

use crate::admission_jwt::{key_files, KeyFiles};
use crate::harness::*;
use crate::pubsub::{config, connect, next_json, publish, subscribe};

/// A node of the fleet on `redis`, named `node`, with two cores.
fn node(files: &KeyFiles, redis: &RedisServer, node: &str, pubsub: &str) -> Server {
    let cfg = format!(
        "{}\n[fleet]\nredis = \"{}\"\nnode = \"{node}\"\n",
        config(files, pubsub, ""),
        redis.url()
    );
    ServerBuilder::new().config(&cfg).cores(2).start()
}

/// Waits until the node says it reaches Redis.
async fn wait_fleet_up(srv: &Server) {
    srv.wait_metric("wssedge_fleet_up", &[], 1.0).await;
}

fn epoch_of(answer: &Value) -> String {
    answer["topics"][0]["epoch"]
        .as_str()
        .expect("epoch")
        .to_owned()
}

/// Publish on A; subscribers on A, B and C (both cores each) get every publication in order,
/// with the same seqs and the same epoch, the publisher's data byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_on_one_node_reaches_every_node_with_one_seq_and_epoch() {
    const N: u64 = 300;
    let redis = RedisServer::start();
    let files = key_files();
    let nodes: Vec<Server> = ["a", "b", "c"]
        .iter()
        .map(|n| node(&files, &redis, n, "history = 100"))
        .collect();
    for n in &nodes {
        wait_fleet_up(n).await;
    }
    let topic = "trades.BTC-USD";
    let mut subs = Vec::new();
    let mut epochs = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for j in 0..4 {
            let mut ws = connect(n, "read").await;
            let a = subscribe(&mut ws, (i * 10 + j) as u64, &[topic], None).await;
            assert_eq!(a["topics"][0]["seq"], 0, "a new topic: {a}");
            epochs.push(epoch_of(&a));
            subs.push(ws);
        }
    }
    assert!(
        epochs.windows(2).all(|w| w[0] == w[1]),
        "one epoch fleet-wide: {epochs:?}"
    );
    let mut publisher = connect(&nodes[0], "publish").await;
    for n in 1..=N {
        let seq = publish(
            &mut publisher,
            n,
            topic,
            json!({"n": n, "pad": "x".repeat(n as usize % 7)}),
        )
        .await;
        assert_eq!(seq, n, "Redis sequences 1, 2, 3…");
    }
    for (k, ws) in subs.iter_mut().enumerate() {
        for n in 1..=N {
            let p = next_json(ws).await;
            assert_eq!(p["topic"], topic);
            assert_eq!(p["seq"], n, "subscriber {k}: {p}");
            assert_eq!(
                p["data"],
                json!({"n": n, "pad": "x".repeat(n as usize % 7)})
            );
        }
    }
    for n in &nodes {
        let received = n
            .wait_metric("wssedge_fleet_received_total", &[], N as f64)
            .await;
        assert_eq!(
            received, N as f64,
            "each node received each publication once"
        );
    }
    assert_eq!(
        nodes[0].metric("wssedge_fleet_published_total", &[]).await,
        N as f64
    );
}

/// A subscriber on A sees seqs 1..=5 and leaves; 5 more are published on A; it comes back on
/// B with `since`: the gap (6..=10) is replayed from the fleet's history, then a publication
/// made on C arrives live; nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_that_began_on_one_node_is_recovered_on_another() {
    let redis = RedisServer::start();
    let files = key_files();
    let a = node(&files, &redis, "a", "history = 100");
    let b = node(&files, &redis, "b", "history = 100");
    let c = node(&files, &redis, "c", "history = 100");
    for n in [&a, &b, &c] {
        wait_fleet_up(n).await;
    }
    let topic = "trades.SOL-USD";
    let mut publisher = connect(&a, "publish").await;
    let mut sub = connect(&a, "read").await;
    let answer = subscribe(&mut sub, 1, &[topic], None).await;
    let epoch = epoch_of(&answer);
    for n in 1..=5 {
        publish(&mut publisher, n, topic, json!({"n": n})).await;
        assert_eq!(next_json(&mut sub).await["seq"], n);
    }
    drop(sub);
    for n in 6..=10 {
        publish(&mut publisher, n, topic, json!({"n": n})).await;
    }
    let mut back = connect(&b, "read").await;
    let since = json!({ topic: {"epoch": epoch, "seq": 5} });
    let answer = subscribe(&mut back, 2, &[topic], Some(since)).await;
    assert_eq!(answer["topics"][0]["recovered"], true, "{answer}");
    assert_eq!(answer["topics"][0]["seq"], 10, "{answer}");
    assert_eq!(epoch_of(&answer), epoch, "the same epoch on B");
    let mut elsewhere = connect(&c, "publish").await;
    assert_eq!(
        publish(&mut elsewhere, 11, topic, json!({"n": 11})).await,
        11
    );
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
    // Beyond what B could know: another epoch is not recovered.
    let mut other = connect(&b, "read").await;
    let since = json!({ topic: {"epoch": "not-this-one", "seq": 3} });
    let answer = subscribe(&mut other, 3, &[topic], Some(since)).await;
    assert_eq!(answer["topics"][0]["recovered"], false, "{answer}");
}

/// A node whose Redis is not there yet serves and says `wssedge_fleet_up 0`; a publication is
/// refused `fleet_unavailable` (never sequenced twice, never lost silently); once Redis starts
/// the node connects by itself and publications flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_connects_once_redis_is_there() {
    let mut redis = RedisServer::unstarted();
    let files = key_files();
    let a = node(&files, &redis, "a", "");
    assert_eq!(a.metric("wssedge_fleet_up", &[]).await, 0.0);
    let mut publisher = connect(&a, "publish").await;
    crate::pubsub::send(
        &mut publisher,
        json!({"op": "publish", "id": 1, "topic": "t", "data": 1}),
    )
    .await;
    let answer = next_json(&mut publisher).await;
    assert_eq!(
        (answer["op"].as_str(), answer["reason"].as_str()),
        (Some("error"), Some("fleet_unavailable")),
        "{answer}"
    );
    redis.restart();
    wait_fleet_up(&a).await;
    let mut sub = connect(&a, "read").await;
    subscribe(&mut sub, 2, &["t"], None).await;
    assert_eq!(publish(&mut publisher, 3, "t", json!(3)).await, 1);
    assert_eq!(next_json(&mut sub).await["data"], 3);
}

/// Redis with a password: a node with the right `password_file` joins; one with a wrong
/// password stays down (and says so), it does not serve fleet state it cannot reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_with_a_password() {
    use std::os::unix::fs::PermissionsExt as _;
    let redis = RedisServer::with_password("fleet-s3cret");
    let files = key_files();
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    };
    let good = write("good.pass", "fleet-s3cret\n");
    let bad = write("bad.pass", "not-it\n");
    let start = |pw: &std::path::Path| {
        let cfg = format!(
            "{}\n[fleet]\nredis = \"{}\"\npassword_file = \"{}\"\n",
            config(&files, "", ""),
            redis.url(),
            pw.display()
        );
        ServerBuilder::new().config(&cfg).start()
    };
    let a = start(&good);
    wait_fleet_up(&a).await;
    let b = start(&bad);
    let mut publisher = connect(&b, "publish").await;
    crate::pubsub::send(
        &mut publisher,
        json!({"op": "publish", "id": 1, "topic": "t", "data": 1}),
    )
    .await;
    assert_eq!(
        next_json(&mut publisher).await["reason"],
        "fleet_unavailable"
    );
    assert_eq!(b.metric("wssedge_fleet_up", &[]).await, 0.0);
    assert_eq!(b.metric("wssedge_fleet_connects_total", &[]).await, 0.0);
}
