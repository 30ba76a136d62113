//! The per-thread workloads: closed loop, open loop, handshake storm, idle hold (fan-out
//! lives in `fanout`).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::sleep_until;

use crate::fanout::FanStats;
use crate::net::{self, Conn, Pacer, Target};
use crate::ws::{self, Ev, Rng};

/// An open-loop send more than this behind its intended time counts as late.
pub const LATE: Duration = Duration::from_millis(1);
/// Open loop: how long to wait after the end for replies still in flight.
const DRAIN: Duration = Duration::from_secs(2);

pub struct Stats {
    pub lat: Histogram<u64>,
    pub hs: Histogram<u64>,
    pub sent: u64,
    pub received: u64,
    pub errors: u64,
    pub late_sends: u64,
    pub unanswered: u64,
    pub hs_ok: u64,
    pub hs_failed: u64,
    pub idle_closed: u64,
    pub reasons: BTreeMap<String, u64>,
    pub fan: FanStats,
}

impl Stats {
    pub fn new() -> Self {
        let h = || Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds");
        Stats {
            lat: h(),
            hs: h(),
            sent: 0,
            received: 0,
            errors: 0,
            late_sends: 0,
            unanswered: 0,
            hs_ok: 0,
            hs_failed: 0,
            idle_closed: 0,
            reasons: BTreeMap::new(),
            fan: FanStats::default(),
        }
    }
    pub fn merge(&mut self, o: &Stats) {
        let _ = self.lat.add(&o.lat);
        let _ = self.hs.add(&o.hs);
        self.sent += o.sent;
        self.received += o.received;
        self.errors += o.errors;
        self.late_sends += o.late_sends;
        self.unanswered += o.unanswered;
        self.hs_ok += o.hs_ok;
        self.hs_failed += o.hs_failed;
        self.idle_closed += o.idle_closed;
        for (k, v) in &o.reasons {
            *self.reasons.entry(k.clone()).or_default() += v;
        }
        self.fan.merge(&o.fan);
    }
    pub fn error(&mut self, reason: &str) {
        self.errors += 1;
        *self.reasons.entry(reason.to_string()).or_default() += 1;
    }
    pub fn hs_fail(&mut self, reason: &str) {
        self.hs_failed += 1;
        *self.reasons.entry(reason.to_string()).or_default() += 1;
    }
}

/// The measured window; every timestamp tag is nanoseconds since `base`.
#[derive(Clone, Copy)]
pub struct Window {
    pub base: Instant,
    pub warm: Instant,
    pub end: Instant,
}

impl Window {
    pub fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }
    fn measured(&self, t: Instant) -> bool {
        t >= self.warm && t < self.end
    }
}

type St = Rc<RefCell<Stats>>;

fn io_reason(e: &std::io::Error) -> String {
    format!("io: {:?}", e.kind())
}

/// Opens `ids` in batches of `batch` concurrent handshakes, one echo each.
pub async fn open_all(
    t: &Arc<Target>,
    ids: &[usize],
    batch: usize,
    read_cap: usize,
    st: &St,
) -> Vec<Conn> {
    let echo_base = Instant::now();
    let mut conns = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(batch.max(1)) {
        let handles: Vec<_> = chunk
            .iter()
            .map(|&idx| {
                let t = t.clone();
                tokio::task::spawn_local(async move {
                    let mut rng = Rng::new(idx as u64);
                    let (mut c, hs) = net::connect(&t, idx, &mut rng, read_cap).await?;
                    match tokio::time::timeout(t.read_timeout, c.echo_once(echo_base)).await {
                        Ok(Ok(())) => Ok((c, hs)),
                        Ok(Err(e)) => Err(format!("first echo: {e}")),
                        Err(_) => Err("first echo: timeout".to_string()),
                    }
                })
            })
            .collect();
        for h in handles {
            match h.await {
                Ok(Ok((c, hs))) => {
                    let mut s = st.borrow_mut();
                    s.hs_ok += 1;
                    s.hs.saturating_record(hs.as_micros() as u64);
                    conns.push(c);
                }
                Ok(Err(r)) => st.borrow_mut().hs_fail(&r),
                Err(_) => st.borrow_mut().hs_fail("task panicked"),
            }
        }
    }
    conns
}

