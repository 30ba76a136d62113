//! The verified client identity of a mutual-TLS connection.
//!
//! [`ClientIdentity`] is read once from the certificate chain rustls verified (or restored on
//! resumption) and then travels with the connection into every decision, log line and audit
//! record; it holds no reference into rustls, so it survives the kTLS hand-off.
//!
//! [`rules`] maps identities to the paths they may open (`[[tls.identity_rules]]`).

use crate::reason::Reason;
use std::fmt;

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::tls::crl::CrlSet;

pub mod rules;

pub use rules::{IdentityRefusal, IdentityRule, IdentityRules};

/// Who the client is, as its verified certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The first subject CN, when it is a readable string.
    pub subject_cn: Option<String>,
    /// The subject DN, `CN=…, O=…` in certificate order (RFC 4514-like).
    pub subject: String,
    /// DNS SANs, lowercased (DNS names are case-insensitive).
    pub dns: Vec<String>,
    /// URI SANs, as written (a SPIFFE ID is among them).
    pub uris: Vec<String>,
    /// The SPIFFE ID, when the certificate is a valid X.509-SVID: exactly one URI SAN, and it
    /// is a well-formed `spiffe://` ID. Otherwise `None`.
    pub spiffe_id: Option<String>,
    /// A `spiffe://` URI SAN is present but the certificate is no valid SVID (several URI SANs,
    /// or a malformed ID): `spiffe_id` stays `None` so no SPIFFE rule can match it, and this
    /// flag lets logs and audit records say why.
    pub spiffe_invalid: bool,
    /// SHA-256 of the leaf certificate's DER, lowercase hex (64 characters).
    pub fingerprint_sha256: String,
    /// The leaf's serial number, lowercase hex without leading zero bytes (CRLs use the same).
    pub serial_hex: String,
    /// The issuer DN, same format as `subject`.
    pub issuer: String,
    /// The issuer DN's DER: what CRLs are matched on (byte-exact, as webpki does).
    pub issuer_der: Vec<u8>,
    /// The end of the leaf's validity, UNIX seconds.
    pub not_after_unix: i64,
    /// The start of the leaf's validity, UNIX seconds.
    pub not_before_unix: i64,
    /// The rest of the presented chain (intermediates), so a revoked intermediate also closes
    /// the sessions below it. Empty from [`ClientIdentity::from_leaf`].
    pub intermediates: Vec<CertRef>,
}

/// One certificate of the chain as CRLs name it (the issuer's DN (DER) and the serial
/// number), and its validity (UNIX seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRef {
    /// The certificate's own subject DN (DER): what links it to the certificate it issued.
    pub subject_der: Vec<u8>,
    pub issuer_der: Vec<u8>,
    pub serial_hex: String,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
}

/// Why an identity verified at its handshake no longer holds at the upgrade: what webpki
/// would refuse on a full handshake now, and rustls does not check again on a resumed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdentityLapse {
    #[error("a certificate of the chain is on a CRL in force")]
    Revoked,
    #[error("a certificate of the chain has expired")]
    Expired,
    #[error("a certificate of the chain is not valid yet")]
    NotYetValid,
    #[error("the CRL of an issuer of the chain is past its nextUpdate")]
    CrlExpired,
}

impl IdentityLapse {
    /// The refusal reason: the same codes a full handshake's TLS failure is counted under
    /// ([`client_cert_failure_reason`]), and `certificate_revoked` for a CRL that arrived
    /// after the handshake (the code live sessions are closed with).
    pub fn reason(self) -> Reason {
        match self {
            IdentityLapse::Revoked => Reason::CertificateRevoked,
            IdentityLapse::Expired => Reason::ClientCertExpired,
            IdentityLapse::NotYetValid => Reason::ClientCertNotYetValid,
            IdentityLapse::CrlExpired => Reason::CrlExpired,
        }
    }
}

