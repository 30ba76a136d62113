//! The edge's own subscriptions to upstream feeds (`[[pubsub.feeds]]`): a WebSocket client
//! session per feed, through the upstream room's connect path (TCP, TLS for wss:// with
//! `[upstream.tls]`, the upgrade), whose text frames `{"topic":…,"data":…}` are published like
//! a client's.
//!
//! A feed that drops is reconnected with capped exponential backoff ([`Backoff`]); each change
//! of state is logged and shows in `wssedge_pubsub_feed_up{url}`. A feed's publications are
//! bounded like a client's asks: at most [`MAX_ASKS_IN_FLIGHT`] out, and its socket is not read
//! beyond that (TCP pushes back on the feed).

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wssedge_proto::pubsub::parse_feed_publication;
use wssedge_proto::ws::{MessageKind, SessionLimits};
use wssedge_proto::ws_url::WsUrl;

use super::client::{Answer, MAX_ASKS_IN_FLIGHT};
use super::lines::{Asker, CoreMsg};
use super::CorePubsub;
use crate::upstream::relay::{Relay, UpstreamEvent};
use crate::upstream::{
    Balancer, Breaker, ClientHandshake, ConnectOptions, Member, MemberUrl, UpstreamRequest,
};

/// The first wait after a failure; doubled per failure up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A connection that lasted this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Plaintext one read of the feed may take.
const READ_ROOM: usize = 256 << 10;

/// Capped exponential backoff, sans-IO.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            next: min,
            min,
            max,
        }
    }

    /// The wait before the next attempt; the one after it doubles (up to the cap).
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// One feed, as handed to the core that runs it.
pub(crate) struct FeedStart {
    /// Its place in `[[pubsub.feeds]]` (and in the feed metrics).
    pub index: usize,
    pub url: String,
    /// One member, whose breaker never opens: the backoff here paces the attempts.
    balancer: Balancer,
    target: String,
    opts: ConnectOptions,
}

impl FeedStart {
    /// `opts`: the upstream room's connect options (its TLS for wss://), or defaults.
    pub fn new(index: usize, url: &str, parsed: &WsUrl, opts: ConnectOptions) -> Self {
        let member = MemberUrl {
            tls: parsed.tls,
            host: parsed.host.clone(),
            port: parsed.port,
            path: parsed.target.clone(),
        };
        let member = Arc::new(Member::new(
            member,
            "pubsub-feed",
            Breaker::new(u32::MAX, Duration::from_millis(1), Instant::now()),
        ));
        if let Err(e) = member.resolve() {
            tracing::warn!(feed = url, error = %e, "pub/sub feed does not resolve yet; retried with backoff");
        }
        Self {
            index,
            url: url.to_owned(),
            balancer: Balancer::new(vec![member]),
            target: parsed.target.clone(),
            opts,
        }
    }

    fn request(&self) -> UpstreamRequest {
        let mut nonce = [0u8; 16];
        // A nonce, not a secret (RFC 6455 §4.1).
        let _ = aws_lc_rs::rand::fill(&mut nonce);
        let handshake = ClientHandshake::with_nonce(nonce, None);
        let host = self
            .balancer
            .members()
            .first()
            .map(|m| m.url.host_header())
            .unwrap_or_default();
        let bytes = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\nUser-Agent: wssedge-feed\r\n\r\n",
            self.target,
            handshake.key()
        )
        .into_bytes();
        UpstreamRequest { bytes, handshake }
    }

    fn resolve_in_background(&self) {
        let Some(member) = self.balancer.members().first().cloned() else {
            return;
        };
        if !member.addrs().is_empty() {
            return;
        }
        // Resolution blocks: never on a core.
        let _ = std::thread::Builder::new()
            .name("wssedge-feed-dns".into())
            .spawn(move || {
                let _ = member.resolve();
            });
    }
}

/// Runs one feed for as long as the core runs.
pub(crate) async fn run(hub: Rc<CorePubsub>, feed: FeedStart, limits: SessionLimits) {
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    let state = &hub.feed_metrics()[feed.index];
    // A feed that stays down retries every few seconds: one line a minute says how often.
    let down = crate::repeats::Repeats::every(Duration::from_secs(60));
    loop {
        let why = match connect(&feed, limits).await {
            Ok(relay) => {
                state.up.store(true, Ordering::Relaxed);
                state.connects.inc();
                tracing::info!(feed = %feed.url, "pub/sub feed connected");
                let since = Instant::now();
                let why = serve(&hub, &feed, relay).await;
                state.up.store(false, Ordering::Relaxed);
                if since.elapsed() >= STABLE_AFTER {
                    backoff.reset();
                }
                why
            }
            Err(why) => why,
        };
        let wait = backoff.next_wait();
        if let Some(times) = down.note(Instant::now()) {
            tracing::warn!(feed = %feed.url, why, times, retry_in_ms = wait.as_millis() as u64, "pub/sub feed down; reconnecting (said once a minute while it lasts)");
        }
        feed.resolve_in_background();
        monoio::time::sleep(wait).await;
    }
}

