//! The writer end to end: round trips across rotations, overflow, restarts, kills, I/O errors.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::{read_lines, records, upgrade, wait_until, Fixture, KEY};
use crate::audit::{verify, AuditEvent, AuditTrail, ProblemKind};
use crate::reason::Reason;

/// Per core, the peer ports of its upgrade records, in trail order.
fn per_core_numbers(recs: &[serde_json::Value]) -> HashMap<u64, Vec<usize>> {
    let mut out: HashMap<u64, Vec<usize>> = HashMap::new();
    for r in recs.iter().filter(|r| r["event"] == "upgrade") {
        let port = r["peer"].as_str().unwrap().rsplit(':').next().unwrap();
        out.entry(r["core"].as_u64().unwrap())
            .or_default()
            .push(port.parse().unwrap());
    }
    out
}

#[test]
fn many_records_from_several_cores_across_rotations_verify() {
    const CORES: usize = 4;
    const PER_CORE: usize = 1500;
    let f = Fixture::new(16 << 10, 64);
    let (trail, sinks) = AuditTrail::start(&f.cfg, CORES).unwrap();
    let handle = trail.handle();
    let threads: Vec<_> = sinks
        .into_iter()
        .enumerate()
        .map(|(core, sink)| {
            std::thread::spawn(move || {
                for n in 0..PER_CORE {
                    sink.record(upgrade(core, n));
                    if n % 100 == 0 {
                        sink.record(AuditEvent::Close {
                            peer: format!("192.0.2.{core}:{n}"),
                            identity: None,
                            code: Some(1000),
                            reason: "normal".into(),
                            bytes_in: 10,
                            bytes_out: 20,
                            duration_ms: 30,
                        });
                    }
                }
            })
        })
        .collect();
    for i in 0..20 {
        handle.record(AuditEvent::Control {
            uid: 1000,
            pid: 42,
            command: format!("revoke jti-{i}"),
            ok: true,
            detail: String::new(),
        });
    }
    for t in threads {
        t.join().unwrap();
    }
    let stats = trail.stats();
    trail.shutdown().unwrap();

    let files = f.files();
    assert!(files.len() > 10, "rotations happened: {files:?}");
    let report = verify(&KEY, &files);
    assert!(report.is_ok(), "{report}");
    assert!(report.from_genesis);
    let recs = records(&files);
    assert_eq!(report.records, recs.len() as u64);
    assert_eq!(
        stats.records_written.load(Ordering::Relaxed),
        recs.len() as u64
    );
    assert_eq!(
        stats.rotations.load(Ordering::Relaxed) as usize,
        files.len() - 1
    );
    assert_eq!(report.last_seq, Some(recs.len() as u64 - 1));
    // Every core's records arrived exactly once, in the order the core recorded them.
    let numbers = per_core_numbers(&recs);
    for core in 0..CORES as u64 {
        assert_eq!(
            numbers[&core],
            (0..PER_CORE).collect::<Vec<_>>(),
            "core {core}"
        );
    }
    assert_eq!(recs.iter().filter(|r| r["event"] == "control").count(), 20);
    assert!(recs
        .iter()
        .filter(|r| r["event"] == "control")
        .all(|r| r["core"].is_null()));
    // Shape: first record opens the trail, then start; the end is stop and a seal.
    assert_eq!(
        (recs[0]["event"].as_str(), recs[0]["prev_state"].as_str()),
        (Some("open"), Some("genesis"))
    );
    assert_eq!(recs[1]["event"], "start");
    let n = recs.len();
    assert_eq!(
        (recs[n - 2]["event"].as_str(), recs[n - 1]["event"].as_str()),
        (Some("stop"), Some("seal"))
    );
    assert_eq!(recs[n - 1]["reason"], "shutdown");
    // Each rotated file ends with a seal naming the live file; each file starts with an open.
    for file in &files {
        let lines = read_lines(file);
        let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        let last: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
        assert_eq!(first["event"], "open");
        assert_eq!(last["event"], "seal");
        assert_eq!(last["next"], "audit.log");
    }
    // The files are owner-only.
    use std::os::unix::fs::PermissionsExt;
    for file in &files {
        assert_eq!(
            std::fs::metadata(file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}

#[test]
fn a_tiny_ring_overflows_without_losing_or_reordering_a_record() {
    const CORES: usize = 3;
    const PER_CORE: usize = 20_000;
    let f = Fixture::new(64 << 20, 16);
    let (trail, sinks) = AuditTrail::start(&f.cfg, CORES).unwrap();
    let stats = trail.stats();
    // Deterministic part: the writer takes nothing while the cores fill their rings 1000 times over.
    trail.pause(true);
    for (core, sink) in sinks.iter().enumerate() {
        for n in 0..PER_CORE / 2 {
            sink.record(upgrade(core, n));
        }
        assert!(sink.over_high_water());
        assert_eq!(sink.depth(), PER_CORE / 2);
        assert_eq!(stats.core_overflowed(core), (PER_CORE / 2 - 16) as u64);
    }
    trail.pause(false);
    // Racy part: cores keep recording, faster than the writer, while it drains.
    let threads: Vec<_> = sinks
        .into_iter()
        .enumerate()
        .map(|(core, sink)| {
            std::thread::spawn(move || {
                for n in PER_CORE / 2..PER_CORE {
                    sink.record(upgrade(core, n));
                }
                sink
            })
        })
        .collect();
    let sinks: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    wait_until("the queues to drain", || {
        sinks.iter().all(|s| s.depth() == 0)
    });
    assert!(sinks.iter().all(|s| !s.over_high_water()));
    drop(sinks);
    trail.shutdown().unwrap();

    let files = f.files();
    let report = verify(&KEY, &files);
    assert!(report.is_ok(), "{report}");
    let numbers = per_core_numbers(&records(&files));
    for core in 0..CORES as u64 {
        assert_eq!(
            numbers[&core],
            (0..PER_CORE).collect::<Vec<_>>(),
            "core {core}"
        );
    }
    assert!(
        stats.records_overflowed.load(Ordering::Relaxed) >= (CORES * (PER_CORE / 2 - 16)) as u64
    );
    assert_eq!(stats.records_late.load(Ordering::Relaxed), 0);
}

#[test]
fn high_water_flag_rises_and_falls_with_the_writer() {
    let f = Fixture::new(64 << 20, 100);
    let (trail, sinks) = AuditTrail::start(&f.cfg, 2).unwrap();
    trail.pause(true);
    for n in 0..49 {
        sinks[0].record(upgrade(0, n));
    }
    assert!(!sinks[0].over_high_water());
    sinks[0].record(upgrade(0, 49));
    assert!(sinks[0].over_high_water(), "50 of 100 at high_water 0.5");
    assert!(!sinks[1].over_high_water());
    assert_eq!(trail.stats().core_depth(0), 50);
    trail.pause(false);
    wait_until("core 0 to drain", || !sinks[0].over_high_water());
    trail.shutdown().unwrap();
    // A trail that stopped can no longer take records: cores must refuse.
    assert!(sinks[0].over_high_water());
    sinks[0].record(upgrade(0, 50));
    assert_eq!(sinks[0].depth(), 0, "counted as late, not queued");
}

/// An attack: a stalled writer and a flood of refused connections. The queue holds the
/// mark, not one record per refusal; once the writer catches up, one summary record stands for
/// them all and the trail verifies.
#[test]
fn a_flood_of_refusals_against_a_stalled_writer_becomes_one_verified_summary() {
    const FLOOD: u64 = 100_000;
    let f = Fixture::new(64 << 20, 64);
    let (trail, sinks) = AuditTrail::start(&f.cfg, 2).unwrap();
    let stats = trail.stats();
    trail.pause(true);
    let sink = &sinks[1];
    let mut n = 0;
    while !sink.over_high_water() {
        sink.record(upgrade(1, n));
        n += 1;
    }
    let depth = sink.depth();
    for i in 0..FLOOD {
        let peer = std::net::SocketAddr::from(([198, 51, 100, (i % 3) as u8], 40_000));
        sink.refused_at_accept(peer, Reason::AuditBackpressure, || {
            unreachable!("above the mark")
        });
    }
    assert_eq!(sink.depth(), depth, "the flood added nothing to the queue");
    assert_eq!(stats.records_overflowed.load(Ordering::Relaxed), 0);
    trail.pause(false);
    wait_until("the summary to be queued and written", || {
        sink.tick();
        sink.depth() == 0 && stats.records_written.load(Ordering::Relaxed) >= n as u64 + 3
    });
    drop(sinks);
    trail.shutdown().unwrap();

    let files = f.files();
    let report = verify(&KEY, &files);
    assert!(report.is_ok(), "{report}");
    let recs = records(&files);
    let summaries: Vec<_> = recs
        .iter()
        .filter(|r| r["event"] == "refusal_summary")
        .collect();
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    let s = summaries[0];
    assert_eq!(s["core"], 1);
    assert_eq!(s["reason"], "audit_backpressure");
    assert_eq!(s["count"], FLOOD);
    assert_eq!(s["peers"].as_array().unwrap().len(), 3, "{s}");
    assert_eq!(s["unattributed"], 0);
    let listed: u64 = s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["refusals"].as_u64().unwrap())
        .sum();
    assert_eq!(listed, FLOOD);
    // It follows the records queued before the pressure ended.
    let last_upgrade = recs.iter().rposition(|r| r["event"] == "upgrade").unwrap();
    let at = recs
        .iter()
        .position(|r| r["event"] == "refusal_summary")
        .unwrap();
    assert!(at > last_upgrade);
}

#[test]
fn restart_continues_the_chain() {
    let f = Fixture::new(8 << 10, 1024);
    let mut n = 0;
    for run in 0..3 {
        let (trail, sinks) = AuditTrail::start(&f.cfg, 1).unwrap();
        for _ in 0..60 {
            sinks[0].record(upgrade(0, n));
            n += 1;
        }
        trail.shutdown().unwrap();
        let files = f.files();
        let report = verify(&KEY, &files);
        assert!(report.is_ok(), "run {run}: {report}");
        assert!(report.from_genesis && report.notes.is_empty(), "{report}");
    }
    let files = f.files();
    let recs = records(&files);
    let opens: Vec<_> = recs.iter().filter(|r| r["event"] == "open").collect();
    assert_eq!(opens[0]["prev_state"], "genesis");
    assert!(opens[1..].iter().all(|o| o["prev_state"] == "sealed"));
    assert_eq!(recs.iter().filter(|r| r["event"] == "start").count(), 3);
    assert_eq!(recs.iter().filter(|r| r["event"] == "stop").count(), 3);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["seq"].as_u64(), Some(i as u64));
    }
    assert_eq!(per_core_numbers(&recs)[&0], (0..180).collect::<Vec<_>>());
}

