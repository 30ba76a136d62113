//! Unit and property tests of the session state machine.

use super::*;
use proptest::prelude::*;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A masked client frame with explicit first-byte bits.
pub(super) fn raw_frame(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut h = [0u8; frame::MAX_HEADER_LEN];
    let n = frame::encode_header(
        false,
        OpCode::Continuation,
        mask,
        payload.len() as u64,
        &mut h,
    );
    h[0] = b0;
    let mut v = h[..n].to_vec();
    let start = v.len();
    v.extend_from_slice(payload);
    if let Some(m) = mask {
        apply_mask(&mut v[start..], m, 0);
    }
    v
}

fn cframe(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
    raw_frame((u8::from(fin) << 7) | op, payload, Some(MASK))
}

fn text(s: &str) -> Vec<u8> {
    cframe(true, 1, s.as_bytes())
}

fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    cframe(true, 8, &p)
}

fn session() -> Session {
    Session::new(SessionLimits::default())
}

fn feed(s: &mut Session, bytes: &[u8]) -> (Vec<Event>, BytesMut) {
    let mut buf = BytesMut::from(bytes);
    s.receive(&mut buf);
    (events(s), buf)
}

fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn transmit(s: &mut Session) -> Vec<OutFrame> {
    std::iter::from_fn(|| s.poll_transmit()).collect()
}

fn msg(kind: MessageKind, p: &[u8]) -> Event {
    Event::Message(Message {
        kind,
        payload: Payload::Single(Bytes::copy_from_slice(p)),
    })
}

/// Feeds `bytes` and expects exactly one Failed event with this code and reason, and a close
/// frame carrying them.
fn expect_fail(s: &mut Session, bytes: &[u8], code: u16, reason: &str) {
    let (ev, _) = feed(s, bytes);
    match ev.last() {
        Some(Event::Failed { code: c, reason: r }) => {
            assert_eq!((*c, r.as_str()), (code, reason), "{ev:?}")
        }
        other => panic!("expected a failure, got {other:?} in {ev:?}"),
    }
    assert_eq!(s.state(), SessionState::CloseSent);
    let out = transmit(s);
    let close = out.last().expect("a close frame");
    assert!(close.is_close());
    let mut expect = code.to_be_bytes().to_vec();
    expect.extend_from_slice(reason.as_bytes());
    assert_eq!(close.payload().to_vec(), expect);
    assert_eq!(s.state(), SessionState::Closed);
    // Further input is ignored.
    let (ev, buf) = feed(s, &text("ignored"));
    assert!(ev.is_empty());
    assert!(buf.is_empty());
    assert!(s.poll_transmit().is_none());
}

#[test]
fn single_text_and_binary() {
    let mut s = session();
    let mut bytes = text("Hello");
    bytes.extend(cframe(true, 2, &[0, 1, 2, 255]));
    let (ev, buf) = feed(&mut s, &bytes);
    assert_eq!(
        ev,
        vec![
            msg(MessageKind::Text, b"Hello"),
            msg(MessageKind::Binary, &[0, 1, 2, 255])
        ]
    );
    assert!(buf.is_empty());
    assert_eq!(s.state(), SessionState::Open);
    assert_eq!(s.bytes_wanted(), None);
}

#[test]
fn rfc_masked_hello() {
    // RFC 6455 §5.7.
    let mut s = session();
    let (ev, _) = feed(
        &mut s,
        &[
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ],
    );
    assert_eq!(ev, vec![msg(MessageKind::Text, b"Hello")]);
}

#[test]
fn byte_at_a_time_with_progress() {
    let mut s = session();
    let payload = "héllo wörld, this is a longer text to cross words €𝄞".as_bytes();
    let bytes = text(std::str::from_utf8(payload).unwrap());
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for (i, &b) in bytes.iter().enumerate() {
        buf.extend_from_slice(&[b]);
        let n = s.receive(&mut buf);
        got.extend(events(&mut s));
        if i + 1 < bytes.len() {
            assert_eq!(n, 0);
            if i >= 1 {
                assert_eq!(s.bytes_wanted(), Some(bytes.len() - i - 1), "at {i}");
            }
            let hl = bytes.len() - payload.len();
            if i + 1 > hl {
                assert_eq!(s.partial_payload(&buf), &payload[..i + 1 - hl]);
            } else {
                assert!(s.partial_payload(&buf).is_empty());
            }
        }
    }
    assert_eq!(got, vec![msg(MessageKind::Text, payload)]);
    assert!(buf.is_empty());
}

#[test]
fn payload_is_zero_copy() {
    let mut s = session();
    let mut buf = BytesMut::from(&cframe(true, 2, &[7u8; 300])[..]);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    s.receive(&mut buf);
    let Some(Event::Message(m)) = s.poll_event() else {
        panic!("no message")
    };
    let Payload::Single(b) = m.payload else {
        panic!("fragmented")
    };
    assert!(range.contains(&(b.as_ptr() as usize)));
    assert_eq!(&b[..], &[7u8; 300]);
}

