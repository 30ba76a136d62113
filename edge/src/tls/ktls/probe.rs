//! What this kernel's TLS offload can do, found once at start.
//!
//! The probe opens loopback TCP pairs and tries, on each, the `tls` ULP and one version ×
//! cipher in both directions with a dummy key (the keys are never used: nothing is sent). On a
//! TLS 1.3 pair it then sets TX keys a second time: kernels that can rekey (6.14+) accept that,
//! older ones answer EBUSY. The result names what is missing, for the start-up log and for
//! `ktls = "required"` refusing to start.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;

use super::crypto_info::{Cipher, CryptoInfo, TlsVersion};
use super::sys::{self, Direction};

/// The outcome of the probe.
#[derive(Debug, Clone)]
pub struct KtlsSupport {
    /// Why the `tls` ULP cannot be installed (`None`: it can).
    pub ulp_error: Option<String>,
    /// Version × cipher pairs the kernel takes in both directions.
    pub supported: Vec<(TlsVersion, Cipher)>,
    /// Version × cipher pairs it refused, with the error.
    pub refused: Vec<(TlsVersion, Cipher, String)>,
    /// The kernel can replace TLS 1.3 keys on a live socket (KeyUpdate under kTLS).
    pub tx_rekey: bool,
}

impl KtlsSupport {
    /// Probes the running kernel. Never fails: every failure becomes part of the answer.
    pub fn probe() -> Self {
        let mut support = Self {
            ulp_error: None,
            supported: Vec::new(),
            refused: Vec::new(),
            tx_rekey: false,
        };
        for version in TlsVersion::ALL {
            for cipher in Cipher::ALL {
                match probe_pair(version, cipher) {
                    Ok(rekey) => {
                        support.supported.push((version, cipher));
                        support.tx_rekey |= rekey;
                    }
                    Err(ProbeError::Ulp(e)) => {
                        support.ulp_error = Some(describe_ulp_error(&e));
                        support.supported.clear();
                        support.refused.clear();
                        return support;
                    }
                    Err(ProbeError::Other(e)) => {
                        support.refused.push((version, cipher, e));
                    }
                }
            }
        }
        support
    }

    /// A support answer with nothing (for `ktls = "off"`, and tests).
    pub fn none(reason: &str) -> Self {
        Self {
            ulp_error: Some(reason.to_owned()),
            supported: Vec::new(),
            refused: Vec::new(),
            tx_rekey: false,
        }
    }

    /// Some connection can be offloaded.
    pub fn available(&self) -> bool {
        self.ulp_error.is_none() && !self.supported.is_empty()
    }

    /// Every version × cipher the edge negotiates can be offloaded.
    pub fn complete(&self) -> bool {
        self.available() && self.refused.is_empty()
    }

    pub fn supports(&self, version: TlsVersion, cipher: Cipher) -> bool {
        self.supported.contains(&(version, cipher))
    }

    /// One line for the start-up log and start errors: what works, or what is missing.
    pub fn describe(&self) -> String {
        if let Some(e) = &self.ulp_error {
            return e.clone();
        }
        let list = |pairs: &mut dyn Iterator<Item = (TlsVersion, Cipher)>| {
            pairs
                .map(|(v, c)| format!("TLS {} {}", v.name(), c.name()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut line = format!(
            "kernel TLS offload for {}; rekey: {}",
            list(&mut self.supported.iter().copied()),
            if self.tx_rekey {
                "yes (TLS 1.3 KeyUpdate, both directions, at every key limit)"
            } else {
                "no (connections are closed before their key limit and on a client KeyUpdate)"
            }
        );
        if !self.refused.is_empty() {
            let missing: Vec<String> = self
                .refused
                .iter()
                .map(|(v, c, e)| format!("TLS {} {} ({e})", v.name(), c.name()))
                .collect();
            line.push_str(&format!(
                "; not offloaded (served in userspace): {}",
                missing.join(", ")
            ));
        }
        line
    }
}

enum ProbeError {
    Ulp(io::Error),
    Other(String),
}

/// One loopback pair: ULP, TX and RX keys for `version`/`cipher`; for TLS 1.3 also whether TX
/// keys can be set again (rekey).
fn probe_pair(version: TlsVersion, cipher: Cipher) -> Result<bool, ProbeError> {
    let other = |what: &str, e: io::Error| ProbeError::Other(format!("{what}: {e}"));
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| other("loopback listener", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| other("loopback listener", e))?;
    let client = TcpStream::connect(addr).map_err(|e| other("loopback connect", e))?;
    let (server, _) = listener.accept().map_err(|e| other("loopback accept", e))?;
    sys::set_ulp_tls(server.as_fd()).map_err(ProbeError::Ulp)?;
    let key = [0x5a_u8; 32];
    let key = &key[..if cipher == Cipher::Aes128Gcm { 16 } else { 32 }];
    let info = CryptoInfo::from_parts(version, cipher, key, &[0; 12], 0)
        .map_err(|e| ProbeError::Other(e.to_string()))?;
    sys::set_crypto(server.as_fd(), Direction::Tx, &info).map_err(|e| other("TLS_TX", e))?;
    sys::set_crypto(server.as_fd(), Direction::Rx, &info).map_err(|e| other("TLS_RX", e))?;
    let rekey = version == TlsVersion::Tls13
        && sys::set_crypto(server.as_fd(), Direction::Tx, &info).is_ok();
    drop(client);
    Ok(rekey)
}

fn describe_ulp_error(e: &io::Error) -> String {
    let available = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let hint = if e.raw_os_error() == Some(libc::ENOENT) {
        "the kernel has no TLS upper layer protocol: build it with CONFIG_TLS or load the tls \
         module (modprobe tls)"
    } else {
        "the kernel refused the TLS upper layer protocol"
    };
    format!(
        "setsockopt(TCP_ULP, \"tls\") failed: {e}; {hint} (tcp_available_ulp: {})",
        if available.is_empty() {
            "none"
        } else {
            &available
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_agrees_with_the_kernel() {
        let support = KtlsSupport::probe();
        let kernel_has_tls = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
            .is_ok_and(|s| s.split_whitespace().any(|u| u == "tls"))
            || std::path::Path::new("/proc/net/tls_stat").exists();
        if kernel_has_tls {
            assert!(support.available(), "{}", support.describe());
        } else {
            assert!(!support.available());
            let why = support.describe();
            assert!(why.contains("TCP_ULP") && why.contains("tls"), "{why}");
        }
    }

    #[test]
    fn describe_lists_what_works_and_what_is_missing() {
        let support = KtlsSupport {
            ulp_error: None,
            supported: vec![(TlsVersion::Tls13, Cipher::Aes128Gcm)],
            refused: vec![(
                TlsVersion::Tls12,
                Cipher::Chacha20Poly1305,
                "TLS_TX: Invalid argument".into(),
            )],
            tx_rekey: false,
        };
        assert!(support.available());
        assert!(!support.complete());
        let line = support.describe();
        assert!(line.contains("TLS 1.3 aes-128-gcm"), "{line}");
        assert!(line.contains("TLS 1.2 chacha20-poly1305 (TLS_TX"), "{line}");
        assert!(line.contains("rekey: no"), "{line}");
    }
}
