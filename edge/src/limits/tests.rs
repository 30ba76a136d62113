//! The limiter as a connection sees it, config validation, and the identity budget's
//! cross-core tolerance (simulated instants throughout: fast and exact).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::config_error::ConfigError;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn messages(per_s: u64, burst: u64) -> RateLimit {
    RateLimit {
        messages: Some(Rate::per_second(per_s, burst)),
        bytes: None,
    }
}

fn bytes(per_s: u64, burst: u64) -> RateLimit {
    RateLimit {
        messages: None,
        bytes: Some(Rate::per_second(per_s, burst)),
    }
}

const CONN: Verdict = Verdict::Exceeded {
    which: Scope::Connection,
    unit: Unit::Messages,
};
const CONN_BYTES: Verdict = Verdict::Exceeded {
    which: Scope::Connection,
    unit: Unit::Bytes,
};
const IDENT: Verdict = Verdict::Exceeded {
    which: Scope::Identity,
    unit: Unit::Messages,
};

// ---- config ----

fn key_of(e: ConfigError) -> &'static str {
    match e {
        ConfigError::Invalid { key, .. } => key,
        other => panic!("not an Invalid: {other}"),
    }
}

#[test]
fn nothing_set_is_unlimited() {
    let limit = RateConfig::default().compile().unwrap();
    assert!(limit.is_unlimited());
    let t0 = Instant::now();
    let mut l = ConnectionLimiter::new(&limit, None, t0);
    assert!(l.is_unlimited());
    for _ in 0..10_000 {
        assert_eq!(l.check(t0, 16 << 20), Verdict::Pass);
    }
    // An unlimited identity limit attaches nothing either.
    let core = CoreBudgets::new(IdentityBudgets::new(limit));
    assert!(core.attach("alice", t0).is_none());
}

#[test]
fn a_user_gives_only_what_they_need() {
    let c: RateConfig = toml::from_str("bytes_per_s = 1000").unwrap();
    let limit = c.compile().unwrap();
    assert_eq!(limit.messages, None);
    assert_eq!(
        limit.bytes,
        Some(Rate::per_second(1000, 1000)),
        "burst: one second"
    );

    // An integer in TOML is a rate too; fractional rates round the default burst up.
    let c: RateConfig = toml::from_str("messages_per_s = 100").unwrap();
    assert_eq!(
        c.compile().unwrap().messages,
        Some(Rate::per_second(100, 100))
    );
    let c: RateConfig = toml::from_str("messages_per_s = 2.5").unwrap();
    assert_eq!(
        c.compile().unwrap().messages,
        Some(Rate::from_milli(2500, 3))
    );
    let c: RateConfig = toml::from_str(
        "messages_per_s = 0.5\nburst_messages = 10\nbytes_per_s = 8\nburst_bytes = 2",
    )
    .unwrap();
    let limit = c.compile().unwrap();
    assert_eq!(limit.messages, Some(Rate::from_milli(500, 10)));
    assert_eq!(limit.bytes, Some(Rate::per_second(8, 2)));

    let unknown = toml::from_str::<RateConfig>("messages_per_second = 5").unwrap_err();
    assert!(
        unknown.to_string().contains("messages_per_second"),
        "{unknown}"
    );
}

