//! `wssedge ctl`: the client of the control socket.
//!
//! Exit codes: 0 the server did it, 1 the server said no (its reason is printed), 2 the
//! command line was wrong or no server could be reached (with what to fix), or the process
//! listening on the socket runs as neither root nor the caller's uid (SO_PEERCRED, checked
//! before a byte is sent).

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::lines::{Line, LineReader};
use super::protocol::{Request, Response, RevocationKind, MAX_RESPONSE_LINE};
use super::sys;

/// How long `wssedge ctl` waits for an answer. Generous: a reload re-reads certificates.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a command could not be carried to the server and back.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no wssedge is listening on {path} (no socket file there): start it with --control {path}, or pass the --control PATH it was started with")]
    NoSocket { path: PathBuf },
    #[error("no wssedge is listening on {path} (a stale socket file, nothing answers): start it with --control {path}")]
    NotListening { path: PathBuf },
    #[error("permission denied on {path}: run wssedge ctl as the user wssedge runs as (e.g. sudo -u wssedge wssedge ctl …), or as root when wssedge runs as root")]
    PermissionDenied { path: PathBuf },
    #[error("refusing to talk to {path}: the process listening there runs as uid {uid}, neither root nor you (uid {me}); wssedge ctl only talks to a server running as root or as its own user. If that wssedge is yours, run wssedge ctl as its user (uid {uid}); if not, someone else holds the socket path")]
    UntrustedServer { path: PathBuf, uid: u32, me: u32 },
    #[error("wssedge on {path} did not answer within {timeout:?}")]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("wssedge on {path} closed the connection without answering")]
    Closed { path: PathBuf },
    #[error("wssedge on {path} answered with a line longer than {MAX_RESPONSE_LINE} bytes")]
    TooLong { path: PathBuf },
    #[error("{path} answered something that is not a control response ({detail}): is it a wssedge control socket?")]
    BadResponse { path: PathBuf, detail: String },
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A connection to the control socket; requests are answered one by one, in order.
pub struct ControlClient {
    path: PathBuf,
    writer: UnixStream,
    reader: LineReader,
    timeout: Duration,
}

impl ControlClient {
    /// Connects with [`DEFAULT_TIMEOUT`] per answer.
    pub fn connect(path: &Path) -> Result<ControlClient, ClientError> {
        Self::connect_with_timeout(path, DEFAULT_TIMEOUT)
    }

    pub fn connect_with_timeout(
        path: &Path,
        timeout: Duration,
    ) -> Result<ControlClient, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| {
            let path = path.to_owned();
            match source.kind() {
                io::ErrorKind::NotFound => ClientError::NoSocket { path },
                io::ErrorKind::ConnectionRefused => ClientError::NotListening { path },
                io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { path },
                _ => ClientError::Io { path, source },
            }
        })?;
        let io_err = |source| ClientError::Io {
            path: path.to_owned(),
            source,
        };
        // Before a byte is sent: is that the server we mean to command? Anyone who could bind
        // the path first would otherwise get our requests and could answer anything.
        let server = sys::peer_cred(stream.as_fd()).map_err(io_err)?;
        trust_server(path, server.uid, sys::effective_uid())?;
        stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
        let writer = stream.try_clone().map_err(io_err)?;
        Ok(ControlClient {
            path: path.to_owned(),
            writer,
            reader: LineReader::new(stream, MAX_RESPONSE_LINE),
            timeout,
        })
    }

    /// Sends one request and waits for its answer.
    pub fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        match self.send_raw(&request.to_line()) {
            Ok(()) => self.receive(),
            // A server that turns us away (busy, wrong uid) answers and closes at once, maybe
            // before our request is written: its answer is still there to read.
            Err(ClientError::Closed { .. }) => self.receive(),
            Err(e) => Err(e),
        }
    }

    /// Sends bytes as they are (tests and debugging: malformed requests).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.writer
            .write_all(bytes)
            .map_err(|source| self.io_error(source))
    }

    /// Reads the next answer.
    pub fn receive(&mut self) -> Result<Response, ClientError> {
        let path = self.path.clone();
        match self.reader.next_line(Instant::now() + self.timeout) {
            Ok(Line::Complete(line)) => {
                serde_json::from_slice(&line).map_err(|e| ClientError::BadResponse {
                    path,
                    detail: e.to_string(),
                })
            }
            Ok(Line::Eof) => Err(ClientError::Closed { path }),
            Ok(Line::TooLong) => Err(ClientError::TooLong { path }),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(ClientError::Timeout {
                path,
                timeout: self.timeout,
            }),
            Err(source) => Err(self.io_error(source)),
        }
    }

    fn io_error(&self, source: io::Error) -> ClientError {
        match source.kind() {
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => ClientError::Closed {
                path: self.path.clone(),
            },
            _ => ClientError::Io {
                path: self.path.clone(),
                source,
            },
        }
    }
}

/// The server must run as root or as the caller's own uid (mirror of the server's rule for
/// its callers).
pub(crate) fn trust_server(path: &Path, server_uid: u32, me: u32) -> Result<(), ClientError> {
    if server_uid == 0 || server_uid == me {
        Ok(())
    } else {
        Err(ClientError::UntrustedServer {
            path: path.to_owned(),
            uid: server_uid,
            me,
        })
    }
}

const USAGE: &str = "\
usage: wssedge ctl --control PATH <command> [argument]

