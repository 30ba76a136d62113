//! Where the bearer token is in an upgrade request.
//!
//! Exactly one token across the enabled sources, or a refusal: two tokens (even two equal
//! ones) mean the client and some intermediary disagree about who it is, and the edge will
//! not pick one. Sources that are not enabled are not looked at.

use std::borrow::Cow;

use super::config::{JwtConfig, TokenSource};
use super::refusal::JwtRefusal;

/// Extraction settings, from the `[jwt]` section.
#[derive(Debug, Clone)]
pub struct TokenSources {
    pub sources: Vec<TokenSource>,
    pub query_param: String,
    pub subprotocol_prefix: String,
    pub max_token_bytes: usize,
}

impl TokenSources {
    pub fn from_config(c: &JwtConfig) -> Self {
        Self {
            sources: c.sources.clone(),
            query_param: c.query_param.clone(),
            subprotocol_prefix: c.subprotocol_prefix.clone(),
            max_token_bytes: c.max_token_bytes,
        }
    }
}

/// A token found in the request, and what the 101 may select.
#[derive(Clone, PartialEq, Eq)]
pub struct ExtractedToken {
    pub token: String,
    pub source: TokenSource,
    /// With [`TokenSource::Subprotocol`]: the client's other offers, in its order, never the
    /// bearer one. The 101 selects from these only (the first is the client's preference),
    /// so the token is never echoed. Empty for the other sources.
    pub app_protocols: Vec<String>,
}

impl ExtractedToken {
    /// The application protocol the 101 should select when the token came as a subprotocol.
    pub fn app_protocol(&self) -> Option<&str> {
        self.app_protocols.first().map(String::as_str)
    }
}

impl std::fmt::Debug for ExtractedToken {
    // Tokens never reach logs: a Debug print of a request context must not leak one.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtractedToken")
            .field("token", &format_args!("<{} bytes>", self.token.len()))
            .field("source", &self.source)
            .field("app_protocols", &self.app_protocols)
            .finish()
    }
}

/// Finds the one token of the request.
///
/// - `authorization`: the `Authorization` header (the handshake refuses a repeated one).
///   `Bearer <token>`, scheme case-insensitive; another scheme is no bearer token.
/// - `protocols`: `Sec-WebSocket-Protocol` entries in offer order; `<prefix><token>` is the
///   token, and at least one other entry must be there for the 101 to select.
/// - `query`: the request target's query (after `?`, with or without the `?`); the value of
///   `query_param`, percent-decoded.
///
/// `Ok(None)`: no token anywhere (the caller refuses with `token_missing` when tokens are
/// required). Every candidate is size-checked before it is decoded.
pub fn extract_token(
    cfg: &TokenSources,
    authorization: Option<&str>,
    protocols: &[String],
    query: Option<&str>,
) -> Result<Option<ExtractedToken>, JwtRefusal> {
    let mut found: Option<ExtractedToken> = None;
    for &source in &cfg.sources {
        let candidate = match source {
            TokenSource::Header => from_header(cfg, authorization)?,
            TokenSource::Subprotocol => from_protocols(cfg, protocols)?,
            TokenSource::Query => from_query(cfg, query)?,
        };
        if let Some(c) = candidate {
            if let Some(first) = &found {
                return Err(JwtRefusal::TokenAmbiguous {
                    first: first.source.name(),
                    second: source.name(),
                });
            }
            found = Some(c);
        }
    }
    Ok(found)
}

fn too_large(cfg: &TokenSources, len: usize) -> Result<(), JwtRefusal> {
    if len > cfg.max_token_bytes {
        Err(JwtRefusal::TooLarge {
            max: cfg.max_token_bytes,
        })
    } else {
        Ok(())
    }
}

fn from_header(
    cfg: &TokenSources,
    authorization: Option<&str>,
) -> Result<Option<ExtractedToken>, JwtRefusal> {
    let Some(value) = authorization else {
        return Ok(None);
    };
    let value = value.trim_matches([' ', '\t']);
    // RFC 6750 §2.1: `Bearer 1*SP b64token`; RFC 9110 §11.1: the scheme is case-insensitive.
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() || token.contains([' ', '\t', ',']) {
        return Err(JwtRefusal::Malformed(
            "Authorization must be `Bearer <token>` with one token",
        ));
    }
    too_large(cfg, token.len())?;
    Ok(Some(ExtractedToken {
        token: token.to_owned(),
        source: TokenSource::Header,
        app_protocols: Vec::new(),
    }))
}