#[test]
fn a_killed_writer_leaves_an_unsealed_tail_and_the_restart_acknowledges_it() {
    let f = Fixture::new(1 << 20, 1024);
    let (trail, sinks) = AuditTrail::start(&f.cfg, 1).unwrap();
    for n in 0..50 {
        sinks[0].record(upgrade(0, n));
    }
    let stats = trail.stats();
    wait_until("50 records written", || {
        stats.records_written.load(Ordering::Relaxed) == 52
    });
    trail.kill();

    let files = f.files();
    let report = verify(&KEY, &files);
    let p = report.problem.as_ref().expect("unsealed");
    assert_eq!(
        (p.kind, p.seq, p.line),
        (ProblemKind::UnsealedTail, Some(51), 52),
        "{report}"
    );
    assert!(!p.kind.is_tampering());
    assert_eq!(report.records, 52);

    // The restart rotates the file away untouched and chains from its last record.
    let before = std::fs::read(&files[0]).unwrap();
    let (trail, sinks) = AuditTrail::start(&f.cfg, 1).unwrap();
    sinks[0].record(upgrade(0, 50));
    trail.shutdown().unwrap();
    let files = f.files();
    assert_eq!(files.len(), 2);
    assert_eq!(
        std::fs::read(&files[0]).unwrap(),
        before,
        "the killed file is kept byte for byte"
    );
    let report = verify(&KEY, &files);
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.notes.len(), 1);
    assert!(report.notes[0].contains("killed"), "{report}");
    let open: serde_json::Value = serde_json::from_str(&read_lines(&files[1])[0]).unwrap();
    assert_eq!(
        (open["prev_state"].as_str(), open["prev_seq"].as_u64()),
        (Some("unsealed"), Some(51))
    );
}

