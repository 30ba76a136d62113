//! Which client identities may open which paths: `[[tls.identity_rules]]`, sans-IO.
//!
//! A request target and an optional [`ClientIdentity`] in; `Ok(())` or an [`IdentityRefusal`]
//! with a stable snake_case `reason()` and the HTTP `status()` out. The rule with the longest
//! matching `path_prefix` decides (a [`PathPrefix`]: whole segments, ASCII-case-insensitive,
//! like the JWT scope rules and the routes); a path no rule covers is allowed.
//!
//! The path is the one the upgrade parser normalised ([`RequestTarget`]): spellings an upstream
//! could resolve differently (`%2f`, `..;`, `//`, `\`, dot segments…) never get this far.
//!
//! # Reason → status
//!
//! | reason | status | meaning |
//! |---|---|---|
//! | `identity_required` | 403 | a rule covers the path and the client presented no certificate |
//! | `identity_not_allowed` | 403 | a rule covers the path and no `allow` entry matches the certificate |
//!
//! `identity_required` is 403, not 401: a 401 invites the client to retry the *request* with
//! credentials (`WWW-Authenticate`), but a client certificate can only be presented in a new
//! TLS handshake, and no `WWW-Authenticate` scheme describes it. 401 stays the JWT refusals'.

use crate::reason::Reason;
use serde::Deserialize;

use super::{has_spiffe_scheme, valid_spiffe_id, ClientIdentity};
use crate::config_error::ConfigError;
use crate::ws::{PathPrefix, RequestTarget};

/// `[[tls.identity_rules]]`: the identities that may open paths under `path_prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityRule {
    /// Matches whole path segments, ASCII-case-insensitively: `/api` covers `/api`, `/API/x`
    /// and `/api/x`, not `/apiary`; a prefix ending in `/` covers everything below it.
    pub path_prefix: String,
    /// Any one matching entry admits the client:
    /// `spiffe://td/path` (exact) or `spiffe://td/path/*` (anything below), `cn:NAME`,
    /// `dns:NAME` or `dns:*.example.com` (one label), `uri:URI` (exact),
    /// `fingerprint:HEX` (SHA-256 of the DER, colons allowed), `any` (any verified certificate).
    #[serde(deserialize_with = "wssedge_proto::config_list::one_or_many")]
    pub allow: Vec<String>,
}

/// One parsed `allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    SpiffeExact(String),
    /// `spiffe://td/path/*`, stored as `spiffe://td/path/`.
    SpiffeBelow(String),
    Cn(String),
    DnsExact(String),
    /// `dns:*.example.com`, stored as `.example.com`.
    DnsWildcard(String),
    Uri(String),
    Fingerprint(String),
    Any,
}

/// Why an `allow` entry of an identity rule is refused; each says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum MatcherError {
    #[error(
        "not a valid SPIFFE ID: expected spiffe://trust-domain/path (lowercase trust domain, \
         segments of [A-Za-z0-9._-]), optionally ending in /* for everything below it"
    )]
    SpiffeId,
    #[error(
        "unknown matcher; use spiffe://…, cn:NAME, dns:NAME, dns:*.DOMAIN, uri:URI, \
         fingerprint:SHA256HEX or any"
    )]
    Unknown,
    #[error("`{kind}:` needs a value after the colon")]
    NoValue { kind: String },
    #[error("a DNS wildcard is `*.` and a domain of at least two labels, e.g. dns:*.example.com")]
    DnsWildcard,
    #[error("`*` is only allowed as the whole first label (dns:*.example.com)")]
    DnsStar,
    #[error(
        "a fingerprint is the SHA-256 of the certificate's DER: 64 hex digits (colons \
         allowed), e.g. from `openssl x509 -noout -fingerprint -sha256`"
    )]
    Fingerprint,
    #[error(
        "unknown matcher kind `{kind}:`; use spiffe://…, cn:, dns:, uri:, fingerprint: or any"
    )]
    UnknownKind { kind: String },
}

