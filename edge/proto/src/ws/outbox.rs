//! Frames waiting for a socket that has no room for them yet, sans IO.
//!
//! A session hands out whole frames; a socket takes what it has room for. Encrypting (or, in
//! the client role, masking) a whole 16 MiB message the moment it is sent would queue a copy of
//! it whatever the connection's outbound cap says. The outbox keeps the frames as they are —
//! header bytes and the payload's shared `Bytes`, no copy — and hands out only as many bytes
//! as the transport asks for, a large frame in several pieces, so the one copy (encryption,
//! masking) follows the socket's pace. [`Outbox::len`] is what still waits, for the caller to
//! count against its caps.

use std::collections::VecDeque;

use super::session::OutFrame;

/// The frames queued for one peer, in order.
#[derive(Debug, Default)]
pub struct Outbox {
    frames: VecDeque<OutFrame>,
    /// Bytes of the front frame already handed out.
    front_done: usize,
    /// Bytes of every queued frame not yet handed out.
    queued: usize,
}

/// Frees a drained queue's storage (a queue keeps its largest capacity otherwise; the next
/// item allocates it again).
pub(crate) fn release_if_empty<T>(queue: &mut VecDeque<T>) {
    if queue.is_empty() && queue.capacity() > 0 {
        *queue = VecDeque::new();
    }
}

impl Outbox {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a frame behind the others.
    pub fn push(&mut self, frame: OutFrame) {
        self.queued += frame.wire_len();
        self.frames.push_back(frame);
    }

    /// Frees the queue's storage once it is empty: an idle connection keeps none.
    pub fn release_idle(&mut self) {
        release_if_empty(&mut self.frames);
    }

    /// The queue's storage, in frames (0 once released).
    pub fn capacity(&self) -> usize {
        self.frames.capacity()
    }

    /// Bytes queued and not yet handed out.
    pub fn len(&self) -> usize {
        self.queued
    }

    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// What the queue costs in memory beyond the payloads' own bytes (which [`len`](Self::len)
    /// counts): each queued frame's bookkeeping. For a cap or a budget, count `len() +
    /// overhead()`: a read of thousands of tiny frames is thousands of these, not a few bytes.
    pub fn overhead(&self) -> usize {
        self.frames.len() * std::mem::size_of::<OutFrame>()
    }

    /// Frames queued (the front one included while partly handed out).
    pub fn frames(&self) -> usize {
        self.frames.len()
    }

    /// Whether the front frame is partly handed out: the peer has seen its beginning, so
    /// nothing may come before its end.
    pub fn is_mid_frame(&self) -> bool {
        self.front_done > 0
    }

    /// Appends up to `max` bytes of the queued frames to `out`, in order, and returns how many.
    pub fn fill(&mut self, out: &mut Vec<u8>, max: usize) -> usize {
        let mut given = 0;
        while given < max {
            let Some(front) = self.frames.front() else {
                break;
            };
            let n = front.append_range(out, self.front_done, max - given);
            given += n;
            self.front_done += n;
            if self.front_done == front.wire_len() {
                self.frames.pop_front();
                self.front_done = 0;
            }
            if n == 0 && self.front_done != 0 {
                break; // cannot happen: a frame with bytes left hands some out
            }
        }
        self.queued -= given;
        given
    }

