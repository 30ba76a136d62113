//! The `[pubsub]` configuration section and its checks.
//!
//! ```toml
//! [pubsub]
//! history = 1000               # publications kept per topic for recovery (0: none)
//! history_ttl_s = 300          # and no older than this
//! max_topics_per_connection = 256
//! queue_messages = 4096        # per subscriber connection; beyond it the topic's policy
//! publish_scope = "publish"    # JWT scope a client needs to publish over its connection
//! max_topics = 100000          # topics kept at once (sequence, history or subscribers)
//! max_publication_bytes = 65536 # largest publication `data`
//! [[pubsub.topics]]            # per-prefix policy; longest prefix wins; default "disconnect"
//! prefix = "book."
//! slow = "conflate"
//! [[pubsub.feeds]]
//! url = "ws://127.0.0.1:9100/feed"
//! ```

use std::time::Duration;

use serde::Deserialize;

use super::protocol::RequestLimits;
use super::topic::{check_topic_bytes, TopicError};
use crate::ws_url::{QueryRule, WsUrl, WsUrlError};

/// What happens to a publication for a subscriber whose queue is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowPolicy {
    /// Close the connection (1008 `slow_consumer`): the client never misses a message silently.
    #[default]
    Disconnect,
    /// Skip the publication for this subscriber; the gap in `seq` tells the client.
    Drop,
    /// Keep only the newest queued publication of the topic (order books, tickers: only the
    /// latest state matters).
    Conflate,
}

impl SlowPolicy {
    /// The configuration spelling, also the metrics label.
    pub fn name(self) -> &'static str {
        match self {
            SlowPolicy::Disconnect => "disconnect",
            SlowPolicy::Drop => "drop",
            SlowPolicy::Conflate => "conflate",
        }
    }
}

/// `[[pubsub.topics]]`: topics starting with `prefix` get `slow`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRule {
    /// Compared byte for byte with the start of a topic name; `""` covers every topic.
    pub prefix: String,
    #[serde(default)]
    pub slow: SlowPolicy,
}

/// `[[pubsub.feeds]]`: an upstream feed the edge subscribes itself to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// `ws://host[:port][/path][?query]` or `wss://…` ([`WsUrl`]).
    pub url: String,
}

/// `[pubsub]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PubsubConfig {
    /// Publications kept per topic for recovery; 0 keeps none.
    pub history: usize,
    /// Kept publications older than this are not replayed.
    pub history_ttl_s: u64,
    /// Topics one connection may be subscribed to at once (also the most one request may name).
    pub max_topics_per_connection: usize,
    /// Publications queued per subscriber connection; beyond it the topic's [`SlowPolicy`].
    pub queue_messages: usize,
    /// The JWT scope a client needs to publish over its connection.
    pub publish_scope: String,
    /// The largest publication `data` a client or feed may send (bytes as written; also
    /// bounded by `[limits] max_message_bytes`); larger ones are refused (`data_too_large`).
    pub max_publication_bytes: usize,
    /// Topics the edge keeps at once (with a sequence, history or subscribers); a publish or
    /// subscribe that would make one more is refused (`too_many_topics`).
    pub max_topics: usize,
    pub topics: Vec<TopicRule>,
    pub feeds: Vec<FeedConfig>,
}

impl Default for PubsubConfig {
    fn default() -> Self {
        Self {
            history: 1000,
            history_ttl_s: 300,
            max_topics_per_connection: 256,
            queue_messages: 4096,
            publish_scope: "publish".into(),
            max_publication_bytes: 65_536,
            max_topics: 100_000,
            topics: Vec::new(),
            feeds: Vec::new(),
        }
    }
}

/// Per topic this is memory held for every topic ever published: a million entries of shared
/// frames is already gigabytes at 1 KiB payloads.
pub const MAX_HISTORY: usize = 1_000_000;
/// A day. Recovery is for short disconnects; longer gaps are a snapshot's job.
pub const MAX_HISTORY_TTL_S: u64 = 86_400;
pub const MAX_TOPICS_PER_CONNECTION: usize = 65_536;
/// A publication is kept in every topic's history and every queue: 16 MiB is already far
/// past market data.
pub const MAX_PUBLICATION_BYTES: usize = 16 << 20;
/// Each topic costs its history: ten million is already more than a host's memory at the
/// default history.
pub const MAX_TOPICS: usize = 10_000_000;
/// Per connection, times every subscriber: a million queued references is already a slow
/// consumer the edge should have closed long before.
pub const MAX_QUEUE_MESSAGES: usize = 1_048_576;

