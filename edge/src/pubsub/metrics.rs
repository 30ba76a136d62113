//! Pub/sub's own metric families: topics, subscriptions, publications in, deliveries out,
//! what slow subscribers cost, refused requests, feeds, and the publish → write latency.
//!
//! One block of single-writer counters per core, summed when rendered.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::metrics::{escape_label, Counter, Gauge, Histogram, PrometheusFamilies};

/// Why a publication did not reach a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// The queue was full under `drop`, or under `conflate` with nothing of the topic queued.
    QueueFull,
    /// The queue was full under `disconnect`: the subscriber is closed.
    SlowConsumer,
}

/// The requests a client can be refused for, as the wire spells them.
const REFUSALS: [&str; 6] = [
    "bad_request",
    "topic_invalid",
    "too_many_topics",
    "data_too_large",
    "not_allowed",
    "fleet_unavailable",
];

#[derive(Debug, Default)]
pub(crate) struct CorePubsubMetrics {
    /// Topics this core owns.
    pub topics: Gauge,
    /// Subscriptions of this core's connections.
    pub subscriptions: Gauge,
    pub publications: Counter,
    pub deliveries: Counter,
    pub dropped_queue_full: Counter,
    pub dropped_slow_consumer: Counter,
    pub conflated: Counter,
    pub slow_consumer_closes: Counter,
    /// The most publications one of this core's subscriber queues has held.
    pub queue_high_water: Gauge,
    pub refused: [Counter; REFUSALS.len()],
    /// Owner sequencing to the frame handed to the connection's socket path.
    pub delivery: Histogram,
}

impl CorePubsubMetrics {
    pub fn dropped(&self, reason: DropReason, n: u64) {
        match reason {
            DropReason::QueueFull => self.dropped_queue_full.add(n),
            DropReason::SlowConsumer => self.dropped_slow_consumer.add(n),
        }
    }

    pub fn refused(&self, reason: wssedge_proto::pubsub::Reason) {
        if let Some(i) = REFUSALS.iter().position(|r| *r == reason.as_str()) {
            self.refused[i].inc();
        }
    }

    pub fn note_high_water(&self, depth: usize) {
        let depth = depth as i64;
        let now = self.queue_high_water.get();
        if depth > now {
            self.queue_high_water.add(depth - now);
        }
    }
}

/// A feed's state, by URL (written by the core that runs it).
#[derive(Debug)]
pub(crate) struct FeedState {
    pub url: String,
    pub up: AtomicBool,
    pub connects: Counter,
    pub publications: Counter,
    pub bad_frames: Counter,
}

#[derive(Debug, Default)]
pub(crate) struct PubsubMetrics {
    pub cores: Vec<CorePubsubMetrics>,
    pub feeds: Vec<FeedState>,
}

impl PubsubMetrics {
    pub fn new(cores: usize, feeds: &[String]) -> Self {
        Self {
            cores: (0..cores).map(|_| CorePubsubMetrics::default()).collect(),
            feeds: feeds
                .iter()
                .map(|url| FeedState {
                    url: url.clone(),
                    up: AtomicBool::new(false),
                    connects: Counter::default(),
                    publications: Counter::default(),
                    bad_frames: Counter::default(),
                })
                .collect(),
        }
    }

    fn sum(&self, f: impl Fn(&CorePubsubMetrics) -> u64) -> u64 {
        self.cores.iter().map(f).sum()
    }
}