async fn connect(feed: &FeedStart, limits: SessionLimits) -> Result<Relay, String> {
    let lease = feed
        .balancer
        .pick(Instant::now())
        .ok_or_else(|| "no usable address".to_owned())?;
    let stream = crate::upstream::connect::connect(lease, &feed.request(), &feed.opts)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Relay::new(
        stream,
        limits,
        64 << 10,
        false,
        feed.url.clone(),
    ))
}

/// Reads the feed and publishes what it says until it closes or breaks; why it ended.
async fn serve(hub: &Rc<CorePubsub>, feed: &FeedStart, mut relay: Relay) -> String {
    let state = &hub.feed_metrics()[feed.index];
    let client = hub.registry.add_client(1);
    let asker = Asker {
        core: hub.index,
        client: client.key,
    };
    let max_data = hub.cfg.max_publication_bytes;
    let mut events = Vec::new();
    let why = loop {
        while let Some(answer) = client.take_answer() {
            if let Answer::Published {
                result: Err(reason),
                ..
            } = answer
            {
                state.bad_frames.inc();
                tracing::debug!(feed = %feed.url, reason = reason.as_str(), "feed publication refused");
            }
        }
        let reading = client.asks_in_flight() < MAX_ASKS_IN_FLIGHT;
        let writing = relay.pending_output() > 0;
        if reading && !relay.holds_more() {
            monoio::select! {
                r = relay.readable() => if let Err(e) = r { break e.to_string() },
                _ = client.ready() => continue,
                r = relay.writable(), if writing => if let Err(e) = r { break e.to_string() },
            }
        } else if !reading {
            monoio::select! {
                _ = client.ready() => continue,
                r = relay.writable(), if writing => if let Err(e) = r { break e.to_string() },
            }
        }
        relay.read(Instant::now(), &mut events, READ_ROOM);
        let mut ended = None;
        for event in events.drain(..) {
            match event {
                UpstreamEvent::Message(message, _) => {
                    let frame = match message.payload {
                        wssedge_proto::ws::Payload::Single(b) => b,
                        wssedge_proto::ws::Payload::Fragmented(parts) => {
                            bytes::Bytes::from(parts.concat())
                        }
                    };
                    if message.kind == MessageKind::Binary {
                        state.bad_frames.inc();
                        continue;
                    }
                    match parse_feed_publication(&frame, max_data) {
                        Ok(p) => {
                            let data = frame.slice_ref(p.data.get().as_bytes());
                            let owner = hub.lines.owner(&p.topic);
                            client.asked();
                            state.publications.inc();
                            hub.lines.send(
                                owner,
                                CoreMsg::Publish {
                                    topic: p.topic,
                                    data,
                                    asker: Some(asker),
                                    request: 0,
                                },
                            );
                        }
                        Err(e) => {
                            state.bad_frames.inc();
                            tracing::debug!(feed = %feed.url, error = %e, "feed frame is not a publication");
                        }
                    }
                }
                UpstreamEvent::Closed { code, reason } => {
                    ended = Some(format!(
                        "the feed closed the session ({} {reason})",
                        code.unwrap_or(1005)
                    ));
                }
                UpstreamEvent::Failed { reason } => ended = Some(reason.as_str().to_owned()),
            }
        }
        if let Some(why) = ended {
            break why;
        }
        // Pongs to the feed's pings, our close replies.
        if let Err(e) = relay.write_some() {
            break e.to_string();
        }
    };
    relay.shutdown();
    hub.registry.remove_client(&client);
    why
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let waits: Vec<u64> = (0..5).map(|_| b.next_wait().as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_millis(100));
    }

    #[test]
    fn the_upgrade_request_asks_for_the_feeds_target() {
        let url = WsUrl::parse(
            "ws://127.0.0.1:9100/feed?x=1",
            wssedge_proto::ws_url::QueryRule::Allow,
        )
        .unwrap();
        let f = FeedStart::new(
            0,
            "ws://127.0.0.1:9100/feed?x=1",
            &url,
            ConnectOptions::new(Duration::from_secs(1), None),
        );
        let r = String::from_utf8(f.request().bytes).unwrap();
        assert!(
            r.starts_with("GET /feed?x=1 HTTP/1.1\r\nHost: 127.0.0.1:9100\r\n"),
            "{r}"
        );
        assert!(
            r.contains("Sec-WebSocket-Key: ") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
    }
}