/// Why a certificate could not be read. It was verified by webpki first, so in practice this
/// means a certificate webpki accepts and x509-parser does not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("no client certificate in the chain")]
    EmptyChain,
    #[error("client certificate #{index} cannot be parsed: {detail}")]
    Parse { index: usize, detail: String },
}

impl ClientIdentity {
    /// Reads the identity of a leaf certificate (DER).
    pub fn from_leaf(der: &[u8]) -> Result<ClientIdentity, IdentityError> {
        let cert = parse(der, 0)?;
        let parse_err = |e: x509_parser::error::X509Error| IdentityError::Parse {
            index: 0,
            detail: e.to_string(),
        };
        let mut dns = Vec::new();
        let mut uris = Vec::new();
        if let Some(san) = cert.subject_alternative_name().map_err(parse_err)? {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns.push(d.to_ascii_lowercase()),
                    GeneralName::URI(u) => uris.push((*u).to_owned()),
                    _ => {}
                }
            }
        }
        let has_spiffe = uris.iter().any(|u| has_spiffe_scheme(u));
        // X.509-SVID: "MUST contain exactly one URI SAN". Anything else is not an SVID.
        let spiffe_id = match uris.as_slice() {
            [only] if has_spiffe_scheme(only) && valid_spiffe_id(only) => Some(only.clone()),
            _ => None,
        };
        let subject_cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        Ok(ClientIdentity {
            subject_cn,
            subject: cert.subject().to_string(),
            dns,
            spiffe_invalid: has_spiffe && spiffe_id.is_none(),
            spiffe_id,
            uris,
            fingerprint_sha256: hex(
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref()
            ),
            serial_hex: serial_hex(cert.raw_serial()),
            issuer: cert.issuer().to_string(),
            issuer_der: cert.issuer().as_raw().to_vec(),
            not_after_unix: cert.validity().not_after.timestamp(),
            not_before_unix: cert.validity().not_before.timestamp(),
            intermediates: Vec::new(),
        })
    }

    /// Reads the identity of a presented chain (leaf first, as rustls'
    /// `peer_certificates()` gives it), keeping the intermediates for revocation checks.
    pub fn from_chain(chain: &[CertificateDer<'_>]) -> Result<ClientIdentity, IdentityError> {
        let (leaf, rest) = chain.split_first().ok_or(IdentityError::EmptyChain)?;
        let mut id = ClientIdentity::from_leaf(leaf)?;
        for (i, der) in rest.iter().enumerate() {
            let cert = parse(der, i + 1)?;
            id.intermediates.push(CertRef {
                subject_der: cert.subject().as_raw().to_vec(),
                issuer_der: cert.issuer().as_raw().to_vec(),
                serial_hex: serial_hex(cert.raw_serial()),
                not_before_unix: cert.validity().not_before.timestamp(),
                not_after_unix: cert.validity().not_after.timestamp(),
            });
        }
        Ok(id)
    }

    /// The identity of a handshake's peer chain (`Negotiated::peer_certificates`): `None`
    /// when the client presented no certificate.
    pub fn from_peer(
        chain: &[CertificateDer<'_>],
    ) -> Result<Option<ClientIdentity>, IdentityError> {
        if chain.is_empty() {
            return Ok(None);
        }
        ClientIdentity::from_chain(chain).map(Some)
    }

    /// The leaf and every intermediate, as CRLs name them.
    pub fn cert_refs(&self) -> impl Iterator<Item = (&[u8], &str)> {
        std::iter::once((self.issuer_der.as_slice(), self.serial_hex.as_str())).chain(
            self.intermediates
                .iter()
                .map(|c| (c.issuer_der.as_slice(), c.serial_hex.as_str())),
        )
    }

    /// A short name for logs: the SPIFFE ID, else the CN, else the first DNS SAN, else
    /// `sha256:` and the fingerprint's first 16 hex digits.
    pub fn display_name(&self) -> String {
        if let Some(s) = &self.spiffe_id {
            return s.clone();
        }
        if let Some(cn) = &self.subject_cn {
            return cn.clone();
        }
        if let Some(d) = self.dns.first() {
            return d.clone();
        }
        let f = &self.fingerprint_sha256;
        format!("sha256:{}", f.get(..16).unwrap_or(f))
    }

    /// Whether the leaf has expired at `now_unix` (for a resumed session, whose certificate
    /// rustls does not re-verify).
    pub fn expired_at(&self, now_unix: i64) -> bool {
        now_unix > self.not_after_unix
    }

    /// The intermediates on the path from the leaf toward a trust anchor, as a verifier
    /// builds it: each the issuer of the one before (by DN), a currently valid one preferred
    /// where the client sent several with one subject (a legacy cross-signed copy, expired,
    /// beside the one in use). A presented certificate off that path was never relied on and
    /// is not judged: an extra expired one in a client's bundle must not refuse it.
    fn verified_path(&self, now_unix: i64) -> Vec<&CertRef> {
        let mut path: Vec<&CertRef> = Vec::new();
        let mut issuer = self.issuer_der.as_slice();
        // Bounded by the chain's length: no certificate is used twice.
        while path.len() < self.intermediates.len() {
            let mut candidates = self
                .intermediates
                .iter()
                .filter(|c| c.subject_der == issuer && !path.iter().any(|p| std::ptr::eq(*p, *c)));
            let first = candidates.next();
            let valid = first
                .into_iter()
                .chain(candidates)
                .find(|c| c.not_before_unix <= now_unix && now_unix <= c.not_after_unix);
            let Some(next) = valid.or(first) else {
                break; // the issuer is a trust anchor (not presented), or not in the chain
            };
            path.push(next);
            if next.subject_der == next.issuer_der {
                break; // self-issued: a root sent along
            }
            issuer = next.issuer_der.as_slice();
        }
        path
    }

    /// The validity windows of the leaf and the intermediates on its verified path.
    fn windows(&self, now_unix: i64) -> Vec<(i64, i64)> {
        std::iter::once((self.not_before_unix, self.not_after_unix))
            .chain(
                self.verified_path(now_unix)
                    .into_iter()
                    .map(|c| (c.not_before_unix, c.not_after_unix)),
            )
            .collect()
    }

    /// The issuers (DN, DER) whose CRLs a verifier consults for this chain: the leaf's and
    /// those of the intermediates on its verified path.
    pub fn path_issuers(&self, now_unix: i64) -> Vec<&[u8]> {
        std::iter::once(self.issuer_der.as_slice())
            .chain(
                self.verified_path(now_unix)
                    .into_iter()
                    .map(|c| c.issuer_der.as_slice()),
            )
            .collect()
    }

    /// Checks again, at `now_unix`, what the verifier checked at the handshake and rustls
    /// does not check on a resumed session: revocation by the CRLs in force, the validity of
    /// every certificate on the chain's verified path (expired: `now > notAfter`; not yet
    /// valid: `now < notBefore`, as webpki judges) and the freshness of the CRLs a verifier
    /// consults for it (`now >= nextUpdate` is expired, as webpki judges). A few comparisons and hash
    /// lookups: run at every upgrade, resumed or not — a full handshake can straddle the
    /// instant too.
    pub fn recheck(&self, crls: &CrlSet, now_unix: i64) -> Result<(), IdentityLapse> {
        if crls.is_revoked(self) {
            return Err(IdentityLapse::Revoked);
        }
        let windows = self.windows(now_unix);
        if windows.iter().any(|&(_, not_after)| now_unix > not_after) {
            return Err(IdentityLapse::Expired);
        }
        if windows.iter().any(|&(not_before, _)| now_unix < not_before) {
            return Err(IdentityLapse::NotYetValid);
        }
        if crls.expired_for(self, now_unix) {
            return Err(IdentityLapse::CrlExpired);
        }
        Ok(())
    }
}

/// A finer reason than the driver's `tls_bad_certificate` for a handshake the server failed
/// over the client's certificate (on the server side every certificate error is about the
/// client's). `None` for any other error.
pub fn client_cert_failure_reason(e: &rustls::Error) -> Option<Reason> {
    use rustls::CertificateError as C;
    Some(match e {
        rustls::Error::NoCertificatesPresented => Reason::ClientCertMissing,
        rustls::Error::InvalidCertRevocationList(_) => Reason::CrlInvalid,
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => Reason::ClientCertUntrusted,
            C::Revoked => Reason::ClientCertRevoked,
            C::UnknownRevocationStatus => Reason::ClientCertRevocationUnknown,
            C::ExpiredRevocationList | C::ExpiredRevocationListContext { .. } => Reason::CrlExpired,
            C::Expired | C::ExpiredContext { .. } => Reason::ClientCertExpired,
            C::NotValidYet | C::NotValidYetContext { .. } => Reason::ClientCertNotYetValid,
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => Reason::ClientCertWrongPurpose,
            _ => Reason::ClientCertInvalid,
        },
        _ => return None,
    })
}

