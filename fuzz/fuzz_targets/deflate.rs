//! permessage-deflate on arbitrary bytes: the offer negotiation and the inflate path must never
//! panic; the inflated size never passes the cap by more than one step; whatever inflates
//! compresses and inflates back to itself; inflating in budgeted slices (as a session does
//! across receive calls) ends exactly as inflating at once.
//!
//! Input: byte 0 picks the cap, the piece size and context takeover; up to the first `\n` is a
//! `Sec-WebSocket-Extensions` value; the rest is a compressed message's payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wssedge_proto::ws::deflate::{
    negotiate, ContextTakeover, InflateError, MessageDeflater, MessageInflater,
};
use wssedge_proto::ws::extensions::parse_extension_list;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (header, payload) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&rest[..0], rest),
    };
    if let Ok(header) = std::str::from_utf8(header) {
        if let Ok(offers) = parse_extension_list([header]) {
            for policy in [
                ContextTakeover::None,
                ContextTakeover::Client,
                ContextTakeover::Both,
            ] {
                match negotiate(&offers, policy) {
                    Ok(Some(a)) => {
                        assert!((9..=15).contains(&a.server_window_bits));
                        assert!(a.response_value().starts_with("permessage-deflate"));
                    }
                    Ok(None) => {}
                    Err(e) => assert!(e.reason().starts_with("deflate_")),
                }
            }
        }
    }
    let cap = [0usize, 1, 100, 4096, 1 << 20][usize::from(mode & 7) % 5];
    let piece = 1 + usize::from(mode >> 4) * 17;
    let keep = mode & 8 != 0;
    let mut inflater = MessageInflater::new(!keep);
    let mut result = Ok(0);
    for p in payload.chunks(piece) {
        result = inflater.inflate(p, cap);
        if result.is_err() {
            break;
        }
        assert!(inflater.message().len() <= cap);
        assert!(inflater.held_bytes() <= 2 * (cap + 1).max(1024));
    }
    if result.is_ok() {
        result = inflater.finish_message(cap);
    }
    // The same payload in slices of at most `budget` output bytes each, resumed from where
    // each stopped: the same outcome and the same message.
    let budget = 1 + usize::from(mode >> 3) * 97;
    let mut sliced = MessageInflater::new(!keep);
    let mut sliced_result = Ok(());
    'pieces: for p in payload.chunks(piece) {
        let mut rest = p;
        loop {
            match sliced.inflate_some(rest, cap, budget) {
                Ok(progress) if progress.finished => break,
                Ok(progress) => rest = &rest[progress.consumed..],
                Err(e) => {
                    sliced_result = Err(e);
                    break 'pieces;
                }
            }
        }
    }
    if sliced_result.is_ok() {
        sliced_result = sliced.finish_message(cap).map(drop);
    }
    match (&result, &sliced_result) {
        (Ok(_), Ok(())) => assert_eq!(sliced.message(), inflater.message()),
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("at once {a:?}, in slices {b:?}"),
    }
    match result {
        Ok(_) => {
            let out = inflater.take_message();
            assert!(out.len() <= cap);
            let mut deflater = MessageDeflater::new(u32::from(mode % 10), 9 + (mode % 7), true);
            let mut again = Vec::new();
            deflater.compress_message(&out, &mut again);
            let mut fresh = MessageInflater::new(true);
            fresh.inflate(&again, cap).unwrap();
            fresh.finish_message(cap).unwrap();
            assert_eq!(fresh.take_message(), out);
        }
        Err(InflateError::TooBig) => assert_eq!(inflater.held_bytes(), 0),
        Err(InflateError::Corrupt) => {}
    }
});
