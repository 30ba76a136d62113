//! The client role of [`Session`]: masked output, unmasked input, and tungstenite (server role,
//! then client role) as the independent oracle for both directions.

use std::io::{self, Read, Write};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tungstenite::protocol::{Role as TRole, WebSocket};

use super::frame::{self, OpCode};
use super::mask::apply_mask;
use super::mask_keys::test_source;
use super::session::{close_code, Event, MessageKind, OutFrame, Payload, Role, Session};
use super::violation::Violation;

fn client() -> Session {
    Session::client(Default::default(), test_source(1))
}

fn transmit(s: &mut Session) -> Vec<OutFrame> {
    std::iter::from_fn(|| s.poll_transmit()).collect()
}

fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// Parses one frame off the wire bytes, unmasking it: (header, plain payload).
fn decode(wire: &[u8]) -> (frame::FrameHeader, Vec<u8>) {
    let (h, hl) = frame::parse_header(wire).unwrap().unwrap();
    let mut p = wire[hl..].to_vec();
    assert_eq!(p.len() as u64, h.payload_len);
    if let Some(m) = h.mask {
        apply_mask(&mut p, m, 0);
    }
    (h, p)
}

/// An unmasked server frame.
fn sframe(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = [0u8; frame::MAX_HEADER_LEN];
    let n = frame::encode_header(fin, OpCode::from_u8(op), None, payload.len() as u64, &mut h);
    let mut v = h[..n].to_vec();
    v.extend_from_slice(payload);
    v
}

#[test]
fn outgoing_frames_are_masked_copies_with_fresh_keys() {
    let mut s = client();
    let shared = Bytes::from_static(b"hello, upstream");
    for _ in 0..4 {
        s.send(MessageKind::Text, Payload::Single(shared.clone()));
    }
    let frames = transmit(&mut s);
    assert_eq!(frames.len(), 4);
    let mut keys = Vec::new();
    for f in &frames {
        let (h, p) = decode(&f.to_vec());
        assert!(h.fin);
        assert_eq!(h.opcode, OpCode::Text);
        assert_eq!(p, b"hello, upstream");
        keys.push(h.mask.expect("client frames are masked"));
    }
    // The caller's (shared) bytes are untouched.
    assert_eq!(&shared[..], b"hello, upstream");
    // 2^-96 odds of a false failure: the keys are not all the same.
    assert!(keys.iter().any(|k| *k != keys[0]), "{keys:?}");
}

#[test]
fn fragmented_payload_is_masked_across_slices() {
    let mut s = client();
    let parts: Vec<Bytes> = vec![
        Bytes::from_static(b"abc"),
        Bytes::from(vec![7u8; 300]),
        Bytes::from_static(b"z"),
    ];
    let whole: Vec<u8> = parts.concat();
    s.send(MessageKind::Binary, Payload::Fragmented(parts));
    let f = s.poll_transmit().unwrap();
    // A 16-bit length header with its key; the slices stay shared until they are written
    // out, masked across the slice boundaries in one pass.
    assert_eq!(f.header().len(), 2 + 2 + 4);
    assert_eq!(f.payload().chunks().len(), 3);
    let (h, p) = decode(&f.to_vec());
    assert_eq!(h.opcode, OpCode::Binary);
    assert_eq!(p, whole);
}

#[test]
fn unmasked_input_is_delivered_and_masked_input_fails_1002() {
    let mut s = client();
    let mut buf = BytesMut::from(&sframe(true, 1, b"tick")[..]);
    buf.extend_from_slice(&sframe(false, 2, b"ab"));
    buf.extend_from_slice(&sframe(true, 0, b"cd"));
    s.receive(&mut buf);
    let ev = events(&mut s);
    assert_eq!(ev.len(), 2, "{ev:?}");
    match (&ev[0], &ev[1]) {
        (Event::Message(a), Event::Message(b)) => {
            assert_eq!(
                (a.kind, a.payload.to_vec()),
                (MessageKind::Text, b"tick".to_vec())
            );
            assert_eq!(
                (b.kind, b.payload.to_vec()),
                (MessageKind::Binary, b"abcd".to_vec())
            );
        }
        other => panic!("{other:?}"),
    }

    // A masked frame from the server side is a protocol error.
    let mut h = [0u8; frame::MAX_HEADER_LEN];
    let n = frame::encode_header(true, OpCode::Text, Some([1, 2, 3, 4]), 2, &mut h);
    let mut wire = h[..n].to_vec();
    wire.extend_from_slice(b"hi");
    let mut buf = BytesMut::from(&wire[..]);
    s.receive(&mut buf);
    assert_eq!(
        events(&mut s),
        vec![Event::Failed {
            code: close_code::PROTOCOL_ERROR,
            reason: Violation::MaskedFrame
        }]
    );
    // Our close is masked too, and carries the code.
    let close = s.poll_transmit().unwrap();
    assert!(close.is_close());
    let (h, p) = decode(&close.to_vec());
    assert!(h.mask.is_some());
    assert_eq!(&p[..2], &close_code::PROTOCOL_ERROR.to_be_bytes());
    assert_eq!(&p[2..], b"masked_frame");
}

