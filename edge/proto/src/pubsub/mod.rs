//! Pub/sub for market-data fan-out, sans-IO: the `[pubsub]` section, topic names, the client
//! protocol (requests in, exact JSON out), each topic's sequence and history ring, and a
//! subscriber's bounded queue of shared frames. The edge owns the sockets, the cores, the clock
//! and the epoch strings; everything here is fed by it.
//!
//! - [`config`]: `[pubsub]`, `[[pubsub.topics]]` slow-consumer policies, `[[pubsub.feeds]]`.
//! - [`topic`]: what a topic name may be.
//! - [`protocol`]: subscribe / unsubscribe / publish requests, the edge's answers, feed frames.
//! - [`history`]: a topic's epoch, seqs and the ring a reconnecting client recovers from.
//! - [`queue`]: a subscriber's bounded queue under `disconnect`, `drop` or `conflate`.

pub mod config;
pub mod history;
pub mod protocol;
pub mod queue;
pub mod topic;

pub use config::{PubsubConfig, PubsubConfigError, SlowPolicy};
pub use history::{Appended, Recovery, SequenceExhausted, TopicLog};
pub use protocol::{
    parse_feed_publication, parse_request, FeedPublication, Reason, Refusal, Request, RequestLimits,
};
pub use queue::{Delivery, Pushed, SubscriberQueue, TopicId};
pub use topic::{check_topic, TopicError, MAX_TOPIC_BYTES};
