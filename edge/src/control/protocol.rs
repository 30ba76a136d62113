//! The control protocol: one JSON object per line, both ways.
//!
//! A request names its command in `"cmd"`; a response is `{"ok":true,"result":{…}}` or
//! `{"ok":false,"error":"…"}`. Parsing goes through [`parse_request`], which checks the shape
//! step by step (UTF-8, JSON, object, `cmd`, known command, arguments) so each refusal says
//! exactly what to fix instead of surfacing a generic serde message, and never panics.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest request line the server reads, newline excluded. Requests are a command and one
/// short value; anything longer is a confused or hostile client.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;

/// Longest response line, newline excluded. Larger than a request on purpose: `revocations`
/// lists every revoked jti and subject, and a list loaded from a file can outgrow 64 KiB. The
/// server answers an error instead of sending more; the client refuses anything longer.
pub const MAX_RESPONSE_LINE: usize = 16 * 1024 * 1024;

/// What a revocation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RevocationKind {
    /// One token, by its `jti` claim.
    Jti,
    /// Every token of a subject, by its `sub` claim.
    Subject,
}

impl RevocationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationKind::Jti => "jti",
            RevocationKind::Subject => "subject",
        }
    }
}

impl fmt::Display for RevocationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A control command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Revoke a jti or a subject; live sessions it covers are closed by the auth room.
    Revoke { kind: RevocationKind, value: String },
    /// Lift a revocation made earlier.
    Unrevoke { kind: RevocationKind, value: String },
    /// List the current revocations.
    Revocations,
    /// Version, pid, uptime and connection count.
    Status,
    /// Re-read configuration and certificates.
    Reload,
    /// Stop accepting, close every client with 1001, exit.
    Drain,
    /// Re-read the client-certificate CRLs.
    CrlReload,
    /// Hand the listeners to a new process of the same binary, then close every client with
    /// 1012 and exit.
    Restart,
    /// Close the live sessions of a subject (1008 `kicked`), on every node of a fleet; refuses
    /// nothing afterwards.
    Kick { subject: String },
    /// The fleet's sessions (node, peer, subject, path, since), of one subject if given.
    Sessions {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
    },
}

impl Request {
    /// Every command name, in the order the documentation lists them.
    pub const COMMANDS: [&'static str; 10] = [
        "revoke",
        "unrevoke",
        "revocations",
        "status",
        "reload",
        "drain",
        "crl-reload",
        "restart",
        "kick",
        "sessions",
    ];

    /// The fields a command takes besides `cmd`.
    pub fn fields(cmd: &str) -> &'static [&'static str] {
        match cmd {
            "revoke" | "unrevoke" => &["kind", "value"],
            "kick" | "sessions" => &["subject"],
            _ => &[],
        }
    }

    /// The wire name of the command, for logs and audit records.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Revoke { .. } => "revoke",
            Request::Unrevoke { .. } => "unrevoke",
            Request::Revocations => "revocations",
            Request::Status => "status",
            Request::Reload => "reload",
            Request::Drain => "drain",
            Request::CrlReload => "crl-reload",
            Request::Restart => "restart",
            Request::Kick { .. } => "kick",
            Request::Sessions { .. } => "sessions",
        }
    }

    /// The request as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        // A derived Serialize of strings and unit variants has no failure case.
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

/// Why a request line was refused. The message is sent back to the client as the error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error(
        "request line is longer than {max} bytes: send one JSON object of at most {max} bytes per line"
    )]
    LineTooLong { max: usize },
    #[error("request is not UTF-8: send one JSON object per line, e.g. {{\"cmd\":\"status\"}}")]
    NotUtf8,
    #[error(
        "request is not valid JSON ({detail}): send one JSON object per line, e.g. {{\"cmd\":\"status\"}}"
    )]
    Malformed { detail: String },
    #[error("request is a JSON {found}, not an object: send e.g. {{\"cmd\":\"status\"}}")]
    NotAnObject { found: &'static str },
    #[error("request has no \"cmd\": name one of {}", CommandList)]
    MissingCommand,
    #[error("\"cmd\" must be a string naming one of {}", CommandList)]
    CommandNotAString,
    #[error("unknown command `{cmd}`: use one of {}", CommandList)]
    UnknownCommand { cmd: String },
    /// Unknown or missing fields, wrong types, unknown `kind`: serde's own message is precise
    /// ("unknown field `x`, expected `kind` or `value`").
    #[error("`{cmd}`: {detail}{}", usage_hint(cmd))]
    InvalidArguments { cmd: &'static str, detail: String },
    #[error(
        "`{cmd}`: \"value\" is {why}; give the jti or subject exactly as the token carries it"
    )]
    InvalidValue {
        cmd: &'static str,
        why: crate::auth::identifier::IdentifierError,
    },
}