#[test]
fn validation_errors_name_the_key() {
    let cases = [
        (
            RateConfig {
                messages_per_s: Some(0.0),
                ..Default::default()
            },
            "messages_per_s",
        ),
        (
            RateConfig {
                messages_per_s: Some(-3.0),
                ..Default::default()
            },
            "messages_per_s",
        ),
        (
            RateConfig {
                messages_per_s: Some(f64::NAN),
                ..Default::default()
            },
            "messages_per_s",
        ),
        (
            RateConfig {
                messages_per_s: Some(f64::INFINITY),
                ..Default::default()
            },
            "messages_per_s",
        ),
        (
            RateConfig {
                messages_per_s: Some(1e10),
                ..Default::default()
            },
            "messages_per_s",
        ),
        (
            RateConfig {
                messages_per_s: Some(0.0001),
                ..Default::default()
            },
            "messages_per_s",
        ),
        (
            RateConfig {
                bytes_per_s: Some(0),
                ..Default::default()
            },
            "bytes_per_s",
        ),
        (
            RateConfig {
                bytes_per_s: Some(u64::MAX),
                ..Default::default()
            },
            "bytes_per_s",
        ),
        (
            RateConfig {
                messages_per_s: Some(10.0),
                burst_messages: Some(0),
                ..Default::default()
            },
            "burst_messages",
        ),
        (
            RateConfig {
                burst_messages: Some(10),
                ..Default::default()
            },
            "burst_messages",
        ),
        (
            RateConfig {
                burst_bytes: Some(10),
                ..Default::default()
            },
            "burst_bytes",
        ),
        (
            RateConfig {
                bytes_per_s: Some(10),
                burst_bytes: Some(u64::MAX),
                ..Default::default()
            },
            "burst_bytes",
        ),
    ];
    for (config, key) in cases {
        let e = config.validate().unwrap_err();
        let shown = e.to_string();
        assert_eq!(key_of(e), key, "{config:?}: {shown}");
        assert!(shown.contains(key), "{shown}");
    }
    // Inside a section, errors carry the full key.
    let e = RateConfig {
        bytes_per_s: Some(0),
        ..Default::default()
    }
    .validate_at(&rate_keys!("limits.connection_rate"))
    .unwrap_err();
    assert_eq!(key_of(e), "limits.connection_rate.bytes_per_s");
    assert!(RateConfig {
        messages_per_s: Some(0.05),
        bytes_per_s: Some(1),
        ..Default::default()
    }
    .validate()
    .is_ok());
}

#[test]
fn policy_close_is_1008_rate_limited_and_drop_sends_nothing() {
    assert_eq!(
        RatePolicy::default().refusal(),
        Some(Refusal::Close {
            code: 1008,
            reason: crate::reason::Reason::RateLimited
        })
    );
    assert_eq!(RatePolicy::Drop.refusal(), None);
    #[derive(Deserialize)]
    struct Route {
        policy: RatePolicy,
    }
    let r: Route = toml::from_str("policy = \"drop\"").unwrap();
    assert_eq!(r.policy, RatePolicy::Drop);
    assert!(toml::from_str::<Route>("policy = \"ignore\"").is_err());
    assert_eq!(Scope::Identity.as_str(), "identity");
    assert_eq!(Scope::Connection.as_str(), "connection");
    assert_eq!(Scope::Control.as_str(), "control");
    assert_eq!(Unit::Bytes.as_str(), "bytes");
}

// ---- control frames ----

#[test]
fn control_frames_have_their_own_allowance_and_never_take_from_messages() {
    let t0 = Instant::now();
    let mut l =
        ConnectionLimiter::new(&messages(10, 2), None, t0).with_control(&messages(20, 5), t0);
    assert!(!l.is_unlimited());
    for i in 0..5 {
        assert_eq!(l.check_control(t0, 4), Verdict::Pass, "control frame {i}");
    }
    assert_eq!(
        l.check_control(t0, 4),
        Verdict::Exceeded {
            which: Scope::Control,
            unit: Unit::Messages
        }
    );
    // The message budget is untouched by the control frames.
    assert_eq!(l.check(t0, 10), Verdict::Pass);
    assert_eq!(l.check(t0, 10), Verdict::Pass);
    assert!(matches!(
        l.check(t0, 10),
        Verdict::Exceeded {
            which: Scope::Connection,
            ..
        }
    ));
    // 20/s: one more control frame 50 ms later.
    let t1 = t0 + std::time::Duration::from_millis(50);
    assert_eq!(l.check_control(t1, 4), Verdict::Pass);
    assert!(matches!(l.check_control(t1, 4), Verdict::Exceeded { .. }));
}

#[test]
fn a_limiter_with_only_a_control_allowance_is_not_unlimited() {
    let t0 = Instant::now();
    let l = ConnectionLimiter::new(&RateLimit::UNLIMITED, None, t0);
    assert!(l.is_unlimited());
    let l = l.with_control(&messages(20, 100), t0);
    assert!(!l.is_unlimited());
    let off = ConnectionLimiter::new(&RateLimit::UNLIMITED, None, t0)
        .with_control(&RateLimit::UNLIMITED, t0);
    assert!(off.is_unlimited());
}

// ---- one connection ----

