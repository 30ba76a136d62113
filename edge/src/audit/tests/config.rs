//! `[audit]` validation and the key file rules.

use super::{write_key, Fixture};
use crate::audit::{AuditConfig, AuditError, AuditTrail};

fn invalid_key(cfg: &AuditConfig) -> (String, String) {
    match cfg.validate() {
        Err(crate::config_error::ConfigError::Invalid { key, reason, .. }) => {
            (key.to_owned(), reason)
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn defaults_are_off_and_valid() {
    let cfg = AuditConfig::default();
    assert!(!cfg.enabled());
    cfg.validate().unwrap();
    assert_eq!(
        (
            cfg.fsync_interval_ms,
            cfg.rotate_bytes,
            cfg.ring_capacity,
            cfg.high_water
        ),
        (1000, 64 << 20, 65_536, 0.5)
    );
    let (trail, sinks) = AuditTrail::start(&cfg, 3).unwrap();
    assert!(!trail.is_enabled());
    assert_eq!(sinks.len(), 3);
    sinks[0].record(super::upgrade(0, 0));
    assert!(!sinks[0].over_high_water());
    trail.shutdown().unwrap();
}

#[test]
fn key_file_readable_by_others_is_refused_with_chmod_600() {
    let f = Fixture::new(1 << 20, 1024);
    for mode in [0o644, 0o640, 0o604, 0o660] {
        write_key(f.key_file(), &super::KEY, mode);
        let (key, reason) = invalid_key(&f.cfg);
        assert_eq!(key, "audit.key_file");
        assert!(reason.contains("chmod 600"), "{reason}");
        match AuditTrail::start(&f.cfg, 1) {
            Err(AuditError::Config(e)) => assert!(e.to_string().contains("chmod 600"), "{e}"),
            Err(e) => panic!("unexpected {e}"),
            Ok(_) => panic!("mode {mode:o} accepted"),
        }
    }
    write_key(f.key_file(), &super::KEY, 0o400);
    f.cfg.validate().unwrap();
}

#[test]
fn short_missing_or_absent_keys_are_refused() {
    let f = Fixture::new(1 << 20, 1024);
    write_key(f.key_file(), &[1; 31], 0o600);
    let (key, reason) = invalid_key(&f.cfg);
    assert_eq!(key, "audit.key_file");
    assert!(reason.contains("at least 32"), "{reason}");

    let mut cfg = f.cfg.clone();
    cfg.key_file = None;
    assert_eq!(invalid_key(&cfg).0, "audit.key_file");

    cfg.key_file = Some(f.dir.path().join("nope"));
    assert!(invalid_key(&cfg).1.contains("cannot open"));

    let mut cfg = f.cfg.clone();
    cfg.path = None;
    assert_eq!(
        invalid_key(&cfg).0,
        "audit.path",
        "a key without a path is a mistake"
    );

    let mut cfg = f.cfg.clone();
    cfg.path = Some(f.dir.path().join("no-such-dir").join("audit.log"));
    assert!(invalid_key(&cfg).1.contains("does not exist"));
}

#[test]
fn numbers_are_checked() {
    let base = AuditConfig::default();
    let cases: [(&str, AuditConfig); 6] = [
        (
            "audit.high_water",
            AuditConfig {
                high_water: 0.0,
                ..base.clone()
            },
        ),
        (
            "audit.high_water",
            AuditConfig {
                high_water: 1.5,
                ..base.clone()
            },
        ),
        (
            "audit.high_water",
            AuditConfig {
                high_water: f64::NAN,
                ..base.clone()
            },
        ),
        (
            "audit.rotate_bytes",
            AuditConfig {
                rotate_bytes: 100,
                ..base.clone()
            },
        ),
        (
            "audit.ring_capacity",
            AuditConfig {
                ring_capacity: 0,
                ..base.clone()
            },
        ),
        (
            "audit.fsync_interval_ms",
            AuditConfig {
                fsync_interval_ms: 3_600_000,
                ..base.clone()
            },
        ),
    ];
    for (want, cfg) in cases {
        assert_eq!(invalid_key(&cfg).0, want);
    }
}

#[test]
fn toml_refuses_unknown_keys_and_fills_defaults() {
    let cfg: AuditConfig =
        toml::from_str("path = \"/var/log/wssedge/audit.log\"\nrotate_bytes = 8192").unwrap();
    assert_eq!(cfg.rotate_bytes, 8192);
    assert_eq!(cfg.ring_capacity, 65_536);
    let err = toml::from_str::<AuditConfig>("path = \"x\"\nfsync_ms = 5").unwrap_err();
    assert!(err.to_string().contains("fsync_ms"), "{err}");
}
