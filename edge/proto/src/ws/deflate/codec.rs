//! The permessage-deflate payload transform (RFC 7692 §7.2): a message's bytes to a raw DEFLATE
//! stream ending in a sync flush whose `00 00 ff ff` tail is removed, and back.
//!
//! Backend: `flate2` on `zlib-rs`. zlib-rs is zlib's algorithm in Rust (no C toolchain),
//! maintained by the Trifecta Tech Foundation; through flate2's zlib API it takes a window size
//! (9..=15), which permessage-deflate's `server_max_window_bits` needs and flate2's default
//! miniz_oxide backend ignores.
//! libdeflater would be faster for one-shot compression but cannot inflate a stream piece by
//! piece, which the message cap on the *inflated* size needs.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The tail a sync flush ends with; removed after deflating, put back before inflating.
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// How much output room the inflater is given per step: small enough that a bomb is stopped
/// within this many bytes past the cap.
const INFLATE_STEP: usize = 16 * 1024;

/// How far one [`MessageInflater::inflate_some`] call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InflateProgress {
    /// Input bytes taken (all of them once finished).
    pub consumed: usize,
    /// The input is used up and zlib holds no more output for it.
    pub finished: bool,
}

/// Compresses whole messages.
pub struct MessageDeflater {
    c: Compress,
    /// No context takeover: every message is its own stream.
    reset_each_message: bool,
}

impl std::fmt::Debug for MessageDeflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageDeflater")
            .field("reset_each_message", &self.reset_each_message)
            .finish_non_exhaustive()
    }
}

impl MessageDeflater {
    /// `level` 0..=9 (clamped), `window_bits` 9..=15 (clamped: the negotiation never agrees
    /// to 8).
    pub fn new(level: u32, window_bits: u8, reset_each_message: bool) -> Self {
        MessageDeflater {
            c: Compress::new_with_window_bits(
                Compression::new(level.min(9)),
                false,
                window_bits.clamp(9, 15),
            ),
            reset_each_message,
        }
    }

    /// Appends `message` compressed to `out`, without the sync tail: the payload of the
    /// message's first frame, to be sent with RSV1 set.
    pub fn compress_message(&mut self, message: &[u8], out: &mut Vec<u8>) {
        self.compress_parts([message], out);
    }

    /// [`Self::compress_message`] for a message held in several slices (a fragmented one).
    pub fn compress_parts<'a>(
        &mut self,
        parts: impl IntoIterator<Item = &'a [u8]>,
        out: &mut Vec<u8>,
    ) {
        let start = out.len();
        for part in parts {
            let mut input = part;
            while !input.is_empty() {
                self.step(&mut input, out, start, FlushCompress::None);
            }
        }
        // A sync flush is complete when it returns with output room left (zlib's rule).
        loop {
            let mut nothing: &[u8] = &[];
            self.step(&mut nothing, out, start, FlushCompress::Sync);
            if out.len() < out.capacity() {
                break;
            }
        }
        if out[start..].ends_with(&SYNC_TAIL) {
            out.truncate(out.len() - SYNC_TAIL.len());
        } else if out.len() == start {
            // An empty message on a stream whose last act was a sync flush: zlib has nothing
            // to emit. RFC 7692 §7.2.3.6's empty message, `00` (with the tail put back, an
            // empty stored block), leaves both sides' windows as they were.
            out.push(0x00);
        }
        if self.reset_each_message {
            self.c.reset();
        }
    }

    /// One call into zlib with room in `out`; `input` advanced past what it took.
    fn step(&mut self, input: &mut &[u8], out: &mut Vec<u8>, start: usize, flush: FlushCompress) {
        if out.capacity() - out.len() < 64 {
            out.reserve(64 + (out.len() - start).max(input.len() / 2));
        }
        let before = self.c.total_in();
        // Raw deflate into a buffer with room never fails (no stream error is possible
        // without a dictionary or a finished stream, and the stream is never finished).
        let _ = self.c.compress_vec(input, out, flush);
        let consumed = (self.c.total_in() - before) as usize;
        *input = &input[consumed..];
    }
}

/// Why a compressed message cannot be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// The inflated message would exceed the message cap (close 1009).
    #[error("the inflated message exceeds the message size limit")]
    TooBig,
    /// Not a valid DEFLATE stream (close 1007).
    #[error("the compressed message is not valid DEFLATE data")]
    Corrupt,
}

/// Inflates messages piece by piece, the cap checked as the output grows. It holds the
/// message being inflated ([`Self::message`]) until [`Self::take_message`].
pub struct MessageInflater {
    d: Decompress,
    /// The peer keeps no context: the state is dropped after every message.
    reset_each_message: bool,
    /// The current message's stream ended with a final block: its remaining bytes are ignored.
    stream_ended: bool,
    /// Some compressed bytes of the current message arrived (an empty payload is an empty
    /// message: no sync tail is inflated for it).
    fed: bool,
    /// `buf[..filled]` is the message so far; the rest is room already zeroed for zlib to write
    /// into, so a run of tiny pieces costs one zlib call each, not a memset each.
    buf: Vec<u8>,
    filled: usize,
}

impl std::fmt::Debug for MessageInflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageInflater")
            .field("reset_each_message", &self.reset_each_message)
            .field("filled", &self.filled)
            .finish_non_exhaustive()
    }
}

/// The first room given to zlib in a message; it grows with the message up to [`INFLATE_STEP`]
/// (a short message is not made to zero 16 KiB).
const FIRST_ROOM: usize = 1024;