#[test]
fn connection_burst_then_steady_rate() {
    let t0 = Instant::now();
    let mut l = ConnectionLimiter::new(&messages(10, 5), None, t0);
    let burst = (0..20)
        .filter(|_| l.check(t0, 100) == Verdict::Pass)
        .count();
    assert_eq!(burst, 5);
    assert_eq!(l.check(t0 + ms(99), 100), CONN);
    assert_eq!(l.check(t0 + ms(100), 100), Verdict::Pass);
    let mut steady = 1;
    for i in 101..=5_000 {
        while l.check(t0 + ms(i), 100) == Verdict::Pass {
            steady += 1;
        }
    }
    assert_eq!(steady, 50, "10/s for 5 s");
}

#[test]
fn bytes_and_messages_are_limited_separately() {
    let t0 = Instant::now();
    let limit = RateLimit {
        messages: Some(Rate::per_second(100, 20)),
        bytes: Some(Rate::per_second(1000, 1000)),
    };
    let mut l = ConnectionLimiter::new(&limit, None, t0);
    for _ in 0..10 {
        assert_eq!(l.check(t0, 100), Verdict::Pass);
    }
    // The bytes ran out first...
    assert_eq!(l.check(t0, 1), CONN_BYTES);
    // ...but empty messages cost no bytes, until the message count runs out.
    for _ in 0..10 {
        assert_eq!(l.check(t0, 0), Verdict::Pass);
    }
    assert_eq!(l.check(t0, 0), CONN);
    // 100 ms: 10 messages and 100 bytes back.
    assert_eq!(l.check(t0 + ms(100), 100), Verdict::Pass);
    assert_eq!(l.check(t0 + ms(100), 1), CONN_BYTES);

    // A bytes-only limit counts no messages.
    let mut l = ConnectionLimiter::new(&bytes(1000, 1000), None, t0);
    for _ in 0..1000 {
        assert_eq!(l.check(t0, 1), Verdict::Pass);
    }
    assert_eq!(l.check(t0, 1), CONN_BYTES);
    assert_eq!(l.check(t0, 0), Verdict::Pass);
}

#[test]
fn a_message_bigger_than_the_burst_passes_only_from_full() {
    let t0 = Instant::now();
    let mut l = ConnectionLimiter::new(&bytes(1000, 1000), None, t0);
    assert_eq!(
        l.check(t0, 5000),
        Verdict::Pass,
        "full: passes, 4000 in debt"
    );
    assert_eq!(
        l.check(t0 + ms(4000), 1),
        CONN_BYTES,
        "the debt is repaid first"
    );
    assert_eq!(l.check(t0 + ms(4001), 1), Verdict::Pass);
    assert_eq!(
        l.check(t0 + ms(5000), 5000),
        CONN_BYTES,
        "not full again yet"
    );
    assert_eq!(l.check(t0 + ms(5001), 5000), Verdict::Pass);
}

#[test]
fn refused_messages_take_nothing() {
    let t0 = Instant::now();

    // Refused by the connection: the identity keeps its tokens for the identity's other
    // sessions.
    let core = CoreBudgets::new(IdentityBudgets::new(messages(1, 5)));
    let mut slow = ConnectionLimiter::new(&messages(1, 1), core.attach("alice", t0), t0);
    let mut other = ConnectionLimiter::new(&RateLimit::UNLIMITED, core.attach("alice", t0), t0);
    assert_eq!(slow.check(t0, 10), Verdict::Pass);
    for _ in 0..100 {
        assert_eq!(slow.check(t0, 10), CONN);
    }
    // The other session of alice gets the rest of the 5 (over its core's 10 ms visits).
    let mut passed = 0;
    for i in 0..=50 {
        while other.check(t0 + ms(i), 10) == Verdict::Pass {
            passed += 1;
        }
    }
    assert_eq!(passed, 4);

    // Refused by the identity: the connection keeps its tokens. Its own refill is next to
    // nothing (0.001/s), so every pass below spends one of the 2 it started with.
    let core = CoreBudgets::new(IdentityBudgets::new(messages(1, 1)));
    let conn = RateLimit {
        messages: Some(Rate::from_milli(1, 2)),
        bytes: None,
    };
    let mut l = ConnectionLimiter::new(&conn, core.attach("bob", t0), t0);
    assert_eq!(l.check(t0, 10), Verdict::Pass);
    assert_eq!(l.check(t0, 10), IDENT);
    assert_eq!(l.check(t0 + ms(20), 10), IDENT);
    // 1 s later the identity has one more, and the connection still has its second token:
    // neither refusal took it.
    assert_eq!(l.check(t0 + ms(1000), 10), Verdict::Pass);
    assert_eq!(l.check(t0 + ms(2000), 10), CONN);
}