    /// The queued bytes, at most `max` of them in at most `max_slices` slices, as slices of the
    /// frames themselves (headers and shared payloads, no copy) for one vectored write; how many
    /// bytes they cover. Stops at the first masked (client) frame: 0 when that is the front one,
    /// and the caller copies with [`Outbox::fill`] instead. Nothing is consumed until
    /// [`Outbox::advance`] says what the write took.
    pub fn gather<'a>(
        &'a self,
        out: &mut Vec<std::io::IoSlice<'a>>,
        max: usize,
        max_slices: usize,
    ) -> usize {
        let mut given = 0;
        let mut from = self.front_done;
        for f in &self.frames {
            // A frame is at most a header and its payload's chunks.
            let slices = 1 + f.payload().chunks().len();
            if given >= max || out.len() + slices > max_slices {
                break;
            }
            match f.gather(from, max - given, out) {
                Some(n) => given += n,
                None => break,
            }
            from = 0;
        }
        given
    }

    /// Consumes `n` bytes from the front, as a write of [`Outbox::gather`]'s slices took them.
    pub fn advance(&mut self, n: usize) {
        let mut n = n.min(self.queued);
        self.queued -= n;
        while n > 0 {
            let Some(front) = self.frames.front() else {
                break;
            };
            let left = front.wire_len() - self.front_done;
            if n >= left {
                n -= left;
                self.frames.pop_front();
                self.front_done = 0;
            } else {
                self.front_done += n;
                n = 0;
            }
        }
    }

    /// Drops every frame not yet begun (a connection closed for its queue: its close frame
    /// goes next); a frame partly handed out stays, since the peer is in the middle of it.
    /// Returns the bytes dropped.
    pub fn discard_unstarted(&mut self) -> usize {
        let keep = usize::from(self.front_done > 0);
        let mut dropped = 0;
        while self.frames.len() > keep {
            if let Some(f) = self.frames.pop_back() {
                dropped += f.wire_len();
            }
        }
        self.queued -= dropped;
        dropped
    }
}