impl Matcher {
    fn parse(entry: &str) -> Result<Matcher, MatcherError> {
        let e = entry.trim();
        if e == "any" {
            return Ok(Matcher::Any);
        }
        if has_spiffe_scheme(e) {
            match e.strip_suffix("/*") {
                Some(base) if valid_spiffe_id(base) => {
                    return Ok(Matcher::SpiffeBelow(format!("{base}/")))
                }
                None if valid_spiffe_id(e) => return Ok(Matcher::SpiffeExact(e.to_owned())),
                _ => return Err(MatcherError::SpiffeId),
            }
        }
        let (kind, value) = e.split_once(':').ok_or(MatcherError::Unknown)?;
        if value.is_empty() {
            return Err(MatcherError::NoValue {
                kind: kind.to_owned(),
            });
        }
        match kind {
            "cn" => Ok(Matcher::Cn(value.to_owned())),
            "uri" => Ok(Matcher::Uri(value.to_owned())),
            "dns" => {
                let v = value.to_ascii_lowercase();
                match v.strip_prefix('*') {
                    Some(suffix) if suffix.starts_with('.') && suffix[1..].contains('.') => {
                        Ok(Matcher::DnsWildcard(suffix.to_owned()))
                    }
                    Some(_) => Err(MatcherError::DnsWildcard),
                    None if v.contains('*') => Err(MatcherError::DnsStar),
                    None => Ok(Matcher::DnsExact(v)),
                }
            }
            "fingerprint" => {
                let hex: String = value
                    .chars()
                    .filter(|&c| c != ':')
                    .map(|c| c.to_ascii_lowercase())
                    .collect();
                if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Ok(Matcher::Fingerprint(hex))
                } else {
                    Err(MatcherError::Fingerprint)
                }
            }
            other => Err(MatcherError::UnknownKind {
                kind: other.to_owned(),
            }),
        }
    }

    fn matches(&self, id: &ClientIdentity) -> bool {
        match self {
            Matcher::Any => true,
            Matcher::SpiffeExact(s) => id.spiffe_id.as_deref() == Some(s.as_str()),
            Matcher::SpiffeBelow(base) => id
                .spiffe_id
                .as_deref()
                .is_some_and(|s| s.len() > base.len() && s.starts_with(base.as_str())),
            Matcher::Cn(cn) => id.subject_cn.as_deref() == Some(cn.as_str()),
            Matcher::DnsExact(name) => id.dns.iter().any(|d| d == name),
            Matcher::DnsWildcard(suffix) => id.dns.iter().any(|d| {
                // One label exactly (RFC 6125): `a.example.com`, not `a.b.example.com`; a
                // certificate whose SAN is itself `*.example.com` matches literally.
                d.strip_suffix(suffix.as_str()).is_some_and(|label| {
                    !label.is_empty() && (label == "*" || !label.contains(['.', '*']))
                })
            }),
            Matcher::Uri(u) => id.uris.iter().any(|x| x == u),
            Matcher::Fingerprint(f) => id.fingerprint_sha256 == *f,
        }
    }
}

/// Why an identity rule refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityRefusal {
    /// A rule covers the path and the client presented no certificate.
    #[error("identity_required: paths under {rule} need a client certificate")]
    IdentityRequired { rule: String },
    /// A rule covers the path and the certificate matches none of its entries.
    #[error("identity_not_allowed: {who} may not open paths under {rule}")]
    IdentityNotAllowed { rule: String, who: String },
}

impl IdentityRefusal {
    /// The stable reason code (counters, audit records, the JSON body).
    pub fn reason(&self) -> Reason {
        match self {
            IdentityRefusal::IdentityRequired { .. } => Reason::IdentityRequired,
            IdentityRefusal::IdentityNotAllowed { .. } => Reason::IdentityNotAllowed,
        }
    }

    /// The HTTP status the refusal path sends.
    pub fn status(&self) -> u16 {
        403
    }
}

#[derive(Debug, Clone)]
struct CompiledRule {
    path_prefix: PathPrefix,
    allow: Vec<Matcher>,
}

/// The compiled `[[tls.identity_rules]]`, longest prefix first.
#[derive(Debug, Clone, Default)]
pub struct IdentityRules {
    rules: Vec<CompiledRule>,
}

