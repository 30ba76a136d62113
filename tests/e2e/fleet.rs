//! A fleet of edges on one real `redis-server` (issue 15): a publication accepted on any node
//! is sequenced once in Redis and delivered on every node with the same seq and epoch; a client
//! recovers on one node the gap that began on another; a node reports whether it reaches Redis
//! and connects once Redis is there.

use serde_json::{json, Value};

use crate::admission_jwt::{claims, hs, key_files, with_header_token, KeyFiles};
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

/// A node whose Redis is not there yet serves on local state and says `wssedge_fleet_up 0`:
/// publications are sequenced here under a local epoch. Once Redis starts the node connects by
/// itself; the next publication is sequenced by Redis and starts its epoch, which the
/// subscriber is told in that publication (`epoch`), its seqs starting again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_locally_until_redis_is_there_then_joins() {
    let mut redis = RedisServer::unstarted();
    let files = key_files();
    let a = node(&files, &redis, "a", "");
    assert_eq!(a.metric("wssedge_fleet_up", &[]).await, 0.0);
    let mut sub = connect(&a, "read").await;
    let local = epoch_of(&subscribe(&mut sub, 1, &["t"], None).await);
    let mut publisher = connect(&a, "publish").await;
    assert_eq!(publish(&mut publisher, 2, "t", json!(1)).await, 1);
    let p = next_json(&mut sub).await;
    assert_eq!((p["seq"].as_u64(), p.get("epoch")), (Some(1), None), "{p}");
    redis.restart();
    wait_fleet_up(&a).await;
    assert_eq!(
        publish(&mut publisher, 3, "t", json!(2)).await,
        1,
        "Redis' seq 1"
    );
    let p = next_json(&mut sub).await;
    assert_eq!(p["seq"], 1, "{p}");
    let fleet_epoch = p["epoch"]
        .as_str()
        .expect("the new epoch is announced")
        .to_owned();
    assert_ne!(fleet_epoch, local);
    assert_eq!(publish(&mut publisher, 4, "t", json!(3)).await, 2);
    let p = next_json(&mut sub).await;
    assert_eq!((p["seq"].as_u64(), p.get("epoch")), (Some(2), None), "{p}");
    // A newcomer gets the fleet's epoch.
    let mut other = connect(&a, "read").await;
    assert_eq!(
        epoch_of(&subscribe(&mut other, 5, &["t"], None).await),
        fleet_epoch
    );
}

/// Redis killed (-9) while a node publishes, then restarted: the nodes keep serving; every
/// subscriber sees, within each epoch, strictly increasing seqs (no duplicate, no reordering);
/// each change of epoch is announced in the publication that starts it; after the restart
/// publications reach both nodes again under one fleet epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_redis_while_publishing_never_duplicates_or_reorders() {
    let mut redis = RedisServer::start();
    let files = key_files();
    let a = node(&files, &redis, "a", "history = 50");
    let b = node(&files, &redis, "b", "history = 50");
    wait_fleet_up(&a).await;
    wait_fleet_up(&b).await;
    let topic = "md.kill";
    let mut subs = Vec::new();
    let mut first_epoch = String::new();
    for (i, n) in [&a, &a, &b, &b].into_iter().enumerate() {
        let mut ws = connect(n, "read").await;
        let answer = subscribe(&mut ws, i as u64, &[topic], None).await;
        first_epoch = epoch_of(&answer);
        subs.push((ws, epoch_of(&answer), 0u64));
    }
    let mut publisher = connect(&a, "publish").await;
    let mut published = 0u64;
    let mut refused = 0u64;
    for i in 1..=150u64 {
        if i == 50 {
            redis.kill();
        }
        if i == 100 {
            redis.restart();
            wait_fleet_up(&a).await;
            wait_fleet_up(&b).await;
        }
        crate::pubsub::send(
            &mut publisher,
            json!({"op": "publish", "id": i, "topic": topic, "data": {"i": i}}),
        )
        .await;
        let answer = next_json(&mut publisher).await;
        match answer["op"].as_str() {
            Some("published") => published += 1,
            Some("error") if answer["reason"] == "fleet_unavailable" => refused += 1,
            _ => panic!("unexpected answer {answer}"),
        }
    }
    // A last one that every node must see: the fleet is whole again.
    let last = publish(&mut publisher, 1000, topic, json!({"i": "last"})).await;
    visible_line(&format!(
        "fleet kill -9: {published} published, {refused} refused fleet_unavailable while the link noticed"
    ));
    for (k, (ws, epoch, last_seq)) in subs.iter_mut().enumerate() {
        loop {
            let p = next_json(ws).await;
            if let Some(new) = p.get("epoch") {
                let new = new.as_str().expect("epoch").to_owned();
                assert_ne!(
                    &new, epoch,
                    "subscriber {k}: an announced epoch is a new one: {p}"
                );
                *epoch = new;
                *last_seq = 0;
            }
            let seq = p["seq"].as_u64().expect("seq");
            assert!(
                seq > *last_seq,
                "subscriber {k}: seq {seq} after {last_seq} in epoch {epoch}: {p}"
            );
            *last_seq = seq;
            if p["data"]["i"] == "last" {
                assert_eq!(seq, last);
                break;
            }
        }
    }
    // A position from before the break is not recovered (the history it needs is gone, and
    // what A published on its own in between never reached B).
    let mut late = connect(&b, "read").await;
    let since = json!({ topic: {"epoch": first_epoch, "seq": 10} });
    let answer = subscribe(&mut late, 99, &[topic], Some(since)).await;
    assert_eq!(answer["topics"][0]["recovered"], false, "{answer}");
}