impl PrometheusFamilies for PubsubMetrics {
    fn render_families(&self, out: &mut String) {
        let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, u64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in rows {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {v}");
                }
            }
        };
        let gauge = |g: &Gauge| g.get().max(0) as u64;
        family(
            "wssedge_pubsub_topics",
            "gauge",
            "Topics with a sequence, history or subscribers right now",
            vec![(String::new(), self.sum(|c| gauge(&c.topics)))],
        );
        family(
            "wssedge_pubsub_subscriptions",
            "gauge",
            "Topic subscriptions of open connections",
            vec![(String::new(), self.sum(|c| gauge(&c.subscriptions)))],
        );
        family(
            "wssedge_pubsub_publications_total",
            "counter",
            "Publications sequenced (from clients and feeds)",
            vec![(String::new(), self.sum(|c| c.publications.get()))],
        );
        family(
            "wssedge_pubsub_deliveries_total",
            "counter",
            "Publications handed to subscriber connections",
            vec![(String::new(), self.sum(|c| c.deliveries.get()))],
        );
        family(
            "wssedge_pubsub_dropped_total",
            "counter",
            "Publications a subscriber did not get: its queue was full (drop, conflate) or it was closed for it (disconnect)",
            vec![
                (
                    "reason=\"queue_full\"".into(),
                    self.sum(|c| c.dropped_queue_full.get()),
                ),
                (
                    "reason=\"slow_consumer\"".into(),
                    self.sum(|c| c.dropped_slow_consumer.get()),
                ),
            ],
        );
        family(
            "wssedge_pubsub_conflated_total",
            "counter",
            "Queued publications replaced by a newer one of their topic (conflate)",
            vec![(String::new(), self.sum(|c| c.conflated.get()))],
        );
        family(
            "wssedge_pubsub_slow_consumer_closes_total",
            "counter",
            "Subscribers closed with 1008 slow_consumer because their queue was full",
            vec![(String::new(), self.sum(|c| c.slow_consumer_closes.get()))],
        );
        family(
            "wssedge_pubsub_queue_high_water",
            "gauge",
            "The most publications any one subscriber's queue has held",
            vec![(
                String::new(),
                self.cores
                    .iter()
                    .map(|c| gauge(&c.queue_high_water))
                    .max()
                    .unwrap_or(0),
            )],
        );
        family(
            "wssedge_pubsub_refused_total",
            "counter",
            "Client requests answered with an error, by reason",
            REFUSALS
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("reason=\"{r}\""), self.sum(|c| c.refused[i].get())))
                .collect(),
        );
        if !self.feeds.is_empty() {
            let label = |f: &FeedState| format!("url=\"{}\"", escape_label(&f.url));
            family(
                "wssedge_pubsub_feed_up",
                "gauge",
                "1 while the edge is subscribed to the feed",
                self.feeds
                    .iter()
                    .map(|f| (label(f), u64::from(f.up.load(Ordering::Relaxed))))
                    .collect(),
            );
            family(
                "wssedge_pubsub_feed_connects_total",
                "counter",
                "Successful connections to the feed (the first one and every reconnect)",
                self.feeds
                    .iter()
                    .map(|f| (label(f), f.connects.get()))
                    .collect(),
            );
            family(
                "wssedge_pubsub_feed_publications_total",
                "counter",
                "Publications read from the feed",
                self.feeds
                    .iter()
                    .map(|f| (label(f), f.publications.get()))
                    .collect(),
            );
            family(
                "wssedge_pubsub_feed_bad_frames_total",
                "counter",
                "Feed frames that were not a publication (logged, not published)",
                self.feeds
                    .iter()
                    .map(|f| (label(f), f.bad_frames.get()))
                    .collect(),
            );
        }
        Histogram::render_sum(
            out,
            "wssedge_pubsub_delivery_seconds",
            "A publication's time from its sequencing on the topic's owner core to its frame being handed to a subscriber's socket path",
            self.cores.iter().map(|c| &c.delivery),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_sum_the_cores() {
        let m = PubsubMetrics::new(2, &["ws://127.0.0.1:9/feed".into()]);
        m.cores[0].deliveries.add(3);
        m.cores[1].deliveries.add(4);
        m.cores[1].dropped(DropReason::QueueFull, 2);
        m.cores[0].refused(wssedge_proto::pubsub::Reason::NotAllowed);
        m.cores[0].note_high_water(7);
        m.cores[1].note_high_water(5);
        m.feeds[0].up.store(true, Ordering::Relaxed);
        m.cores[1]
            .delivery
            .observe(std::time::Duration::from_micros(30));
        let mut out = String::new();
        m.render_families(&mut out);
        for line in [
            "wssedge_pubsub_deliveries_total 7",
            "wssedge_pubsub_dropped_total{reason=\"queue_full\"} 2",
            "wssedge_pubsub_refused_total{reason=\"not_allowed\"} 1",
            "wssedge_pubsub_queue_high_water 7",
            "wssedge_pubsub_feed_up{url=\"ws://127.0.0.1:9/feed\"} 1",
            "wssedge_pubsub_delivery_seconds_count 1",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing:\n{out}");
        }
    }
}