#[test]
fn a_kill_mid_write_leaves_a_torn_line_and_the_restart_acknowledges_it() {
    let f = Fixture::new(1 << 20, 1024);
    let (trail, sinks) = AuditTrail::start(&f.cfg, 1).unwrap();
    for n in 0..10 {
        sinks[0].record(upgrade(0, n));
    }
    let stats = trail.stats();
    wait_until("10 records written", || {
        stats.records_written.load(Ordering::Relaxed) == 12
    });
    trail.kill();
    // What a kill in the middle of write(2) leaves: the start of a line.
    let live = f.cfg.path.clone().unwrap();
    let mut bytes = std::fs::read(&live).unwrap();
    bytes.extend_from_slice(br#"{"seq":12,"ts":"2024-01-01T00:00:00.0"#);
    std::fs::write(&live, bytes).unwrap();

    let report = verify(&KEY, &f.files());
    let p = report.problem.as_ref().unwrap();
    assert_eq!(
        (p.kind, p.line, p.seq),
        (ProblemKind::TornLine, 13, Some(12)),
        "{report}"
    );

    let (trail, _sinks) = AuditTrail::start(&f.cfg, 1).unwrap();
    trail.shutdown().unwrap();
    let files = f.files();
    let report = verify(&KEY, &files);
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.notes.len(), 1, "{report}");
    let open: serde_json::Value = serde_json::from_str(&read_lines(&files[1])[0]).unwrap();
    assert_eq!(
        (open["prev_state"].as_str(), open["seq"].as_u64()),
        (Some("torn"), Some(12))
    );
}