#[test]
fn ping_gets_a_masked_pong_and_close_handshake_completes() {
    let mut s = client();
    let mut buf = BytesMut::from(&sframe(true, 9, b"hb")[..]);
    s.receive(&mut buf);
    assert_eq!(events(&mut s), vec![Event::Ping(Bytes::from_static(b"hb"))]);
    let (h, p) = decode(&s.poll_transmit().unwrap().to_vec());
    assert_eq!(
        (h.opcode, h.mask.is_some(), p),
        (OpCode::Pong, true, b"hb".to_vec())
    );

    s.send_ping(Bytes::from_static(b"p"));
    let (h, _) = decode(&s.poll_transmit().unwrap().to_vec());
    assert_eq!((h.opcode, h.mask.is_some()), (OpCode::Ping, true));

    s.close(close_code::GOING_AWAY, "bye");
    let (h, p) = decode(&s.poll_transmit().unwrap().to_vec());
    assert_eq!(h.opcode, OpCode::Close);
    assert_eq!(&p[2..], b"bye");
    let mut buf = BytesMut::from(&sframe(true, 8, &1001u16.to_be_bytes())[..]);
    s.receive(&mut buf);
    assert!(matches!(
        events(&mut s)[..],
        [Event::PeerClosed {
            code: Some(1001),
            ..
        }]
    ));
    assert_eq!(s.state(), super::session::SessionState::Closed);
}

#[test]
fn server_role_is_unchanged() {
    let mut s = Session::new(Default::default());
    assert_eq!(s.role(), Role::Server);
    let shared = Bytes::from(vec![5u8; 10]);
    s.send(MessageKind::Binary, Payload::Single(shared.clone()));
    let f = s.poll_transmit().unwrap();
    assert_eq!(f.header(), &[0x82, 10]);
    // Zero copy: the very same allocation goes out.
    assert_eq!(f.payload().chunks()[0].as_ptr(), shared.as_ptr());
}

/// A duplex in-memory socket: reads from `input`, then WouldBlock; writes append to `output`.
struct Duplex {
    input: io::Cursor<Vec<u8>>,
    output: Vec<u8>,
}

impl Read for Duplex {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self.input.read(out)? {
            0 => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }
}

impl Write for Duplex {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, Clone)]
enum Msg {
    Text(String),
    Binary(Vec<u8>),
}

fn msg_strategy() -> impl Strategy<Value = Msg> {
    prop_oneof![
        ".{0,40}".prop_map(Msg::Text),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Msg::Binary),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, cases: 64, ..ProptestConfig::default() })]

    /// What our client sends, a tungstenite server reads back unchanged (it refuses unmasked
    /// client frames, so this also proves the masking).
    #[test]
    fn tungstenite_server_reads_our_client_frames(msgs in proptest::collection::vec(msg_strategy(), 1..8)) {
        let mut s = client();
        for m in &msgs {
            match m {
                Msg::Text(t) => s.send(MessageKind::Text, Payload::Single(Bytes::from(t.clone().into_bytes()))),
                Msg::Binary(b) => s.send(MessageKind::Binary, Payload::Single(Bytes::from(b.clone()))),
            }
        }
        let mut wire = Vec::new();
        for f in transmit(&mut s) {
            f.append_to(&mut wire);
        }
        let mut ws = WebSocket::from_raw_socket(
            Duplex { input: io::Cursor::new(wire), output: Vec::new() },
            TRole::Server,
            None,
        );
        for m in &msgs {
            let got = ws.read().unwrap();
            match (m, got) {
                (Msg::Text(t), tungstenite::Message::Text(g)) => prop_assert_eq!(t.as_str(), g.as_str()),
                (Msg::Binary(b), tungstenite::Message::Binary(g)) => prop_assert_eq!(&b[..], &g[..]),
                (m, g) => prop_assert!(false, "sent {:?}, tungstenite read {:?}", m, g),
            }
        }
    }

    /// What a tungstenite server sends, our client reads, in any chunking.
    #[test]
    fn our_client_reads_tungstenite_server_frames(msgs in proptest::collection::vec(msg_strategy(), 1..8),
                                                  chunk in 1usize..64) {
        let mut ws = WebSocket::from_raw_socket(
            Duplex { input: io::Cursor::new(Vec::new()), output: Vec::new() },
            TRole::Server,
            None,
        );
        for m in &msgs {
            let tm = match m {
                Msg::Text(t) => tungstenite::Message::text(t.clone()),
                Msg::Binary(b) => tungstenite::Message::binary(b.clone()),
            };
            ws.send(tm).unwrap();
        }
        let wire = std::mem::take(&mut ws.get_mut().output);
        let mut s = client();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            s.receive(&mut buf);
            got.extend(events(&mut s));
        }
        prop_assert_eq!(got.len(), msgs.len());
        for (m, e) in msgs.iter().zip(got) {
            let Event::Message(e) = e else {
                return Err(TestCaseError::fail(format!("unexpected event {e:?}")));
            };
            match m {
                Msg::Text(t) => prop_assert_eq!((e.kind, e.payload.to_vec()), (MessageKind::Text, t.clone().into_bytes())),
                Msg::Binary(b) => prop_assert_eq!((e.kind, e.payload.to_vec()), (MessageKind::Binary, b.clone())),
            }
        }
    }
}