/// Why the `[pubsub]` section was refused: which key, what is wrong, and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PubsubConfigError {
    #[error("`pubsub.{key}` = {value} is out of range: write a value within {min}..={max}")]
    OutOfRange {
        key: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error(
        "`pubsub.publish_scope` = {0:?}: write one non-empty scope of printable ASCII without \
         spaces, quotes or backslashes (RFC 6749 scope-token), e.g. \"publish\""
    )]
    PublishScope(String),
    #[error(
        "`pubsub.topics[{index}].prefix` = {prefix:?}: {reason}; a prefix is written like the \
         start of a topic name"
    )]
    Prefix {
        index: usize,
        prefix: String,
        reason: TopicError,
    },
    #[error(
        "`pubsub.topics[{index}].prefix` = {prefix:?} is already given by topics[{first}]; keep \
         one rule per prefix"
    )]
    DuplicatePrefix {
        index: usize,
        first: usize,
        prefix: String,
    },
    #[error("`pubsub.feeds[{index}].url` = {url:?}: {reason}")]
    FeedUrl {
        index: usize,
        url: String,
        reason: WsUrlError,
    },
    #[error(
        "`pubsub.feeds[{index}].url` = {url:?} is already given by feeds[{first}]; one connection \
         per feed (a second would publish everything twice)"
    )]
    DuplicateFeed {
        index: usize,
        first: usize,
        url: String,
    },
}

impl PubsubConfig {
    pub fn validate(&self) -> Result<(), PubsubConfigError> {
        self.feed_urls().map(drop)
    }

    /// Checks the whole section and returns the feeds' parsed URLs, in configuration order
    /// (parsed once: the duplicate check needs them too).
    pub fn feed_urls(&self) -> Result<Vec<WsUrl>, PubsubConfigError> {
        in_range("history", self.history as u64, 0, MAX_HISTORY as u64)?;
        in_range("history_ttl_s", self.history_ttl_s, 1, MAX_HISTORY_TTL_S)?;
        in_range(
            "max_topics_per_connection",
            self.max_topics_per_connection as u64,
            1,
            MAX_TOPICS_PER_CONNECTION as u64,
        )?;
        in_range("max_topics", self.max_topics as u64, 1, MAX_TOPICS as u64)?;
        in_range(
            "max_publication_bytes",
            self.max_publication_bytes as u64,
            1,
            MAX_PUBLICATION_BYTES as u64,
        )?;
        in_range(
            "queue_messages",
            self.queue_messages as u64,
            1,
            MAX_QUEUE_MESSAGES as u64,
        )?;
        if self.publish_scope.is_empty() || !self.publish_scope.bytes().all(is_scope_byte) {
            return Err(PubsubConfigError::PublishScope(self.publish_scope.clone()));
        }
        for (index, rule) in self.topics.iter().enumerate() {
            check_topic_bytes(&rule.prefix).map_err(|reason| PubsubConfigError::Prefix {
                index,
                prefix: rule.prefix.clone(),
                reason,
            })?;
            if let Some(first) = self.topics[..index]
                .iter()
                .position(|r| r.prefix == rule.prefix)
            {
                return Err(PubsubConfigError::DuplicatePrefix {
                    index,
                    first,
                    prefix: rule.prefix.clone(),
                });
            }
        }
        let mut parsed: Vec<WsUrl> = Vec::with_capacity(self.feeds.len());
        for (index, feed) in self.feeds.iter().enumerate() {
            let url = WsUrl::parse(&feed.url, QueryRule::Allow).map_err(|reason| {
                PubsubConfigError::FeedUrl {
                    index,
                    url: feed.url.clone(),
                    reason,
                }
            })?;
            if let Some(first) = parsed.iter().position(|p| same_feed(p, &url)) {
                return Err(PubsubConfigError::DuplicateFeed {
                    index,
                    first,
                    url: feed.url.clone(),
                });
            }
            parsed.push(url);
        }
        Ok(parsed)
    }

    /// The policy of the longest `[[pubsub.topics]]` prefix that starts `topic`;
    /// [`SlowPolicy::Disconnect`] when none does.
    pub fn policy_for(&self, topic: &str) -> SlowPolicy {
        self.topics
            .iter()
            .filter(|r| topic.starts_with(r.prefix.as_str()))
            .max_by_key(|r| r.prefix.len())
            .map_or(SlowPolicy::Disconnect, |r| r.slow)
    }