/// Redis with a password: a node with the right `password_file` joins; one with a wrong
/// password stays down (and says so) and serves on local state.
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
    // It serves on local state: publications are sequenced here.
    let mut publisher = connect(&b, "publish").await;
    assert_eq!(publish(&mut publisher, 1, "t", json!(1)).await, 1);
    assert_eq!(b.metric("wssedge_fleet_up", &[]).await, 0.0);
    assert_eq!(b.metric("wssedge_fleet_connects_total", &[]).await, 0.0);
}

/// A node with `[jwt]`, a control socket and `[fleet]` on `redis` (echo on every path).
struct CtlNode {
    srv: Server,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn ctl_node(files: &KeyFiles, redis: &RedisServer, name: &str) -> CtlNode {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("ctl.sock");
    let tail = format!("[fleet]\nredis = \"{}\"\nnode = \"{name}\"\n", redis.url());
    let srv = ServerBuilder::new()
        .cores(2)
        .config(&crate::admission_jwt::jwt_config(files, &[], &tail))
        .arg("--control")
        .arg(socket.to_str().expect("UTF-8 path"))
        .start();
    CtlNode {
        srv,
        socket,
        _dir: dir,
    }
}

/// A live session of `sub` on `node`, watched for its close frame.
async fn live_session(
    node: &CtlNode,
    sub: &str,
    jti: &str,
) -> (
    crate::control::CloseWatch,
    impl Sized, // the write half, kept open
) {
    let token = hs(claims(sub, jti));
    let (_, mut ws) = expect_upgraded(&node.srv, &with_header_token("/", &token)).await;
    expect_echo(&mut ws, sub).await;
    crate::control::watch_close(ws)
}

async fn expect_closed_with(
    watch: crate::control::CloseWatch,
    reason: &str,
    after: std::time::Instant,
) {
    let (frame, at) = within(WAIT, "close frame", watch)
        .await
        .expect("reader task");
    assert_eq!(
        (frame.close_code(), frame.close_reason().as_str()),
        (Some(1008), reason)
    );
    let delay = at.saturating_duration_since(after);
    visible_line(&format!(
        "fleet: closed with 1008 {reason} {delay:?} after the command on another node"
    ));
    assert!(
        delay <= crate::control::REVOKE_BOUND,
        "closed {delay:?} after the command (bound {:?})",
        crate::control::REVOKE_BOUND
    );
}

/// `revoke-subject` on A closes the subject's sessions on B within a second and B refuses it
/// from then on; a node started later (C) refuses it too; `unrevoke-subject` on B lets it in
/// on A again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_node_holds_on_every_node() {
    let redis = RedisServer::start();
    let files = key_files();
    let a = ctl_node(&files, &redis, "a");
    let b = ctl_node(&files, &redis, "b");
    wait_fleet_up(&a.srv).await;
    wait_fleet_up(&b.srv).await;
    let (on_b, _keep) = live_session(&b, "alice", "alice-1").await;
    let (bob, _keep_bob) = live_session(&b, "bob", "bob-1").await;
    let out = ctl(&a.socket, &["revoke-subject", "alice"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    expect_closed_with(on_b, "revoked", out.ended).await;
    let fresh = hs(claims("alice", "alice-2"));
    expect_refused(&b.srv, &with_header_token("/", &fresh), 401, "revoked").await;
    assert!(!bob.is_finished(), "bob's session is not touched");

    let c = ctl_node(&files, &redis, "c");
    wait_fleet_up(&c.srv).await;
    expect_refused(&c.srv, &with_header_token("/", &fresh), 401, "revoked").await;

    let out = ctl(&b.socket, &["unrevoke-subject", "alice"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let a_srv = &a.srv;
    eventually("A admits alice after the unrevoke on B", |i| async move {
        let again = hs(claims("alice", &format!("alice-again-{i}")));
        match upgrade_status(a_srv, &with_header_token("/", &again)).await {
            (101, _) => Ok(()),
            (status, reason) => Err(format!("{status} {reason}")),
        }
    })
    .await;
}

/// Revocations made while Redis is away apply at once where they were made and reach the
/// other nodes when Redis is back; a Redis that came back empty does not lift older ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_outlive_a_redis_that_dies() {
    let mut redis = RedisServer::start();
    let files = key_files();
    let a = ctl_node(&files, &redis, "a");
    let b = ctl_node(&files, &redis, "b");
    wait_fleet_up(&a.srv).await;
    wait_fleet_up(&b.srv).await;
    assert_eq!(
        ctl(&a.socket, &["revoke-subject", "before"]).await.code,
        Some(0)
    );
    let before = hs(claims("before", "before-1"));
    wait_refused(&b, &before).await;

    redis.kill();
    wait_fleet_down(&a.srv).await;
    assert_eq!(
        ctl(&a.socket, &["revoke-subject", "during"]).await.code,
        Some(0)
    );
    let during = hs(claims("during", "during-1"));
    expect_refused(&a.srv, &with_header_token("/", &during), 401, "revoked").await;
    // The command applies here at once; the link queues it for Redis on its own task.
    a.srv
        .wait_metric_eq("wssedge_fleet_control_pending", &[], 1.0)
        .await;

    redis.restart(); // empty: it lost "before"
    wait_fleet_up(&a.srv).await;
    wait_fleet_up(&b.srv).await;
    wait_refused(&b, &during).await;
    // B knew "before" already and announces it again to the Redis that lost it: a node
    // started now still learns both.
    let c = ctl_node(&files, &redis, "c");
    wait_fleet_up(&c.srv).await;
    wait_refused(&c, &before).await;
    wait_refused(&c, &during).await;
    a.srv
        .wait_metric_eq("wssedge_fleet_control_pending", &[], 0.0)
        .await;
}

/// The status of one upgrade attempt, and the refusal's reason (empty for a 101).
async fn upgrade_status(srv: &Server, req: &str) -> (u16, String) {
    match attempt(srv, req).await {
        Outcome::Upgraded { .. } => (101, String::new()),
        Outcome::Refused(r) => (r.status, r.reason),
    }
}

async fn wait_fleet_down(srv: &Server) {
    eventually("the node says the fleet is down", |_| async move {
        match srv.metric("wssedge_fleet_up", &[]).await {
            0.0 => Ok(()),
            up => Err(format!("wssedge_fleet_up {up}")),
        }
    })
    .await;
}

/// Polls until `node` refuses `token` with 401 `revoked`.
async fn wait_refused(node: &CtlNode, token: &str) {
    let srv = &node.srv;
    eventually("a revoked subject is refused", |_| async move {
        match upgrade_status(srv, &with_header_token("/", token)).await {
            (401, reason) if reason == "revoked" => Ok(()),
            (status, reason) => Err(format!("{status} {reason}")),
        }
    })
    .await;
}

/// `kick --subject` on A closes the subject's sessions on A and B with 1008 `kicked`, and
/// refuses nothing afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_closes_the_subject_everywhere_and_refuses_nothing() {
    let redis = RedisServer::start();
    let files = key_files();
    let a = ctl_node(&files, &redis, "a");
    let b = ctl_node(&files, &redis, "b");
    wait_fleet_up(&a.srv).await;
    wait_fleet_up(&b.srv).await;
    let (on_a, _ka) = live_session(&a, "mallory", "m-1").await;
    let (on_b, _kb) = live_session(&b, "mallory", "m-2").await;
    let out = ctl(&a.socket, &["kick", "--subject", "mallory"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("\"sent\""), "{out:?}");
    expect_closed_with(on_a, "kicked", out.ended).await;
    expect_closed_with(on_b, "kicked", out.ended).await;
    let (_, mut back) = expect_upgraded(
        &b.srv,
        &with_header_token("/", &hs(claims("mallory", "m-3"))),
    )
    .await;
    expect_echo(&mut back, "back").await;
    b.srv
        .wait_metric("wssedge_fleet_control_received_total", &[], 1.0)
        .await;
}

/// A node with `[jwt] single_use` and `[fleet]` (`fleet_extra` appended to the section).
fn single_use_node(files: &KeyFiles, redis: &RedisServer, name: &str, fleet_extra: &str) -> Server {
    let tail = format!(
        "[fleet]\nredis = \"{}\"\nnode = \"{name}\"\n{fleet_extra}\n",
        redis.url()
    );
    ServerBuilder::new()
        .cores(2)
        .config(&crate::admission_jwt::jwt_config(
            files,
            &[("single_use", "true")],
            &tail,
        ))
        .start()
}

/// A single-use token used on A is refused on B (401 `replayed`), and the other way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_use_token_is_used_once_across_the_fleet() {
    let redis = RedisServer::start();
    let files = key_files();
    let a = single_use_node(&files, &redis, "a", "");
    let b = single_use_node(&files, &redis, "b", "");
    wait_fleet_up(&a).await;
    wait_fleet_up(&b).await;
    for i in 0..5 {
        let (first, second) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let token = hs(claims("carol", &format!("once-{i}")));
        let req = with_header_token("/", &token);
        let (_, mut ws) = expect_upgraded(first, &req).await;
        expect_echo(&mut ws, "first use").await;
        expect_refused(second, &req, 401, "replayed").await;
        expect_refused(first, &req, 401, "replayed").await;
    }
    a.wait_metric(
        "wssedge_fleet_replay_checks_total",
        &[("result", "replayed")],
        2.0,
    )
    .await;
}

/// Both checks at once (one script per upgrade): a replayed token is refused 401 `replayed`
/// and counts no session; at the identity's fleet-wide limit a fresh token gets 429 — and is
/// used up by it, as on a single node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_use_and_identity_limits_together_across_the_fleet() {
    let redis = RedisServer::start();
    let files = key_files();
    let node = |name: &str| {
        let tail = format!(
            "[limits]\nper_identity_connections = 1\n[fleet]\nredis = \"{}\"\nnode = \"{name}\"\n",
            redis.url()
        );
        ServerBuilder::new()
            .cores(2)
            .config(&crate::admission_jwt::jwt_config(
                &files,
                &[("single_use", "true")],
                &tail,
            ))
            .start()
    };
    let (a, b) = (node("a"), node("b"));
    wait_fleet_up(&a).await;
    wait_fleet_up(&b).await;
    let token = |jti: &str| with_header_token("/", &hs(claims("heidi", jti)));
    let (_, mut ws) = expect_upgraded(&a, &token("h-1")).await;
    expect_echo(&mut ws, "the one session").await;
    // The same token on B: a replay, not a second session.
    expect_refused(&b, &token("h-1"), 401, "replayed").await;
    // A fresh token: the fleet holds heidi's one session already.
    expect_refused(&b, &token("h-2"), 429, "identity_connection_limit").await;
    // The session ends: a fresh token passes on B; the one refused 429 stays used.
    ws.send(&cframe(true, OP_CLOSE, &close_payload(1000, "bye")))
        .await;
    let _ = ws.rd.expect_close().await;
    drop(ws);
    let b_srv = &b;
    let mut again = eventually("heidi's place is given back", |i| async move {
        let req = with_header_token("/", &hs(claims("heidi", &format!("h-again-{i}"))));
        match attempt(b_srv, &req).await {
            Outcome::Upgraded { ws, .. } => Ok(ws),
            Outcome::Refused(r) => Err(format!("{} {}", r.status, r.reason)),
        }
    })
    .await;
    expect_echo(&mut again, "in again on B").await;
    expect_refused(&a, &token("h-2"), 401, "replayed").await;
    a.wait_metric(
        "wssedge_fleet_replay_checks_total",
        &[("result", "replayed")],
        1.0,
    )
    .await;
    b.wait_metric(
        "wssedge_fleet_replay_checks_total",
        &[("result", "replayed")],
        1.0,
    )
    .await;
}

/// Redis out of reach: a single-use token is refused 401 `replay_check_unavailable` (no node
/// can tell whether another took it) unless `single_use_down = "local"`; other tokens pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_use_fails_closed_while_redis_is_away_unless_told_otherwise() {
    let mut redis = RedisServer::start();
    let files = key_files();
    let strict = single_use_node(&files, &redis, "strict", "");
    let lenient = single_use_node(&files, &redis, "lenient", "single_use_down = \"local\"");
    wait_fleet_up(&strict).await;
    wait_fleet_up(&lenient).await;
    redis.kill();
    wait_fleet_down(&strict).await;
    wait_fleet_down(&lenient).await;
    let token = hs(claims("dave", "while-down-1"));
    expect_refused(
        &strict,
        &with_header_token("/", &token),
        401,
        "replay_check_unavailable",
    )
    .await;
    let (_, mut ws) = expect_upgraded(&lenient, &with_header_token("/", &token)).await;
    expect_echo(&mut ws, "local check only").await;
    expect_refused(&lenient, &with_header_token("/", &token), 401, "replayed").await;
    let (code, body) = http_get(strict.admin, "/healthz").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("fleet: down") && body.contains("serving on local state"),
        "{body}"
    );
    redis.restart();
    wait_fleet_up(&strict).await;
    let token = hs(claims("dave", "after-1"));
    let (_, mut ws) = expect_upgraded(&strict, &with_header_token("/", &token)).await;
    expect_echo(&mut ws, "back").await;
}

