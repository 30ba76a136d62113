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

impl Outbox {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a frame behind the others.
    pub fn push(&mut self, frame: OutFrame) {
        self.queued += frame.wire_len();
        self.frames.push_back(frame);
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
}
