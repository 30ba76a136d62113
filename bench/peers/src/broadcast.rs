//! The tokio-tungstenite pub/sub peer for the fan-out benchmark: what a Rust service built the
//! obvious way does — one tokio `broadcast` channel per topic, one task per connection that
//! reads requests and forwards what its subscriptions receive.
//!
//! It speaks the client side of wssedge's pub/sub protocol (text frames, JSON) so that one
//! generator drives both: `{"op":"subscribe","id":1,"topics":[…]}`,
//! `{"op":"unsubscribe","id":2,"topics":[…]}`, `{"op":"publish","id":3,"topic":"…","data":…}`;
//! it answers `subscribed` (each topic's last `seq`), `unsubscribed`, `published` (the `seq`)
//! and `error` (`bad_request`), and delivers `{"topic":"…","seq":N,"data":…}` with `data`
//! byte for byte. A publication is encoded once and shared by every subscriber (tungstenite's
//! text payload is reference-counted). No history, epochs or recovery: it has none to offer.
//! A subscriber that falls `capacity` publications behind is closed with 1008
//! `slow_consumer`, like wssedge's `disconnect` policy.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use futures_util::stream::{self, SelectAll, Stream};
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Every topic's channel and last sequence number, shared by all connections.
#[derive(Debug)]
pub struct Hub {
    topics: Mutex<HashMap<String, Topic>>,
    /// Publications a subscriber may fall behind before it is closed.
    capacity: usize,
}

#[derive(Debug)]
struct Topic {
    tx: broadcast::Sender<Utf8Bytes>,
    seq: u64,
}

impl Hub {
    pub fn new(capacity: usize) -> Arc<Hub> {
        Arc::new(Hub {
            topics: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        })
    }

    fn with_topic<T>(&self, name: &str, f: impl FnOnce(&mut Topic) -> T) -> T {
        let mut topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        let topic = topics.entry(name.to_owned()).or_insert_with(|| Topic {
            tx: broadcast::channel(self.capacity).0,
            seq: 0,
        });
        f(topic)
    }

    /// Subscribes: the receiver and the topic's last sequence number.
    fn subscribe(&self, name: &str) -> (broadcast::Receiver<Utf8Bytes>, u64) {
        self.with_topic(name, |t| (t.tx.subscribe(), t.seq))
    }

    /// Sequences and encodes a publication once, then hands it to every subscriber.
    fn publish(&self, name: &str, data: &RawValue) -> u64 {
        self.with_topic(name, |t| {
            t.seq += 1;
            let frame = format!(
                "{{\"topic\":{},\"seq\":{},\"data\":{}}}",
                json_string(name),
                t.seq,
                data.get()
            );
            // No subscriber is not an error: the publication is simply not delivered.
            let _ = t.tx.send(Utf8Bytes::from(frame));
            t.seq
        })
    }
}

/// A request's members. One flat struct rather than an enum tagged by `op`: serde buffers a
/// tagged enum's fields, and a buffered `RawValue` cannot be borrowed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fields<'a> {
    op: &'a str,
    id: u64,
    topics: Option<Vec<String>>,
    topic: Option<String>,
    /// `null` is data too (plain `Option` would read it as absent).
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

enum Request<'a> {
    Subscribe {
        id: u64,
        topics: Vec<String>,
    },
    Unsubscribe {
        id: u64,
        topics: Vec<String>,
    },
    Publish {
        id: u64,
        topic: String,
        data: &'a RawValue,
    },
}

/// `None`: not JSON, an unknown op, or members missing or left over for the op.
fn parse(text: &str) -> Option<Request<'_>> {
    let f: Fields<'_> = serde_json::from_str(text).ok()?;
    match (f.op, f.topics, f.topic, f.data) {
        ("subscribe", Some(topics), None, None) => Some(Request::Subscribe { id: f.id, topics }),
        ("unsubscribe", Some(topics), None, None) => {
            Some(Request::Unsubscribe { id: f.id, topics })
        }
        ("publish", None, Some(topic), Some(data)) => Some(Request::Publish {
            id: f.id,
            topic,
            data,
        }),
        _ => None,
    }
}

