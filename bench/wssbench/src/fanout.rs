//! Fan-out: one publisher connection publishes to one topic at a fixed rate; many subscriber
//! connections receive it. Latency is publish→receive (the publisher's intended send time is in
//! the data), loss and order come from each subscriber's sequence numbers.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::sleep_until;

use crate::modes::{Stats, Window, LATE};
use crate::net::{self, Conn, Pacer, Target};
use crate::scan::{self, Msg, Stamp};
use crate::ws::{self, Frame, Rng};
use crate::{deflate, market};

/// After the last publication: how long subscribers wait for deliveries still in flight.
const DRAIN: Duration = Duration::from_secs(2);
/// Most publications written per timer wake-up (bounds the write buffer after a stall).
const MAX_BATCH: u64 = 1024;
/// Most publications awaiting their answer; beyond it sends wait (and count as late).
const MAX_INFLIGHT_JSON: u64 = 4096;
/// nchan: most pipelined POSTs awaiting their response.
const MAX_INFLIGHT_HTTP: u64 = 64;
/// A subscriber's first read buffer (grows, bounded, for larger messages).
const SUB_READ_CAP: usize = 4096;
/// How often a subscriber that is done reading checks whether the last publication is known.
const DONE_POLL: Duration = Duration::from_millis(20);
/// The thread CPU share from which the generator, not the server, sets the pace.
pub const CLIENT_BOUND_BUSY: f64 = 0.9;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FanoutProto {
    /// wssedge's client protocol (text frames, JSON): subscribe / publish / deliveries with seq.
    Json,
    /// nginx + nchan: WebSocket subscribers on /sub/TOPIC, HTTP POST publisher on /pub/TOPIC.
    Nchan,
}

impl FanoutProto {
    pub fn name(self) -> &'static str {
        match self {
            FanoutProto::Json => "json",
            FanoutProto::Nchan => "nchan",
        }
    }
}

/// Fan-out counters (merged over threads).
#[derive(Default, Clone)]
pub struct FanStats {
    /// Subscribers connected and subscribed at the start.
    pub subscribers: u64,
    /// Subscribers that were closed or failed before the end.
    pub closed: u64,
    /// Publications sent inside the measured window.
    pub publications: u64,
    /// Deliveries of in-window publications, all subscribers.
    pub deliveries: u64,
    /// The same, only subscribers still open at the end (what loss is computed from).
    pub deliveries_open: u64,
    /// Sequence numbers skipped (a gap of k counts k).
    pub seq_gaps: u64,
    pub out_of_order: u64,
    pub duplicates: u64,
    /// Deliveries before the publisher started (a server replaying its buffer); not counted.
    pub stale: u64,
    pub publish_errors: u64,
    /// nchan: new publisher connections after the server ended keep-alive.
    pub publisher_reconnects: u64,
    /// Highest CPU share of one generator thread over the window.
    pub max_thread_busy: f64,
}

impl FanStats {
    pub fn merge(&mut self, o: &FanStats) {
        self.subscribers += o.subscribers;
        self.closed += o.closed;
        self.publications += o.publications;
        self.deliveries += o.deliveries;
        self.deliveries_open += o.deliveries_open;
        self.seq_gaps += o.seq_gaps;
        self.out_of_order += o.out_of_order;
        self.duplicates += o.duplicates;
        self.stale += o.stale;
        self.publish_errors += o.publish_errors;
        self.publisher_reconnects += o.publisher_reconnects;
        self.max_thread_busy = self.max_thread_busy.max(o.max_thread_busy);
    }

    pub fn expected(&self) -> u64 {
        self.publications * self.subscribers.saturating_sub(self.closed)
    }

    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.deliveries_open)
    }
}

/// What every thread needs to know about the run (read-only, but for `last_n`).
pub struct Plan {
    pub proto: FanoutProto,
    pub topic: String,
    /// Publications per second.
    pub rate: f64,
    /// Size of a publication's data value.
    pub payload: usize,
    /// `data` is a market-data book snapshot (else the stamp and a pad).
    pub market: bool,
    pub subscriber: Target,
    /// json: the same as `subscriber`; nchan: a plain TLS (or TCP) connection, no upgrade.
    pub publisher: Target,
    /// `Authorization: …\r\n` or empty.
    pub auth: String,
    pub host_header: String,
    /// The number of the publisher's last publication once it is known, else 0.
    pub last_n: AtomicU64,
}