#[test]
fn a_crash_between_rotation_steps_is_continued() {
    // Killed after the live file was renamed away and before the next one was moved in.
    let f = Fixture::new(1 << 20, 1024);
    let (trail, sinks) = AuditTrail::start(&f.cfg, 1).unwrap();
    sinks[0].record(upgrade(0, 0));
    trail.shutdown().unwrap();
    let live = f.cfg.path.clone().unwrap();
    std::fs::rename(
        &live,
        f.trail_dir()
            .join(format!("audit.log.20240101T000000.000000000Z.{:020}", 0)),
    )
    .unwrap();
    let (trail, _sinks) = AuditTrail::start(&f.cfg, 1).unwrap();
    trail.shutdown().unwrap();
    // And a leftover hidden next file from a rotation that never completed is discarded.
    std::fs::write(f.trail_dir().join(".audit.log.new"), b"partial").unwrap();
    let (trail, _sinks) = AuditTrail::start(&f.cfg, 1).unwrap();
    trail.shutdown().unwrap();
    let report = verify(&KEY, &f.files());
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.files, 3);
    assert!(!f.trail_dir().join(".audit.log.new").exists());
}

#[test]
fn a_second_writer_on_the_same_trail_is_refused() {
    let f = Fixture::new(1 << 20, 1024);
    let (trail, _sinks) = AuditTrail::start(&f.cfg, 1).unwrap();
    let err = AuditTrail::start(&f.cfg, 1).err().expect("refused");
    assert!(
        err.to_string()
            .contains("another process writes this audit trail"),
        "{err}"
    );
    trail.shutdown().unwrap();
}

#[test]
fn a_trail_under_another_key_is_not_continued() {
    let f = Fixture::new(1 << 20, 1024);
    let (trail, _sinks) = AuditTrail::start(&f.cfg, 1).unwrap();
    trail.shutdown().unwrap();
    super::write_key(f.key_file(), &[0x55; 32], 0o600);
    let err = AuditTrail::start(&f.cfg, 1).err().expect("refused");
    assert!(
        err.to_string()
            .contains("does not verify under audit.key_file"),
        "{err}"
    );
}