/// A subscription's deliveries. `SelectAll` cannot remove one stream, so an unsubscribe sets
/// the subscription's flag and the stream ends at its next wake, delivering nothing more.
type Deliveries = std::pin::Pin<Box<dyn Stream<Item = Delivery> + Send>>;

enum Delivery {
    Frame(Utf8Bytes),
    /// The subscriber fell more than the channel's capacity behind.
    Lagged,
}

fn deliveries(rx: broadcast::Receiver<Utf8Bytes>, ended: Arc<AtomicBool>) -> Deliveries {
    Box::pin(stream::unfold((rx, ended), |(mut rx, ended)| async move {
        let item = match rx.recv().await {
            _ if ended.load(Ordering::Relaxed) => return None,
            Ok(frame) => Delivery::Frame(frame),
            Err(broadcast::error::RecvError::Lagged(_)) => Delivery::Lagged,
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((item, (rx, ended)))
    }))
}

/// One connection: accept the upgrade, then serve requests and deliveries until either side
/// ends. Replies and deliveries are fed without a flush each; the sink is flushed when
/// nothing more is ready (one write per burst).
pub async fn serve_connection<S>(stream: S, hub: Arc<Hub>) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ws = tokio_tungstenite::accept_async(stream)
        .await
        .context("websocket handshake")?;
    let (mut sink, mut source) = ws.split();
    let mut subscriptions: SelectAll<Deliveries> = SelectAll::new();
    // Each subscribed topic and the flag that ends its stream.
    let mut subscribed: HashMap<String, Arc<AtomicBool>> = HashMap::new();
    let mut unflushed = false;
    loop {
        let ready = tokio::select! {
            biased;
            msg = source.next() => Some(msg),
            Some(delivery) = subscriptions.next(), if !subscriptions.is_empty() => {
                match delivery {
                    Delivery::Frame(frame) => sink.feed(Message::Text(frame)).await?,
                    Delivery::Lagged => {
                        let close = CloseFrame {
                            code: CloseCode::Policy,
                            reason: "slow_consumer".into(),
                        };
                        sink.send(Message::Close(Some(close))).await?;
                        return Ok(());
                    }
                }
                unflushed = true;
                None
            }
            () = std::future::ready(()), if unflushed => {
                sink.flush().await?;
                unflushed = false;
                None
            }
        };
        let Some(msg) = ready else { continue };
        let msg = match msg {
            None => return Ok(()),
            Some(msg) => msg.context("read")?,
        };
        let text = match msg {
            Message::Text(text) => text,
            Message::Close(_) => return Ok(()),
            // tungstenite answers pings itself; binary frames are not requests.
            _ => continue,
        };
        let reply = match parse(text.as_str()) {
            Some(Request::Subscribe { id, topics }) => {
                let mut listed = Vec::with_capacity(topics.len());
                for topic in topics {
                    let (rx, seq) = hub.subscribe(&topic);
                    listed.push(format!(
                        "{{\"topic\":{},\"seq\":{seq}}}",
                        json_string(&topic)
                    ));
                    // Subscribing twice to a topic delivers it once.
                    if let Entry::Vacant(slot) = subscribed.entry(topic) {
                        let ended = Arc::new(AtomicBool::new(false));
                        subscriptions.push(deliveries(rx, ended.clone()));
                        slot.insert(ended);
                    }
                }
                format!(
                    "{{\"op\":\"subscribed\",\"id\":{id},\"topics\":[{}]}}",
                    listed.join(",")
                )
            }
            Some(Request::Unsubscribe { id, topics }) => {
                for topic in topics {
                    if let Some(ended) = subscribed.remove(&topic) {
                        ended.store(true, Ordering::Relaxed);
                    }
                }
                format!("{{\"op\":\"unsubscribed\",\"id\":{id}}}")
            }
            Some(Request::Publish { id, topic, data }) => {
                let seq = hub.publish(&topic, data);
                format!("{{\"op\":\"published\",\"id\":{id},\"seq\":{seq}}}")
            }
            None => "{\"op\":\"error\",\"id\":null,\"reason\":\"bad_request\"}".to_owned(),
        };
        sink.feed(Message::text(reply)).await?;
        unflushed = true;
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::WebSocketStream;

    type Client = WebSocketStream<TcpStream>;

    async fn start() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hub = Hub::new(1024);
        tokio::spawn(crate::serve(listener, true, move |sock| {
            serve_connection(sock, hub.clone())
        }));
        addr
    }

    async fn client(addr: std::net::SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tokio_tungstenite::client_async(format!("ws://{addr}/"), tcp)
            .await
            .unwrap()
            .0
    }

    async fn ask(c: &mut Client, request: &str) -> String {
        c.send(Message::text(request)).await.unwrap();
        next_text(c).await
    }

    async fn next_text(c: &mut Client) -> String {
        let wait = std::time::Duration::from_secs(10);
        loop {
            match tokio::time::timeout(wait, c.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
                Ok(Some(Ok(_))) => continue,
                other => panic!("no text message: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_publication_in_order_with_data_byte_for_byte() {
        let addr = start().await;
        let mut subs = vec![client(addr).await, client(addr).await];
        for s in &mut subs {
            assert_eq!(
                ask(s, r#"{"op":"subscribe","id":1,"topics":["t","t"]}"#).await,
                r#"{"op":"subscribed","id":1,"topics":[{"topic":"t","seq":0},{"topic":"t","seq":0}]}"#
            );
        }
        let mut publisher = client(addr).await;
        for i in 1..=200 {
            let req = format!(r#"{{"op":"publish","id":{i},"topic":"t","data":{{ "n" : {i} }}}}"#);
            assert_eq!(
                ask(&mut publisher, &req).await,
                format!(r#"{{"op":"published","id":{i},"seq":{i}}}"#)
            );
        }
        for s in &mut subs {
            for i in 1..=200 {
                assert_eq!(
                    next_text(s).await,
                    format!(r#"{{"topic":"t","seq":{i},"data":{{ "n" : {i} }}}}"#),
                    "subscribed twice, delivered once, in order"
                );
            }
        }
    }

    #[tokio::test]
    async fn an_unsubscribed_topic_delivers_nothing_more() {
        let addr = start().await;
        let mut sub = client(addr).await;
        ask(&mut sub, r#"{"op":"subscribe","id":1,"topics":["a","b"]}"#).await;
        assert_eq!(
            ask(&mut sub, r#"{"op":"unsubscribe","id":2,"topics":["a"]}"#).await,
            r#"{"op":"unsubscribed","id":2}"#
        );
        let mut publisher = client(addr).await;
        ask(
            &mut publisher,
            r#"{"op":"publish","id":1,"topic":"a","data":1}"#,
        )
        .await;
        ask(
            &mut publisher,
            r#"{"op":"publish","id":2,"topic":"b","data":2}"#,
        )
        .await;
        assert_eq!(
            next_text(&mut sub).await,
            r#"{"topic":"b","seq":1,"data":2}"#
        );
    }

    #[tokio::test]
    async fn a_bad_request_is_answered_and_the_connection_goes_on() {
        let addr = start().await;
        let mut c = client(addr).await;
        for bad in [
            "not json",
            r#"{"op":"shout","id":1}"#,
            r#"{"op":"publish","id":1}"#,
        ] {
            assert_eq!(
                ask(&mut c, bad).await,
                r#"{"op":"error","id":null,"reason":"bad_request"}"#,
                "{bad}"
            );
        }
        assert_eq!(
            ask(
                &mut c,
                r#"{"op":"publish","id":7,"topic":"x","data":"\u00e9"}"#
            )
            .await,
            r#"{"op":"published","id":7,"seq":1}"#
        );
        assert_eq!(
            ask(&mut c, r#"{"op":"publish","id":8,"topic":"x","data":null}"#).await,
            r#"{"op":"published","id":8,"seq":2}"#
        );
    }
}