#[test]
fn fragmented_with_interleaved_control() {
    let mut s = session();
    let mut bytes = cframe(false, 1, "frag".as_bytes());
    bytes.extend(cframe(true, 9, b"ping!"));
    bytes.extend(cframe(false, 0, &[0xe2, 0x82])); // "€" split across fragments
    bytes.extend(cframe(true, 0xA, b"pong"));
    bytes.extend(cframe(false, 0, &[]));
    bytes.extend(cframe(true, 0, &[0xac, b'!']));
    let (ev, _) = feed(&mut s, &bytes);
    assert_eq!(ev.len(), 3, "{ev:?}");
    assert_eq!(ev[0], Event::Ping(Bytes::from_static(b"ping!")));
    assert_eq!(ev[1], Event::Pong(Bytes::from_static(b"pong")));
    let Event::Message(m) = &ev[2] else {
        panic!("{ev:?}")
    };
    assert_eq!(m.kind, MessageKind::Text);
    assert_eq!(m.payload.to_vec(), "frag€!".as_bytes());
    // Small fragments are copied together into one piece.
    assert!(matches!(&m.payload, Payload::Single(_)), "{:?}", m.payload);
    // The pong went out before any later data.
    s.send(
        MessageKind::Text,
        Payload::Single(Bytes::from_static(b"later")),
    );
    let out = transmit(&mut s);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].header(), &[0x8A, 5]);
    assert_eq!(out[0].payload().to_vec(), b"ping!");
    assert_eq!(out[1].header(), &[0x81, 5]);
    assert_eq!(s.buffered_bytes(), 0);
}

#[test]
fn buffered_bytes_counts_reassembly() {
    let mut s = session();
    let (ev, _) = feed(&mut s, &cframe(false, 2, &[1; 10]));
    assert!(ev.is_empty());
    assert_eq!(s.buffered_bytes(), 10);
    feed(&mut s, &cframe(false, 0, &[1; 5]));
    assert_eq!(s.buffered_bytes(), 15);
    let (ev, _) = feed(&mut s, &cframe(true, 0, &[1; 5]));
    assert_eq!(s.buffered_bytes(), 0);
    assert!(matches!(&ev[0], Event::Message(m) if m.payload.len() == 20));
}

#[test]
fn messages_received_counts_whole_data_messages_only() {
    let mut s = session();
    let mut bytes = cframe(true, 1, b"one");
    bytes.extend(cframe(false, 2, &[1; 4]));
    bytes.extend(cframe(true, 9, b"ping"));
    feed(&mut s, &bytes);
    assert_eq!(
        s.messages_received(),
        1,
        "a fragment and a ping are no message"
    );
    let mut rest = cframe(true, 0, &[2; 4]);
    let half = cframe(true, 2, &[3; 100]);
    rest.extend_from_slice(&half[..50]);
    feed(&mut s, &rest);
    assert_eq!(
        s.messages_received(),
        2,
        "the fragmented message ended; the next is partial"
    );
    assert!(s.in_message());
}

#[test]
fn single_non_empty_fragment_collapses() {
    let mut s = session();
    let mut bytes = cframe(false, 2, &[]);
    bytes.extend(cframe(false, 0, b"abc"));
    bytes.extend(cframe(true, 0, &[]));
    let (ev, _) = feed(&mut s, &bytes);
    assert_eq!(ev, vec![msg(MessageKind::Binary, b"abc")]);
}

#[test]
fn unmasked_frame() {
    expect_fail(
        &mut session(),
        &raw_frame(0x81, b"hi", None),
        1002,
        "unmasked_frame",
    );
}

#[test]
fn reserved_bits() {
    for rsv in [0x40, 0x20, 0x10, 0x70] {
        expect_fail(
            &mut session(),
            &raw_frame(0x81 | rsv, b"hi", Some(MASK)),
            1002,
            "reserved_bits",
        );
    }
}

#[test]
fn reserved_opcodes() {
    for op in [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        expect_fail(&mut session(), &cframe(true, op, b""), 1002, "bad_opcode");
    }
}

#[test]
fn control_frame_rules() {
    for op in [8, 9, 0xA] {
        expect_fail(
            &mut session(),
            &cframe(true, op, &[b'a'; 126]),
            1002,
            "control_too_long",
        );
        expect_fail(
            &mut session(),
            &cframe(false, op, b""),
            1002,
            "fragmented_control",
        );
    }
    // 125 bytes is fine.
    let (ev, _) = feed(&mut session(), &cframe(true, 9, &[b'a'; 125]));
    assert_eq!(ev, vec![Event::Ping(Bytes::from(vec![b'a'; 125]))]);
    // Decided from the header alone.
    let mut s = session();
    let f = cframe(true, 9, &[b'a'; 126]);
    let (ev, _) = feed(&mut s, &f[..8]);
    assert!(matches!(ev[..], [Event::Failed { code: 1002, .. }]));
}

