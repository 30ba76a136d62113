//! What the kernel says about kTLS: whether it exists here, its `/proc/net/tls_stat`
//! counters, and `ss -tni`'s view of a live socket. Plus the offload proof every test ends with.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::harness::*;

/// The server configuration of these tests: offload or refuse to start, never a silent fallback.
pub const KTLS_REQUIRED: &str = "[tls]\nktls = \"required\"\n";

/// Set by `cargo xtask vmtest` in the guest, whose kernel must have kTLS.
const VMTEST_ENV: &str = "WSSEDGE_VMTEST";

/// True where kTLS can be tested. On a kernel without it prints a visible skip line and returns
/// false; inside the vmtest guest its absence means the guest is broken, which fails the test.
pub fn ktls_kernel_or_skip() -> bool {
    if kernel_has_ktls() {
        return true;
    }
    assert!(
        std::env::var_os(VMTEST_ENV).is_none_or(|v| v != "1"),
        "{VMTEST_ENV}=1 but {TLS_STAT} is missing even after requesting the TLS ULP: the guest \
         kernel has no usable tls module (check modules.dep and /sbin/modprobe in the initramfs)"
    );
    visible_line("skipped: no kTLS on this kernel (run cargo xtask vmtest)");
    false
}

/// Where `cargo xtask vmtest` collects measured figures for its report, when set.
const OUT_DIR_ENV: &str = "WSSEDGE_VMTEST_OUT";

/// A measured finding (memory per connection, what the guest kernel did): shown without
/// `--nocapture`, and kept as `$WSSEDGE_VMTEST_OUT/<file>` for the report when that is set.
pub fn report_finding(file: &str, text: &str) {
    visible_line(text.trim_end());
    if let Some(dir) = std::env::var_os(OUT_DIR_ENV) {
        let path = std::path::Path::new(&dir).join(file);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

/// One reading of `/proc/net/tls_stat` (`TlsCurrTxSw`, `TlsTxSw`, … → value).
#[derive(Debug, Clone)]
pub struct TlsStat(BTreeMap<String, u64>);

impl TlsStat {
    pub fn read() -> TlsStat {
        let text =
            std::fs::read_to_string(TLS_STAT).unwrap_or_else(|e| panic!("read {TLS_STAT}: {e}"));
        TlsStat(parse_tls_stat(&text))
    }

    pub fn get(&self, counter: &str) -> u64 {
        *self
            .0
            .get(counter)
            .unwrap_or_else(|| panic!("{TLS_STAT} has no {counter}: {:?}", self.0))
    }

    /// Whether this kernel has `counter` (the rekey counters came with rekeying, in 6.14).
    pub fn has(&self, counter: &str) -> bool {
        self.0.contains_key(counter)
    }

    /// How far the cumulative `counter` moved since `before`.
    pub fn since(&self, before: &TlsStat, counter: &str) -> u64 {
        let (now, then) = (self.get(counter), before.get(counter));
        assert!(now >= then, "{counter} went backwards: {then} -> {now}");
        now - then
    }
}

/// `Name<whitespace>value` per line; lines that do not parse are ignored.
fn parse_tls_stat(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?;
            let value = fields.next()?.parse().ok()?;
            Some((name.to_string(), value))
        })
        .collect()
}

/// The kernel's and the edge's counters before a test's connections, to prove afterwards that
/// exactly those connections were offloaded.
pub struct OffloadBaseline {
    pub stat: TlsStat,
    ktls_sessions: f64,
    userspace_sessions: f64,
    fallbacks: f64,
}

impl OffloadBaseline {
    /// Take it after the server is up and right before the connections being proven.
    pub async fn take(srv: &Server) -> OffloadBaseline {
        let body = srv.metrics().await;
        OffloadBaseline {
            stat: TlsStat::read(),
            ktls_sessions: sessions(&body, "ktls"),
            userspace_sessions: sessions(&body, "userspace"),
            fallbacks: metric_sum(&body, "wssedge_ktls_fallbacks_total", &[]),
        }
    }

    /// `conns` connections since the baseline were offloaded, each exactly once, and nothing
    /// else was: the kernel counted `conns` TX and RX offloads, the edge `conns` kTLS sessions,
    /// no userspace session and no fallback.
    pub async fn assert_offloaded(&self, srv: &Server, conns: u64) {
        let stat = self.wait_for_kernel_offloads(conns).await;
        for counter in ["TlsTxSw", "TlsRxSw"] {
            assert_eq!(
                stat.since(&self.stat, counter),
                conns,
                "{counter} moved by a different count than the {conns} connections made; \
                 before {:?}, after {:?}",
                self.stat,
                stat
            );
        }
        let labels = [("mode", "ktls")];
        let want = self.ktls_sessions + conns as f64;
        srv.wait_metric("wssedge_tls_sessions_total", &labels, want)
            .await;
        let body = srv.metrics().await;
        assert_eq!(
            sessions(&body, "ktls"),
            want,
            "wssedge_tls_sessions_total{{mode=\"ktls\"}} disagrees with the kernel's {conns}"
        );
        assert_eq!(
            sessions(&body, "userspace"),
            self.userspace_sessions,
            "a session stayed on userspace TLS under ktls = \"required\""
        );
        assert_eq!(
            metric_sum(&body, "wssedge_ktls_fallbacks_total", &[]),
            self.fallbacks,
            "an offload fell back to userspace"
        );
    }

