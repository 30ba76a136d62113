//! Which certificate a handshake gets: `[[tls.certs]]` by SNI (exact names, then one-label
//! `*.example.com` wildcards), else the default entry (`tls.cert` / `--cert`, or the
//! development certificate) — also for a ClientHello without SNI.
//!
//! Our own resolver rather than rustls' `ResolvesServerCertUsingSni`: that one knows exact
//! names only and has no default.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::tls::policy::{load_cert_chain, load_private_key, TlsConfigError};
use crate::tls::settings::SniCert;

/// Why an `sni` value is refused; each says what to write instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SniError {
    #[error(
        "is an IP address: clients send no SNI for IP addresses, so the default certificate \
         (tls.cert) serves them"
    )]
    IpAddress,
    #[error("`*` is only allowed as the whole first label, as in *.example.com")]
    Star,
    #[error("a wildcard needs at least two labels after `*.`, as in *.example.com")]
    ShortWildcard,
    #[error("not a valid host name (letters, digits, '-' and '.')")]
    HostName,
}

/// Checks an `sni` value and returns it lowercased: a host name, or `*.` and a domain of at
/// least two labels. The error says what to write instead.
pub fn sni_pattern(sni: &str) -> Result<String, SniError> {
    let lower = sni.to_ascii_lowercase();
    if lower.parse::<IpAddr>().is_ok() {
        return Err(SniError::IpAddress);
    }
    let (wildcard, base) = match lower.strip_prefix("*.") {
        Some(base) => (true, base),
        None => (false, lower.as_str()),
    };
    if base.contains('*') {
        return Err(SniError::Star);
    }
    if wildcard && !base.contains('.') {
        return Err(SniError::ShortWildcard);
    }
    if DnsName::try_from(base).is_err() {
        return Err(SniError::HostName);
    }
    Ok(lower)
}

/// Does the wildcard `wild` (`*.example.com`) cover `host` (exactly one more label)?
fn one_label_under(wild: &str, host: &str) -> bool {
    let Some(base) = wild.strip_prefix("*.") else {
        return false;
    };
    host.strip_suffix(base)
        .and_then(|label| label.strip_suffix('.'))
        .is_some_and(|label| !label.is_empty() && !label.contains(['.', '*']))
}

/// The leaf's DNS SANs, lowercased.
fn dns_names(leaf: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(leaf) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// Whether a certificate with these SANs is valid for what `sni` routes to it.
fn serves(sni: &str, sans: &[String]) -> bool {
    sans.iter()
        .any(|san| san == sni || one_label_under(san, sni) || one_label_under(sni, san))
}

/// Builds a `CertifiedKey` with the provider's key loader, naming the files on a mismatch.
pub(crate) fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
    files: Option<(&Path, &Path)>,
) -> Result<CertifiedKey, TlsConfigError> {
    if chain.is_empty() {
        return Err(TlsConfigError::EmptyChain);
    }
    CertifiedKey::from_der(chain, key, provider).map_err(|e| match (e, files) {
        (rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch), Some((c, k))) => {
            TlsConfigError::KeyMismatchFiles {
                cert: c.to_owned(),
                key: k.to_owned(),
            }
        }
        (rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch), None) => {
            TlsConfigError::KeyMismatch
        }
        (e, Some((_, k))) => TlsConfigError::UnusableKeyFile {
            key: k.to_owned(),
            source: e,
        },
        (e, None) => TlsConfigError::UnusableKey(e),
    })
}

/// The certificate resolver: exact SNI, then wildcard, then the default.
#[derive(Debug)]
pub struct SniResolver {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl SniResolver {
    /// Loads every `[[tls.certs]]` entry; errors name the entry's files and the fix.
    pub fn new(
        default: CertifiedKey,
        entries: &[SniCert],
        provider: &CryptoProvider,
    ) -> Result<SniResolver, TlsConfigError> {
        let mut resolver = SniResolver {
            default: Arc::new(default),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for entry in entries {
            let sni = sni_pattern(&entry.sni).map_err(|reason| {
                crate::config_error::ConfigError::invalid(
                    "tls.certs.sni",
                    format!("{:?}", entry.sni),
                    reason,
                )
            })?;
            let chain = load_cert_chain(&entry.cert)?;
            let sans = dns_names(&chain[0]);
            if !serves(&sni, &sans) {
                return Err(TlsConfigError::SniNameMismatch {
                    sni,
                    cert: entry.cert.clone(),
                    names: sans,
                });
            }
            let key = load_private_key(&entry.key)?;
            let ck = Arc::new(certified_key(
                chain,
                key,
                provider,
                Some((&entry.cert, &entry.key)),
            )?);
            let (map, name) = match sni.strip_prefix("*.") {
                Some(base) => (&mut resolver.wildcard, base.to_owned()),
                None => (&mut resolver.exact, sni.clone()),
            };
            if map.insert(name, ck).is_some() {
                return Err(crate::config_error::ConfigError::invalid(
                    "tls.certs.sni",
                    format!("{:?}", entry.sni),
                    "listed twice; each name gets one certificate",
                )
                .into());
            }
        }
        Ok(resolver)
    }

    /// The certificate for a ClientHello naming `sni` (or none).
    pub fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = sni else {
            return &self.default;
        };
        // rustls hands SNI over lowercased already; be sure without allocating when it is.
        let lowered;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = name.to_ascii_lowercase();
            lowered.as_str()
        } else {
            name
        };
        if let Some(ck) = self.exact.get(name) {
            return ck;
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(ck) = self.wildcard.get(parent) {
                return ck;
            }
        }
        &self.default
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(one_label_under("*.example.com", "a.example.com"));
        assert!(!one_label_under("*.example.com", "a.b.example.com"));
        assert!(!one_label_under("*.example.com", "example.com"));
        assert!(!one_label_under("*.example.com", ".example.com"));
        assert!(!one_label_under("*.example.com", "aexample.com"));
        assert!(!one_label_under("a.example.com", "a.example.com"));
        let sans = vec!["*.example.com".to_owned(), "api.example.org".to_owned()];
        assert!(serves("x.example.com", &sans));
        assert!(serves("*.example.com", &sans));
        assert!(serves("api.example.org", &sans));
        assert!(serves("*.example.org", &sans));
        assert!(!serves("example.com", &sans));
        assert!(!serves("x.y.example.com", &sans));
    }
}