/// `down = "refuse_new"`: while Redis is away new upgrades get 503 `fleet_unavailable` (with
/// Retry-After) and live sessions go on; when it is back, upgrades pass again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_new_refuses_upgrades_while_redis_is_away_and_keeps_sessions() {
    let mut redis = RedisServer::start();
    let files = key_files();
    let tail = format!(
        "[fleet]\nredis = \"{}\"\nnode = \"strict\"\ndown = \"refuse_new\"\n",
        redis.url()
    );
    let srv = ServerBuilder::new()
        .config(&crate::admission_jwt::jwt_config(&files, &[], &tail))
        .start();
    wait_fleet_up(&srv).await;
    let (_, mut live) =
        expect_upgraded(&srv, &with_header_token("/", &hs(claims("erin", "e-1")))).await;
    expect_echo(&mut live, "before").await;
    redis.kill();
    wait_fleet_down(&srv).await;
    let r = expect_refused(
        &srv,
        &with_header_token("/", &hs(claims("erin", "e-2"))),
        503,
        "fleet_unavailable",
    )
    .await;
    assert!(header(&r.head, "retry-after").is_some(), "{}", r.head);
    expect_echo(&mut live, "a live session goes on").await;
    let (_, body) = http_get(srv.admin, "/healthz").await;
    assert!(body.contains("refusing new upgrades"), "{body}");
    redis.restart();
    wait_fleet_up(&srv).await;
    let (_, mut again) =
        expect_upgraded(&srv, &with_header_token("/", &hs(claims("erin", "e-3")))).await;
    expect_echo(&mut again, "after").await;
    let (_, body) = http_get(srv.admin, "/healthz").await;
    assert!(body.contains("fleet: up"), "{body}");
}