#[cfg(test)]
mod gather_tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::super::mask_keys::test_source;
    use super::super::session::{MessageKind, Payload, Session, SessionLimits};
    use super::*;

    fn outbox_of(payloads: &[Vec<u8>], fragmented: bool) -> Outbox {
        let mut s = Session::new(SessionLimits::default());
        for p in payloads {
            let payload = if fragmented && p.len() > 1 {
                let (a, b) = p.split_at(p.len() / 2);
                Payload::Fragmented(vec![Bytes::from(a.to_vec()), Bytes::from(b.to_vec())])
            } else {
                Payload::Single(Bytes::from(p.clone()))
            };
            s.send(MessageKind::Binary, payload);
        }
        let mut o = Outbox::new();
        while let Some(f) = s.poll_transmit() {
            o.push(f);
        }
        o
    }

    proptest! {
        /// Writes of any sizes through gather + advance put the same bytes on the wire as
        /// fill, with no copy on the way.
        #[test]
        fn gathered_writes_equal_the_copied_bytes(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..8),
            writes in proptest::collection::vec(1usize..200, 1..40),
            fragmented in any::<bool>(),
            max_slices in 3usize..9,
        ) {
            let mut copied = outbox_of(&payloads, fragmented);
            let mut want = Vec::new();
            copied.fill(&mut want, usize::MAX);
            let mut o = outbox_of(&payloads, fragmented);
            let mut got = Vec::new();
            for w in writes.iter().cycle().take(10_000) {
                if o.is_empty() {
                    break;
                }
                let mut slices = Vec::new();
                let n = o.gather(&mut slices, *w, max_slices);
                prop_assert!(n > 0 && n <= *w);
                prop_assert_eq!(slices.iter().map(|s| s.len()).sum::<usize>(), n);
                // A short write: the socket took only part of what was offered.
                let took = n.div_ceil(2);
                let mut left = took;
                for s in &slices {
                    let k = left.min(s.len());
                    got.extend_from_slice(&s[..k]);
                    left -= k;
                }
                let before = o.len();
                o.advance(took);
                prop_assert_eq!(o.len(), before - took);
            }
            prop_assert!(o.is_empty());
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn a_masked_frame_is_never_gathered() {
        let mut s = Session::client(SessionLimits::default(), test_source(3));
        s.send(
            MessageKind::Text,
            Payload::Single(Bytes::from_static(b"hi")),
        );
        let mut o = Outbox::new();
        while let Some(f) = s.poll_transmit() {
            o.push(f);
        }
        let mut slices = Vec::new();
        assert_eq!(o.gather(&mut slices, 100, 8), 0);
        assert!(slices.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::super::mask_keys::test_source;
    use super::super::session::{MessageKind, Payload, Role, Session, SessionLimits};
    use super::*;

    fn frames_of(role: Role, payloads: &[Vec<u8>]) -> (Vec<OutFrame>, Vec<u8>) {
        let mut s = match role {
            Role::Server => Session::new(SessionLimits::default()),
            Role::Client => Session::client(SessionLimits::default(), test_source(7)),
        };
        for p in payloads {
            s.send(MessageKind::Binary, Payload::Single(Bytes::from(p.clone())));
        }
        let mut frames = Vec::new();
        let mut whole = Vec::new();
        while let Some(f) = s.poll_transmit() {
            f.append_to(&mut whole);
            frames.push(f);
        }
        (frames, whole)
    }

    #[test]
    fn hands_out_a_large_frame_in_pieces() {
        let (frames, whole) = frames_of(Role::Server, &[vec![7u8; 100_000]]);
        let mut outbox = Outbox::new();
        for f in frames {
            outbox.push(f);
        }
        assert_eq!(outbox.len(), whole.len());
        let mut out = Vec::new();
        assert_eq!(outbox.fill(&mut out, 1000), 1000);
        assert!(outbox.is_mid_frame());
        assert_eq!(outbox.len(), whole.len() - 1000);
        while !outbox.is_empty() {
            outbox.fill(&mut out, 4096);
        }
        assert_eq!(out, whole);
        assert!(!outbox.is_mid_frame());
        assert_eq!(outbox.frames(), 0);
    }

    #[test]
    fn discarding_keeps_the_frame_the_peer_is_in() {
        let (frames, _) = frames_of(
            Role::Server,
            &[vec![1u8; 500], vec![2u8; 500], vec![3u8; 500]],
        );
        let mut outbox = Outbox::new();
        for f in frames {
            outbox.push(f);
        }
        let mut out = Vec::new();
        outbox.fill(&mut out, 10);
        let left_of_first = 504 - 10;
        assert_eq!(outbox.discard_unstarted(), 2 * 504);
        assert_eq!(outbox.len(), left_of_first);
        outbox.fill(&mut out, usize::MAX);
        assert_eq!(out.len(), 504);
        // Nothing begun: everything goes.
        let (frames, _) = frames_of(Role::Server, &[vec![1u8; 50]]);
        let mut outbox = Outbox::new();
        outbox.push(frames.into_iter().next().unwrap());
        assert_eq!(outbox.discard_unstarted(), 52);
        assert!(outbox.is_empty());
    }

    proptest! {
        /// Any way of cutting the hand-out gives the bytes `append_to` gives, for server frames
        /// and for masked client frames (whose masking must follow the payload offset).
        #[test]
        fn pieces_of_any_size_add_up_to_the_whole(
            sizes in proptest::collection::vec(0usize..70_000, 1..5),
            cuts in proptest::collection::vec(1usize..9000, 1..64),
            client in any::<bool>(),
        ) {
            let payloads: Vec<Vec<u8>> =
                sizes.iter().map(|&n| (0..n).map(|i| (i * 31 % 251) as u8).collect()).collect();
            let role = if client { Role::Client } else { Role::Server };
            let (frames, whole) = frames_of(role, &payloads);
            let mut outbox = Outbox::new();
            for f in frames {
                outbox.push(f);
            }
            let mut out = Vec::new();
            let mut i = 0;
            while !outbox.is_empty() {
                let before = outbox.len();
                let n = outbox.fill(&mut out, cuts[i % cuts.len()]);
                prop_assert!(n > 0);
                prop_assert_eq!(outbox.len(), before - n);
                i += 1;
            }
            prop_assert_eq!(out, whole);
        }
    }

    #[test]
    fn an_empty_outbox_gives_its_storage_back() {
        let mut s = Session::new(SessionLimits::default());
        s.send(
            MessageKind::Binary,
            Payload::Single(Bytes::from_static(b"abc")),
        );
        let mut o = Outbox::new();
        while let Some(f) = s.poll_transmit() {
            o.push(f);
        }
        o.release_idle();
        assert!(o.capacity() > 0, "a queued frame keeps its storage");
        let mut staging = Vec::new();
        o.fill(&mut staging, usize::MAX);
        assert!(o.is_empty());
        o.release_idle();
        assert_eq!(o.capacity(), 0, "an idle outbox holds no storage");
    }
}