impl IdentityRules {
    /// Checks and compiles the rules; errors name the key, the entry and the fix.
    pub fn new(rules: &[IdentityRule]) -> Result<IdentityRules, ConfigError> {
        let mut compiled = Vec::with_capacity(rules.len());
        for (i, r) in rules.iter().enumerate() {
            let p = &r.path_prefix;
            let prefix = PathPrefix::parse(p).map_err(|reason| {
                ConfigError::invalid("tls.identity_rules.path_prefix", p, reason)
            })?;
            if rules[..i]
                .iter()
                .any(|o| o.path_prefix.eq_ignore_ascii_case(p))
            {
                return Err(ConfigError::invalid(
                    "tls.identity_rules.path_prefix",
                    p,
                    "listed twice (prefixes match case-insensitively); merge the two `allow` lists",
                ));
            }
            if r.allow.is_empty() {
                return Err(ConfigError::invalid(
                    "tls.identity_rules.allow",
                    format!("[] (path_prefix {p})"),
                    "list at least one identity (or \"any\" for any verified certificate)",
                ));
            }
            let allow = r
                .allow
                .iter()
                .map(|a| {
                    Matcher::parse(a).map_err(|reason| {
                        ConfigError::invalid("tls.identity_rules.allow", format!("{a:?}"), reason)
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            compiled.push(CompiledRule {
                path_prefix: prefix,
                allow,
            });
        }
        compiled.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.as_str().len()));
        Ok(IdentityRules { rules: compiled })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// May a client with `identity` (`None`: no certificate) open `target`? The rule with the
    /// longest matching prefix decides; a path no rule covers is allowed.
    pub fn allows(
        &self,
        target: &RequestTarget,
        identity: Option<&ClientIdentity>,
    ) -> Result<(), IdentityRefusal> {
        let path = target.path();
        // The longest prefix covering the path decides; a directory rule (`/admin/`) covers its
        // bare name (`/admin`) when no rule covers that itself.
        let rule = (self.rules.iter().find(|r| r.path_prefix.covers(path)))
            .or_else(|| self.rules.iter().find(|r| r.path_prefix.covers_bare(path)));
        let Some(rule) = rule else {
            return Ok(());
        };
        let Some(id) = identity else {
            return Err(IdentityRefusal::IdentityRequired {
                rule: rule.path_prefix.to_string(),
            });
        };
        if rule.allow.iter().any(|m| m.matches(id)) {
            Ok(())
        } else {
            Err(IdentityRefusal::IdentityNotAllowed {
                rule: rule.path_prefix.to_string(),
                who: id.display_name(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[(&str, &[&str])]) -> IdentityRules {
        let v: Vec<IdentityRule> = list
            .iter()
            .map(|(p, a)| IdentityRule {
                path_prefix: (*p).into(),
                allow: a.iter().map(|s| (*s).to_owned()).collect(),
            })
            .collect();
        IdentityRules::new(&v).unwrap()
    }

    fn fake(cn: Option<&str>, dns: &[&str], uris: &[&str]) -> ClientIdentity {
        let spiffe = match uris {
            [one] if valid_spiffe_id(one) => Some((*one).to_owned()),
            _ => None,
        };
        ClientIdentity {
            subject_cn: cn.map(str::to_owned),
            subject: String::new(),
            dns: dns.iter().map(|s| (*s).to_owned()).collect(),
            uris: uris.iter().map(|s| (*s).to_owned()).collect(),
            spiffe_id: spiffe,
            spiffe_invalid: false,
            fingerprint_sha256: "cd".repeat(32),
            serial_hex: "01".into(),
            issuer: String::new(),
            issuer_der: Vec::new(),
            not_after_unix: 0,
            not_before_unix: 0,
            intermediates: Vec::new(),
        }
    }

    fn t(target: &str) -> RequestTarget {
        RequestTarget::parse(target).unwrap()
    }

    #[test]
    fn identity_rules_table() {
        let r = rules(&[
            ("/", &["any"]),
            ("/trade", &["spiffe://bank.example/trading/*", "cn:ops-console"]),
            ("/trade/admin", &["spiffe://bank.example/trading/admin"]),
            ("/feeds/", &["dns:*.feeds.example.com", "uri:urn:feed:reader"]),
            (
                "/break-glass",
                &["fingerprint:AB:ab:AB:ab:AB:ab:AB:ab:AB:ab:AB:ab:AB:ab:AB:ab:AB:ab:AB:ab:AB:ab:AB:ab:AB:ab:AB:ab:AB:ab:AB:ab"],
            ),
        ]);
        let trader = fake(None, &[], &["spiffe://bank.example/trading/desk-1"]);
        let trading_root = fake(None, &[], &["spiffe://bank.example/trading"]);
        let admin = fake(None, &[], &["spiffe://bank.example/trading/admin"]);
        let other_td = fake(None, &[], &["spiffe://evil.example/trading/desk-1"]);
        let ops = fake(Some("ops-console"), &[], &[]);
        let feed = fake(None, &["eu.feeds.example.com"], &[]);
        let deep_feed = fake(None, &["a.eu.feeds.example.com"], &[]);
        let reader = fake(None, &[], &["urn:feed:reader"]);
        let nobody = ClientIdentity {
            fingerprint_sha256: "ab".repeat(32),
            ..fake(Some("nobody"), &[], &[])
        };

        let ok = |path: &str, who: Option<&ClientIdentity>| r.allows(&t(path), who).map(|_| ());
        let reason = |path: &str, who: Option<&ClientIdentity>| {
            r.allows(&t(path), who).map_err(|e| e.reason()).unwrap_err()
        };
        assert_eq!(ok("/trade", Some(&trader)), Ok(()));
        assert_eq!(ok("/trade/orders?x=1", Some(&ops)), Ok(()));
        assert_eq!(
            reason("/trade", Some(&trading_root)),
            "identity_not_allowed"
        );
        assert_eq!(reason("/trade", Some(&other_td)), "identity_not_allowed");
        assert_eq!(reason("/trade", Some(&nobody)), "identity_not_allowed");
        assert_eq!(reason("/trade", None), "identity_required");
        // Longest prefix wins: the admin rule replaces, not extends, the /trade rule.
        assert_eq!(ok("/trade/admin/users", Some(&admin)), Ok(()));
        assert_eq!(
            reason("/trade/admin", Some(&trader)),
            "identity_not_allowed"
        );
        assert_eq!(ok("/trade/administrator", Some(&trader)), Ok(()));
        assert_eq!(ok("/feeds/x", Some(&feed)), Ok(()));
        assert_eq!(ok("/feeds/x", Some(&reader)), Ok(()));
        assert_eq!(reason("/feeds/x", Some(&deep_feed)), "identity_not_allowed");
        assert_eq!(
            reason("/break-glass", Some(&trader)),
            "identity_not_allowed"
        );
        assert_eq!(ok("/break-glass", Some(&nobody)), Ok(()));
        // `any` admits every verified certificate, but not the absence of one.
        assert_eq!(ok("/public", Some(&nobody)), Ok(()));
        assert_eq!(reason("/public", None), "identity_required");
        let e = r.allows(&t("/trade"), Some(&nobody)).unwrap_err();
        assert_eq!(e.status(), 403);
        assert!(e.to_string().contains("nobody") && e.to_string().contains("/trade"));
        assert_eq!(r.allows(&t("/trade"), None).unwrap_err().status(), 403);
        // Rules match the normalised path, case-insensitively: a spelling of a gated path is
        // gated (the spellings the parser cannot normalise never reach the rules).
        for p in ["/Trade", "/TRADE/orders", "/tr%61de", "/%54rade/x?y=1"] {
            assert_eq!(reason(p, Some(&nobody)), "identity_not_allowed", "{p}");
            assert_eq!(reason(p, None), "identity_required", "{p}");
        }
        assert_eq!(
            reason("/Trade/Admin", Some(&trader)),
            "identity_not_allowed"
        );

        // No rule for a path: allowed, with or without an identity.
        let only = rules(&[("/trade", &["any"])]);
        assert_eq!(only.allows(&t("/public"), None), Ok(()));
        assert_eq!(IdentityRules::default().allows(&t("/x/y"), None), Ok(()));
    }

    #[test]
    fn bad_rules_are_refused_with_the_entry() {
        let cases: &[(&str, &[&str], &str)] = &[
            ("api", &["any"], "plain path"),
            ("/a/../b", &["any"], "plain path"),
            ("/a%2Fb", &["any"], "plain path"),
            ("/a;b", &["any"], "plain path"),
            ("//a", &["any"], "plain path"),
            ("/a", &[], "at least one"),
            ("/a", &["spiffe://Bad.Domain/x"], "SPIFFE"),
            ("/a", &["spiffe://td/x/"], "SPIFFE"),
            ("/a", &["dns:*.com"], "two labels"),
            ("/a", &["dns:a.*.com"], "first label"),
            ("/a", &["fingerprint:abc"], "64 hex"),
            ("/a", &["email:x@y"], "unknown matcher kind `email:`"),
            ("/a", &["everyone"], "unknown matcher"),
            ("/a", &["cn:"], "needs a value"),
        ];
        for (p, allow, want) in cases {
            let v = [IdentityRule {
                path_prefix: (*p).into(),
                allow: allow.iter().map(|s| (*s).to_owned()).collect(),
            }];
            let e = IdentityRules::new(&v).unwrap_err().to_string();
            assert!(
                e.contains(want) && e.contains("tls.identity_rules"),
                "{p} {allow:?}: {e}"
            );
        }
        let dup = [
            IdentityRule {
                path_prefix: "/a".into(),
                allow: vec!["any".into()],
            },
            IdentityRule {
                path_prefix: "/a".into(),
                allow: vec!["cn:x".into()],
            },
        ];
        assert!(IdentityRules::new(&dup)
            .unwrap_err()
            .to_string()
            .contains("listed twice"));
        let dup_case = [
            IdentityRule {
                path_prefix: "/Admin".into(),
                allow: vec!["any".into()],
            },
            IdentityRule {
                path_prefix: "/admin".into(),
                allow: vec!["cn:x".into()],
            },
        ];
        assert!(IdentityRules::new(&dup_case)
            .unwrap_err()
            .to_string()
            .contains("listed twice"));
    }
}