/// Appends replies to control frames; returns false when the connection must stop.
fn on_control(c: &mut Conn, ev: Ev, out: &mut Vec<u8>, st: &St) -> bool {
    match ev {
        Ev::Ping(p) => {
            ws::control_frame(ws::OP_PONG, &p, c.mask, out);
            true
        }
        Ev::Close(code) => {
            ws::control_frame(
                ws::OP_CLOSE,
                &code.unwrap_or(1000).to_be_bytes(),
                c.mask,
                out,
            );
            st.borrow_mut()
                .error(&format!("server close {}", code.unwrap_or(0)));
            false
        }
        Ev::Msg(_) => true,
    }
}

/// Closed loop: `depth` messages in flight; each reply triggers the next send.
pub async fn closed(mut c: Conn, w: Window, depth: usize, read_timeout: Duration, st: St) {
    let mut out = Vec::with_capacity(4096);
    let now = Instant::now();
    for _ in 0..depth {
        out.extend_from_slice(c.tmpl.with_tag(w.ns(now)));
    }
    if w.measured(now) {
        st.borrow_mut().sent += depth as u64;
    }
    if let Err(e) = c.s.write_all(&out).await {
        st.borrow_mut().error(&io_reason(&e));
        return;
    }
    out.clear();
    let mut last = now;
    let wd = sleep_until((last + read_timeout).min(w.end).into());
    tokio::pin!(wd);
    'run: loop {
        tokio::select! {
            biased;
            r = c.s.read(c.rd.spare()) => match r {
                Ok(0) => { st.borrow_mut().error("eof"); return; }
                Ok(n) => c.rd.filled(n),
                Err(e) => { st.borrow_mut().error(&io_reason(&e)); return; }
            },
            () = &mut wd => {
                let now = Instant::now();
                if now >= w.end {
                    break 'run;
                }
                if now - last >= read_timeout {
                    st.borrow_mut().error("read timeout");
                    return;
                }
                wd.as_mut().reset((last + read_timeout).min(w.end).into());
                continue;
            }
        }
        let now = Instant::now();
        last = now;
        let now_ns = w.ns(now);
        let mut stop = false;
        loop {
            match c.rd.next_event() {
                Ok(Some(Ev::Msg(tag))) => {
                    let measured = w.measured(now);
                    let mut s = st.borrow_mut();
                    if measured {
                        s.received += 1;
                        s.lat.saturating_record(now_ns.saturating_sub(tag) / 1000);
                    }
                    if now < w.end {
                        out.extend_from_slice(c.tmpl.with_tag(now_ns));
                        if measured {
                            s.sent += 1;
                        }
                    } else {
                        stop = true;
                    }
                }
                Ok(Some(ev)) => {
                    if !on_control(&mut c, ev, &mut out, &st) {
                        let _ = c.s.write_all(&out).await;
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    st.borrow_mut().error(&format!("protocol: {e}"));
                    return;
                }
            }
        }
        if !out.is_empty() {
            if let Err(e) = c.s.write_all(&out).await {
                st.borrow_mut().error(&io_reason(&e));
                return;
            }
            out.clear();
        }
        if stop {
            break;
        }
    }
    c.close().await;
}