type St = Rc<RefCell<Stats>>;

fn io_reason(what: &str, e: &std::io::Error) -> String {
    format!("{what}: io: {:?}", e.kind())
}

/// One subscriber: connected, subscribed, and the seq it was told is the topic's last.
struct Subscriber {
    c: Conn,
    last_seq: Option<u64>,
}

/// Opens and subscribes `ids`, `batch` handshakes in flight at a time; each subscriber starts
/// reading (and answering pings) as soon as it is subscribed. Returns the subscribers' tasks.
pub async fn open_subscribers(
    plan: &Arc<Plan>,
    ids: &[usize],
    batch: usize,
    start: &watch::Receiver<Option<Window>>,
    st: &St,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut subs = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(batch.max(1)) {
        let handles: Vec<_> = chunk
            .iter()
            .map(|&idx| {
                let plan = plan.clone();
                tokio::task::spawn_local(async move {
                    let mut rng = Rng::new(idx as u64);
                    let t = &plan.subscriber;
                    let (mut c, hs) = net::connect(t, idx, &mut rng, SUB_READ_CAP).await?;
                    let last_seq = match plan.proto {
                        FanoutProto::Json => {
                            match tokio::time::timeout(t.read_timeout, subscribe(&mut c, &plan))
                                .await
                            {
                                Ok(r) => r?,
                                Err(_) => return Err("subscribe: timeout".to_string()),
                            }
                        }
                        FanoutProto::Nchan => None,
                    };
                    Ok((Subscriber { c, last_seq }, hs))
                })
            })
            .collect();
        for h in handles {
            let r = h.await;
            let mut s = st.borrow_mut();
            match r {
                Ok(Ok((sub, hs))) => {
                    s.hs_ok += 1;
                    s.hs.saturating_record(hs.as_micros() as u64);
                    s.fan.subscribers += 1;
                    subs.push(tokio::task::spawn_local(subscriber(
                        sub,
                        plan.clone(),
                        start.clone(),
                        st.clone(),
                    )));
                }
                Ok(Err(r)) => s.hs_fail(&r),
                Err(_) => s.hs_fail("task panicked"),
            }
        }
    }
    subs
}