#[test]
fn the_last_session_removes_the_identity() {
    let t0 = Instant::now();
    let budgets = IdentityBudgets::new(messages(100, 100));
    let cores = [
        CoreBudgets::new(budgets.clone()),
        CoreBudgets::new(budgets.clone()),
    ];
    let sessions: Vec<ConnectionLimiter> = (0..6)
        .map(|i| {
            let who = if i % 3 == 0 { "carol" } else { "dave" };
            ConnectionLimiter::new(&RateLimit::UNLIMITED, cores[i % 2].attach(who, t0), t0)
        })
        .collect();
    assert_eq!(budgets.live_identities(), 2);
    let mut sessions: Vec<Option<ConnectionLimiter>> = sessions.into_iter().map(Some).collect();
    for (i, s) in sessions.iter_mut().enumerate() {
        assert_eq!(
            s.as_mut().unwrap().check(t0 + ms(i as u64), 1),
            Verdict::Pass
        );
    }
    // carol: sessions 0 (core 0) and 3 (core 1).
    sessions[0] = None;
    assert_eq!(budgets.live_identities(), 2);
    sessions[3] = None;
    assert_eq!(budgets.live_identities(), 1, "carol gone");
    assert_eq!(cores[0].live_identities(), 1);
    assert_eq!(cores[1].live_identities(), 1);
    sessions.clear();
    assert_eq!(budgets.live_identities(), 0);
    assert_eq!(cores[0].live_identities() + cores[1].live_identities(), 0);
}

// ---- the identity budget across cores ----

const SECS: u64 = 5;
const STEP: Duration = Duration::from_micros(100);

/// What each core got, per 10 ms slot (summed over cores), in the limited unit.
struct Run {
    per_core: Vec<u64>,
    per_slot: Vec<u64>,
}

impl Run {
    fn total(&self) -> u64 {
        self.per_core.iter().sum()
    }

    /// The most admitted in any window of `slots` × 10 ms.
    fn max_window(&self, slots: usize) -> u64 {
        self.per_slot
            .windows(slots)
            .map(|w| w.iter().sum())
            .max()
            .unwrap_or(0)
    }
}

/// `cores` cores of one identity, each sending as fast as it is let (every 100 µs, until
/// refused), for 5 simulated seconds, taking turns to go first. Message sizes cycle through
/// `sizes`; what counts is the unit `limit` limits.
fn flood_interleaved(cores: usize, limit: RateLimit, sizes: &[usize]) -> Run {
    let t0 = Instant::now();
    let budgets = IdentityBudgets::new(limit);
    let core_budgets: Vec<CoreBudgets> = (0..cores)
        .map(|_| CoreBudgets::new(budgets.clone()))
        .collect();
    let mut limiters: Vec<ConnectionLimiter> = core_budgets
        .iter()
        .map(|c| ConnectionLimiter::new(&RateLimit::UNLIMITED, c.attach("eve", t0), t0))
        .collect();
    let mut run = Run {
        per_core: vec![0; cores],
        per_slot: vec![0; (SECS * 100) as usize],
    };
    let steps = (Duration::from_secs(SECS).as_nanos() / STEP.as_nanos()) as u32;
    let mut sent = 0usize;
    for step in 0..steps {
        let now = t0 + STEP * step;
        let slot = (step / 100) as usize;
        for k in 0..cores {
            let core = (k + step as usize) % cores;
            loop {
                let len = sizes[sent % sizes.len()];
                if limiters[core].check(now, len) != Verdict::Pass {
                    break;
                }
                sent += 1;
                let cost = if limit.messages.is_some() {
                    1
                } else {
                    len as u64
                };
                run.per_core[core] += cost;
                run.per_slot[slot] += cost;
            }
        }
    }
    run
}

/// `burst + rate × 5 s` of the limited unit.
fn budget(limit: RateLimit) -> u64 {
    let r = limit.messages.or(limit.bytes).unwrap();
    r.burst() + r.milli_per_s() * SECS / 1000
}