fn from_protocols(
    cfg: &TokenSources,
    protocols: &[String],
) -> Result<Option<ExtractedToken>, JwtRefusal> {
    let prefix = cfg.subprotocol_prefix.as_str();
    let mut token: Option<&str> = None;
    let mut apps = Vec::new();
    for p in protocols {
        // Subprotocol names are case-sensitive tokens (RFC 6455 §4.1).
        match p.strip_prefix(prefix) {
            Some(t) => {
                if token.is_some() {
                    return Err(JwtRefusal::TokenAmbiguous {
                        first: "subprotocol",
                        second: "subprotocol",
                    });
                }
                too_large(cfg, t.len())?;
                if t.is_empty() {
                    return Err(JwtRefusal::Malformed("empty bearer subprotocol"));
                }
                token = Some(t);
            }
            None => apps.push(p.clone()),
        }
    }
    let Some(token) = token else {
        return Ok(None);
    };
    if apps.is_empty() {
        return Err(JwtRefusal::BearerWithoutAppProtocol);
    }
    Ok(Some(ExtractedToken {
        token: token.to_owned(),
        source: TokenSource::Subprotocol,
        app_protocols: apps,
    }))
}

fn from_query(
    cfg: &TokenSources,
    query: Option<&str>,
) -> Result<Option<ExtractedToken>, JwtRefusal> {
    let Some(query) = query else {
        return Ok(None);
    };
    let query = query.strip_prefix('?').unwrap_or(query);
    let mut token: Option<String> = None;
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !name_matches(name, &cfg.query_param) {
            continue;
        }
        if token.is_some() {
            return Err(JwtRefusal::TokenAmbiguous {
                first: "query",
                second: "query",
            });
        }
        // An escape is three bytes for one: a value this long cannot decode within the cap,
        // and refusing it here bounds the decoding work.
        if value.len() > cfg.max_token_bytes.saturating_mul(3) {
            return Err(JwtRefusal::TooLarge {
                max: cfg.max_token_bytes,
            });
        }
        let decoded = percent_decode(value).ok_or(JwtRefusal::Malformed(
            "query token is not valid percent-encoded UTF-8",
        ))?;
        too_large(cfg, decoded.len())?;
        if decoded.is_empty() {
            return Err(JwtRefusal::Malformed("empty query token"));
        }
        token = Some(decoded.into_owned());
    }
    Ok(token.map(|token| ExtractedToken {
        token,
        source: TokenSource::Query,
        app_protocols: Vec::new(),
    }))
}

fn name_matches(raw: &str, param: &str) -> bool {
    raw == param || (raw.contains('%') && percent_decode(raw).is_some_and(|n| n == param))
}

/// RFC 3986 percent-decoding into UTF-8; `None` on a bad escape or invalid UTF-8. `+` stays
/// `+` (it is not a space outside HTML forms, and never in a JWT anyway).
fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = hex(*b.get(i + 1)?)?;
            let lo = hex(*b.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The request target with every `param=…` removed from its query, for logs, audit records
/// and anything forwarded upstream: a query token must not travel further than the edge.
/// Removed generously, since upstreams read names and separators more loosely than the
/// extractor: a name matching `param` once percent-decoded, trimmed of whitespace and control
/// bytes and compared ASCII-case-insensitively (`ACCESS_TOKEN`, `access_token%00` — ASP.NET
/// matches query keys case-insensitively), and `;` taken as a separator as well as `&` (Go
/// before 1.17 and old Python split on it). The other parameters keep their order and their
/// separators.
pub fn redact_query_token<'a>(target: &'a str, param: &str) -> Cow<'a, str> {
    let Some((path, query)) = target.split_once('?') else {
        return Cow::Borrowed(target);
    };
    let mut kept = String::with_capacity(query.len());
    let mut removed = false;
    for piece in query.split_inclusive(['&', ';']) {
        let body = piece.trim_end_matches(['&', ';']);
        let name = body.split_once('=').map_or(body, |(n, _)| n);
        if names_the_token(name, param) {
            removed = true;
            continue;
        }
        kept.push_str(piece);
    }
    if !removed {
        return Cow::Borrowed(target);
    }
    let kept = kept.trim_end_matches(['&', ';']);
    if kept.is_empty() {
        return Cow::Owned(path.to_owned());
    }
    Cow::Owned(format!("{path}?{kept}"))
}

/// Whether a raw query parameter name is `param` to a lenient reader: percent-decoded (bad
/// escapes kept as they are), trimmed of whitespace and control bytes, any ASCII case.
fn names_the_token(raw: &str, param: &str) -> bool {
    let b = raw.as_bytes();
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).and_then(|&c| hex(c)),
            b.get(i + 2).and_then(|&c| hex(c)),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                decoded.push(hi << 4 | lo);
                i += 3;
            }
            (c, _, _) => {
                decoded.push(c);
                i += 1;
            }
        }
    }
    let junk = |c: &u8| c.is_ascii_whitespace() || c.is_ascii_control();
    let start = decoded
        .iter()
        .position(|c| !junk(c))
        .unwrap_or(decoded.len());
    let end = decoded
        .iter()
        .rposition(|c| !junk(c))
        .map_or(start, |p| p + 1);
    decoded[start..end].eq_ignore_ascii_case(param.as_bytes())
}
