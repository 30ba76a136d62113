//! Serving one authorised control client: read a line, answer it, until EOF or a limit.
//!
//! Every request line gets exactly one response line, in order, so a client can pipeline.
//! Blank lines are skipped (they are not requests). A malformed request is answered with an
//! error and the connection stays usable; an over-long line or a missed deadline ends it,
//! since the stream can no longer be trusted to be in step.

use std::io::{self, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::panic::{self, AssertUnwindSafe};
use std::time::Instant;

use super::lines::{Line, LineReader};
use super::protocol::{parse_request, ProtocolError, Response, MAX_REQUEST_LINE};
use super::server::{ControlHandler, ControlOptions};
use super::sys::PeerCred;

pub(crate) fn serve(
    stream: UnixStream,
    peer: PeerCred,
    handler: &dyn ControlHandler,
    options: &ControlOptions,
) {
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot serve a control client");
            return;
        }
    };
    let reader = LineReader::new(stream, MAX_REQUEST_LINE);
    answer_lines(reader, &mut writer, peer, handler, options);
    // The accept thread keeps a clone of this socket (to cut it at shutdown), so dropping
    // ours would not close the connection: shut it down explicitly.
    let _ = writer.shutdown(Shutdown::Both);
}

fn answer_lines(
    mut reader: LineReader,
    writer: &mut UnixStream,
    peer: PeerCred,
    handler: &dyn ControlHandler,
    options: &ControlOptions,
) {
    loop {
        let deadline = Instant::now() + options.read_timeout;
        let line = match reader.next_line(deadline) {
            Ok(Line::Complete(line)) => line,
            Ok(Line::Eof) => return,
            Ok(Line::TooLong) => {
                let error = ProtocolError::LineTooLong {
                    max: MAX_REQUEST_LINE,
                };
                refuse(writer, &peer, handler, &error.to_string());
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                let reason = format!(
                    "no complete request within {:?}: closing the connection",
                    options.read_timeout
                );
                refuse(writer, &peer, handler, &reason);
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, pid = peer.pid, "control client read failed");
                return;
            }
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let response = match parse_request(&line) {
            Ok(request) => {
                tracing::debug!(
                    cmd = request.name(),
                    uid = peer.uid,
                    pid = peer.pid,
                    "control command"
                );
                // A bug in one command answers that command with an error; the server and
                // the next client carry on.
                panic::catch_unwind(AssertUnwindSafe(|| handler.handle(&request, &peer)))
                    .unwrap_or_else(|_| {
                        tracing::error!(cmd = request.name(), "control handler panicked");
                        Response::error(format!(
                            "internal error while running `{}`: see the wssedge log",
                            request.name()
                        ))
                    })
            }
            Err(error) => {
                let reason = error.to_string();
                tracing::info!(uid = peer.uid, pid = peer.pid, %reason, "malformed control request");
                handler.refused(&peer, &reason);
                Response::error(reason)
            }
        };
        if let Err(e) = writer.write_all(&response.to_line()) {
            tracing::debug!(error = %e, pid = peer.pid, "control client gone before its answer");
            return;
        }
    }
}

/// Answers a final error, reports it, and lets the caller close.
fn refuse(writer: &mut UnixStream, peer: &PeerCred, handler: &dyn ControlHandler, reason: &str) {
    tracing::info!(
        uid = peer.uid,
        pid = peer.pid,
        reason,
        "control client dropped"
    );
    handler.refused(peer, reason);
    let _ = writer.write_all(&Response::error(reason).to_line());
}