#[test]
fn continuation_order() {
    expect_fail(
        &mut session(),
        &cframe(true, 0, b"x"),
        1002,
        "unexpected_continuation",
    );
    let mut bytes = cframe(false, 1, b"a");
    bytes.extend(text("b"));
    expect_fail(&mut session(), &bytes, 1002, "expected_continuation");
    let mut bytes = cframe(false, 2, b"a");
    bytes.extend(cframe(false, 2, b"b"));
    expect_fail(&mut session(), &bytes, 1002, "expected_continuation");
    // After a completed fragmented message, a continuation is unexpected again.
    let mut bytes = cframe(false, 2, b"a");
    bytes.extend(cframe(true, 0, b"b"));
    bytes.extend(cframe(true, 0, b"c"));
    let mut s = session();
    let (ev, _) = feed(&mut s, &bytes);
    assert_eq!(
        ev[1],
        Event::Failed {
            code: 1002,
            reason: Violation::UnexpectedContinuation
        }
    );
}

#[test]
fn length_msb_set() {
    let mut b = vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1];
    b.extend_from_slice(&MASK);
    expect_fail(&mut session(), &b, 1002, "bad_length");
}

#[test]
fn size_limits_from_header() {
    let limits = SessionLimits {
        max_frame_bytes: 100,
        max_message_bytes: 150,
    };
    // Only the header of a too-large frame is needed.
    let f = cframe(true, 2, &[0; 101]);
    expect_fail(&mut Session::new(limits), &f[..8], 1009, "frame_too_large");
    let mut bytes = cframe(false, 2, &[0; 100]);
    bytes.extend(cframe(true, 0, &[0; 51]));
    let cut = bytes.len() - 51;
    let mut s = Session::new(limits);
    let (ev, _) = feed(&mut s, &bytes[..cut]);
    assert_eq!(
        ev,
        vec![Event::Failed {
            code: 1009,
            reason: Violation::MessageTooLarge
        }]
    );
    // At the limits exactly: fine.
    let mut bytes = cframe(false, 2, &[0; 100]);
    bytes.extend(cframe(true, 0, &[0; 50]));
    let (ev, _) = feed(&mut Session::new(limits), &bytes);
    assert!(matches!(&ev[..], [Event::Message(m)] if m.payload.len() == 150));
    // A single frame bigger than the message limit.
    let limits = SessionLimits {
        max_frame_bytes: 100,
        max_message_bytes: 50,
    };
    expect_fail(
        &mut Session::new(limits),
        &cframe(true, 1, &[b'a'; 51]),
        1009,
        "message_too_large",
    );
    // A huge 64-bit length.
    let mut b = vec![0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
    b.extend_from_slice(&MASK);
    expect_fail(&mut session(), &b, 1009, "frame_too_large");
}

#[test]
fn utf8_fails_fast_inside_a_huge_frame() {
    let mut s = session();
    let len = 16 << 20;
    let mut payload = vec![b'a'; 11];
    payload.push(0xff);
    let mut h = [0u8; frame::MAX_HEADER_LEN];
    let n = frame::encode_header(true, OpCode::Text, Some(MASK), len as u64, &mut h);
    let mut buf = BytesMut::from(&h[..n]);
    let mut masked = payload.clone();
    apply_mask(&mut masked, MASK, 0);
    // The first 11 bytes arrive in two pieces: no verdict yet.
    buf.extend_from_slice(&masked[..5]);
    assert_eq!(s.receive(&mut buf), 0);
    assert_eq!(s.partial_payload(&buf), b"aaaaa");
    assert_eq!(s.bytes_wanted(), Some(len - 5));
    buf.extend_from_slice(&masked[5..11]);
    assert_eq!(s.receive(&mut buf), 0);
    assert_eq!(s.partial_payload(&buf), &payload[..11]);
    // The invalid byte arrives: fail now, not after 16 MiB.
    buf.extend_from_slice(&masked[11..]);
    assert_eq!(s.receive(&mut buf), 1);
    assert_eq!(
        s.poll_event(),
        Some(Event::Failed {
            code: 1007,
            reason: Violation::InvalidUtf8
        })
    );
}

#[test]
fn utf8_fails_fast_on_a_bad_continuation_byte_split_across_reads() {
    let mut s = session();
    let f = cframe(true, 1, &[b'x', 0xf4, 0x90, 0x80, 0x80, b'y']); // > U+10FFFF
    let mut buf = BytesMut::new();
    let hl = f.len() - 6;
    buf.extend_from_slice(&f[..hl + 2]);
    assert_eq!(s.receive(&mut buf), 0);
    buf.extend_from_slice(&f[hl + 2..hl + 3]);
    assert_eq!(s.receive(&mut buf), 1);
    assert!(matches!(
        s.poll_event(),
        Some(Event::Failed { code: 1007, .. })
    ));
}

#[test]
fn utf8_across_fragments() {
    // Invalid in a non-final fragment: fail at once.
    let mut bytes = cframe(false, 1, b"ok");
    bytes.extend(cframe(false, 0, &[0xc0, 0xaf]));
    expect_fail(&mut session(), &bytes, 1007, "invalid_utf8");
    // Incomplete at the end of the final fragment.
    let mut bytes = cframe(false, 1, b"ok");
    bytes.extend(cframe(true, 0, &[0xe2, 0x82]));
    expect_fail(&mut session(), &bytes, 1007, "invalid_utf8");
    // Incomplete at the end of a single frame.
    expect_fail(
        &mut session(),
        &cframe(true, 1, &[b'a', 0xf0, 0x9d]),
        1007,
        "invalid_utf8",
    );
    // Binary is never validated.
    let (ev, _) = feed(&mut session(), &cframe(true, 2, &[0xff, 0xc0]));
    assert!(matches!(ev[..], [Event::Message(_)]));
    // A sequence incomplete at the end of a fragment, completed in the next: fine, and the
    // next message starts clean.
    let mut bytes = cframe(false, 1, &[0xf0, 0x9d]);
    bytes.extend(cframe(true, 0, &[0x84, 0x9e]));
    bytes.extend(text("next"));
    let (ev, _) = feed(&mut session(), &bytes);
    assert_eq!(ev.len(), 2);
}

#[test]
fn peer_close_echo() {
    let mut s = session();
    let mut bytes = close_frame(1000, b"bye");
    bytes.extend(text("after close"));
    let (ev, buf) = feed(&mut s, &bytes);
    assert_eq!(
        ev,
        vec![Event::PeerClosed {
            code: Some(1000),
            reason: "bye".into()
        }]
    );
    assert!(buf.is_empty());
    assert_eq!(s.state(), SessionState::CloseSent);
    let out = transmit(&mut s);
    assert_eq!(out.len(), 1);
    assert!(out[0].is_close());
    assert_eq!(out[0].to_vec(), vec![0x88, 2, 0x03, 0xe8]);
    assert_eq!(s.state(), SessionState::Closed);
    // Nothing is sent after close.
    s.send(MessageKind::Text, Payload::Single(Bytes::from_static(b"x")));
    s.send_ping(Bytes::new());
    s.close(1000, "");
    assert!(s.poll_transmit().is_none());
}

#[test]
fn peer_close_empty() {
    let mut s = session();
    let (ev, _) = feed(&mut s, &cframe(true, 8, &[]));
    assert_eq!(
        ev,
        vec![Event::PeerClosed {
            code: None,
            reason: String::new()
        }]
    );
    assert_eq!(transmit(&mut s)[0].to_vec(), vec![0x88, 0]);
    assert_eq!(s.state(), SessionState::Closed);
}

#[test]
fn close_codes() {
    for code in [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000,
        4999,
    ] {
        let (ev, _) = feed(&mut session(), &close_frame(code, b""));
        assert_eq!(
            ev,
            vec![Event::PeerClosed {
                code: Some(code),
                reason: String::new()
            }],
            "{code}"
        );
    }
    for code in [
        0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        expect_fail(
            &mut session(),
            &close_frame(code, b""),
            1002,
            "bad_close_code",
        );
    }
    expect_fail(
        &mut session(),
        &cframe(true, 8, &[0x03]),
        1002,
        "bad_close_payload",
    );
    expect_fail(
        &mut session(),
        &close_frame(1000, &[0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xff]),
        1007,
        "invalid_utf8",
    );
    let (ev, _) = feed(&mut session(), &close_frame(1000, "κόσμε".as_bytes()));
    assert_eq!(
        ev,
        vec![Event::PeerClosed {
            code: Some(1000),
            reason: "κόσμε".into()
        }]
    );
}

#[test]
fn server_initiated_close() {
    let mut s = session();
    let long = "é".repeat(100);
    s.close(1001, &long);
    assert_eq!(s.state(), SessionState::CloseSent);
    s.send(
        MessageKind::Binary,
        Payload::Single(Bytes::from_static(b"dropped")),
    );
    let out = transmit(&mut s);
    assert_eq!(out.len(), 1);
    let p = out[0].payload().to_vec();
    assert!(p.len() <= 125);
    assert_eq!(p.len(), 2 + 122); // 61 two-byte chars fit in 123 bytes
    assert_eq!(&p[..2], &[0x03, 0xe9]);
    assert!(std::str::from_utf8(&p[2..]).is_ok());
    assert_eq!(s.state(), SessionState::CloseSent);
    // The client may still send data before its close; pings get no pong now.
    let mut bytes = text("late");
    bytes.extend(cframe(true, 9, b"p"));
    bytes.extend(close_frame(1001, b""));
    let (ev, _) = feed(&mut s, &bytes);
    assert_eq!(ev.len(), 3);
    assert!(matches!(
        ev[2],
        Event::PeerClosed {
            code: Some(1001),
            ..
        }
    ));
    assert!(s.poll_transmit().is_none(), "no second close, no pong");
    assert_eq!(s.state(), SessionState::Closed);
}

#[test]
fn peer_close_before_our_close_is_handed_out() {
    let mut s = session();
    s.close(1013, "try again later");
    let (ev, _) = feed(&mut s, &close_frame(1000, b""));
    assert_eq!(ev.len(), 1);
    assert_eq!(s.state(), SessionState::CloseSent);
    let out = transmit(&mut s);
    assert_eq!(out.len(), 1);
    assert_eq!(s.state(), SessionState::Closed);
}

#[test]
fn failure_after_our_close_queues_no_second_close() {
    let mut s = session();
    s.close(1001, "");
    let (ev, _) = feed(&mut s, &raw_frame(0x81, b"x", None));
    assert_eq!(
        ev,
        vec![Event::Failed {
            code: 1002,
            reason: Violation::UnmaskedFrame
        }]
    );
    assert_eq!(transmit(&mut s).len(), 1);
    assert_eq!(s.state(), SessionState::Closed);
}

#[test]
fn out_frame_headers() {
    let mut s = session();
    for (len, hl) in [
        (0usize, 2usize),
        (125, 2),
        (126, 4),
        (65535, 4),
        (65536, 10),
    ] {
        s.send(
            MessageKind::Binary,
            Payload::Single(Bytes::from(vec![0; len])),
        );
        let f = s.poll_transmit().unwrap();
        assert_eq!(f.header().len(), hl);
        assert_eq!(f.header()[0], 0x82);
        let (h, n) = frame::parse_header(f.header()).unwrap().unwrap();
        assert_eq!((n, h.payload_len, h.mask), (hl, len as u64, None));
    }
    s.send(
        MessageKind::Text,
        Payload::Fragmented(vec![Bytes::from_static(b"ab"), Bytes::from_static(b"c")]),
    );
    assert_eq!(s.poll_transmit().unwrap().to_vec(), b"\x81\x03abc");
    s.send_ping(Bytes::from_static(b"hb"));
    assert_eq!(s.poll_transmit().unwrap().to_vec(), b"\x89\x02hb");
}

#[test]
fn partial_header_wanted_hint() {
    let mut s = session();
    let f = cframe(true, 2, &[0; 300]);
    let (_, buf) = feed(&mut s, &f[..1]);
    assert_eq!(buf.len(), 1);
    assert_eq!(s.bytes_wanted(), None);
    feed(&mut s, &f[..3]);
    assert_eq!(s.bytes_wanted(), None);
    feed(&mut s, &f[..4]);
    assert_eq!(s.bytes_wanted(), Some(f.len() - 4));
}

// ---------------------------------------------------------------------------------------------
// Property tests: random valid frame streams.

#[derive(Debug, Clone)]
enum Item {
    Msg {
        kind: MessageKind,
        data: Vec<u8>,
        cuts: Vec<usize>,
    },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

fn item() -> impl Strategy<Value = Item> {
    let data = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec(any::<u8>(), 60000..70000),
    ];
    prop_oneof![
        6 => (any::<bool>(), data, "\\PC{0,80}", proptest::collection::vec(0usize..400, 0..4)).prop_map(
            |(bin, bytes, s, mut cuts)| {
                cuts.sort_unstable();
                if bin {
                    Item::Msg { kind: MessageKind::Binary, data: bytes, cuts }
                } else {
                    Item::Msg { kind: MessageKind::Text, data: s.into_bytes(), cuts }
                }
            }
        ),
        1 => proptest::collection::vec(any::<u8>(), 0..126).prop_map(Item::Ping),
        1 => proptest::collection::vec(any::<u8>(), 0..126).prop_map(Item::Pong),
    ]
}

/// Encodes items as masked client frames; control frames are slipped between fragments.
fn encode_items(items: &[Item], masks: &[[u8; 4]]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut mi = 0;
    let mut next_mask = || {
        mi += 1;
        masks[mi % masks.len()]
    };
    let mut pending_control: Vec<Vec<u8>> = Vec::new();
    for it in items {
        match it {
            Item::Ping(p) => pending_control.push(raw_frame(0x89, p, Some(next_mask()))),
            Item::Pong(p) => pending_control.push(raw_frame(0x8A, p, Some(next_mask()))),
            Item::Msg { kind, data, cuts } => {
                let op = if *kind == MessageKind::Text { 1 } else { 2 };
                let mut bounds: Vec<usize> = cuts.iter().map(|&c| c.min(data.len())).collect();
                bounds.push(data.len());
                let mut start = 0;
                for (i, &end) in bounds.iter().enumerate() {
                    let fin = i + 1 == bounds.len();
                    let b0 = (u8::from(fin) << 7) | if i == 0 { op } else { 0 };
                    out.extend(raw_frame(b0, &data[start..end], Some(next_mask())));
                    // Control frames go between fragments when there are any.
                    if !fin {
                        if let Some(c) = pending_control.pop() {
                            out.extend(c);
                        }
                    }
                    start = end;
                }
                for c in pending_control.drain(..) {
                    out.extend(c);
                }
            }
        }
    }
    for c in pending_control.drain(..) {
        out.extend(c);
    }
    out
}

/// Feeds `bytes` in chunks of the given sizes (cycled; 0 means one byte).
fn run_chunked(
    bytes: &[u8],
    sizes: &[usize],
    limits: SessionLimits,
) -> (Vec<Event>, Vec<OutFrame>, usize) {
    let mut s = Session::new(limits);
    let mut buf = BytesMut::new();
    let mut pos = 0;
    let mut i = 0;
    let mut ev = Vec::new();
    while pos < bytes.len() {
        let n = sizes[i % sizes.len()].max(1).min(bytes.len() - pos);
        i += 1;
        buf.extend_from_slice(&bytes[pos..pos + n]);
        pos += n;
        s.receive(&mut buf);
        ev.extend(events(&mut s));
    }
    (ev, transmit(&mut s), buf.len())
}

type Payloads = Vec<Vec<u8>>;

/// (messages, pings, pongs) as sent.
fn expected(items: &[Item]) -> (Payloads, Payloads, Payloads) {
    let mut msgs = Vec::new();
    let mut pings = Vec::new();
    let mut pongs = Vec::new();
    for it in items {
        match it {
            Item::Msg { data, .. } => msgs.push(data.clone()),
            Item::Ping(p) => pings.push(p.clone()),
            Item::Pong(p) => pongs.push(p.clone()),
        }
    }
    (msgs, pings, pongs)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn valid_streams_deliver_exactly_what_was_sent(
        items in proptest::collection::vec(item(), 0..8),
        masks in proptest::collection::vec(any::<[u8; 4]>(), 1..4),
        sizes in prop_oneof![
            Just(vec![1usize]),
            proptest::collection::vec(1usize..40, 1..8),
            proptest::collection::vec(1usize..20000, 1..4),
        ],
    ) {
        let bytes = encode_items(&items, &masks);
        let (ev, out, left) = run_chunked(&bytes, &sizes, SessionLimits::default());
        prop_assert_eq!(left, 0);
        let (msgs, pings, pongs) = expected(&items);
        let mut got_msgs = Vec::new();
        let mut got_pings = Vec::new();
        let mut got_pongs = Vec::new();
        for e in ev {
            match e {
                Event::Message(m) => {
                    got_msgs.push(m.payload.to_vec());
                }
                Event::Ping(p) => got_pings.push(p.to_vec()),
                Event::Pong(p) => got_pongs.push(p.to_vec()),
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
        // Messages in order; control frames may move between fragments but keep their order.
        prop_assert_eq!(got_msgs, msgs);
        let mut pings_sorted = pings.clone();
        let mut got_sorted = got_pings.clone();
        pings_sorted.sort();
        got_sorted.sort();
        prop_assert_eq!(got_sorted, pings_sorted);
        let mut pongs_s = pongs;
        let mut got_pongs_s = got_pongs;
        pongs_s.sort();
        got_pongs_s.sort();
        prop_assert_eq!(got_pongs_s, pongs_s);
        // One pong per ping, same payload, same order as the ping events.
        let pong_payloads: Vec<Vec<u8>> = out.iter().map(|f| {
            prop_assert_eq!(f.header()[0], 0x8A);
            Ok(f.payload().to_vec())
        }).collect::<Result<_, _>>()?;
        prop_assert_eq!(pong_payloads, got_pings);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400),
                                   sizes in proptest::collection::vec(1usize..50, 1..5)) {
        let limits = SessionLimits { max_frame_bytes: 200, max_message_bytes: 300 };
        let (ev, _, _) = run_chunked(&data, &sizes, limits);
        // At most one terminal event, and it is the last.
        let terminal = ev.iter().filter(|e| matches!(e, Event::Failed { .. } | Event::PeerClosed { .. })).count();
        prop_assert!(terminal <= 1);
        if terminal == 1 {
            let last_is_terminal =
                matches!(ev.last(), Some(Event::Failed { .. } | Event::PeerClosed { .. }));
            prop_assert!(last_is_terminal);
        }
    }

    #[test]
    fn chunking_does_not_change_the_outcome(data in proptest::collection::vec(any::<u8>(), 0..300),
                                            sizes in proptest::collection::vec(1usize..30, 1..5)) {
        // Mostly-invalid input: the verdict and events must not depend on how bytes arrive,
        // except that fail-fast may end a text frame early — which only changes timing, not
        // the event list (the whole input is eventually delivered here).
        let limits = SessionLimits { max_frame_bytes: 200, max_message_bytes: 300 };
        let (whole, out_whole, left_whole) = run_chunked(&data, &[usize::MAX], limits);
        let (split, out_split, left_split) = run_chunked(&data, &sizes, limits);
        prop_assert_eq!(left_whole, left_split);
        prop_assert_eq!(whole, split);
        prop_assert_eq!(out_whole, out_split);
    }
}

/// Autobahn 3.2/4.1.3/5.15: a valid message followed, in the same read, by a bad frame. The echo
/// the application sends while handling the message must go out before the failure's close.
#[test]
fn answers_to_earlier_events_precede_the_failure_close() {
    let mut s = session();
    let mut bytes = text("hello");
    bytes.extend(cframe(true, 1 | 0x20, b"bad rsv"));
    let mut buf = BytesMut::from(&bytes[..]);
    s.receive(&mut buf);
    let mut order = Vec::new();
    while let Some(ev) = s.poll_event() {
        if let Event::Message(m) = ev {
            s.send(m.kind, m.payload);
        } else {
            assert!(matches!(ev, Event::Failed { code: 1002, .. }), "{ev:?}");
        }
        order.extend(transmit(&mut s).into_iter().map(|f| f.is_close()));
    }
    assert_eq!(order, vec![false, true], "echo first, then the close");
    assert_eq!(s.state(), SessionState::Closed);
}

/// The same for a ping between a message and the client's close: pong after the echo.
#[test]
fn pong_and_close_reply_follow_the_answers_before_them() {
    let mut s = session();
    let mut bytes = text("a");
    bytes.extend(cframe(true, 9, b"p"));
    bytes.extend(close_frame(1000, b""));
    let mut buf = BytesMut::from(&bytes[..]);
    s.receive(&mut buf);
    let mut ops = Vec::new();
    while let Some(ev) = s.poll_event() {
        if let Event::Message(m) = ev {
            s.send(m.kind, m.payload);
        }
        ops.extend(transmit(&mut s).into_iter().map(|f| f.header()[0] & 0x0f));
    }
    assert_eq!(ops, vec![1, 0xA, 8]);
}

/// A flood of one-byte fragments costs its bytes, not a slice (and a pinned buffer) per byte.
#[test]
fn tiny_fragments_are_coalesced_not_kept_as_slices() {
    let mut s = session();
    let mut bytes = cframe(false, 2, &[0]);
    for i in 1..10_000u32 {
        bytes.extend(cframe(false, 0, &[i as u8]));
    }
    let mut buf = BytesMut::from(&bytes[..]);
    s.receive(&mut buf);
    assert_eq!(
        s.buffered_bytes(),
        10_000,
        "held memory is the payload, no per-fragment cost"
    );
    let (ev, _) = feed(&mut s, &cframe(true, 0, &[]));
    let Some(Event::Message(m)) = ev.first() else {
        panic!("{ev:?}")
    };
    assert!(matches!(&m.payload, Payload::Single(b) if b.len() == 10_000));
}

/// Large fragments stay zero-copy slices; each kept slice is charged to the budget.
#[test]
fn large_fragments_stay_slices_and_are_charged() {
    let mut s = session();
    let mut bytes = cframe(false, 2, &[1; 5000]);
    bytes.extend(cframe(false, 0, &[2; 5000]));
    let mut buf = BytesMut::from(&bytes[..]);
    s.receive(&mut buf);
    assert_eq!(s.buffered_bytes(), 10_000 + 2 * PART_OVERHEAD);
    let (ev, _) = feed(&mut s, &cframe(true, 0, &[3; 5000]));
    let Some(Event::Message(m)) = ev.first() else {
        panic!("{ev:?}")
    };
    assert!(matches!(&m.payload, Payload::Fragmented(p) if p.len() == 3));
    assert_eq!(m.payload.len(), 15_000);
}

#[test]
fn the_first_close_code_is_remembered_from_either_side() {
    let mut ours = session();
    assert_eq!(ours.close_code(), None);
    ours.close(1001, "going_away");
    ours.close(1011, "later");
    assert_eq!(ours.close_code(), Some(1001));

    let mut theirs = session();
    feed(&mut theirs, &close_frame(1000, b""));
    assert_eq!(theirs.close_code(), Some(1000));
}

#[test]
fn a_close_without_code_sends_an_empty_close_frame() {
    let mut s = session();
    s.close_with(None, "ignored without a code");
    let out = transmit(&mut s);
    assert_eq!(out.len(), 1);
    assert!(out[0].is_close());
    assert_eq!(out[0].to_vec(), vec![0x88, 0x00]);
    assert_eq!(s.close_code(), Some(1005));
    assert_eq!(s.state(), SessionState::CloseSent);
    // Nothing after it, and a second close is ignored.
    s.close(1000, "again");
    s.send(MessageKind::Text, Payload::Single(Bytes::from_static(b"x")));
    assert!(transmit(&mut s).is_empty());
}

fn heartbeat_session(now: Instant) -> Session {
    let config = Heartbeat {
        interval: Duration::from_secs(10),
        pong_timeout: Duration::from_secs(3),
    };
    Session::new(SessionLimits::default()).with_heartbeat(config, now)
}

fn pings_queued(s: &mut Session) -> usize {
    std::iter::from_fn(|| s.poll_transmit())
        .filter(|f| f.header()[0] & 0x0f == 0x9)
        .count()
}

#[test]
fn a_session_without_heartbeat_wants_no_time() {
    let mut s = Session::new(SessionLimits::default());
    let now = Instant::now();
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(s.handle_timeout(now), None);
    s.note_received(now);
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn the_heartbeat_pings_a_silent_peer_then_closes_when_no_pong_comes() {
    let t0 = Instant::now();
    let mut s = heartbeat_session(t0);
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(10)));
    let t1 = t0 + Duration::from_secs(10);
    assert_eq!(s.handle_timeout(t1), Some(Timeout::PingSent));
    assert_eq!(pings_queued(&mut s), 1);
    assert_eq!(s.poll_timeout(), Some(t1 + Duration::from_secs(3)));
    // Nothing at all arrived since the ping.
    assert_eq!(
        s.handle_timeout(t1 + Duration::from_secs(3)),
        Some(Timeout::PongTimeout)
    );
    assert_eq!(s.poll_timeout(), None, "the timer is consumed");
}

#[test]
fn input_re_arms_the_heartbeat_lazily_from_the_last_byte() {
    let t0 = Instant::now();
    let mut s = heartbeat_session(t0);
    // Input at 4 s: the firing at 10 s re-arms for 14 s instead of pinging.
    s.note_received(t0 + Duration::from_secs(4));
    assert_eq!(s.handle_timeout(t0 + Duration::from_secs(10)), None);
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(14)));
    assert_eq!(pings_queued(&mut s), 0);
    // A ping, then any byte before the pong timeout: no close, the next ping an interval on.
    let t1 = t0 + Duration::from_secs(14);
    assert_eq!(s.handle_timeout(t1), Some(Timeout::PingSent));
    s.note_received(t1 + Duration::from_secs(1));
    assert_eq!(s.handle_timeout(t1 + Duration::from_secs(3)), None);
    assert_eq!(s.poll_timeout(), Some(t1 + Duration::from_secs(11)));
}