/// A node with `per_identity_connections = 2`, `lease_ms = 1000`, a control socket.
fn limited_node(files: &KeyFiles, redis: &RedisServer, name: &str) -> CtlNode {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("ctl.sock");
    let tail = format!(
        "[limits]\nper_identity_connections = 2\n[fleet]\nredis = \"{}\"\nnode = \"{name}\"\nlease_ms = 1000\n",
        redis.url()
    );
    let srv = ServerBuilder::new()
        .cores(2)
        .config(&crate::admission_jwt::jwt_config(files, &[], &tail))
        .arg("--control")
        .arg(socket.to_str().expect("UTF-8 path"))
        .start();
    CtlNode {
        srv,
        socket,
        _dir: dir,
    }
}

/// Polls until `srv` admits `sub` (a new token each time); returns the session.
async fn wait_admitted(srv: &Server, sub: &str) -> RawWs {
    eventually(&format!("{sub} is admitted"), |i| async move {
        let token = hs(claims(sub, &format!("{sub}-retry-{i}")));
        match attempt(srv, &with_header_token("/", &token)).await {
            Outcome::Upgraded { ws, .. } => Ok(ws),
            Outcome::Refused(r) => {
                assert_eq!(r.reason, "identity_connection_limit", "{}", r.head);
                Err(format!("{} {}", r.status, r.reason))
            }
        }
    })
    .await
}