    /// The bounds a client's request is parsed with: `max_publication_bytes`, and no more
    /// than `max_message_bytes` (the session's message limit).
    pub fn request_limits(&self, max_message_bytes: usize) -> RequestLimits {
        RequestLimits {
            max_topics: self.max_topics_per_connection,
            max_data_bytes: self.max_publication_bytes.min(max_message_bytes),
        }
    }

    pub fn history_ttl(&self) -> Duration {
        Duration::from_secs(self.history_ttl_s)
    }
}

fn in_range(key: &'static str, value: u64, min: u64, max: u64) -> Result<(), PubsubConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(PubsubConfigError::OutOfRange {
            key,
            value,
            min,
            max,
        })
    }
}

/// Host names compare case-insensitively (`FEED` and `feed` are one server).
fn same_feed(a: &WsUrl, b: &WsUrl) -> bool {
    a.tls == b.tls
        && a.port == b.port
        && a.target == b.target
        && a.host.eq_ignore_ascii_case(&b.host)
}

/// RFC 6749 §3.3 scope-token: %x21 / %x23-5B / %x5D-7E.
fn is_scope_byte(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `[pubsub]` section from TOML, as the edge's configuration file carries it.
    fn parse(toml_text: &str) -> Result<PubsubConfig, toml::de::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            #[serde(default)]
            pubsub: PubsubConfig,
        }
        toml::from_str::<File>(toml_text).map(|f| f.pubsub)
    }

    fn valid(toml_text: &str) -> PubsubConfig {
        let c = parse(toml_text).expect("parses");
        c.validate().expect("valid");
        c
    }

    fn invalid(toml_text: &str) -> PubsubConfigError {
        parse(toml_text)
            .expect("parses")
            .validate()
            .expect_err("refused")
    }

    #[test]
    fn the_issue_example_parses_and_validates() {
        let c = valid(
            r#"
            [pubsub]
            history = 1000
            history_ttl_s = 300
            max_topics_per_connection = 256
            queue_messages = 4096
            publish_scope = "publish"
            [[pubsub.topics]]
            prefix = "book."
            slow = "conflate"
            [[pubsub.feeds]]
            url = "ws://127.0.0.1:9100/feed"
            "#,
        );
        assert_eq!(c.topics[0].slow, SlowPolicy::Conflate);
        assert_eq!(c.history_ttl(), Duration::from_secs(300));
        assert_eq!(
            c.request_limits(65_536),
            RequestLimits {
                max_topics: 256,
                max_data_bytes: 65_536
            }
        );
        let feeds = c.feed_urls().expect("feeds");
        assert_eq!(feeds[0].port, 9100);
        assert_eq!(feeds[0].target, "/feed");
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = valid("[pubsub]\n");
        assert_eq!(c, PubsubConfig::default());
        assert_eq!(
            (
                c.history,
                c.history_ttl_s,
                c.max_topics_per_connection,
                c.queue_messages
            ),
            (1000, 300, 256, 4096)
        );
        assert_eq!(c.publish_scope, "publish");
        assert_eq!(valid("").queue_messages, 4096);
        let rule = valid("[[pubsub.topics]]\nprefix = \"x.\"\n");
        assert_eq!(rule.topics[0].slow, SlowPolicy::Disconnect);
    }

    #[test]
    fn unknown_keys_and_policies_are_refused_by_name() {
        let e = parse("[pubsub]\nhistroy = 5\n").unwrap_err().to_string();
        assert!(e.contains("histroy"), "{e}");
        let e = parse("[[pubsub.topics]]\nprefix = \"a\"\nslow = \"block\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("block") && e.contains("conflate"), "{e}");
        let e = parse("[[pubsub.topics]]\nprefix = \"a\"\npolicy = \"drop\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("policy"), "{e}");
        let e = parse("[[pubsub.feeds]]\nurl = \"ws://a/\"\ntls = true\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls"), "{e}");
        assert!(parse("[pubsub]\nqueue_messages = -1\n").is_err());
    }

    #[test]
    fn numbers_out_of_range_name_the_key_and_the_range() {
        let e = invalid("[pubsub]\nqueue_messages = 0\n");
        assert_eq!(
            e,
            PubsubConfigError::OutOfRange {
                key: "queue_messages",
                value: 0,
                min: 1,
                max: MAX_QUEUE_MESSAGES as u64
            }
        );
        assert!(e.to_string().contains("`pubsub.queue_messages` = 0"), "{e}");
        for (text, key) in [
            ("history = 1000001", "history"),
            ("history_ttl_s = 0", "history_ttl_s"),
            ("history_ttl_s = 86401", "history_ttl_s"),
            ("max_topics_per_connection = 0", "max_topics_per_connection"),
            (
                "max_topics_per_connection = 65537",
                "max_topics_per_connection",
            ),
            ("queue_messages = 1048577", "queue_messages"),
        ] {
            match invalid(&format!("[pubsub]\n{text}\n")) {
                PubsubConfigError::OutOfRange { key: k, .. } => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: {other}"),
            }
        }
        let c = valid("[pubsub]\nhistory = 0\nqueue_messages = 1\n");
        assert_eq!((c.history, c.queue_messages), (0, 1));
    }

    #[test]
    fn publish_scope_must_be_one_scope_token() {
        for bad in ["", "pub lish", "a\\\\b", "a\\\"b", "é"] {
            let e = invalid(&format!("[pubsub]\npublish_scope = \"{bad}\"\n"));
            assert!(
                matches!(e, PubsubConfigError::PublishScope(_)),
                "{bad}: {e}"
            );
        }
        valid("[pubsub]\npublish_scope = \"md:publish\"\n");
    }

    #[test]
    fn prefixes_are_checked_and_not_repeated() {
        let e = invalid("[[pubsub.topics]]\nprefix = \"book \"\n");
        assert!(
            matches!(
                &e,
                PubsubConfigError::Prefix {
                    index: 0,
                    reason: TopicError::Char { at: 4, .. },
                    ..
                }
            ),
            "{e}"
        );
        let e = invalid(
            "[[pubsub.topics]]\nprefix = \"a.\"\n[[pubsub.topics]]\nprefix = \"b.\"\n\
             [[pubsub.topics]]\nprefix = \"a.\"\nslow = \"drop\"\n",
        );
        assert_eq!(
            e,
            PubsubConfigError::DuplicatePrefix {
                index: 2,
                first: 0,
                prefix: "a.".into()
            }
        );
        assert!(e.to_string().contains("topics[2]") && e.to_string().contains("topics[0]"));
    }

    #[test]
    fn feed_urls_are_checked_and_not_repeated() {
        let e = invalid("[[pubsub.feeds]]\nurl = \"http://feed/\"\n");
        assert_eq!(
            e,
            PubsubConfigError::FeedUrl {
                index: 0,
                url: "http://feed/".into(),
                reason: WsUrlError::Scheme
            }
        );
        assert!(e.to_string().contains("ws:// or wss://"), "{e}");
        let e = invalid(
            "[[pubsub.feeds]]\nurl = \"ws://Feed/x\"\n[[pubsub.feeds]]\nurl = \"ws://feed:80/x\"\n",
        );
        assert!(
            matches!(
                e,
                PubsubConfigError::DuplicateFeed {
                    index: 1,
                    first: 0,
                    ..
                }
            ),
            "{e}"
        );
        valid(
            "[[pubsub.feeds]]\nurl = \"ws://feed/x\"\n[[pubsub.feeds]]\nurl = \"wss://feed/x\"\n",
        );
    }

    #[test]
    fn the_longest_prefix_wins_and_the_default_is_disconnect() {
        let c = valid(
            r#"
            [[pubsub.topics]]
            prefix = "book."
            slow = "conflate"
            [[pubsub.topics]]
            prefix = "book.BTC"
            slow = "drop"
            [[pubsub.topics]]
            prefix = "b"
            slow = "drop"
            "#,
        );
        assert_eq!(c.policy_for("book.ETH-USD"), SlowPolicy::Conflate);
        assert_eq!(c.policy_for("book.BTC-USD"), SlowPolicy::Drop);
        assert_eq!(c.policy_for("bids"), SlowPolicy::Drop);
        assert_eq!(c.policy_for("book"), SlowPolicy::Drop);
        assert_eq!(c.policy_for("trades.BTC-USD"), SlowPolicy::Disconnect);
        assert_eq!(
            c.policy_for("Book.ETH"),
            SlowPolicy::Disconnect,
            "case matters"
        );
        let all = valid("[[pubsub.topics]]\nprefix = \"\"\nslow = \"drop\"\n");
        assert_eq!(all.policy_for("anything"), SlowPolicy::Drop);
        assert_eq!(SlowPolicy::Conflate.name(), "conflate");
    }
}