#[test]
fn once_our_close_is_out_the_heartbeat_stops() {
    let t0 = Instant::now();
    let mut s = heartbeat_session(t0);
    s.close(1001, "going_away");
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(s.handle_timeout(t0 + Duration::from_secs(10)), None);
    assert_eq!(pings_queued(&mut s), 0);
}

#[test]
fn the_close_reply_is_awaited_until_its_deadline() {
    let t0 = Instant::now();
    let mut s = heartbeat_session(t0);
    let by = t0 + Duration::from_secs(5);
    // Told its deadline while still open: the heartbeat keeps the timer until our close.
    s.await_close_reply_until(by);
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(10)));
    s.close(1001, "going_away");
    assert_eq!(transmit(&mut s).len(), 1);
    assert_eq!(s.poll_timeout(), Some(by));
    // A firing before the deadline (the caller's timer fired for something else) waits on.
    assert_eq!(s.handle_timeout(t0 + Duration::from_secs(4)), None);
    assert_eq!(s.poll_timeout(), Some(by));
    assert_eq!(s.handle_timeout(by), Some(Timeout::CloseReplyMissed));
    assert_eq!(s.poll_timeout(), None, "the timer is consumed");
    assert_eq!(s.handle_timeout(by + Duration::from_secs(1)), None);
    assert_eq!(pings_queued(&mut s), 0);
    assert_eq!(s.state(), SessionState::CloseSent);
}