fn check_two_cores(limit: RateLimit, sizes: &[usize]) {
    let full = budget(limit);
    let run = flood_interleaved(2, limit, sizes);
    let total = run.total();
    assert!(
        total as f64 <= 1.1 * full as f64,
        "two cores got {total} of {full} ({:?})",
        run.per_core
    );
    // In fact never more than a single bucket, from the start.
    assert!(total <= full, "{total} > {full}");
    assert!(
        total as f64 >= 0.95 * full as f64,
        "two cores starved: {total} of {full}"
    );
    // Neither core is shut out, even in this worst-case phase where both cores visit on the
    // same 10 ms cadence and core 0 always goes first (the splits come out about 58/42 for
    // the messages, 1/3–2/3 for the bytes).
    assert!(
        run.per_core.iter().all(|&c| c > full / 20),
        "{:?}",
        run.per_core
    );
    // Any 1 s window: burst + 1 s of rate, plus 30 ms of rate (the stash TTL) and a token of
    // rounding (see the identity module's tolerance), well inside 1.1×.
    let r = limit.messages.or(limit.bytes).unwrap();
    let per_s = r.milli_per_s() / 1000;
    let window = run.max_window(100);
    let bound = r.burst() + per_s + per_s * 30 / 1000 + 1;
    assert!(window <= bound, "1 s window {window} > {bound}");
    assert!(window as f64 <= 1.1 * (r.burst() + per_s) as f64);
}

#[test]
fn two_cores_flooding_stay_within_the_identity_budget_messages() {
    check_two_cores(messages(1000, 1000), &[100]);
}

#[test]
fn two_cores_flooding_stay_within_the_identity_budget_bytes() {
    check_two_cores(bytes(100_000, 100_000), &[1000, 10, 4000, 250, 1]);
}

#[test]
fn one_core_alone_gets_the_whole_identity_budget() {
    for (limit, sizes) in [
        (messages(1000, 1000), &[100][..]),
        (bytes(100_000, 100_000), &[1000, 10, 4000, 250, 1][..]),
        (messages(1000, 250), &[1][..]),
    ] {
        let full = budget(limit);
        let total = flood_interleaved(1, limit, sizes).total();
        assert!(total <= full, "{total} > {full}");
        assert!(
            total as f64 >= 0.95 * full as f64,
            "one core got {total} of {full}"
        );
    }
}