/// `per_identity_connections = 2` counts across A and B: a third session of the same subject is
/// refused 429 on either node, a session's end frees its place, and a node killed with
/// SIGKILL stops holding its sessions' places once its lease (1 s) runs out. `ctl sessions`
/// lists the fleet's sessions with their node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_identity_connections_count_across_the_fleet() {
    let redis = RedisServer::start();
    let files = key_files();
    let a = limited_node(&files, &redis, "a");
    let b = limited_node(&files, &redis, "b");
    wait_fleet_up(&a.srv).await;
    wait_fleet_up(&b.srv).await;
    let token = |jti: &str| with_header_token("/", &hs(claims("frank", jti)));
    let (_, mut on_a) = expect_upgraded(&a.srv, &token("f-1")).await;
    expect_echo(&mut on_a, "one").await;
    let (_, mut on_b) = expect_upgraded(&b.srv, &token("f-2")).await;
    expect_echo(&mut on_b, "two").await;
    expect_refused(&a.srv, &token("f-3"), 429, "identity_connection_limit").await;
    expect_refused(&b.srv, &token("f-4"), 429, "identity_connection_limit").await;
    let (_, mut grace) =
        expect_upgraded(&b.srv, &with_header_token("/", &hs(claims("grace", "g-1")))).await;
    expect_echo(&mut grace, "another subject").await;

    // The fleet's sessions, from either node.
    let out = ctl(&b.socket, &["sessions", "--subject", "frank"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let list: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(list["fleet"], true, "{list}");
    let mut nodes: Vec<&str> = list["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| s["node"].as_str().expect("node"))
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["a", "b"], "{list}");
    let all: Value =
        serde_json::from_str(&ctl(&a.socket, &["sessions"]).await.stdout).expect("JSON");
    assert_eq!(all["sessions"].as_array().map(Vec::len), Some(3), "{all}");

    // A session's end frees its place (on the other node too).
    on_b.send(&cframe(true, OP_CLOSE, &close_payload(1000, "bye")))
        .await;
    let _ = on_b.rd.expect_close().await;
    drop(on_b);
    let mut again = wait_admitted(&a.srv, "frank").await;
    expect_echo(&mut again, "in again").await;

    // A killed with SIGKILL: after its lease, B no longer counts its two sessions.
    expect_refused(&b.srv, &token("f-5"), 429, "identity_connection_limit").await;
    drop(a);
    let mut on_b = wait_admitted(&b.srv, "frank").await;
    expect_echo(&mut on_b, "after the lease").await;
}

/// `rediss://` with `ca`: the node joins over TLS and publications flow; a node that trusts
/// another CA does not join (and says why in its log) and serves on local state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_verified_against_its_ca() {
    let redis = RedisServer::with_tls();
    let files = key_files();
    let ca = redis.tls_ca.clone().expect("TLS Redis");
    let start = |ca: &std::path::Path| {
        let cfg = format!(
            "{}\n[fleet]\nredis = \"{}\"\nca = \"{}\"\n",
            config(&files, "", ""),
            redis.url(),
            ca.display()
        );
        ServerBuilder::new().config(&cfg).start()
    };
    let a = start(&ca);
    wait_fleet_up(&a).await;
    let mut sub = connect(&a, "read").await;
    subscribe(&mut sub, 1, &["tls.t"], None).await;
    let mut publisher = connect(&a, "publish").await;
    assert_eq!(
        publish(&mut publisher, 2, "tls.t", json!("over TLS")).await,
        1
    );
    assert_eq!(next_json(&mut sub).await["data"], "over TLS");
    assert_eq!(a.metric("wssedge_fleet_published_total", &[]).await, 1.0);

    let other = tempfile::tempdir().expect("tempdir");
    let (_, _, wrong_ca) = issue_localhost_chain("some other CA");
    let wrong = other.path().join("other-ca.pem");
    std::fs::write(&wrong, wrong_ca).expect("write");
    let b = start(&wrong);
    b.proc
        .wait_stderr(
            "the node logs that it cannot reach Redis",
            "fleet: cannot reach Redis",
        )
        .await;
    assert_eq!(b.metric("wssedge_fleet_up", &[]).await, 0.0);
    assert_eq!(b.metric("wssedge_fleet_connects_total", &[]).await, 0.0);
}