/// Sends the subscribe request and waits for `subscribed`; returns the seq it names.
async fn subscribe(c: &mut Conn, plan: &Plan) -> Result<Option<u64>, String> {
    let mut out = Vec::with_capacity(128);
    let req = format!(r#"{{"op":"subscribe","id":1,"topics":["{}"]}}"#, plan.topic);
    ws::text_frame(req.as_bytes(), c.mask, &mut out);
    loop {
        if !out.is_empty() {
            c.s.write_all(&out)
                .await
                .map_err(|e| io_reason("subscribe", &e))?;
            out.clear();
        }
        let n =
            c.s.read(c.rd.spare())
                .await
                .map_err(|e| io_reason("subscribe", &e))?;
        if n == 0 {
            return Err("subscribe: eof".into());
        }
        c.rd.filled(n);
        loop {
            match c.rd.next_frame() {
                Ok(Some(Frame::Data(m))) => match scan::json_message(m) {
                    Msg::Subscribed { seq } => return Ok(seq),
                    Msg::Error => return Err("subscribe: refused".into()),
                    _ => {}
                },
                Ok(Some(Frame::Ping(p))) => ws::control_frame(ws::OP_PONG, &p, c.mask, &mut out),
                Ok(Some(Frame::Close(code))) => {
                    return Err(format!("subscribe: server close {}", code.unwrap_or(0)))
                }
                Ok(None) => break,
                Err(e) => return Err(format!("subscribe: protocol: {e}")),
            }
        }
    }
}

/// Per-subscriber order tracking: each sequence number must be the previous + 1.
#[derive(Default)]
struct Order {
    prev: Option<u64>,
    gaps: u64,
    out_of_order: u64,
    duplicates: u64,
}

impl Order {
    /// Is this a new delivery (not a duplicate)?
    fn see(&mut self, s: u64) -> bool {
        match self.prev {
            Some(p) if s == p => {
                self.duplicates += 1;
                false
            }
            Some(p) if s < p => {
                self.out_of_order += 1;
                true
            }
            Some(p) => {
                self.gaps += s - p - 1;
                self.prev = Some(s);
                true
            }
            None => {
                self.prev = Some(s);
                true
            }
        }
    }
}

/// Receives until the last publication arrived (or the drain ends), then closes politely.
async fn subscriber(
    sub: Subscriber,
    plan: Arc<Plan>,
    mut start: watch::Receiver<Option<Window>>,
    st: St,
) {
    let Subscriber { mut c, last_seq } = sub;
    let mut order = Order {
        prev: last_seq,
        ..Order::default()
    };
    let json = plan.proto == FanoutProto::Json;
    let mut w: Option<Window> = *start.borrow();
    let mut out = Vec::new();
    let (mut delivered, mut max_n, mut stale) = (0u64, 0u64, 0u64);
    let mut failure: Option<String> = None;
    let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let timer = sleep_until(w.map_or(far, |w| w.end).into());
    tokio::pin!(timer);
    let done = |max_n: u64| {
        let last = plan.last_n.load(Ordering::Relaxed);
        last != 0 && max_n >= last
    };
    loop {
        tokio::select! {
            biased;
            r = c.s.read(c.rd.spare()) => match r {
                Ok(0) => { failure = Some("subscriber: eof".into()); break; }
                Ok(n) => c.rd.filled(n),
                Err(e) => { failure = Some(io_reason("subscriber", &e)); break; }
            },
            r = start.changed(), if w.is_none() => {
                if r.is_err() {
                    return; // main gave up before the start
                }
                w = *start.borrow();
                if let Some(w) = w {
                    timer.as_mut().reset(w.end.into());
                }
                continue;
            }
            () = &mut timer => {
                let Some(w) = w else { continue };
                let now = Instant::now();
                if now >= w.end + DRAIN || done(max_n) {
                    break;
                }
                timer.as_mut().reset((now + DONE_POLL).min(w.end + DRAIN).into());
                continue;
            }
        }
        if w.is_none() {
            // the read branch may win the race with the start notice
            w = *start.borrow();
            if let Some(w) = w {
                timer.as_mut().reset(w.end.into());
            }
        }
        let now = Instant::now();
        let (now_ns, warm_ns, end_ns) = match w {
            Some(w) => (w.ns(now), w.ns(w.warm), w.ns(w.end)),
            None => (0, u64::MAX, 0),
        };
        {
            let mut s = st.borrow_mut();
            loop {
                let stamp_seq = match c.rd.next_frame() {
                    Ok(Some(Frame::Data(m))) => {
                        if json {
                            match scan::json_message(m) {
                                Msg::Delivery { seq, stamp } => {
                                    Some((seq.unwrap_or(stamp.n), stamp))
                                }
                                Msg::Error => {
                                    s.error("subscriber: error answer");
                                    None
                                }
                                _ => None,
                            }
                        } else {
                            scan::stamp(m).map(|x: Stamp| (x.n, x))
                        }
                    }
                    Ok(Some(Frame::Ping(p))) => {
                        ws::control_frame(ws::OP_PONG, &p, c.mask, &mut out);
                        None
                    }
                    Ok(Some(Frame::Close(code))) => {
                        ws::control_frame(
                            ws::OP_CLOSE,
                            &code.unwrap_or(1000).to_be_bytes(),
                            c.mask,
                            &mut out,
                        );
                        failure = Some(format!("subscriber: server close {}", code.unwrap_or(0)));
                        break;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        failure = Some(format!("subscriber: protocol: {e}"));
                        break;
                    }
                };
                let Some((seq, stamp)) = stamp_seq else {
                    continue;
                };
                if w.is_none() {
                    // before the publisher started: an old message the server replayed
                    stale += 1;
                    continue;
                }
                if order.see(seq) && stamp.t >= warm_ns && stamp.t < end_ns {
                    delivered += 1;
                    s.lat
                        .saturating_record(now_ns.saturating_sub(stamp.t) / 1000);
                }
                max_n = max_n.max(stamp.n);
            }
        }
        if !out.is_empty() {
            if let Err(e) = c.s.write_all(&out).await {
                failure.get_or_insert_with(|| io_reason("subscriber", &e));
            }
            out.clear();
        }
        if failure.is_some() {
            break;
        }
        if w.is_some_and(|w| now >= w.end) && done(max_n) {
            break;
        }
    }
    {
        let mut s = st.borrow_mut();
        s.received += delivered;
        s.fan.deliveries += delivered;
        s.fan.seq_gaps += order.gaps;
        s.fan.out_of_order += order.out_of_order;
        s.fan.duplicates += order.duplicates;
        s.fan.stale += stale;
        match &failure {
            Some(r) => {
                s.error(r);
                s.fan.closed += 1;
            }
            None => s.fan.deliveries_open += delivered,
        }
    }
    if failure.is_none() {
        c.close().await;
    }
}

/// Connects the publisher (json: upgraded WebSocket; nchan: plain TLS for HTTP POSTs).
pub async fn connect_publisher(plan: &Plan) -> Result<Conn, String> {
    let mut rng = Rng::new(u64::MAX);
    let (c, _) = net::connect(&plan.publisher, usize::MAX, &mut rng, 64 << 10).await?;
    Ok(c)
}

/// Encodes publication `n` (stamped `t`) onto the wire for this protocol.
struct Encoder {
    json: bool,
    /// json: `{"op":"publish","id":` … ; nchan: the request head up to `Content-Length: `.
    head: Vec<u8>,
    topic_part: Vec<u8>,
    scratch: Vec<u8>,
    payload: usize,
    mask: [u8; 4],
    market: bool,
    /// json over a connection that agreed to compression: the window publications are
    /// deflated for.
    deflate_window: Option<u8>,
    compressed: Vec<u8>,
}

impl Encoder {
    fn new(plan: &Plan, c: &Conn) -> Self {
        let mask = c.mask;
        let json = plan.proto == FanoutProto::Json;
        let head = if json {
            br#"{"op":"publish","id":"#.to_vec()
        } else {
            format!(
                "POST /pub/{} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{}Content-Length: ",
                plan.topic, plan.host_header, plan.auth
            )
            .into_bytes()
        };
        Encoder {
            json,
            head,
            topic_part: format!(r#","topic":"{}","data":"#, plan.topic).into_bytes(),
            scratch: Vec::with_capacity(plan.payload + 128),
            payload: plan.payload,
            mask,
            market: plan.market,
            deflate_window: c.deflate.map(|a| a.client_window_bits),
            compressed: Vec::new(),
        }
    }

    fn data(&self, t: u64, n: u64, out: &mut Vec<u8>) {
        if self.market {
            market::write_data(t, n, self.payload, out);
        } else {
            scan::write_data(t, n, self.payload, out);
        }
    }

    fn encode(&mut self, n: u64, t: u64, out: &mut Vec<u8>) {
        use std::io::Write as _;
        net::WIRE[net::PUBLISHER].message_sent();
        let mut b = std::mem::take(&mut self.scratch);
        b.clear();
        if self.json {
            b.extend_from_slice(&self.head);
            let _ = write!(b, "{n}");
            b.extend_from_slice(&self.topic_part);
            self.data(t, n, &mut b);
            b.push(b'}');
            self.compressed.clear();
            match self.deflate_window {
                Some(w) if deflate::compress(&b, w, &mut self.compressed) => {
                    ws::data_frame(0x1, true, &self.compressed, self.mask, out)
                }
                _ => ws::text_frame(&b, self.mask, out),
            }
        } else {
            self.data(t, n, &mut b);
            out.extend_from_slice(&self.head);
            let _ = write!(out, "{}\r\n\r\n", b.len());
            out.extend_from_slice(&b);
        }
        self.scratch = b;
    }
}

/// What the publisher's answers said.
#[derive(Default)]
struct Answers {
    /// Publications answered (accepted or refused), in order.
    answered: u64,
    refused: u64,
    /// nchan: the last answer closes the connection (nginx's `keepalive_requests`); the
    /// publications after it were not taken and go again on a new connection.
    closing: bool,
}

/// Reads the publisher's answers, or says why the publisher must stop.
fn answers(c: &mut Conn, json: bool, out: &mut Vec<u8>, st: &St) -> Result<Answers, String> {
    let mut a = Answers::default();
    if json {
        loop {
            match c.rd.next_frame() {
                Ok(Some(Frame::Data(m))) => match scan::json_message(m) {
                    Msg::Published => a.answered += 1,
                    Msg::Error => {
                        a.answered += 1;
                        a.refused += 1;
                    }
                    _ => {}
                },
                Ok(Some(Frame::Ping(p))) => ws::control_frame(ws::OP_PONG, &p, c.mask, out),
                Ok(Some(Frame::Close(code))) => {
                    return Err(format!("publisher: server close {}", code.unwrap_or(0)))
                }
                Ok(None) => return Ok(a),
                Err(e) => return Err(format!("publisher: protocol: {e}")),
            }
        }
    }
    loop {
        match scan::http_response(c.rd.pending()) {
            Ok(Some(r)) => {
                c.rd.consume(r.len);
                match r.status {
                    100..=199 => continue,
                    201 | 202 => a.answered += 1,
                    s => {
                        a.answered += 1;
                        a.refused += 1;
                        st.borrow_mut().error(&format!("publish: status {s}"));
                    }
                }
                if r.close {
                    a.closing = true;
                    return Ok(a);
                }
            }
            Ok(None) => return Ok(a),
            Err(e) => return Err(format!("publisher: {e}")),
        }
    }
}

/// Publishes on schedule from the window's base until its end, reading every answer.
/// Each publication carries its intended send time, so a late send shows as latency.
pub async fn publisher(mut c: Conn, plan: Arc<Plan>, w: Window, read_timeout: Duration, st: St) {
    let json = plan.proto == FanoutProto::Json;
    let inflight_cap = if json {
        MAX_INFLIGHT_JSON
    } else {
        MAX_INFLIGHT_HTTP
    };
    let due = |i: u64| (i as f64 / plan.rate * 1e9) as u64;
    let (warm_ns, end_ns) = (w.ns(w.warm), w.ns(w.end));
    let mut enc = Encoder::new(&plan, &c);
    let pacer = match Pacer::new() {
        Ok(p) => p,
        Err(e) => {
            st.borrow_mut().error(&format!("timerfd: {e}"));
            return;
        }
    };
    let arm =
        |p: &Pacer, d: u64| p.arm(Duration::from_nanos(d.saturating_sub(w.ns(Instant::now()))));
    let mut i = 0u64; // publications sent; the next is number i + 1
    let mut outstanding = 0u64;
    let mut sending = due(0) < end_ns;
    let mut armed = sending && arm(&pacer, due(0)).is_ok();
    let hard = w.end + DRAIN;
    let mut last = Instant::now();
    let wd = sleep_until((last + read_timeout).min(hard).into());
    tokio::pin!(wd);
    let mut out = Vec::with_capacity(64 << 10);
    let mut failure: Option<String> = None;
    // nchan: (n, t) of the POSTs not answered yet, to send again after a keep-alive close
    let mut in_flight: VecDeque<(u64, u64)> = VecDeque::with_capacity(MAX_INFLIGHT_HTTP as usize);
    let mut reconnect = false;
    loop {
        tokio::select! {
            biased;
            r = c.s.read(c.rd.spare()) => match r {
                Ok(0) => { failure = Some("publisher: eof".into()); break; }
                Ok(n) => {
                    c.rd.filled(n);
                    last = Instant::now();
                    match answers(&mut c, json, &mut out, &st) {
                        Ok(a) => {
                            outstanding = outstanding.saturating_sub(a.answered);
                            let k = (a.answered as usize).min(in_flight.len());
                            in_flight.drain(..k);
                            st.borrow_mut().fan.publish_errors += a.refused;
                            reconnect = a.closing;
                        }
                        Err(e) => { failure = Some(e); break; }
                    }
                }
                Err(e) => { failure = Some(io_reason("publisher", &e)); break; }
            },
            r = pacer.wait(), if armed => {
                armed = false;
                if r.is_err() {
                    failure = Some("publisher: timerfd wait".into());
                    break;
                }
            }
            () = &mut wd => {
                let now = Instant::now();
                if now >= hard {
                    break;
                }
                if outstanding > 0 && now - last >= read_timeout {
                    failure = Some("publisher: read timeout".into());
                    break;
                }
                let next = if outstanding > 0 { last + read_timeout } else { now + read_timeout };
                wd.as_mut().reset(next.min(hard).into());
                continue;
            }
        }
        if reconnect {
            reconnect = false;
            st.borrow_mut().fan.publisher_reconnects += 1;
            c = match connect_publisher(&plan).await {
                Ok(c) => c,
                Err(e) => {
                    failure = Some(format!("publisher: reconnect: {e}"));
                    break;
                }
            };
            for &(n, t) in &in_flight {
                enc.encode(n, t, &mut out);
            }
            last = Instant::now();
        }
        // send what is due, as far as the in-flight cap allows
        let now = Instant::now();
        let now_ns = w.ns(now);
        let mut batch = 0;
        while sending && due(i) <= now_ns && outstanding < inflight_cap && batch < MAX_BATCH {
            let d = due(i);
            let n = i + 1;
            if due(n) >= end_ns {
                // the last publication: subscribers may stop once they have it
                sending = false;
                plan.last_n.store(n, Ordering::Relaxed);
            }
            if d >= warm_ns {
                let mut s = st.borrow_mut();
                s.sent += 1;
                s.fan.publications += 1;
                if now_ns - d > LATE.as_nanos() as u64 {
                    s.late_sends += 1;
                }
            }
            if outstanding == 0 {
                last = now;
            }
            enc.encode(n, d, &mut out);
            if !json {
                in_flight.push_back((n, d));
            }
            outstanding += 1;
            i = n;
            batch += 1;
        }
        if !out.is_empty() {
            if let Err(e) = c.s.write_all(&out).await {
                failure = Some(io_reason("publisher", &e));
                break;
            }
            out.clear();
        }
        if sending && !armed && outstanding < inflight_cap {
            // a full batch re-arms at once; otherwise at the next due time
            if arm(&pacer, due(i)).is_err() {
                failure = Some("publisher: timerfd arm".into());
                break;
            }
            armed = true;
        }
        if !sending && outstanding == 0 {
            break;
        }
    }
    if plan.last_n.load(Ordering::Relaxed) == 0 {
        plan.last_n.store(i.max(1), Ordering::Relaxed);
    }
    {
        let mut s = st.borrow_mut();
        s.unanswered += outstanding;
        if let Some(f) = &failure {
            s.error(f);
        }
    }
    if failure.is_none() {
        c.close().await;
    }
}

/// CPU seconds this thread has used.
pub fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes a valid, owned timespec; we read it only on success.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Records this thread's CPU share over the measured window.
pub async fn sample_busy(w: Window, st: St) {
    sleep_until(w.warm.into()).await;
    let c0 = thread_cpu();
    sleep_until(w.end.into()).await;
    let busy = (thread_cpu() - c0) / (w.end - w.warm).as_secs_f64();
    let mut s = st.borrow_mut();
    s.fan.max_thread_busy = s.fan.max_thread_busy.max(busy);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_counts_gaps_duplicates_and_reorders() {
        let mut o = Order {
            prev: Some(10),
            ..Order::default()
        };
        let seen: Vec<bool> = [11, 12, 12, 15, 13, 16].iter().map(|&s| o.see(s)).collect();
        assert_eq!(seen, [true, true, false, true, true, true]);
        assert_eq!((o.gaps, o.duplicates, o.out_of_order), (2, 1, 1));
        let mut fresh = Order::default();
        assert!(fresh.see(100));
        assert!(fresh.see(101));
        assert_eq!(fresh.gaps, 0);
    }

    #[test]
    fn loss_counts_only_open_subscribers() {
        let f = FanStats {
            subscribers: 10,
            closed: 1,
            publications: 100,
            deliveries: 950,
            deliveries_open: 899,
            ..FanStats::default()
        };
        assert_eq!(f.expected(), 900);
        assert_eq!(f.lost(), 1);
    }
}
