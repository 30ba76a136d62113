//! The fleet thread: one command connection (scripts, pipelined) and one subscription to
//! Redis, made again with backoff whenever either breaks. Nothing here blocks a core: asks come
//! in on a channel, answers and publications go out on the cores' lines.

use std::sync::Arc;
use std::time::Duration;

use futures_channel::mpsc::UnboundedReceiver;
use futures_util::StreamExt as _;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, Value};
use wssedge_proto::pubsub::Reason;

use super::wire;
use super::{FleetAsk, FleetConfig, FleetStatus};
use crate::pubsub::lines::{CoreMsg, Lines};

/// Asks sent to Redis in one pipeline at most.
const MAX_ASKS_PER_PIPELINE: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A command (or the liveness PING) not answered in this long means the link is broken.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const PING_EVERY: Duration = Duration::from_secs(1);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Redis' client for `cfg`: address, database, password and TLS trust.
pub(super) fn client(cfg: &FleetConfig) -> Result<Client, String> {
    let target = cfg.target().map_err(|e| e.to_string())?;
    let mut info = cfg
        .redis
        .as_str()
        .into_connection_info()
        .map_err(|e| format!("fleet.redis {}: {e}", cfg.redis))?;
    if let Some(password) = cfg.password().map_err(|e| e.to_string())? {
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    let client = match (&cfg.ca, target.tls) {
        (Some(ca), true) => {
            let pem = std::fs::read(ca).map_err(|e| format!("fleet.ca {}: {e}", ca.display()))?;
            Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
        }
        _ => Client::open(info),
    };
    client.map_err(|e| format!("fleet.redis {}: {e}", cfg.redis))
}

pub(super) struct Link {
    pub client: Client,
    pub status: Arc<FleetStatus>,
    pub lines: Lines,
    pub history: usize,
    /// For logs.
    pub redis: String,
}

/// The scripts' hashes on the server they were loaded on.
struct Scripts {
    publish: String,
    sync: String,
}

impl Link {
    pub fn run(self, mut asks: UnboundedReceiver<FleetAsk>) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "fleet: cannot build the runtime; the fleet stays down");
                return;
            }
        };
        rt.block_on(async move {
            let mut backoff = BACKOFF_FIRST;
            loop {
                match self.connect().await {
                    Ok((conn, subscription, scripts)) => {
                        backoff = BACKOFF_FIRST;
                        self.status.connects.inc();
                        self.set_up(true);
                        tracing::info!(redis = %self.redis, node = %self.status.node, "fleet: connected to Redis");
                        let why = self.serve(conn, subscription, &scripts, &mut asks).await;
                        self.status.disconnects.inc();
                        self.set_up(false);
                        tracing::warn!(redis = %self.redis, reason = %why, "fleet: lost Redis; reconnecting");
                    }
                    Err(e) => {
                        tracing::warn!(redis = %self.redis, error = %e, retry_in_ms = backoff.as_millis() as u64, "fleet: cannot reach Redis");
                    }
                }
                if !self.wait_down(backoff, &mut asks).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        });
    }

    fn set_up(&self, up: bool) {
        self.status.set_up(up);
        for core in 0..self.lines.cores() {
            self.lines.send(core, CoreMsg::FleetState { up });
        }
    }

    async fn connect(
        &self,
    ) -> Result<(MultiplexedConnection, redis::aio::PubSubStream, Scripts), String> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| e.to_string())?;
        let load = |code: String| redis::cmd("SCRIPT").arg("LOAD").arg(code).clone();
        let scripts = Scripts {
            publish: load(wire::publish_script())
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("SCRIPT LOAD: {e}"))?,
            sync: load(wire::sync_script())
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("SCRIPT LOAD: {e}"))?,
        };
        let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| "subscription: connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(RESPONSE_TIMEOUT, pubsub.subscribe(wire::CHANNEL))
            .await
            .map_err(|_| "SUBSCRIBE timed out".to_string())?
            .map_err(|e| format!("SUBSCRIBE: {e}"))?;
        Ok((conn, pubsub.into_on_message(), scripts))
    }

    /// Serves until the link breaks; why it did.
    async fn serve(
        &self,
        mut conn: MultiplexedConnection,
        mut subscription: redis::aio::PubSubStream,
        scripts: &Scripts,
        asks: &mut UnboundedReceiver<FleetAsk>,
    ) -> String {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // A core behind on its inbox: leave the subscription in the socket a moment.
            if self.status.behind() {
                self.status.paused.inc();
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            tokio::select! {
                msg = subscription.next() => match msg {
                    Some(msg) => self.received(msg.get_payload_bytes()),
                    None => return "the subscription closed".into(),
                },
                ask = asks.next() => {
                    let Some(first) = ask else { return "the edge is stopping".into() };
                    let mut batch = vec![first];
                    while batch.len() < MAX_ASKS_PER_PIPELINE {
                        match asks.try_recv() {
                            Ok(ask) => batch.push(ask),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = self.run_batch(&mut conn, scripts, batch).await {
                        return e;
                    }
                }
                _ = ping.tick() => {
                    let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
                    if let Err(e) = pong {
                        return format!("PING: {e}");
                    }
                }
            }
        }
    }

    /// One message on the channel: to its topic's owner core.
    fn received(&self, payload: &[u8]) {
        match wire::parse_publication(payload) {
            Ok(p) => {
                self.status.received.inc();
                let owner = self.lines.owner(&p.topic);
                self.status.sent(owner);
                self.lines.send(owner, CoreMsg::FleetPublication(p));
            }
            Err(e) => {
                self.status.bad_messages.inc();
                tracing::warn!(error = %e, bytes = payload.len(), "fleet: dropped a message on the publication channel");
            }
        }
    }

    /// Sends `batch` as one pipeline and hands out the answers, in order. An error that breaks
    /// the pipeline fails every ask in it and breaks the link.
    async fn run_batch(
        &self,
        conn: &mut MultiplexedConnection,
        scripts: &Scripts,
        batch: Vec<FleetAsk>,
    ) -> Result<(), String> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let history = self.history.to_string();
        let epoch = fresh_epoch();
        for ask in &batch {
            match ask {
                FleetAsk::Publish { topic, data, .. } => {
                    let [seq, ep, log] = wire::topic_keys(topic);
                    pipe.cmd("EVALSHA")
                        .arg(&scripts.publish)
                        .arg(3)
                        .arg(seq)
                        .arg(ep)
                        .arg(log)
                        .arg(&epoch)
                        .arg(&history)
                        .arg(&**topic)
                        .arg(&data[..]);
                }
                FleetAsk::Sync { topic } => {
                    let [seq, ep, log] = wire::topic_keys(topic);
                    pipe.cmd("EVALSHA")
                        .arg(&scripts.sync)
                        .arg(3)
                        .arg(seq)
                        .arg(ep)
                        .arg(log)
                        .arg(&epoch)
                        .arg(&history);
                }
            }
        }
        let answers: Result<Vec<Value>, _> = pipe.query_async(conn).await;
        let (answers, broken) = match answers {
            Ok(a) if a.len() == batch.len() => (a.into_iter().map(Some).collect(), None),
            Ok(_) => (
                vec![None; batch.len()],
                Some("a pipeline answered short".to_string()),
            ),
            Err(e) => (vec![None; batch.len()], Some(e.to_string())),
        };
        for (ask, answer) in batch.into_iter().zip(answers) {
            self.answer(ask, answer.as_ref());
        }
        match broken {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn answer(&self, ask: FleetAsk, answer: Option<&Value>) {
        match ask {
            FleetAsk::Publish { asker, request, .. } => {
                let result = match answer.map(wire::parse_published) {
                    Some(Ok((_, seq))) => {
                        self.status.published.inc();
                        Ok(seq)
                    }
                    other => {
                        self.status.publish_failures.inc();
                        if let Some(Err(e)) = other {
                            tracing::warn!(error = %e, "fleet: a publication was not sequenced");
                        }
                        Err(Reason::FleetUnavailable)
                    }
                };
                if let Some(asker) = asker {
                    self.lines.send(
                        asker.core,
                        CoreMsg::Published {
                            client: asker.client,
                            request,
                            result,
                        },
                    );
                }
            }
            FleetAsk::Sync { topic } => {
                let result = match answer.map(wire::parse_synced) {
                    Some(Ok(synced)) => {
                        self.status.syncs.inc();
                        Ok(synced)
                    }
                    other => {
                        if let Some(Err(e)) = other {
                            tracing::warn!(topic = %topic, error = %e, "fleet: a topic could not be read back");
                        }
                        Err(())
                    }
                };
                let owner = self.lines.owner(&topic);
                self.lines
                    .send(owner, CoreMsg::FleetSynced { topic, result });
            }
        }
    }

    /// The link is down for `backoff`: asks fail at once meanwhile (nothing waits on Redis).
    /// False when the edge is stopping.
    async fn wait_down(&self, backoff: Duration, asks: &mut UnboundedReceiver<FleetAsk>) -> bool {
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return true,
                ask = asks.next() => match ask {
                    Some(ask) => self.answer(ask, None),
                    None => return false,
                },
            }
        }
    }
}

/// A new epoch, for a topic Redis has none of: random, so that a topic made again after Redis
/// lost it never reuses one.
fn fresh_epoch() -> String {
    let mut epoch = crate::pubsub::owner::random_epoch_prefix();
    epoch.push('r');
    epoch
}
