use proptest::prelude::*;

use super::*;
use crate::ws::extensions::parse_extension_list;

fn agree(header: &str, policy: ContextTakeover) -> Result<Option<String>, DeflateOfferError> {
    let offers = parse_extension_list([header]).expect("a well-formed list");
    Ok(negotiate(&offers, policy)?.map(|a| a.response_value()))
}

#[test]
fn answers_state_exactly_what_was_agreed() {
    use ContextTakeover::{Both, Client, None as Neither};
    let pd = "permessage-deflate";
    for (offer, policy, answer) in [
        // What Chromium and Firefox offer.
        (
            "permessage-deflate; client_max_window_bits",
            Neither,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ),
        (
            pd,
            Client,
            "permessage-deflate; server_no_context_takeover",
        ),
        (pd, Both, pd),
        (
            "permessage-deflate; server_no_context_takeover",
            Both,
            "permessage-deflate; server_no_context_takeover",
        ),
        (
            "permessage-deflate; client_no_context_takeover",
            Both,
            "permessage-deflate; client_no_context_takeover",
        ),
        (
            "permessage-deflate; server_max_window_bits=10",
            Both,
            "permessage-deflate; server_max_window_bits=10",
        ),
        (
            "PerMessage-Deflate; Server_Max_Window_Bits=\"9\"; client_max_window_bits=12",
            Neither,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9",
        ),
        // A window of 8 cannot be honoured: declined, the next offer taken.
        (
            "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=9",
            Both,
            "permessage-deflate; server_max_window_bits=9",
        ),
        // Other extensions are passed over.
        (
            "x-webkit-deflate-frame, permessage-deflate",
            Both,
            pd,
        ),
    ] {
        assert_eq!(
            agree(offer, policy).unwrap().as_deref(),
            Some(answer),
            "{offer} under {policy:?}"
        );
    }
    assert_eq!(
        agree("permessage-deflate; server_max_window_bits=8", Both),
        Ok(None)
    );
    assert_eq!(agree("x-foo; a=1", Both), Ok(None));
    assert_eq!(negotiate(&[], Both), Ok(None));
}

#[test]
fn a_malformed_offer_is_refused_with_its_reason() {
    for (offer, reason) in [
        ("permessage-deflate; foo", "deflate_unknown_parameter"),
        (
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "deflate_repeated_parameter",
        ),
        (
            "permessage-deflate; client_max_window_bits; client_max_window_bits=9",
            "deflate_repeated_parameter",
        ),
        (
            "permessage-deflate; server_no_context_takeover=1",
            "deflate_unexpected_value",
        ),
        (
            "permessage-deflate; client_no_context_takeover=\"x\"",
            "deflate_unexpected_value",
        ),
        (
            "permessage-deflate; server_max_window_bits",
            "deflate_missing_value",
        ),
        (
            "permessage-deflate; server_max_window_bits=7",
            "deflate_bad_window_bits",
        ),
        (
            "permessage-deflate; server_max_window_bits=16",
            "deflate_bad_window_bits",
        ),
        (
            "permessage-deflate; server_max_window_bits=010",
            "deflate_bad_window_bits",
        ),
        (
            "permessage-deflate; client_max_window_bits=+9",
            "deflate_bad_window_bits",
        ),
        (
            "permessage-deflate; client_max_window_bits=abc",
            "deflate_bad_window_bits",
        ),
        // Malformed before an acceptable one: refused; after the accepted one: not read.
        (
            "permessage-deflate; x=1, permessage-deflate",
            "deflate_unknown_parameter",
        ),
    ] {
        let err = agree(offer, ContextTakeover::None).unwrap_err();
        assert_eq!(err.reason(), reason, "{offer}: {err}");
    }
    assert!(agree(
        "permessage-deflate, permessage-deflate; x=1",
        ContextTakeover::None
    )
    .is_ok());
}

fn deflate(d: &mut MessageDeflater, msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    d.compress_message(msg, &mut out);
    out
}

fn inflate_whole(
    i: &mut MessageInflater,
    payload: &[u8],
    max: usize,
) -> Result<Vec<u8>, InflateError> {
    i.inflate(payload, max)?;
    i.finish_message(max)?;
    Ok(i.take_message())
}

#[test]
fn an_empty_message_is_one_zero_byte() {
    let mut d = MessageDeflater::new(6, 15, true);
    assert_eq!(deflate(&mut d, b""), [0x00]);
    let mut i = MessageInflater::new(true);
    assert_eq!(inflate_whole(&mut i, &[0x00], 10).unwrap(), b"");
    assert_eq!(inflate_whole(&mut i, &[], 10).unwrap(), b"");
}