/// Redis killed (-9) while upgrades that need it (single-use tokens, identity counts) are in
/// flight: every upgrade ends with a 101 or a precise refusal — none is dropped, none waits on
/// Redis (the handshake deadline is raised to 30 s here, past the test's own bound, so that an
/// upgrade left waiting shows as one rather than as a deadline's close) — and after a restart
/// they pass again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_redis_during_upgrades_never_hangs_one() {
    let mut redis = RedisServer::start();
    let files = key_files();
    let tail = format!(
        "[limits]\nper_identity_connections = 1000\nhandshake_timeout_ms = 30000\n\
         [fleet]\nredis = \"{}\"\nnode = \"a\"\n",
        redis.url()
    );
    let srv = ServerBuilder::new()
        .cores(2)
        .config(&crate::admission_jwt::jwt_config(
            &files,
            &[("single_use", "true")],
            &tail,
        ))
        .start();
    wait_fleet_up(&srv).await;
    let started = std::time::Instant::now();
    let attempts = (0..60).map(|i| {
        let srv = &srv;
        async move {
            let req =
                with_header_token("/", &hs(claims(&format!("u{}", i % 7), &format!("k-{i}"))));
            match try_attempt_over(srv.tls().await, &req).await {
                Ok(Outcome::Upgraded { .. }) => "101".to_owned(),
                Ok(Outcome::Refused(r)) => format!("{} {}", r.status, r.reason),
                Err(e) => format!("no answer: {e}"),
            }
        }
    });
    let killer = async {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        redis.kill();
    };
    let (outcomes, ()) = within(WAIT, "60 upgrades across a Redis kill", async {
        tokio::join!(futures_util::future::join_all(attempts), killer)
    })
    .await;
    let took = started.elapsed();
    let mut seen: Vec<String> = outcomes.clone();
    seen.sort();
    seen.dedup();
    visible_line(&format!(
        "fleet: upgrades across a Redis kill -9 in {took:?}: {seen:?}"
    ));
    for o in &outcomes {
        assert!(
            o == "101" || o == "401 replay_check_unavailable",
            "unexpected outcome {o}: {outcomes:?}"
        );
    }
    redis.restart();
    wait_fleet_up(&srv).await;
    let (_, mut ws) =
        expect_upgraded(&srv, &with_header_token("/", &hs(claims("u0", "after")))).await;
    expect_echo(&mut ws, "after").await;
}