#[test]
fn failed_writes_are_cut_back_and_retried() {
    let f = Fixture::new(1 << 20, 1024);
    let (trail, sinks) = AuditTrail::start(&f.cfg, 1).unwrap();
    trail.inject_write_failures(3);
    for n in 0..100 {
        sinks[0].record(upgrade(0, n));
    }
    let stats = trail.stats();
    trail.shutdown().unwrap();
    assert!(stats.write_errors.load(Ordering::Relaxed) >= 3);
    let files = f.files();
    let report = verify(&KEY, &files);
    assert!(report.is_ok(), "{report}");
    assert_eq!(
        per_core_numbers(&records(&files))[&0],
        (0..100).collect::<Vec<_>>()
    );
}

#[test]
fn fsync_follows_the_interval_and_durable_seq_advances() {
    let f = Fixture::new(1 << 20, 1024);
    let (trail, sinks) = AuditTrail::start(&f.cfg, 1).unwrap();
    let stats = trail.stats();
    assert_eq!(
        stats.durable_seq.load(Ordering::Relaxed),
        1,
        "open and start are durable at start"
    );
    sinks[0].record(upgrade(0, 0));
    wait_until("an fsync", || stats.fsyncs.load(Ordering::Relaxed) >= 1);
    assert_eq!(stats.durable_seq.load(Ordering::Relaxed), 2);
    trail.shutdown().unwrap();
    assert_eq!(
        stats.durable_seq.load(Ordering::Relaxed),
        4,
        "stop and seal"
    );
}

/// Writer throughput: `cargo test -p wssedge --profile ci --lib audit::tests::trail::throughput -- --ignored --nocapture`
/// Two numbers: the writer alone draining a backlog (serialize + HMAC + append + fsync every
/// second), and end to end with two producer threads recording as fast as they can.
#[test]
#[ignore = "a measurement, not a test"]
fn throughput() {
    const CORES: usize = 2;
    const PER_CORE: usize = 250_000;
    let rate = |n: u64, t: std::time::Duration| n as f64 / t.as_secs_f64();
    let mut f = Fixture::new(64 << 20, 65_536);
    f.cfg.fsync_interval_ms = 1000;

    // The writer alone: queue a backlog while it is paused, then time the drain.
    let (trail, sinks) = AuditTrail::start(&f.cfg, CORES).unwrap();
    let stats = trail.stats();
    trail.pause(true);
    for (core, sink) in sinks.iter().enumerate() {
        for n in 0..PER_CORE {
            sink.record(upgrade(core, n));
        }
    }
    let total = (CORES * PER_CORE) as u64 + 2;
    let t = std::time::Instant::now();
    trail.pause(false);
    wait_until("the backlog written", || {
        stats.records_written.load(Ordering::Relaxed) >= total
    });
    let drain = t.elapsed();
    let bytes = stats.bytes_written.load(Ordering::Relaxed);
    drop(sinks);
    trail.shutdown().unwrap();
    println!(
        "writer alone: {total} records in {:.3} s = {:.0} records/s, {:.0} bytes/record, {} fsyncs",
        drain.as_secs_f64(),
        rate(total, drain),
        bytes as f64 / total as f64,
        stats.fsyncs.load(Ordering::Relaxed),
    );

    // End to end: producers and writer at once.
    let (trail, sinks) = AuditTrail::start(&f.cfg, CORES).unwrap();
    let stats = trail.stats();
    let t = std::time::Instant::now();
    let threads: Vec<_> = sinks
        .into_iter()
        .enumerate()
        .map(|(core, sink)| {
            std::thread::spawn(move || {
                for n in 0..PER_CORE {
                    sink.record(upgrade(core, n));
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    wait_until("all written", || {
        stats.records_written.load(Ordering::Relaxed) >= total
    });
    let e2e = t.elapsed();
    trail.shutdown().unwrap();
    println!(
        "end to end ({CORES} producer threads): {total} records in {:.3} s = {:.0} records/s, overflowed {}",
        e2e.as_secs_f64(),
        rate(total, e2e),
        stats.records_overflowed.load(Ordering::Relaxed),
    );

    let t = std::time::Instant::now();
    let report = verify(&KEY, &f.files());
    println!(
        "verify: {} records in {:.3} s = {:.0} records/s",
        report.records,
        t.elapsed().as_secs_f64(),
        rate(report.records, t.elapsed())
    );
    assert!(report.is_ok(), "{report}");
}