#[test]
fn an_empty_message_with_context_kept_is_one_zero_byte_too() {
    let mut d = MessageDeflater::new(6, 15, false);
    let mut i = MessageInflater::new(false);
    for msg in [&b"abc"[..], b"", b"", b"abcabc"] {
        let z = deflate(&mut d, msg);
        assert!(!z.is_empty());
        assert_eq!(inflate_whole(&mut i, &z, 100).unwrap(), msg);
    }
}

#[test]
fn an_empty_payload_is_an_empty_message_even_with_context_kept() {
    // A sender whose compressor keeps its context has nothing to emit for an empty message
    // right after a sync flush; some send the empty payload as it is.
    let mut d = MessageDeflater::new(6, 15, false);
    let mut i = MessageInflater::new(false);
    assert_eq!(
        inflate_whole(&mut i, &deflate(&mut d, b"abc"), 100).unwrap(),
        b"abc"
    );
    assert_eq!(inflate_whole(&mut i, &[], 100).unwrap(), b"");
    assert_eq!(
        inflate_whole(&mut i, &deflate(&mut d, b"abcabc"), 100).unwrap(),
        b"abcabc"
    );
}

#[test]
fn tiny_pieces_cost_no_zeroing_each() {
    // A message fed a byte at a time zeroes its buffer once, as it grows, not per piece.
    let mut d = MessageDeflater::new(6, 15, true);
    let text = "a tiny-piece message ".repeat(10);
    let z = deflate(&mut d, text.as_bytes());
    let mut i = MessageInflater::new(true);
    for b in z.chunks(1) {
        i.inflate(b, 1 << 20).unwrap();
    }
    i.finish_message(1 << 20).unwrap();
    assert!(i.held_bytes() <= 2048, "{}", i.held_bytes());
    assert_eq!(i.take_message(), text.as_bytes());
}

#[test]
fn rfc_7692_examples() {
    // §7.2.3.1: "Hello" in one compressed message, and in a stored block (§7.2.3.3).
    let mut i = MessageInflater::new(true);
    let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    assert_eq!(inflate_whole(&mut i, &hello, 100).unwrap(), b"Hello");
    let stored = [
        0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
    ];
    assert_eq!(inflate_whole(&mut i, &stored, 100).unwrap(), b"Hello");
    // §7.2.3.2: with context takeover, the second "Hello" refers back into the first.
    let mut keep = MessageInflater::new(false);
    assert_eq!(inflate_whole(&mut keep, &hello, 100).unwrap(), b"Hello");
    let again = [0xf2, 0x00, 0x11, 0x00, 0x00];
    assert_eq!(inflate_whole(&mut keep, &again, 100).unwrap(), b"Hello");
    // Without the first message's context the back-reference is refused, not guessed.
    assert_eq!(
        inflate_whole(&mut i, &again, 100),
        Err(InflateError::Corrupt)
    );
    // §7.2.3.4: a final block (BFINAL) ends the sender's stream; the next message starts anew.
    let bfinal = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    assert_eq!(inflate_whole(&mut keep, &bfinal, 100).unwrap(), b"Hello");
    assert_eq!(inflate_whole(&mut keep, &hello, 100).unwrap(), b"Hello");
}