#[test]
fn two_threads_flooding_stay_within_the_identity_budget() {
    // Real threads on the real atomics: each core runs its own simulated clock from the
    // same start, so the interleaving is whatever the scheduler makes of it.
    let limit = messages(1000, 1000);
    let full = budget(limit);
    let t0 = Instant::now();
    let budgets = IdentityBudgets::new(limit);
    // Both sessions are attached before either floods and stay until both are done: the
    // two simulated clocks then run over one budget at the same time, as two cores' would.
    let together = std::sync::Barrier::new(2);
    let totals: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let budgets = Arc::clone(&budgets);
                let together = &together;
                s.spawn(move || {
                    let core = CoreBudgets::new(budgets);
                    let mut l =
                        ConnectionLimiter::new(&RateLimit::UNLIMITED, core.attach("eve", t0), t0);
                    together.wait();
                    let mut got = 0u64;
                    for step in 0..(SECS * 10_000) as u32 {
                        let now = t0 + STEP * step;
                        while l.check(now, 100) == Verdict::Pass {
                            got += 1;
                        }
                    }
                    together.wait();
                    got
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let total: u64 = totals.iter().sum();
    assert!(
        total as f64 <= 1.1 * full as f64,
        "two threads got {total} of {full} ({totals:?})"
    );
    assert!(total <= full, "{total} > {full}");
    assert_eq!(budgets.live_identities(), 0, "both cores' sessions ended");
}

#[test]
fn a_reconnect_does_not_reset_the_identity_budget() {
    let t0 = Instant::now();
    let limit = messages(100, 100);
    let budgets = IdentityBudgets::new(limit);
    let core = CoreBudgets::new(budgets.clone());
    let flood = |l: &mut ConnectionLimiter, now: Instant| {
        let mut got = 0;
        while l.check(now, 1) == Verdict::Pass {
            got += 1;
        }
        got
    };
    let mut first = ConnectionLimiter::new(&RateLimit::UNLIMITED, core.attach("mallory", t0), t0);
    assert_eq!(flood(&mut first, t0), 100, "the burst");
    drop(first);
    // Reconnected at once: the burst is spent; only the refill passes from here on.
    let t1 = t0 + ms(5);
    let mut second = ConnectionLimiter::new(&RateLimit::UNLIMITED, core.attach("mallory", t1), t1);
    assert!(flood(&mut second, t1) <= 1, "no fresh burst on a reconnect");
    let t2 = t0 + ms(500);
    let half = flood(&mut second, t2);
    assert!((49..=51).contains(&half), "the refill of 500 ms: {half}");
    drop(second);
    assert_eq!(budgets.live_identities(), 0);
}

#[test]
fn a_stale_stash_is_not_spent_on_top_of_a_refilled_budget() {
    let t0 = Instant::now();
    let limit = messages(100, 10_000);
    let budgets = IdentityBudgets::new(limit);
    let (a, b) = (
        CoreBudgets::new(budgets.clone()),
        CoreBudgets::new(budgets.clone()),
    );
    let mut la = ConnectionLimiter::new(&RateLimit::UNLIMITED, a.attach("mallory", t0), t0);
    let mut lb = ConnectionLimiter::new(&RateLimit::UNLIMITED, b.attach("mallory", t0), t0);
    // Core A sends a quick run of messages, growing its chunks, and goes quiet right after
    // taking a big one.
    let stash = |l: &ConnectionLimiter| l.identity.as_ref().unwrap().stash(Unit::Messages);
    while stash(&la) < 500 {
        assert_eq!(la.check(t0, 1), Verdict::Pass);
    }
    let held = stash(&la);
    // Long enough for a single bucket to be full again; then both flood for 300 ms.
    let t1 = t0 + Duration::from_secs(200);
    let mut admitted = 0u64;
    for i in 0..300 {
        for l in [&mut la, &mut lb] {
            while l.check(t1 + ms(i), 1) == Verdict::Pass {
                admitted += 1;
            }
        }
    }
    // A single bucket: the burst plus 300 ms of refill (30). A's old stash was inside the
    // level all along (the refill never ran on behind it), not on top of it.
    assert!(admitted <= 10_000 + 30, "{admitted} (A held {held})");
    assert!(admitted >= 9_500, "{admitted}");
}

#[test]
fn stashes_handed_back_in_turn_build_no_excess() {
    // Two cores take turns, every 10 ms, to hand back an idle stash and take a big one
    // (a refused over-large message pumps the demand that sizes it) while spending almost
    // nothing. Stashes are inside the level, so the budget never holds more than one
    // bucket: 4 s later, what both can spend within 30 ms is the burst and at most
    // 30 ms + 30 ms of rate (the window tolerance), not the burst plus every stash.
    let t0 = Instant::now();
    let limit = bytes(10_000, 100_000);
    let budgets = IdentityBudgets::new(limit);
    let cores = [
        CoreBudgets::new(budgets.clone()),
        CoreBudgets::new(budgets.clone()),
    ];
    let hs = [
        cores[0].attach("trudy", t0).unwrap(),
        cores[1].attach("trudy", t0).unwrap(),
    ];
    let mut end = t0;
    for round in 0..400u32 {
        end = t0 + ms(10) * round;
        let h = &hs[(round % 2) as usize];
        assert!(h.try_take(end, 1).is_ok());
        assert_eq!(h.try_take(end, 1_000_000), Err(Unit::Bytes));
    }
    assert!(hs[0].stash(Unit::Bytes) + hs[1].stash(Unit::Bytes) > 10_000);
    let mut admitted = 0u64;
    for step in 1..=300u32 {
        let now = end + STEP * step;
        for h in &hs {
            let mut len = 1 << 16;
            while len > 0 {
                if h.try_take(now, len).is_ok() {
                    admitted += len;
                } else {
                    len /= 2;
                }
            }
        }
    }
    assert!(admitted <= 100_000 + 300 + 300 + 1, "{admitted}");
    assert!(admitted >= 99_000, "{admitted}");
}

// ---- a client within its identity's burst and rate ----

/// The e2e `two_sessions_of_one_identity_share_its_rate`: one session sends messages ~1 ms
/// apart, well inside its identity's burst; it used to get 2 through, then a refusal (the
/// next visit 10 ms away).
#[test]
fn one_core_within_the_identity_burst_is_never_refused() {
    for per_s in [1, 10, 100] {
        let t0 = Instant::now();
        let core = CoreBudgets::new(IdentityBudgets::new(messages(per_s, 10)));
        let mut l = ConnectionLimiter::new(&RateLimit::UNLIMITED, core.attach("alice", t0), t0);
        for i in 0..8 {
            assert_eq!(
                l.check(t0 + ms(i), 5),
                Verdict::Pass,
                "{per_s}/s: message {i}"
            );
        }
        if per_s == 1 {
            // The rest of the burst, then the 11th within the same second is refused...
            assert_eq!(l.check(t0 + ms(8), 5), Verdict::Pass);
            assert_eq!(l.check(t0 + ms(9), 5), Verdict::Pass);
            assert_eq!(l.check(t0 + ms(10), 5), IDENT);
            assert_eq!(l.check(t0 + ms(999), 5), IDENT);
            // ...and the refill passes as soon as it is there, not a visit later.
            assert_eq!(l.check(t0 + ms(1000), 5), Verdict::Pass);
            assert_eq!(l.check(t0 + ms(1001), 5), IDENT);
        }
    }
}

/// The same with the identity's second session attached on another core and idle (as in
/// the e2e test): the first session still gets its whole burst, the second what is left.
#[test]
fn an_idle_session_on_another_core_takes_nothing_from_the_burst() {
    let t0 = Instant::now();
    let budgets = IdentityBudgets::new(messages(1, 10));
    let (a, b) = (
        CoreBudgets::new(budgets.clone()),
        CoreBudgets::new(budgets.clone()),
    );
    let mut first = ConnectionLimiter::new(&RateLimit::UNLIMITED, a.attach("alice", t0), t0);
    let mut second = ConnectionLimiter::new(&RateLimit::UNLIMITED, b.attach("alice", t0), t0);
    for i in 0..8 {
        assert_eq!(first.check(t0 + ms(i), 5), Verdict::Pass, "message {i}");
    }
    // The second session, all at once: at most the 2 left (some may sit in the first
    // core's stash until it hands them back), and never more.
    let now = t0 + ms(20);
    let passed = (0..8)
        .filter(|_| second.check(now, 5) == Verdict::Pass)
        .count();
    assert!(passed <= 2, "{passed}");
    // Both together never exceed the burst within the first second.
    let mut total = 8 + passed;
    for i in 21..999 {
        for l in [&mut first, &mut second] {
            if l.check(t0 + ms(i), 5) == Verdict::Pass {
                total += 1;
            }
        }
    }
    assert_eq!(total, 10);
}

/// One core against token buckets fed the same traffic (bursts, pauses, varied sizes):
/// it admits nothing a bucket with 30 ms of rate more burst would refuse (the window
/// tolerance), and refuses a message only when one exact bucket, fed everything it admitted,
/// is within 10 ms of rate of refusing it too.
#[test]
fn one_core_is_one_bucket_within_its_tolerance() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let loose = |r: Option<Rate>| {
        r.map(|r| {
            Rate::from_milli(
                r.milli_per_s(),
                r.burst() + r.tokens_in(ms(30).as_nanos()) + 1,
            )
        })
    };
    for limit in [
        messages(100, 50),
        messages(1000, 1000),
        messages(10, 10),
        bytes(100_000, 20_000),
        RateLimit {
            messages: Some(Rate::per_second(200, 100)),
            bytes: Some(Rate::per_second(50_000, 30_000)),
        },
    ] {
        let t0 = Instant::now();
        let core = CoreBudgets::new(IdentityBudgets::new(limit));
        let mut ours = ConnectionLimiter::new(&RateLimit::UNLIMITED, core.attach("bob", t0), t0);
        // Fed everything ours admits, into debt if need be.
        let mut exact = ConnectionLimiter::new(&limit, None, t0);
        let loose_limit = RateLimit {
            messages: loose(limit.messages),
            bytes: loose(limit.bytes),
        };
        let mut upper = ConnectionLimiter::new(&loose_limit, None, t0);
        let slack = |r: Option<Rate>| r.map_or(0, |r| r.tokens_in(ms(10).as_nanos()).max(1));
        let (msg_slack, byte_slack) = (slack(limit.messages), slack(limit.bytes));
        let mut now = t0;
        let (mut admitted, mut refused) = (0u64, 0u64);
        for i in 0..50_000 {
            // Alternately a flood (far over every rate) and a calm stretch (well under).
            now += if (i / 2000) % 2 == 0 {
                Duration::from_micros(next(200))
            } else {
                ms(next(50))
            };
            let len = next(400) as usize;
            match ours.check(now, len) {
                Verdict::Pass => {
                    admitted += 1;
                    assert_eq!(upper.check(now, len), Verdict::Pass, "after {admitted}");
                    for (b, n) in [
                        (&mut exact.own.count, 1),
                        (&mut exact.own.bytes, len as u64),
                    ] {
                        if let Some(b) = b {
                            b.refill(now);
                            b.take(n);
                        }
                    }
                }
                Verdict::Exceeded { unit, .. } => {
                    refused += 1;
                    let (bucket, need) = match unit {
                        Unit::Messages => (exact.own.count.as_mut(), 1 + msg_slack),
                        Unit::Bytes => (exact.own.bytes.as_mut(), len as u64 + byte_slack),
                    };
                    let bucket = bucket.unwrap();
                    bucket.refill(now);
                    assert!(
                        !bucket.can_take(need),
                        "refused {unit:?} ({len} bytes) with {} in the bucket",
                        bucket.available()
                    );
                }
            }
        }
        assert!(
            admitted > 1000 && refused > 1000,
            "{limit:?}: {admitted} / {refused}"
        );
    }
}

#[test]
fn ip_limiter_writes_its_metric_families() {
    use crate::ebpf::{LimitConfig, UserspaceLimiter};
    use crate::metrics::PrometheusFamilies;
    let limiter = UserspaceLimiter::new(&LimitConfig::for_tests(1, &[])).unwrap();
    let ip = "127.0.0.2".parse().unwrap();
    let _held = limiter.try_acquire(ip).unwrap();
    assert!(limiter.try_acquire(ip).is_err());
    let mut out = String::new();
    ip_limit::IpLimiter::Userspace(limiter, None).render_families(&mut out);
    assert_eq!(
        out,
        "# HELP wssedge_ip_limiter Where the per-IP connection limit is enforced\n\
         # TYPE wssedge_ip_limiter gauge\n\
         wssedge_ip_limiter{mode=\"userspace\"} 1\n\
         # HELP wssedge_ip_limit_total Per-IP limiter events (kernel: SYNs)\n\
         # TYPE wssedge_ip_limit_total counter\n\
         wssedge_ip_limit_total{event=\"seen\"} 2\n\
         wssedge_ip_limit_total{event=\"accepted\"} 1\n\
         wssedge_ip_limit_total{event=\"refused_limit\"} 1\n\
         wssedge_ip_limit_total{event=\"refused_blocked\"} 0\n\
         wssedge_ip_limit_total{event=\"released\"} 0\n\
         # HELP wssedge_ip_refused_total Connections refused per source address (top 10)\n\
         # TYPE wssedge_ip_refused_total counter\n\
         wssedge_ip_refused_total{addr=\"127.0.0.2\"} 1\n"
    );
    let mut off = String::new();
    ip_limit::IpLimiter::Off.render_families(&mut off);
    assert!(
        off.ends_with("wssedge_ip_limiter{mode=\"off\"} 1\n"),
        "{off}"
    );
}

#[test]
fn ip_limiter_says_why_it_fell_back_to_userspace() {
    use crate::ebpf::{LimitConfig, UserspaceLimiter};
    use crate::metrics::PrometheusFamilies;
    use ip_limit::Fallback;
    // The reason labels are a public contract (dashboards).
    assert_eq!(Fallback::CannotLoad.as_str(), "ebpf_cannot_load");
    assert_eq!(Fallback::SelfTestFailed.as_str(), "ebpf_self_test_failed");
    let limiter = UserspaceLimiter::new(&LimitConfig::for_tests(1, &[])).unwrap();
    let mut out = String::new();
    ip_limit::IpLimiter::Userspace(limiter, Some(Fallback::SelfTestFailed))
        .render_families(&mut out);
    assert!(
        out.contains(
            "# TYPE wssedge_ip_limiter_fallback gauge\n\
             wssedge_ip_limiter_fallback{reason=\"ebpf_self_test_failed\"} 1\n"
        ),
        "{out}"
    );
}