impl MessageInflater {
    /// An inflater with the largest window (15 bits), which reads any smaller one.
    pub fn new(reset_each_message: bool) -> Self {
        MessageInflater {
            d: Decompress::new_with_window_bits(false, 15),
            reset_each_message,
            stream_ended: false,
            fed: false,
            buf: Vec::new(),
            filled: 0,
        }
    }

    /// Inflates the next piece of a compressed message (a frame's payload, or part of one);
    /// returns how many bytes it added to [`Self::message`]. Refuses with
    /// [`InflateError::TooBig`] once the message passes `max_len` bytes: at most
    /// [`INFLATE_STEP`] beyond it was ever written. After an error the partial message is
    /// forgotten (the inflater is ready for a new one).
    pub fn inflate(&mut self, input: &[u8], max_len: usize) -> Result<usize, InflateError> {
        let before = self.filled;
        self.inflate_some(input, max_len, usize::MAX)?;
        Ok(self.filled - before)
    }

    /// [`Self::inflate`] that stops once it has added `budget` bytes or more (within one step
    /// of [`INFLATE_STEP`]): a few compressed bytes can stand for megabytes, and a caller that
    /// serves other peers between two calls hands the rest of `input` in again, or an empty
    /// slice when all of it was taken but zlib may still hold output
    /// ([`InflateProgress::finished`] false).
    pub fn inflate_some(
        &mut self,
        input: &[u8],
        max_len: usize,
        budget: usize,
    ) -> Result<InflateProgress, InflateError> {
        self.fed |= !input.is_empty();
        self.run(input, max_len, budget)
            .inspect_err(|_| self.reset())
    }

    fn run(
        &mut self,
        input: &[u8],
        max_len: usize,
        budget: usize,
    ) -> Result<InflateProgress, InflateError> {
        let whole = InflateProgress {
            consumed: input.len(),
            finished: true,
        };
        if self.stream_ended {
            return Ok(whole);
        }
        let start = self.filled;
        let mut input = input;
        loop {
            if self.filled > max_len {
                return Err(InflateError::TooBig);
            }
            // Zlib writes into a slice of exactly `room` bytes, so a bomb is stopped within one
            // step of the cap whatever the buffer's capacity. The slice is zeroed once (safe
            // code, no uninitialised memory) and reused by the next calls.
            let room = (max_len - self.filled)
                .saturating_add(1)
                .min(INFLATE_STEP)
                .min(self.filled.max(FIRST_ROOM));
            let end = self.filled + room;
            if self.buf.len() < end {
                self.buf.resize(end, 0);
            }
            let (in_before, out_before) = (self.d.total_in(), self.d.total_out());
            let status = self.d.decompress(
                input,
                &mut self.buf[self.filled..end],
                FlushDecompress::Sync,
            );
            let produced = (self.d.total_out() - out_before) as usize;
            self.filled += produced;
            let status = status.map_err(|_| InflateError::Corrupt)?;
            let consumed = (self.d.total_in() - in_before) as usize;
            input = &input[consumed..];
            if self.filled > max_len {
                return Err(InflateError::TooBig);
            }
            match status {
                // The sender ended its stream with a final block (RFC 7692 §7.2.3.4): the
                // rest of this message (the sync tail we append, or anything the sender put
                // after it) is not DEFLATE data; the next message starts a new stream.
                Status::StreamEnd => {
                    self.stream_ended = true;
                    return Ok(whole);
                }
                Status::Ok | Status::BufError => {
                    // Done when the input is used up and zlib stopped with room to spare
                    // (nothing pending inside it); no progress at all means it needs input.
                    let room_left = produced < room;
                    if (input.is_empty() && room_left) || (consumed == 0 && produced == 0) {
                        return Ok(whole);
                    }
                    if self.filled - start >= budget {
                        return Ok(InflateProgress {
                            consumed: whole.consumed - input.len(),
                            finished: false,
                        });
                    }
                }
            }
        }
    }

    /// The end of a compressed message: the sync tail is inflated (RFC 7692 §7.2.2) unless the
    /// payload was empty, and the stream state dropped when the peer keeps no context (or its
    /// stream ended). Returns how many bytes the tail added. The message stays until
    /// [`Self::take_message`].
    pub fn finish_message(&mut self, max_len: usize) -> Result<usize, InflateError> {
        let done = if self.fed {
            self.inflate(&SYNC_TAIL, max_len)
        } else {
            Ok(0)
        };
        if done.is_ok() && (self.reset_each_message || self.stream_ended) {
            self.d.reset(false);
            self.stream_ended = false;
        }
        self.fed = false;
        done
    }

    /// The message inflated so far.
    pub fn message(&self) -> &[u8] {
        &self.buf[..self.filled]
    }

    /// Takes the finished message out (its buffer trimmed when much of it is unused room).
    pub fn take_message(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        out.truncate(self.filled);
        self.filled = 0;
        if out.capacity() - out.len() > out.len() / 4 + 4096 {
            out.shrink_to_fit();
        }
        out
    }

    /// Bytes this inflater's message buffer holds (its capacity).
    pub fn held_bytes(&self) -> usize {
        self.buf.capacity()
    }

    /// Forget any partial message (the connection is closing, or a message was refused).
    pub fn reset(&mut self) {
        self.d.reset(false);
        self.stream_ended = false;
        self.fed = false;
        self.buf = Vec::new();
        self.filled = 0;
    }
}
