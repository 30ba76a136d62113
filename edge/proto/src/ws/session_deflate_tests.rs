//! permessage-deflate in the session: RSV1 where it may stand, inflating under the message cap,
//! text validated once inflated, compressed frames out.

use super::*;
use crate::ws::deflate::DeflateParams;
use proptest::prelude::*;

const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

/// A masked client frame: `b0` carries FIN, RSV and the opcode.
fn frame_bytes(b0: u8, payload: &[u8]) -> Vec<u8> {
    super::tests::raw_frame(b0, payload, Some(MASK))
}

fn params(peer_resets: bool, own_resets: bool) -> DeflateParams {
    DeflateParams {
        peer_no_context_takeover: peer_resets,
        own_no_context_takeover: own_resets,
        own_window_bits: 15,
        level: 6,
    }
}

fn server(peer_resets: bool) -> Session {
    Session::new(SessionLimits {
        max_frame_bytes: 1 << 20,
        max_message_bytes: 1 << 20,
    })
    .with_deflate(params(peer_resets, true))
}

fn deflated(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    MessageDeflater::new(6, 15, true).compress_message(msg, &mut out);
    out
}

/// Everything `bytes` makes the session do, however many receive calls its inflating takes.
fn feed(s: &mut Session, bytes: &[u8]) -> Vec<Event> {
    let mut buf = BytesMut::from(bytes);
    s.receive(&mut buf);
    while s.inflate_paused() {
        s.receive(&mut buf);
    }
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn text_event(t: &str) -> Event {
    Event::Message(Message {
        kind: MessageKind::Text,
        payload: Payload::Single(Bytes::copy_from_slice(t.as_bytes())),
    })
}

fn failed(ev: &[Event]) -> Option<(u16, &'static str)> {
    ev.iter().find_map(|e| match e {
        Event::Failed { code, reason } => Some((*code, reason.as_str())),
        _ => None,
    })
}

#[test]
fn a_compressed_text_message_is_inflated() {
    let mut s = server(true);
    // RFC 7692 §7.2.3.1 "Hello", RSV1 + FIN + text.
    let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    assert_eq!(
        feed(&mut s, &frame_bytes(0xc1, &hello)),
        [text_event("Hello")]
    );
    assert_eq!(s.messages_received(), 1);
    let counted = s.take_inflated();
    let counts = (
        counted.messages,
        counted.compressed_bytes,
        counted.inflated_bytes,
    );
    assert_eq!(counts, (1, 7, 5));
    assert_eq!(s.take_inflated(), Default::default());
    // No inflater is kept: the client resets after every message.
    assert_eq!(s.buffered_bytes(), 0);
    // Uncompressed messages still pass, RSV1 clear.
    assert_eq!(
        feed(&mut s, &frame_bytes(0x81, b"plain")),
        [text_event("plain")]
    );
}

#[test]
fn a_fragmented_compressed_message_with_a_ping_between() {
    let mut s = server(true);
    let msg = "fragmented and compressed ".repeat(50);
    let z = deflated(msg.as_bytes());
    let (a, rest) = z.split_at(z.len() / 3);
    let (b, c) = rest.split_at(rest.len() / 2);
    let mut bytes = frame_bytes(0x41, a); // RSV1, text, not final
    bytes.extend(frame_bytes(0x00, b));
    bytes.extend(frame_bytes(0x89, b"ping"));
    bytes.extend(frame_bytes(0x80, c));
    let ev = feed(&mut s, &bytes);
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert!(matches!(&ev[0], Event::Ping(p) if p == "ping"));
    assert_eq!(ev[1], text_event(&msg));
}

#[test]
fn rsv1_stands_only_on_a_data_messages_first_frame() {
    let z = deflated(b"x");
    // On a continuation.
    let mut s = server(true);
    let mut bytes = frame_bytes(0x01, b"a");
    bytes.extend(frame_bytes(0xc0, &z));
    assert_eq!(failed(&feed(&mut s, &bytes)), Some((1002, "reserved_bits")));
    // On a control frame.
    let mut s = server(true);
    assert_eq!(
        failed(&feed(&mut s, &frame_bytes(0xc9, b""))),
        Some((1002, "reserved_bits"))
    );
    // RSV2 and RSV3 stay reserved.
    let mut s = server(true);
    assert_eq!(
        failed(&feed(&mut s, &frame_bytes(0xe1, &z))),
        Some((1002, "reserved_bits"))
    );
    // Without the extension.
    let mut s = Session::new(SessionLimits::default());
    assert_eq!(
        failed(&feed(&mut s, &frame_bytes(0xc1, &z))),
        Some((1002, "reserved_bits"))
    );
}

#[test]
fn a_decompression_bomb_gets_1009_before_the_memory_is_spent() {
    let mut s = server(true);
    let bomb = deflated(&vec![b'a'; 64 << 20]);
    assert!(bomb.len() < 1 << 20);
    let ev = feed(&mut s, &frame_bytes(0xc1, &bomb));
    assert_eq!(failed(&ev), Some((1009, "inflated_too_large")));
    assert_eq!(s.buffered_bytes(), 0, "the partial inflation is gone");
}

#[test]
fn inflated_text_is_validated_and_bad_data_refused() {
    let mut s = server(true);
    let ev = feed(&mut s, &frame_bytes(0xc1, &deflated(b"ok \xff\xfe")));
    assert_eq!(failed(&ev), Some((1007, "invalid_utf8")));
    // A truncated character at the end of the message.
    let mut s = server(true);
    let ev = feed(
        &mut s,
        &frame_bytes(0xc1, &deflated("é".as_bytes()[..1].as_ref())),
    );
    assert_eq!(failed(&ev), Some((1007, "invalid_utf8")));
    // Binary is not validated.
    let mut s = server(true);
    let ev = feed(&mut s, &frame_bytes(0xc2, &deflated(b"\xff")));
    assert!(matches!(&ev[..], [Event::Message(m)] if m.payload.to_vec() == b"\xff"));
    // Not DEFLATE at all (a reserved block type).
    let mut s = server(true);
    let ev = feed(&mut s, &frame_bytes(0xc2, &[0xff, 0xff]));
    assert_eq!(failed(&ev), Some((1007, "bad_compressed_data")));
}

#[test]
fn a_client_that_keeps_its_context_keeps_our_inflater() {
    let mut s = server(false);
    let mut client = MessageDeflater::new(6, 15, false);
    let msg = b"{\"op\":\"publish\",\"topic\":\"trades.BTC-USD\",\"data\":1}";
    for _ in 0..3 {
        let mut z = Vec::new();
        client.compress_message(msg, &mut z);
        let ev = feed(&mut s, &frame_bytes(0xc1, &z));
        assert_eq!(ev, [text_event(std::str::from_utf8(msg).unwrap())]);
        assert_eq!(s.buffered_bytes(), INFLATER_BYTES);
    }
}

#[test]
fn sent_messages_are_compressed_and_read_back_by_a_client_session() {
    let mut s = server(true);
    let mut shared = MessageDeflater::new(6, 15, true);
    let msg = Payload::Fragmented(vec![
        Bytes::from_static(b"market data "),
        Bytes::from_static(b"market data market data"),
    ]);
    s.send_deflated(MessageKind::Text, &msg, &mut shared);
    s.send(
        MessageKind::Binary,
        Payload::Single(Bytes::from_static(b"raw")),
    );
    let frames: Vec<OutFrame> = std::iter::from_fn(|| s.poll_transmit()).collect();
    assert_eq!(frames[0].header()[0], 0xc1, "FIN + RSV1 + text");
    assert!(frames[0].payload().len() < msg.len());
    assert_eq!(frames[1].header()[0], 0x82, "uncompressed: RSV1 clear");
    let mut wire = Vec::new();
    for f in &frames {
        f.append_to(&mut wire);
    }
    let mut client = Session::client(
        SessionLimits::default(),
        crate::ws::mask_keys::test_source(1),
    )
    .with_deflate(params(true, true));
    client.receive(&mut BytesMut::from(&wire[..]));
    let ev: Vec<Event> = std::iter::from_fn(|| client.poll_event()).collect();
    assert_eq!(ev[0], text_event("market data market data market data"));
    assert!(matches!(&ev[1], Event::Message(m) if m.payload.to_vec() == b"raw"));
}

#[test]
fn a_server_that_keeps_its_context_compresses_repeats_smaller() {
    let mut s = Session::new(SessionLimits::default()).with_deflate(params(true, false));
    let mut shared = MessageDeflater::new(6, 15, true);
    let msg = Payload::Single(Bytes::from_static(
        b"{\"price\":\"64123.50\",\"qty\":\"0.25\"}",
    ));
    assert_eq!(
        s.buffered_bytes(),
        0,
        "no compressor before the first message"
    );
    s.send_deflated(MessageKind::Text, &msg, &mut shared);
    s.send_deflated(MessageKind::Text, &msg, &mut shared);
    let f: Vec<OutFrame> = std::iter::from_fn(|| s.poll_transmit()).collect();
    assert!(f[1].payload().len() < f[0].payload().len() / 2);
    // The kept compressor stays charged to the buffer budget while the connection idles.
    assert_eq!(s.buffered_bytes(), deflater_bytes(15));
    assert_eq!(deflater_bytes(15), 262 << 10);
}

#[test]
fn a_server_that_resets_its_context_holds_no_compressor() {
    let mut s = server(true);
    let mut shared = MessageDeflater::new(6, 15, true);
    let msg = Payload::Single(Bytes::from(vec![b'a'; 4096]));
    s.send_deflated(MessageKind::Binary, &msg, &mut shared);
    assert_eq!(s.buffered_bytes(), 0);
}

proptest! {
    /// Compressed messages, fragmented anywhere and fed in arbitrary pieces, arrive whole.
    #[test]
    fn compressed_messages_arrive_whole_however_split(
        msgs in proptest::collection::vec(("[a-zé ]{0,300}", 1usize..5), 1..6),
        piece in 1usize..64,
        keep in any::<bool>(),
    ) {
        let mut s = server(!keep);
        let mut client = MessageDeflater::new(6, 15, !keep);
        let mut wire = Vec::new();
        for (m, parts) in &msgs {
            let mut z = Vec::new();
            client.compress_message(m.as_bytes(), &mut z);
            let step = z.len().div_ceil(*parts).max(1);
            let chunks: Vec<&[u8]> = z.chunks(step).collect();
            let chunks = if chunks.is_empty() { vec![&z[..]] } else { chunks };
            for (i, c) in chunks.iter().enumerate() {
                let fin = if i + 1 == chunks.len() { 0x80 } else { 0 };
                let first = if i == 0 { 0x41 } else { 0 };
                wire.extend(frame_bytes(fin | first, c));
            }
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for p in wire.chunks(piece) {
            buf.extend_from_slice(p);
            s.receive(&mut buf);
            got.extend(std::iter::from_fn(|| s.poll_event()));
        }
        let want: Vec<Event> = msgs.iter().map(|(m, _)| text_event(m)).collect();
        prop_assert_eq!(got, want);
    }
}

#[test]
fn an_incompressible_message_goes_out_as_it_is() {
    let mut s = server(true);
    let mut shared = MessageDeflater::new(6, 15, true);
    // A xorshift stream: nothing for deflate to find.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let sent = s.send_deflated(
        MessageKind::Binary,
        &Payload::Single(Bytes::from(noise.clone())),
        &mut shared,
    );
    assert_eq!(sent, Deflated::SentPlain);
    let f = s.poll_transmit().unwrap();
    assert_eq!(f.header()[0], 0x82, "RSV1 clear");
    assert_eq!(f.payload().to_vec(), noise);
    // A session keeping its own context sends it compressed all the same.
    let mut keep = Session::new(SessionLimits::default()).with_deflate(params(true, false));
    let sent = keep.send_deflated(
        MessageKind::Binary,
        &Payload::Single(Bytes::from(noise)),
        &mut shared,
    );
    assert!(
        matches!(sent, Deflated::SentCompressed(n) if n > 0),
        "{sent:?}"
    );
}

/// A session whose messages may be 16 MiB: more than one receive call inflates.
fn roomy_server() -> Session {
    Session::new(SessionLimits {
        max_frame_bytes: 16 << 20,
        max_message_bytes: 16 << 20,
    })
    .with_deflate(params(true, true))
}

#[test]
fn one_receive_call_inflates_a_bounded_slice_and_the_next_goes_on() {
    let mut s = roomy_server();
    let big = vec![0u8; 4 << 20];
    let z = deflated(&big);
    assert!(z.len() < 8 << 10, "{} compressed bytes", z.len());
    let mut bytes = frame_bytes(0xc2, &z);
    // A ping and a plain message behind it keep their place.
    bytes.extend(frame_bytes(0x89, b"after"));
    bytes.extend(frame_bytes(0x81, b"last"));
    let mut buf = BytesMut::from(&bytes[..]);
    let mut calls = 0;
    let mut events = Vec::new();
    loop {
        calls += 1;
        s.receive(&mut buf);
        events.extend(std::iter::from_fn(|| s.poll_event()));
        if !s.inflate_paused() {
            break;
        }
        assert!(
            events.is_empty(),
            "nothing overtakes the paused frame: {events:?}"
        );
        // Held meanwhile: the inflater, the message so far, the compressed rest.
        assert!(s.buffered_bytes() >= INFLATER_BYTES + calls * INFLATE_PER_RECEIVE);
        assert!(calls < 100, "no progress");
    }
    let slices = (4 << 20) / INFLATE_PER_RECEIVE;
    assert!((slices..=slices + 1).contains(&calls), "{calls} calls");
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(matches!(&events[0], Event::Message(m) if m.payload.to_vec() == big));
    assert!(matches!(&events[1], Event::Ping(p) if p == "after"));
    assert_eq!(events[2], text_event("last"));
    assert_eq!(s.buffered_bytes(), 0);
    let counted = s.take_inflated();
    assert_eq!(
        (
            counted.messages,
            counted.compressed_bytes,
            counted.inflated_bytes
        ),
        (1, z.len() as u64, 4 << 20)
    );
}

#[test]
fn a_bomb_paused_between_slices_still_gets_1009_and_lets_go_of_everything() {
    let mut s = Session::new(SessionLimits {
        max_frame_bytes: 16 << 20,
        max_message_bytes: 1 << 20,
    })
    .with_deflate(params(true, true));
    let bomb = deflated(&vec![b'a'; 64 << 20]);
    let mut buf = BytesMut::from(&frame_bytes(0xc1, &bomb)[..]);
    s.receive(&mut buf);
    assert!(s.inflate_paused());
    assert_eq!(s.poll_event(), None);
    let mut ev = Vec::new();
    for _ in 0..10 {
        s.receive(&mut buf);
        ev.extend(std::iter::from_fn(|| s.poll_event()));
        if !s.inflate_paused() {
            break;
        }
    }
    assert_eq!(failed(&ev), Some((1009, "inflated_too_large")));
    assert!(!s.inflate_paused());
    assert_eq!(s.buffered_bytes(), 0);
}

#[test]
fn a_compressed_text_message_split_across_slices_is_validated_whole() {
    // A multi-byte character may straddle two slices: the validator carries it over, and a
    // bad byte in a later slice still fails 1007.
    let good = "€uro ".repeat(200_000);
    let mut s = roomy_server();
    assert_eq!(
        feed(&mut s, &frame_bytes(0xc1, &deflated(good.as_bytes()))),
        [text_event(&good)]
    );
    let mut bad = good.into_bytes();
    let at = bad.len() - 10;
    bad[at] = 0xff;
    let mut s = roomy_server();
    assert_eq!(
        failed(&feed(&mut s, &frame_bytes(0xc1, &deflated(&bad)))),
        Some((1007, "invalid_utf8"))
    );
}