commands:
  revoke-jti ID          refuse the token with this jti, close its live sessions
  revoke-subject SUB     refuse every token of this subject, close its live sessions
  unrevoke-jti ID        lift a jti revocation
  unrevoke-subject SUB   lift a subject revocation
  revocations            list revoked jtis and subjects
  status                 version, pid, uptime, open connections
  reload                 re-read configuration and certificates
  drain                  stop accepting, close every client with 1001, exit
  restart                hand the listeners to a new process of this binary, then close
                         every client with 1012 and exit (no connection is refused)
  crl-reload             re-read the client-certificate CRLs
  kick --subject SUB     close the subject's live sessions (1008 kicked), on every node of
                         a fleet; new sessions stay allowed
  sessions [--subject SUB]  the fleet's sessions: node, peer, subject, path, since
  help                   this text";

/// What the words after `--control PATH` ask for.
#[derive(Debug, PartialEq, Eq)]
pub enum CliCommand {
    Help,
    Send(Request),
}

/// Why the command words make no request; each says what to type instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    #[error("no command given")]
    NoCommand,
    #[error("`{word}` needs the {kind} as its argument: {word} VALUE")]
    MissingValue { word: String, kind: RevocationKind },
    #[error(
        "`{word}` takes one {kind}, got another argument `{extra}` (quote a value with spaces)"
    )]
    ExtraValue {
        word: String,
        kind: RevocationKind,
        extra: String,
    },
    #[error("unknown command `{0}`")]
    UnknownCommand(String),
    #[error("`kick` takes the subject: kick --subject SUB")]
    KickUsage,
    #[error("`sessions` takes nothing or a subject: sessions [--subject SUB]")]
    SessionsUsage,
    #[error("`{word}` takes no arguments, got `{extra}`")]
    NoArguments { word: String, extra: String },
}

/// Maps the command words to a request; the error says what to type instead.
pub fn parse_cli(args: &[String]) -> Result<CliCommand, CliError> {
    let Some((word, rest)) = args.split_first() else {
        return Err(CliError::NoCommand);
    };
    let revocation = |revoke: bool, kind: RevocationKind| -> Result<CliCommand, CliError> {
        match rest {
            [value] => Ok(CliCommand::Send(if revoke {
                Request::Revoke {
                    kind,
                    value: value.clone(),
                }
            } else {
                Request::Unrevoke {
                    kind,
                    value: value.clone(),
                }
            })),
            [] => Err(CliError::MissingValue {
                word: word.clone(),
                kind,
            }),
            [_, extra, ..] => Err(CliError::ExtraValue {
                word: word.clone(),
                kind,
                extra: extra.clone(),
            }),
        }
    };
    let request = match word.as_str() {
        "help" | "--help" | "-h" => return Ok(CliCommand::Help),
        "revoke-jti" => return revocation(true, RevocationKind::Jti),
        "revoke-subject" => return revocation(true, RevocationKind::Subject),
        "unrevoke-jti" => return revocation(false, RevocationKind::Jti),
        "unrevoke-subject" => return revocation(false, RevocationKind::Subject),
        "revocations" => Request::Revocations,
        "status" => Request::Status,
        "reload" => Request::Reload,
        "drain" => Request::Drain,
        "crl-reload" => Request::CrlReload,
        "restart" => Request::Restart,
        "sessions" => {
            return match rest {
                [] => Ok(CliCommand::Send(Request::Sessions { subject: None })),
                [flag, subject] if flag == "--subject" => Ok(CliCommand::Send(Request::Sessions {
                    subject: Some(subject.clone()),
                })),
                _ => Err(CliError::SessionsUsage),
            }
        }
        "kick" => {
            return match rest {
                [flag, subject] if flag == "--subject" => Ok(CliCommand::Send(Request::Kick {
                    subject: subject.clone(),
                })),
                _ => Err(CliError::KickUsage),
            }
        }
        other => return Err(CliError::UnknownCommand(other.to_owned())),
    };
    if let Some(extra) = rest.first() {
        return Err(CliError::NoArguments {
            word: word.clone(),
            extra: extra.clone(),
        });
    }
    Ok(CliCommand::Send(request))
}

/// `wssedge ctl --control SOCKET ARGS…`, printing to stdout and stderr. Returns the exit code.
pub fn run_cli(socket: &Path, args: &[String]) -> i32 {
    run_cli_to(
        socket,
        args,
        &mut io::stdout().lock(),
        &mut io::stderr().lock(),
    )
}

/// [`run_cli`] with the output streams given (for tests and embedding).
pub fn run_cli_to(socket: &Path, args: &[String], out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let request = match parse_cli(args) {
        Ok(CliCommand::Help) => {
            let _ = writeln!(out, "{USAGE}");
            return 0;
        }
        Ok(CliCommand::Send(request)) => request,
        Err(problem) => {
            let _ = writeln!(err, "wssedge ctl: {problem}\n\n{USAGE}");
            return 2;
        }
    };
    let response = ControlClient::connect(socket).and_then(|mut client| client.call(&request));
    match response {
        Ok(Response::Ok(result)) => {
            let _ = writeln!(out, "{}", render(request.name(), &result));
            0
        }
        Ok(Response::Error(reason)) => {
            let _ = writeln!(err, "wssedge ctl: {} refused: {reason}", request.name());
            1
        }
        Err(problem) => {
            let _ = writeln!(err, "wssedge ctl: {problem}");
            2
        }
    }
}

/// A short line when there is nothing to show, pretty JSON (scriptable with jq) otherwise.
fn render(command: &str, result: &Value) -> String {
    let empty = match result {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        _ => false,
    };
    if empty {
        format!("{command}: ok")
    } else {
        serde_json::to_string_pretty(result).unwrap_or_else(|_| result.to_string())
    }
}
