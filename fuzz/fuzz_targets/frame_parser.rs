//! Arbitrary bytes through `Session::receive`, delivered in chunk sizes taken from the input.
//! Must never panic; checks a few invariants on the way.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wssedge_proto::ws::{Event, Session, SessionLimits, SessionState};

fuzz_target!(|data: &[u8]| {
    // The first bytes choose the limits and the chunk sizes; the rest is the stream.
    if data.len() < 4 {
        return;
    }
    let limits = SessionLimits {
        max_frame_bytes: 1 + usize::from(data[0]) * 16,
        max_message_bytes: 1 + usize::from(data[1]) * 64,
    };
    let sizes = [usize::from(data[2] % 64) + 1, usize::from(data[3] % 7) + 1];
    let stream = &data[4..];

    let mut s = Session::new(limits);
    let mut buf = BytesMut::new();
    let (mut pos, mut i) = (0, 0);
    let mut terminal = false;
    while pos < stream.len() {
        let n = sizes[i % 2].min(stream.len() - pos);
        i += 1;
        buf.extend_from_slice(&stream[pos..pos + n]);
        pos += n;
        let queued = s.receive(&mut buf);
        let mut seen = 0;
        while let Some(e) = s.poll_event() {
            seen += 1;
            assert!(!terminal, "event after a terminal event");
            match e {
                Event::Failed { .. } | Event::PeerClosed { .. } => terminal = true,
                Event::Message(m) => assert!(m.payload.len() <= limits.max_message_bytes),
                Event::Ping(p) | Event::Pong(p) => assert!(p.len() <= 125),
            }
        }
        assert_eq!(queued, seen);
        assert!(s.buffered_bytes() <= limits.max_message_bytes);
        let _ = s.partial_payload(&buf);
        let _ = s.bytes_wanted();
        while let Some(f) = s.poll_transmit() {
            assert!(matches!(f.header().len(), 2 | 4 | 10));
        }
    }
    if terminal {
        assert_eq!(s.state(), SessionState::Closed);
    }
});