fn parse(der: &[u8], index: usize) -> Result<X509Certificate<'_>, IdentityError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(IdentityError::Parse {
            index,
            detail: "trailing bytes after the certificate".into(),
        }),
        Err(e) => Err(IdentityError::Parse {
            index,
            detail: e.to_string(),
        }),
    }
}

/// A DER INTEGER's content as lowercase hex without leading zero bytes, so a certificate's
/// serial and a CRL entry's compare equal however each was encoded.
pub(crate) fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
    if start == raw.len() {
        return "00".into();
    }
    hex(&raw[start..])
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub(crate) fn has_spiffe_scheme(uri: &str) -> bool {
    uri.get(..9)
        .is_some_and(|s| s.eq_ignore_ascii_case("spiffe://"))
}

/// The SPIFFE ID grammar: `spiffe://` (lowercase), a trust domain of `[a-z0-9.-_]`, then
/// zero or more `/segment`s of `[A-Za-z0-9.-_]`, no empty, `.` or `..` segment, no trailing
/// `/`, no query, fragment, port or userinfo, at most 2048 bytes.
pub fn valid_spiffe_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return false;
    };
    if id.len() > 2048 {
        return false;
    }
    let (domain, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if domain.is_empty()
        || !domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
    {
        return false;
    }
    if path.is_empty() {
        return true;
    }
    path[1..].split('/').all(|seg| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    })
}