    /// `conns` connections since the baseline stayed on userspace TLS (`ktls = "off"`): the
    /// kernel offloaded nothing and the edge counted them as userspace sessions.
    pub async fn assert_userspace(&self, srv: &Server, conns: u64) {
        let labels = [("mode", "userspace")];
        let want = self.userspace_sessions + conns as f64;
        srv.wait_metric("wssedge_tls_sessions_total", &labels, want)
            .await;
        let body = srv.metrics().await;
        assert_eq!(sessions(&body, "userspace"), want, "userspace sessions");
        assert_eq!(sessions(&body, "ktls"), self.ktls_sessions, "kTLS sessions");
        let stat = TlsStat::read();
        for counter in ["TlsTxSw", "TlsRxSw"] {
            assert_eq!(
                stat.since(&self.stat, counter),
                0,
                "{counter} moved although no connection was to be offloaded"
            );
        }
    }

    /// The kernel counts an offload when the server's setsockopt returns, which may trail the
    /// client's view of the connection by a moment: poll (bounded) until both counters reach
    /// `conns`, then return the reading (which may overshoot, for the caller to refuse).
    async fn wait_for_kernel_offloads(&self, conns: u64) -> TlsStat {
        let deadline = Instant::now() + WAIT;
        loop {
            let stat = TlsStat::read();
            let reached = ["TlsTxSw", "TlsRxSw"]
                .iter()
                .all(|c| stat.since(&self.stat, c) >= conns);
            if reached || Instant::now() >= deadline {
                return stat;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (bounded) until no kTLS socket made since the baseline is alive: the server has
    /// closed every connection it offloaded.
    pub async fn wait_until_released(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let stat = TlsStat::read();
            let live = ["TlsCurrTxSw", "TlsCurrRxSw"]
                .iter()
                .all(|c| stat.get(c) <= self.stat.get(c));
            if live {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kTLS sockets still open {WAIT:?} after the connections ended: before {:?}, now {:?}",
                self.stat,
                stat
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn sessions(metrics: &str, mode: &str) -> f64 {
    metric_sum(metrics, "wssedge_tls_sessions_total", &[("mode", mode)])
}

/// What `ss` calls the negotiated TLS version (`version: 1.3`).
pub fn ss_version(version: rustls::ProtocolVersion) -> &'static str {
    match version {
        rustls::ProtocolVersion::TLSv1_3 => "1.3",
        rustls::ProtocolVersion::TLSv1_2 => "1.2",
        other => panic!("no kTLS for {other:?}"),
    }
}

/// What `ss` (iproute2 6.1) calls the cipher; it has no name for ChaCha20-Poly1305.
pub fn ss_cipher(suite: rustls::SupportedCipherSuite) -> Option<&'static str> {
    let name = format!("{:?}", suite.suite());
    if name.contains("AES_128_GCM") {
        Some("aes-gcm-128")
    } else if name.contains("AES_256_GCM") {
        Some("aes-gcm-256")
    } else {
        None
    }
}

/// Asserts with `ss -tni` that the server's established sockets on `port` carry the TLS ULP
/// with software kTLS in both directions (`tcp-ulp-tls version: 1.3 cipher: aes-gcm-128
/// rxconf: sw txconf: sw`). Call it while a connection is live and past its first echo.
pub async fn assert_ss_shows_tls_ulp(port: u16, version: &str, cipher: Option<&str>) {
    let ss = which("ss").expect("ss (iproute2) is not on PATH");
    let mut cmd = tokio::process::Command::new(ss);
    // The server's side of the connection is the one bound to the listen port.
    cmd.args(["-tniH", "state", "established", "sport", "="])
        .arg(format!(":{port}"));
    let (status, out, err) = run_cmd(cmd, WAIT).await.expect("ss did not finish");
    assert!(status.success(), "ss failed: {err}");
    assert!(
        out.contains("tcp-ulp-tls"),
        "no TLS ULP on the server's socket (port {port}):\n{out}"
    );
    let mut expected = vec![
        format!("version: {version}"),
        "rxconf: sw".into(),
        "txconf: sw".into(),
    ];
    expected.extend(cipher.map(|c| format!("cipher: {c}")));
    for want in expected {
        assert!(
            out.contains(&want),
            "ss shows the ULP but not `{want}`:\n{out}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_stat_lines_parse() {
        let text = "TlsCurrTxSw                     \t1\nTlsCurrRxSw                     \t1\n\
                    TlsTxSw                         \t7\nbogus\n";
        let stat = parse_tls_stat(text);
        assert_eq!(stat.get("TlsTxSw"), Some(&7));
        assert_eq!(stat.get("TlsCurrRxSw"), Some(&1));
        assert_eq!(stat.len(), 3);
    }
}