/// Open loop: a fixed schedule per connection; latency is measured from the intended send
/// time (coordinated-omission correction), late sends keep the schedule.
#[allow(clippy::too_many_arguments)]
pub async fn open(
    mut c: Conn,
    w: Window,
    g: usize,
    total: usize,
    rate: f64,
    read_timeout: Duration,
    st: St,
) {
    let interval = total as f64 / rate;
    let offset = g as f64 / rate;
    let due = |i: u64| ((offset + i as f64 * interval) * 1e9) as u64;
    let (warm_ns, end_ns) = (w.ns(w.warm), w.ns(w.end));
    let pacer = match Pacer::new() {
        Ok(p) => p,
        Err(e) => {
            st.borrow_mut().error(&format!("timerfd: {e}"));
            return;
        }
    };
    let mut i = 0u64;
    let mut outstanding = 0u64;
    let mut sending = true;
    let arm =
        |p: &Pacer, d: u64| p.arm(Duration::from_nanos(d.saturating_sub(w.ns(Instant::now()))));
    if arm(&pacer, due(0)).is_err() {
        st.borrow_mut().error("timerfd arm");
        return;
    }
    let hard = w.end + DRAIN;
    let mut last = Instant::now();
    let wd = sleep_until((last + read_timeout).min(hard).into());
    tokio::pin!(wd);
    let mut out = Vec::with_capacity(4096);
    loop {
        tokio::select! {
            biased;
            r = c.s.read(c.rd.spare()) => match r {
                Ok(0) => { st.borrow_mut().error("eof"); break; }
                Ok(n) => c.rd.filled(n),
                Err(e) => { st.borrow_mut().error(&io_reason(&e)); break; }
            },
            r = pacer.wait(), if sending => {
                if r.is_err() {
                    st.borrow_mut().error("timerfd wait");
                    break;
                }
                let now = Instant::now();
                let now_ns = w.ns(now);
                {
                    let mut s = st.borrow_mut();
                    while due(i) <= now_ns {
                        let d = due(i);
                        if d >= end_ns {
                            sending = false;
                            break;
                        }
                        if d >= warm_ns {
                            s.sent += 1;
                            if now_ns - d > LATE.as_nanos() as u64 {
                                s.late_sends += 1;
                            }
                        }
                        if outstanding == 0 {
                            last = now;
                        }
                        outstanding += 1;
                        out.extend_from_slice(c.tmpl.with_tag(d));
                        i += 1;
                    }
                }
                if due(i) >= end_ns {
                    sending = false;
                }
                if let Err(e) = c.s.write_all(&out).await {
                    st.borrow_mut().error(&io_reason(&e));
                    break;
                }
                out.clear();
                if sending && arm(&pacer, due(i)).is_err() {
                    st.borrow_mut().error("timerfd arm");
                    break;
                }
                if !sending && outstanding == 0 {
                    break;
                }
                continue;
            }
            () = &mut wd => {
                let now = Instant::now();
                if now >= hard {
                    break;
                }
                if outstanding > 0 && now - last >= read_timeout {
                    st.borrow_mut().error("read timeout");
                    break;
                }
                let next = if outstanding > 0 { last + read_timeout } else { now + read_timeout };
                wd.as_mut().reset(next.min(hard).into());
                continue;
            }
        }
        let now = Instant::now();
        last = now;
        let now_ns = w.ns(now);
        let mut alive = true;
        loop {
            match c.rd.next_event() {
                Ok(Some(Ev::Msg(tag))) => {
                    outstanding = outstanding.saturating_sub(1);
                    let mut s = st.borrow_mut();
                    if w.measured(now) {
                        s.received += 1;
                    }
                    if tag >= warm_ns && tag < end_ns {
                        s.lat.saturating_record(now_ns.saturating_sub(tag) / 1000);
                    }
                }
                Ok(Some(ev)) => alive = on_control(&mut c, ev, &mut out, &st),
                Ok(None) => break,
                Err(e) => {
                    st.borrow_mut().error(&format!("protocol: {e}"));
                    alive = false;
                }
            }
            if !alive {
                break;
            }
        }
        if !out.is_empty() {
            if let Err(e) = c.s.write_all(&out).await {
                st.borrow_mut().error(&io_reason(&e));
                break;
            }
            out.clear();
        }
        if !alive || (!sending && outstanding == 0) {
            break;
        }
    }
    st.borrow_mut().unanswered += outstanding;
    if outstanding == 0 {
        c.close().await;
    }
}

/// How a storm paces its connections and ends them.
#[derive(Clone, Copy)]
pub struct StormPace {
    /// New connections per second (over all threads).
    pub rate: f64,
    /// Most handshakes in flight on this thread.
    pub inflight: usize,
    /// Every Nth connection (0: none) ends with half a frame and a TCP reset.
    pub abort_every: u64,
}