/// Formats [`Request::COMMANDS`] as `revoke, unrevoke, …`.
struct CommandList;

impl fmt::Display for CommandList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&Request::COMMANDS.join(", "))
    }
}

fn usage_hint(cmd: &str) -> &'static str {
    match cmd {
        "revoke" | "unrevoke" => {
            " (expected {\"cmd\":\"revoke\",\"kind\":\"jti\"|\"subject\",\"value\":\"...\"})"
        }
        "kick" => " (expected {\"cmd\":\"kick\",\"subject\":\"...\"})",
        "sessions" => {
            " (expected {\"cmd\":\"sessions\"} or {\"cmd\":\"sessions\",\"subject\":\"...\"})"
        }
        _ => " (this command takes no arguments besides \"cmd\")",
    }
}

/// Echoed client input is cut to this many characters, so a 64 KiB command name cannot
/// flood an error line, a log or an audit record.
const ECHO_MAX_CHARS: usize = 64;

fn truncate_echo(s: &str) -> String {
    match s.char_indices().nth(ECHO_MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

/// Parses one request line (without its newline).
pub fn parse_request(line: &[u8]) -> Result<Request, ProtocolError> {
    if line.len() > MAX_REQUEST_LINE {
        return Err(ProtocolError::LineTooLong {
            max: MAX_REQUEST_LINE,
        });
    }
    let text = std::str::from_utf8(line).map_err(|_| ProtocolError::NotUtf8)?;
    let value: Value = serde_json::from_str(text).map_err(|e| ProtocolError::Malformed {
        detail: e.to_string(),
    })?;
    let object = match &value {
        Value::Object(map) => map,
        other => {
            return Err(ProtocolError::NotAnObject {
                found: json_type(other),
            })
        }
    };
    let cmd = match object.get("cmd") {
        None => return Err(ProtocolError::MissingCommand),
        Some(Value::String(cmd)) => cmd,
        Some(_) => return Err(ProtocolError::CommandNotAString),
    };
    // Resolve the name first: serde's "unknown variant" message would also be correct, but
    // this one lists the commands and cuts the echo.
    let Some(&cmd) = Request::COMMANDS.iter().find(|known| **known == cmd) else {
        return Err(ProtocolError::UnknownCommand {
            cmd: truncate_echo(cmd),
        });
    };
    // serde ignores extra fields of unit variants even under deny_unknown_fields, so
    // `{"cmd":"drain","force":true}` would silently lose `force`: check every command here.
    let fields = Request::fields(cmd);
    if let Some(extra) = object
        .keys()
        .find(|k| *k != "cmd" && !fields.contains(&k.as_str()))
    {
        let expected = match fields {
            [] => "no fields besides `cmd`".to_owned(),
            _ => format!("`{}`", fields.join("` or `")),
        };
        return Err(ProtocolError::InvalidArguments {
            cmd,
            detail: format!(
                "unknown field `{}`, expected {expected}",
                truncate_echo(extra)
            ),
        });
    }
    let request: Request =
        serde_json::from_value(value).map_err(|e| ProtocolError::InvalidArguments {
            cmd,
            detail: truncate_detail(&e.to_string()),
        })?;
    validate(&request)?;
    Ok(request)
}

/// serde's messages quote the offending field name or value; cut them like any echo.
fn truncate_detail(detail: &str) -> String {
    match detail.char_indices().nth(4 * ECHO_MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &detail[..cut]),
        None => detail.to_owned(),
    }
}

/// Longest jti or subject accepted (the identifier rule's cap, see
/// [`crate::auth::identifier`]).
pub const MAX_VALUE_BYTES: usize = crate::auth::identifier::MAX_IDENTIFIER_BYTES;

/// A revocation's value follows the rule tokens' `sub` and `jti` are held to at verification
/// ([`crate::auth::identifier`]): what can be revoked is exactly what can be admitted.
fn validate(request: &Request) -> Result<(), ProtocolError> {
    let (Request::Revoke { value, .. }
    | Request::Unrevoke { value, .. }
    | Request::Kick { subject: value }
    | Request::Sessions {
        subject: Some(value),
    }) = request
    else {
        return Ok(());
    };
    crate::auth::identifier::check_identifier(value).map_err(|why| ProtocolError::InvalidValue {
        cmd: request.name(),
        why,
    })
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "WireResponse", into = "WireResponse")]
pub enum Response {
    /// `{"ok":true,"result":…}`; the result is an object by convention (`{}` when there is
    /// nothing to report).
    Ok(Value),
    /// `{"ok":false,"error":"…"}`: what went wrong and what to fix.
    Error(String),
}