impl fmt::Display for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testpki::{ClientSpec, TestPki};

    fn id(spec: ClientSpec) -> ClientIdentity {
        let pki = TestPki::new();
        let client = pki.client(spec);
        ClientIdentity::from_leaf(&client.chain[0]).unwrap()
    }

    #[test]
    fn reads_cn_sans_spiffe_fingerprint_serial_and_issuer() {
        let pki = TestPki::new();
        let client = pki.client(ClientSpec {
            cn: Some("trader-7"),
            dns: &["Trader-7.Desk.Example.com"],
            uris: &["spiffe://example.org/desk/trader-7"],
            serial: 0x00ab_cdef,
        });
        let id = ClientIdentity::from_chain(&client.chain).unwrap();
        assert_eq!(id.subject_cn.as_deref(), Some("trader-7"));
        assert!(id.subject.contains("CN=trader-7"), "{}", id.subject);
        assert_eq!(id.dns, vec!["trader-7.desk.example.com"]);
        assert_eq!(id.uris, vec!["spiffe://example.org/desk/trader-7"]);
        assert_eq!(
            id.spiffe_id.as_deref(),
            Some("spiffe://example.org/desk/trader-7")
        );
        assert!(!id.spiffe_invalid);
        let want =
            hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &client.chain[0]).as_ref());
        assert_eq!(id.fingerprint_sha256, want);
        assert_eq!(id.fingerprint_sha256.len(), 64);
        assert_eq!(id.serial_hex, "abcdef");
        assert!(id.issuer.contains("wssedge test CA"), "{}", id.issuer);
        assert!(id.not_after_unix > 1_700_000_000);
        assert_eq!(id.display_name(), "spiffe://example.org/desk/trader-7");
        assert!(ClientIdentity::from_chain(&[]).is_err());
        assert_eq!(ClientIdentity::from_peer(&[]), Ok(None));
        assert_eq!(
            ClientIdentity::from_peer(&client.chain),
            Ok(Some(id.clone()))
        );
        assert!(ClientIdentity::from_leaf(b"not a certificate").is_err());
    }

    #[test]
    fn recheck_judges_the_verified_path_not_every_certificate_sent() {
        use crate::tls::crl::CrlSet;
        let pki = TestPki::new();
        let inter = pki.intermediate(0x78);
        let leaf = inter.client(ClientSpec::default());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut id = ClientIdentity::from_chain(&leaf.chain).unwrap();
        let none = CrlSet::empty();
        assert_eq!(id.recheck(&none, now), Ok(()));
        // A legacy copy of the intermediate (same subject), long expired, sent before the one
        // in use; and a certificate off the path altogether, expired too.
        let mut legacy = id.intermediates[0].clone();
        legacy.not_before_unix = now - 1000;
        legacy.not_after_unix = now - 500;
        legacy.serial_hex = "01".into();
        let mut stray = legacy.clone();
        stray.subject_der = b"not an issuer of this chain".to_vec();
        id.intermediates.insert(0, legacy);
        id.intermediates.push(stray);
        assert_eq!(id.recheck(&none, now), Ok(()));
        assert_eq!(id.path_issuers(now).len(), 2);
        // Only the expired copy left: the path runs through it, and it is judged.
        id.intermediates.remove(1);
        assert_eq!(id.recheck(&none, now), Err(IdentityLapse::Expired));

        // CRL rotation: the old, expired CRL of the intermediate loaded behind its fresh
        // replacement is not the one consulted; in front of it, it is.
        let id = ClientIdentity::from_chain(&leaf.chain).unwrap();
        let fresh = inter.crl(&[], false).der().clone();
        let stale = inter.crl(&[], true).der().clone();
        let rotating = CrlSet::from_ders("mem", vec![fresh.clone(), stale.clone()]).unwrap();
        assert_eq!(id.recheck(&rotating, now), Ok(()));
        let stale_first = CrlSet::from_ders("mem", vec![stale, fresh]).unwrap();
        assert_eq!(
            id.recheck(&stale_first, now),
            Err(IdentityLapse::CrlExpired)
        );
    }

    #[test]
    fn recheck_judges_the_whole_chain_as_webpki_does() {
        use crate::tls::crl::CrlSet;
        let pki = TestPki::new();
        let inter = pki.intermediate(0x77);
        let leaf = inter.client(ClientSpec::default());
        let mut id = ClientIdentity::from_chain(&leaf.chain).unwrap();
        assert_eq!(id.intermediates.len(), 1);
        assert!(id.not_before_unix < id.not_after_unix);
        let t = 1_900_000_000i64;
        id.not_before_unix = t - 100;
        id.not_after_unix = t + 100;
        id.intermediates[0].not_before_unix = t - 50;
        id.intermediates[0].not_after_unix = t + 50;
        let none = CrlSet::empty();
        // Expired: now > notAfter; not yet valid: now < notBefore — any certificate of the chain.
        assert_eq!(id.recheck(&none, t + 50), Ok(()));
        assert_eq!(id.recheck(&none, t + 51), Err(IdentityLapse::Expired));
        assert_eq!(id.recheck(&none, t - 50), Ok(()));
        assert_eq!(id.recheck(&none, t - 51), Err(IdentityLapse::NotYetValid));

        // CRLs: of the leaf's issuer (the intermediate) and of the intermediate's (the root).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut today = ClientIdentity::from_chain(&leaf.chain).unwrap();
        assert_eq!(today.recheck(&none, now), Ok(()));
        let fresh = CrlSet::from_ders(
            "mem",
            vec![
                pki.crl(&[], false).der().clone(),
                inter.crl(&[], false).der().clone(),
            ],
        )
        .unwrap();
        assert_eq!(today.recheck(&fresh, now), Ok(()));
        // nextUpdate is a day ahead: at or after it the CRL has expired.
        assert_eq!(
            today.recheck(&fresh, now + 2 * 24 * 3600),
            Err(IdentityLapse::CrlExpired)
        );
        for expired in [pki.crl(&[], true), inter.crl(&[], true)] {
            let set = CrlSet::from_ders("mem", vec![expired.der().clone()]).unwrap();
            assert_eq!(today.recheck(&set, now), Err(IdentityLapse::CrlExpired));
        }
        // Another issuer's expired CRL is not this chain's.
        let other = TestPki::new_named("another CA");
        let foreign = CrlSet::from_ders("mem", vec![other.crl(&[], true).der().clone()]).unwrap();
        assert_eq!(today.recheck(&foreign, now), Ok(()));
        // Revocation wins over everything else.
        let revoked = CrlSet::from_ders("mem", vec![pki.crl(&[0x77], true).der().clone()]).unwrap();
        assert_eq!(today.recheck(&revoked, now), Err(IdentityLapse::Revoked));
        today.not_after_unix = now - 1;
        assert_eq!(today.recheck(&fresh, now), Err(IdentityLapse::Expired));

        let reasons: Vec<&str> = [
            IdentityLapse::Revoked,
            IdentityLapse::Expired,
            IdentityLapse::NotYetValid,
            IdentityLapse::CrlExpired,
        ]
        .iter()
        .map(|l| l.reason().as_str())
        .collect();
        assert_eq!(
            reasons,
            [
                "certificate_revoked",
                "client_cert_expired",
                "client_cert_not_yet_valid",
                "crl_expired"
            ]
        );
    }

    #[test]
    fn spiffe_svid_needs_exactly_one_uri_san() {
        let two_spiffe = id(ClientSpec {
            uris: &["spiffe://example.org/a", "spiffe://example.org/b"],
            ..ClientSpec::default()
        });
        assert_eq!(two_spiffe.spiffe_id, None);
        assert!(two_spiffe.spiffe_invalid);
        let with_other_uri = id(ClientSpec {
            uris: &["spiffe://example.org/a", "https://example.org/"],
            ..ClientSpec::default()
        });
        assert_eq!(with_other_uri.spiffe_id, None);
        assert!(with_other_uri.spiffe_invalid);
        let malformed = id(ClientSpec {
            uris: &["spiffe://Example.org/a/../b"],
            ..ClientSpec::default()
        });
        assert_eq!(malformed.spiffe_id, None);
        assert!(malformed.spiffe_invalid);
        let plain = id(ClientSpec {
            cn: Some("c"),
            uris: &["https://example.org/"],
            ..ClientSpec::default()
        });
        assert_eq!(plain.spiffe_id, None);
        assert!(!plain.spiffe_invalid);
        assert_eq!(plain.display_name(), "c");
    }

    #[test]
    fn spiffe_id_grammar() {
        for ok in [
            "spiffe://example.org",
            "spiffe://example.org/a",
            "spiffe://ex-ample.org/A_b.c/d-e",
        ] {
            assert!(valid_spiffe_id(ok), "{ok}");
        }
        for bad in [
            "spiffe://",
            "spiffe://Example.org/a",
            "spiffe://example.org/",
            "spiffe://example.org//a",
            "spiffe://example.org/a/./b",
            "spiffe://example.org/a/../b",
            "spiffe://example.org/a?x",
            "spiffe://example.org:443/a",
            "spiffe://user@example.org/a",
            "SPIFFE://example.org/a",
            "https://example.org/a",
        ] {
            assert!(!valid_spiffe_id(bad), "{bad}");
        }
    }
}