#[test]
fn a_decompression_bomb_is_stopped_within_one_step_of_the_cap() {
    let mut d = MessageDeflater::new(9, 15, true);
    let bomb = deflate(&mut d, &vec![0u8; 64 << 20]);
    assert!(bomb.len() < 128 << 10, "{} bytes", bomb.len());
    let cap = 1 << 20;
    let mut i = MessageInflater::new(true);
    assert_eq!(i.inflate(&bomb, cap), Err(InflateError::TooBig));
    assert_eq!(i.held_bytes(), 0, "the partial message is gone");
    // Fed in pieces: never more than the cap (plus the one byte that proves it passed) is
    // written, and the buffer never holds more than twice that.
    let mut i = MessageInflater::new(true);
    let mut refused = None;
    for piece in bomb.chunks(100) {
        match i.inflate(piece, cap) {
            Ok(_) => {
                assert!(i.message().len() <= cap);
                assert!(i.held_bytes() <= 2 * (cap + 1), "{}", i.held_bytes());
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    assert_eq!(refused, Some(InflateError::TooBig));
    // Exactly at the cap is allowed.
    let mut i = MessageInflater::new(true);
    let exact = deflate(&mut d, &vec![7u8; cap]);
    assert_eq!(inflate_whole(&mut i, &exact, cap).unwrap().len(), cap);
    assert_eq!(
        inflate_whole(&mut i, &exact, cap - 1),
        Err(InflateError::TooBig)
    );
    // The inflater is usable again after a refusal.
    assert_eq!(
        inflate_whole(&mut i, &deflate(&mut d, b"ok"), cap).unwrap(),
        b"ok"
    );
}

#[test]
fn garbage_is_corrupt_never_a_panic() {
    let mut i = MessageInflater::new(true);
    // BTYPE 11 is reserved.
    assert_eq!(
        inflate_whole(&mut i, &[0xff, 0xff, 0xff], 100),
        Err(InflateError::Corrupt)
    );
    // A stored block whose length and its complement disagree.
    assert_eq!(
        inflate_whole(&mut i, &[0x00, 0x05, 0x00, 0x00, 0x00], 100),
        Err(InflateError::Corrupt)
    );
    // Still usable after a refusal.
    assert_eq!(
        inflate_whole(&mut i, &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100).unwrap(),
        b"Hello"
    );
}

#[test]
fn context_takeover_shrinks_repeats_and_reset_forgets_them() {
    let msg = b"{\"topic\":\"trades.BTC-USD\",\"price\":\"64123.50\",\"qty\":\"0.25\"}";
    let mut keep = MessageDeflater::new(6, 15, false);
    let first = deflate(&mut keep, msg);
    let second = deflate(&mut keep, msg);
    assert!(
        second.len() < first.len() / 2,
        "{} vs {}",
        second.len(),
        first.len()
    );
    let mut i = MessageInflater::new(false);
    assert_eq!(inflate_whole(&mut i, &first, 1000).unwrap(), msg);
    assert_eq!(inflate_whole(&mut i, &second, 1000).unwrap(), msg);
    let mut fresh = MessageDeflater::new(6, 15, true);
    assert_eq!(deflate(&mut fresh, msg), first);
    assert_eq!(
        deflate(&mut fresh, msg),
        first,
        "every message its own stream"
    );
}

#[test]
fn an_independent_implementation_reads_ours_and_we_read_its() {
    let text = "Lorem ipsum dolor sit amet, ".repeat(400);
    for bits in 9..=15 {
        let mut d = MessageDeflater::new(6, bits, true);
        let mut payload = deflate(&mut d, text.as_bytes());
        // The sync tail, then an empty final stored block: a complete DEFLATE stream.
        payload.extend_from_slice(&[0, 0, 0xff, 0xff, 0x01, 0x00, 0x00, 0xff, 0xff]);
        let back = miniz_oxide::inflate::decompress_to_vec(&payload).expect("a complete stream");
        assert!(
            back == text.as_bytes(),
            "window {bits}: {} bytes back of {}",
            back.len(),
            text.len()
        );
    }
    let theirs = miniz_oxide::deflate::compress_to_vec(text.as_bytes(), 6);
    let mut i = MessageInflater::new(false);
    assert_eq!(
        inflate_whole(&mut i, &theirs, 1 << 20).unwrap(),
        text.as_bytes()
    );
    assert_eq!(
        inflate_whole(&mut i, &theirs, 1 << 20).unwrap(),
        text.as_bytes()
    );
}

proptest! {
    #[test]
    fn messages_round_trip_whatever_the_pieces(
        msgs in proptest::collection::vec(proptest::collection::vec(0u8..8, 0..3000), 1..5),
        level in 0u32..=9,
        bits in 9u8..=15,
        keep in any::<bool>(),
        piece in 1usize..200,
    ) {
        let mut d = MessageDeflater::new(level, bits, !keep);
        let mut i = MessageInflater::new(!keep);
        for m in &msgs {
            let payload = deflate(&mut d, m);
            for p in payload.chunks(piece) {
                i.inflate(p, m.len()).unwrap();
            }
            i.finish_message(m.len()).unwrap();
            prop_assert_eq!(&i.take_message(), m);
        }
    }

    #[test]
    fn any_payload_inflates_or_is_refused_within_bounds(
        payload in proptest::collection::vec(any::<u8>(), 0..512),
        cap in 0usize..4096,
    ) {
        let mut i = MessageInflater::new(true);
        let r = i.inflate(&payload, cap).and_then(|_| i.finish_message(cap));
        prop_assert!(i.held_bytes() <= 2 * (cap + 1).max(1024));
        if r.is_ok() {
            prop_assert!(i.take_message().len() <= cap);
        }
    }
}