#[test]
fn a_close_reply_in_time_stops_its_timer() {
    let t0 = Instant::now();
    let mut s = session();
    s.close(1000, "");
    s.await_close_reply_until(t0 + Duration::from_secs(5));
    assert_eq!(transmit(&mut s).len(), 1);
    let (ev, _) = feed(&mut s, &close_frame(1000, b""));
    assert_eq!(ev.len(), 1);
    assert_eq!(s.state(), SessionState::Closed);
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(s.handle_timeout(t0 + Duration::from_secs(5)), None);
}

#[test]
fn a_failure_after_our_close_stops_the_close_reply_timer() {
    let t0 = Instant::now();
    let mut s = session();
    s.close(1001, "");
    s.await_close_reply_until(t0 + Duration::from_secs(5));
    feed(&mut s, &raw_frame(0x81, b"x", None));
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(s.handle_timeout(t0 + Duration::from_secs(5)), None);
}

#[test]
fn a_drained_session_gives_its_queue_storage_back() {
    let mut s = session();
    // A ping (its pong queued) and a message echoed: both queues grow.
    let mut input = cframe(true, 9, b"hb");
    input.extend_from_slice(&text("hello"));
    let mut buf = BytesMut::from(&input[..]);
    s.receive(&mut buf);
    s.release_idle();
    assert!(
        s.queue_storage() > 0,
        "events are still queued: nothing is released under them"
    );
    for event in events(&mut s) {
        if let Event::Message(m) = event {
            s.send(m.kind, m.payload);
        }
    }
    assert_eq!(transmit(&mut s).len(), 2, "the pong and the echo");
    assert!(s.queue_storage() > 0, "a drained queue keeps its capacity");
    s.release_idle();
    assert_eq!(
        s.queue_storage(),
        0,
        "an idle session holds no queue storage"
    );
    // And it works on: the next message allocates again.
    let (ev, _) = feed(&mut s, &text("again"));
    assert_eq!(ev, vec![msg(MessageKind::Text, b"again")]);
}

#[test]
fn release_keeps_a_frame_not_yet_transmitted() {
    let mut s = session();
    s.send(
        MessageKind::Binary,
        Payload::Single(Bytes::from_static(b"x")),
    );
    s.release_idle();
    assert_eq!(transmit(&mut s).len(), 1, "the queued frame survives");
}