impl Response {
    /// Success with a typed result (e.g. [`Status`], [`RevocationList`]).
    pub fn ok<T: Serialize>(result: &T) -> Response {
        match serde_json::to_value(result) {
            Ok(value) => Response::Ok(value),
            // Only maps with non-string keys fail; a bug in a result type, not the client's.
            Err(e) => Response::Error(format!("internal error encoding the result: {e}")),
        }
    }

    /// Success with nothing to report: `{"ok":true,"result":{}}`.
    pub fn done() -> Response {
        Response::Ok(Value::Object(Default::default()))
    }

    pub fn error(message: impl Into<String>) -> Response {
        Response::Error(message.into())
    }

    /// The answer for a command a server does not implement (the test servers of this room).
    pub fn not_supported_yet(request: &Request) -> Response {
        Response::Error(format!(
            "`{}` is not supported by this wssedge yet; restart the process to apply changes",
            request.name()
        ))
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, Response::Ok(_))
    }

    /// The response as one line, newline included. A response over [`MAX_RESPONSE_LINE`] is
    /// replaced by an error saying so, so a client never has to read an unbounded line.
    pub fn to_line(&self) -> Vec<u8> {
        let encoded = serde_json::to_vec(self).unwrap_or_default();
        let mut line = if encoded.len() > MAX_RESPONSE_LINE {
            let too_big = Response::Error(format!(
                "the result is {} bytes, over the {MAX_RESPONSE_LINE}-byte response limit",
                encoded.len()
            ));
            serde_json::to_vec(&too_big).unwrap_or_default()
        } else {
            encoded
        };
        line.push(b'\n');
        line
    }
}

/// The wire shape of [`Response`]. Unknown fields are ignored here (unlike requests) so an
/// older `wssedge ctl` can read a newer server's answers.
#[derive(Serialize, Deserialize)]
struct WireResponse {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl From<Response> for WireResponse {
    fn from(response: Response) -> Self {
        match response {
            Response::Ok(result) => WireResponse {
                ok: true,
                result: Some(result),
                error: None,
            },
            Response::Error(error) => WireResponse {
                ok: false,
                result: None,
                error: Some(error),
            },
        }
    }
}

impl TryFrom<WireResponse> for Response {
    type Error = &'static str;

    // Spelled out: `Self::Error` would be ambiguous with the `Response::Error` variant.
    fn try_from(wire: WireResponse) -> Result<Self, &'static str> {
        match wire {
            WireResponse {
                ok: true, result, ..
            } => Ok(Response::Ok(
                result.unwrap_or_else(|| Value::Object(Default::default())),
            )),
            WireResponse {
                ok: false,
                error: Some(error),
                ..
            } => Ok(Response::Error(error)),
            WireResponse {
                ok: false,
                error: None,
                ..
            } => Err("response has \"ok\": false but no \"error\""),
        }
    }
}

/// The result of `status`. The handler fills it; [`Status::current`] supplies the fields the
/// process knows by itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_s: u64,
    /// Open client connections over all cores.
    pub connections: u64,
}

impl Status {
    /// This build's version and this process's pid, with the given uptime and connections.
    pub fn current(uptime: std::time::Duration, connections: u64) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_s: uptime.as_secs(),
            connections,
        }
    }
}

/// The result of `revocations`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationList {
    pub jti: Vec<String>,
    pub subject: Vec<String>,
}

/// A suggested result of `revoke` and `unrevoke`: `changed` is false when the jti or subject
/// already was (or was not) revoked, so a repeated command is visibly a no-op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationChange {
    pub kind: RevocationKind,
    pub value: String,
    pub changed: bool,
}