/// Handshake storm: new connections at a fixed rate, each handshake + upgrade + one echo + close
/// (or, every `abort_every`th, half a frame and a reset).
pub async fn storm(t: Arc<Target>, w: Window, k: usize, threads: usize, pace: StormPace, st: St) {
    let StormPace {
        rate,
        inflight,
        abort_every,
    } = pace;
    let sem = Arc::new(tokio::sync::Semaphore::new(inflight.max(1)));
    let interval = threads as f64 / rate;
    let offset = k as f64 / rate;
    // tokio's timer rounds up to whole milliseconds: pace with the timerfd instead
    let pacer = match Pacer::new() {
        Ok(p) => p,
        Err(e) => {
            st.borrow_mut().error(&format!("timerfd: {e}"));
            return;
        }
    };
    for j in 0u64.. {
        let due = w.base + Duration::from_secs_f64(offset + j as f64 * interval);
        if due >= w.end {
            break;
        }
        let now = Instant::now();
        if due > now && (pacer.arm(due - now).is_err() || pacer.wait().await.is_err()) {
            st.borrow_mut().error("timerfd");
            break;
        }
        let Ok(Ok(permit)) =
            tokio::time::timeout_at(w.end.into(), sem.clone().acquire_owned()).await
        else {
            break;
        };
        let measured = due >= w.warm;
        if measured && Instant::now() - due > LATE {
            st.borrow_mut().late_sends += 1;
        }
        let (t, st) = (t.clone(), st.clone());
        let idx = j as usize * threads + k;
        tokio::task::spawn_local(async move {
            let _permit = permit;
            let mut rng = Rng::new(idx as u64);
            match net::connect(&t, idx, &mut rng, 4096).await {
                Ok((mut c, hs)) => {
                    if measured {
                        let mut s = st.borrow_mut();
                        s.hs_ok += 1;
                        s.hs.saturating_record(hs.as_micros() as u64);
                        s.sent += 1;
                    }
                    let t0 = Instant::now();
                    let r = tokio::time::timeout(t.read_timeout, c.echo_once(w.base)).await;
                    let el = t0.elapsed();
                    if measured {
                        let mut s = st.borrow_mut();
                        match r {
                            Ok(Ok(())) => {
                                s.received += 1;
                                s.lat.saturating_record(el.as_micros() as u64);
                            }
                            Ok(Err(e)) => s.error(&format!("echo: {e}")),
                            Err(_) => s.error("echo: timeout"),
                        }
                    }
                    if abort_every > 0 && (idx as u64 + 1).is_multiple_of(abort_every) {
                        c.abort_mid_frame().await;
                    } else {
                        c.close().await;
                    }
                }
                Err(r) => {
                    if measured {
                        st.borrow_mut().hs_fail(&r);
                    }
                }
            }
        });
    }
    // wait (bounded) for the attempts still in flight
    let n = inflight.max(1) as u32;
    let _ =
        tokio::time::timeout_at((w.end + Duration::from_secs(5)).into(), sem.acquire_many(n)).await;
}

/// Idle hold: keeps an upgraded connection open, answering pings, until dropped.
pub async fn hold(mut c: Conn, closed: Rc<Cell<u64>>) {
    let mut out = Vec::new();
    loop {
        match c.s.read(c.rd.spare()).await {
            Ok(0) | Err(_) => break,
            Ok(n) => c.rd.filled(n),
        }
        loop {
            match c.rd.next_event() {
                Ok(Some(Ev::Ping(p))) => ws::control_frame(ws::OP_PONG, &p, c.mask, &mut out),
                Ok(Some(Ev::Close(_))) | Err(_) => {
                    closed.set(closed.get() + 1);
                    return;
                }
                Ok(Some(Ev::Msg(_))) => {}
                Ok(None) => break,
            }
        }
        if !out.is_empty() {
            if c.s.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
    }
    closed.set(closed.get() + 1);
}
