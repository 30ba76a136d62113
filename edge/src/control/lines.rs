//! Bounded line reading with a deadline, shared by the server and the client.
//!
//! A `BufReader::read_line` would grow without bound and restart its timeout on every read, so
//! a client trickling one byte every few seconds could hold a slot forever. Here a line must
//! arrive whole before a deadline, and at most `max` bytes are ever buffered for it.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::time::Instant;

/// What the next line read found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// One line, without its `\n` (and without a `\r` before it). The last line before EOF
    /// counts even without a newline, so `printf '{"cmd":"status"}' | socat …` works.
    Complete(Vec<u8>),
    /// More than `max` bytes without a newline; the stream cannot be resynchronised.
    TooLong,
    /// The peer closed the stream between lines.
    Eof,
}

const CHUNK: usize = 4096;

pub(crate) struct LineReader {
    stream: UnixStream,
    /// Bytes read but not yet returned; may hold the start of the next line (pipelining).
    pending: Vec<u8>,
    /// How far `pending` has been searched for a newline, so a slow line is scanned once.
    scanned: usize,
    max: usize,
}

impl LineReader {
    pub(crate) fn new(stream: UnixStream, max: usize) -> LineReader {
        LineReader {
            stream,
            pending: Vec::new(),
            scanned: 0,
            max,
        }
    }

    /// Reads the next line, which must be complete by `deadline`. A missed deadline is an
    /// `io::ErrorKind::TimedOut` error.
    pub(crate) fn next_line(&mut self, deadline: Instant) -> io::Result<Line> {
        let mut chunk = [0u8; CHUNK];
        loop {
            if let Some(offset) = self.pending[self.scanned..]
                .iter()
                .position(|&b| b == b'\n')
            {
                let end = self.scanned + offset;
                if end > self.max {
                    return Ok(Line::TooLong);
                }
                let mut line: Vec<u8> = self.pending.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.scanned = 0;
                return Ok(Line::Complete(line));
            }
            self.scanned = self.pending.len();
            if self.pending.len() > self.max {
                return Ok(Line::TooLong);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            // SO_RCVTIMEO per read, set to what is left of the line's deadline.
            self.stream.set_read_timeout(Some(remaining))?;
            // Never buffer more than max + 1 bytes of one line (+1 proves it is too long).
            let want = CHUNK.min(self.max + 1 - self.pending.len());
            let n = match self.stream.read(&mut chunk[..want]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // SO_RCVTIMEO expiring surfaces as EAGAIN.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::ErrorKind::TimedOut.into())
                }
                Err(e) => return Err(e),
            };
            if n == 0 {
                if self.pending.is_empty() {
                    return Ok(Line::Eof);
                }
                self.scanned = 0;
                return Ok(Line::Complete(std::mem::take(&mut self.pending)));
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::*;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn pipelined_lines_crlf_and_a_final_unterminated_line() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"one\ntwo\r\n\nthree").unwrap();
        drop(a);
        let mut r = LineReader::new(b, 16);
        assert_eq!(
            r.next_line(soon()).unwrap(),
            Line::Complete(b"one".to_vec())
        );
        assert_eq!(
            r.next_line(soon()).unwrap(),
            Line::Complete(b"two".to_vec())
        );
        assert_eq!(r.next_line(soon()).unwrap(), Line::Complete(b"".to_vec()));
        assert_eq!(
            r.next_line(soon()).unwrap(),
            Line::Complete(b"three".to_vec())
        );
        assert_eq!(r.next_line(soon()).unwrap(), Line::Eof);
    }

    #[test]
    fn exactly_max_is_a_line_and_one_more_byte_is_too_long() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&[b'x'; 8]).unwrap();
        a.write_all(b"\n").unwrap();
        a.write_all(&[b'y'; 9]).unwrap();
        a.write_all(b"\n").unwrap();
        let mut r = LineReader::new(b, 8);
        assert_eq!(r.next_line(soon()).unwrap(), Line::Complete(vec![b'x'; 8]));
        assert_eq!(r.next_line(soon()).unwrap(), Line::TooLong);
    }

    #[test]
    fn an_endless_line_stops_at_max_plus_one_byte() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let writer = std::thread::spawn(move || {
            // Keeps writing until the reader gives up and closes.
            let junk = [b'z'; 1024];
            while a.write_all(&junk).is_ok() {}
        });
        let mut r = LineReader::new(b, 10_000);
        assert_eq!(r.next_line(soon()).unwrap(), Line::TooLong);
        assert!(r.pending.len() <= 10_001, "buffered {}", r.pending.len());
        drop(r);
        writer.join().unwrap();
    }

    #[test]
    fn a_trickling_line_misses_its_deadline() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"{\"cmd\"").unwrap();
        let mut r = LineReader::new(b, 100);
        let started = Instant::now();
        let err = r
            .next_line(Instant::now() + Duration::from_millis(150))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
