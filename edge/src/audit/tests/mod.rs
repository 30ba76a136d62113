//! Trail-level tests: real files in a temporary directory, the real writer thread.

mod config;
mod tamper;
mod trail;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::audit::{sort_trail_files, AuditConfig, AuditEvent, Identity};

pub(super) const KEY: [u8; 32] = [
    0x3a, 0x91, 0x07, 0xee, 0x52, 0x1c, 0xd4, 0x68, 0x0f, 0xb3, 0x77, 0x29, 0xc5, 0x4e, 0x8a, 0x13,
    0x60, 0x9d, 0x2b, 0xf1, 0x45, 0xe8, 0x3c, 0x7a, 0x11, 0xa6, 0x58, 0xcf, 0x02, 0x94, 0x6b, 0xd7,
];

pub(super) struct Fixture {
    pub dir: tempfile::TempDir,
    pub cfg: AuditConfig,
}

impl Fixture {
    pub(super) fn new(rotate_bytes: u64, ring_capacity: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("audit.key");
        write_key(&key_file, &KEY, 0o600);
        let cfg = AuditConfig {
            path: Some(dir.path().join("trail").join("audit.log")),
            key_file: Some(key_file),
            fsync_interval_ms: 50,
            rotate_bytes,
            ring_capacity,
            high_water: 0.5,
        };
        std::fs::create_dir(dir.path().join("trail")).unwrap();
        Fixture { dir, cfg }
    }

    pub(super) fn trail_dir(&self) -> PathBuf {
        self.dir.path().join("trail")
    }

    /// The trail's files as an operator would pass them (`audit.log*`), in chain order.
    pub(super) fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.trail_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !p.file_name().unwrap().to_str().unwrap().starts_with('.'))
            .collect();
        sort_trail_files(&mut files);
        files
    }

    pub(super) fn key_file(&self) -> &Path {
        self.cfg.key_file.as_deref().unwrap()
    }
}

pub(super) fn write_key(path: &Path, key: &[u8], mode: u32) {
    std::fs::write(path, key).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// An upgrade decision of realistic size, numbered through its peer port.
pub(super) fn upgrade(core: usize, n: usize) -> AuditEvent {
    AuditEvent::Upgrade {
        peer: format!("192.0.2.{core}:{n}"),
        identity: Some(Identity {
            subject_cn: Some("trader-7".into()),
            dns: vec!["trader-7.clients.example.com".into()],
            uris: vec!["spiffe://example.com/trader/7".into()],
            fingerprint_sha256: Some("9f".repeat(32)),
        }),
        path: "/v1/feed".into(),
        allowed: n % 3 != 0,
        status: if n % 3 != 0 { 101 } else { 403 },
        reason: if n % 3 != 0 {
            "ok".into()
        } else {
            "scope".into()
        },
        jti: Some(format!("jti-{core}-{n}")),
        sub: Some("trader-7".into()),
        token_sha256: Some("ab".repeat(32)),
    }
}

pub(super) fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

pub(super) fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

/// Every record of the trail, parsed, in file order.
pub(super) fn records(files: &[PathBuf]) -> Vec<serde_json::Value> {
    files
        .iter()
        .flat_map(|f| read_lines(f))
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect()
}

pub(super) fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn token_hash_is_hex_sha256() {
    assert_eq!(
        crate::audit::token_sha256(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}
