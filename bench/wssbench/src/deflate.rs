//! `--deflate`: permessage-deflate (RFC 7692) from the client's side. The offer, the server's
//! agreement read back from the 101, and the compressor client messages go through. The codec
//! is the edge's own (`wssedge_proto::ws::deflate`), so a disagreement between the two would
//! show up as the edge refusing our frames, not as two codecs silently agreeing.
//!
//! The client never keeps a deflate context between messages, whatever was agreed (a sender
//! may always start each message afresh, §7.2.1): one compressor per thread and window then
//! serves every connection, as in the edge, and the generator's memory does not grow with
//! its connections.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use wssedge_proto::ws::deflate::MessageDeflater;
use wssedge_proto::ws::extensions::parse_extension_list;

/// The request header line of the offer: any server window, and the client's window left to
/// the server (`client_max_window_bits` without a value).
pub const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

/// zlib level of what the client sends (the edge's default level too).
const CLIENT_LEVEL: u32 = 3;

/// What the server agreed to, from the client's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// The server starts every message afresh: our inflater may forget between messages.
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
    /// The largest window we may deflate with.
    pub client_window_bits: u8,
    /// The window the server deflates with (15 unless it stated one).
    pub server_window_bits: u8,
}

fn window(name: &str, v: Option<&str>) -> Result<u8, String> {
    // §7.1.2: 8..=15, decimal, no leading zero; a response must give the value.
    match v.map(|v| (v, v.parse::<u8>())) {
        Some((v, Ok(n @ 8..=15))) if !v.starts_with('0') => Ok(n),
        _ => Err(format!("deflate: bad {name} in the 101")),
    }
}

/// The agreement in the 101's `Sec-WebSocket-Extensions` values: `Ok(None)` when none was
/// given. Only permessage-deflate was offered, once, so anything else in the answer (another
/// extension, two agreements, a parameter the RFC does not define or gives twice) fails the
/// connection (§7.1: the client must then fail it).
pub fn parse_agreement(values: &[&str], offered: bool) -> Result<Option<Agreement>, String> {
    let exts = parse_extension_list(values.iter().copied())
        .map_err(|e| format!("deflate: 101 extensions: {e}"))?;
    let Some(first) = exts.first() else {
        return Ok(None);
    };
    if !offered {
        return Err(format!(
            "deflate: the 101 agreed to {:?}, never offered",
            first.name
        ));
    }
    if exts.len() > 1 || !first.name.eq_ignore_ascii_case("permessage-deflate") {
        return Err("deflate: the 101 agreed to more than the one extension offered".into());
    }
    let mut a = Agreement {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        client_window_bits: 15,
        server_window_bits: 15,
    };
    let mut seen: Vec<String> = Vec::new();
    for (name, value) in &first.params {
        let n = name.to_ascii_lowercase();
        if seen.contains(&n) {
            return Err(format!("deflate: {n} twice in the 101"));
        }
        match (n.as_str(), value.as_deref()) {
            ("server_no_context_takeover", None) => a.server_no_context_takeover = true,
            ("client_no_context_takeover", None) => a.client_no_context_takeover = true,
            ("server_max_window_bits", v) => a.server_window_bits = window(&n, v)?,
            ("client_max_window_bits", v) => a.client_window_bits = window(&n, v)?,
            _ => return Err(format!("deflate: unexpected {n} in the 101")),
        }
        seen.push(n);
    }
    // zlib cannot deflate a raw stream with a 256-byte window; a server asking for it gets
    // uncompressed messages from us (always allowed).
    Ok(Some(a))
}

/// Connections whose upgrade offered deflate: agreed, and answered without it.
pub static NEGOTIATED: AtomicU64 = AtomicU64::new(0);
pub static DECLINED: AtomicU64 = AtomicU64::new(0);
/// The last agreement seen, as the 101 wrote it (for the report).
pub static LAST_ANSWER: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

pub fn count(agreed: Option<&Agreement>, answer: &[&str]) {
    match agreed {
        Some(_) => {
            NEGOTIATED.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut l) = LAST_ANSWER.lock() {
                if l.is_empty() {
                    *l = answer.join(", ");
                }
            }
        }
        None => {
            DECLINED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

thread_local! {
    /// One compressor per window size (9..=15) on this thread.
    static DEFLATERS: RefCell<[Option<MessageDeflater>; 7]> = const { RefCell::new([None, None, None, None, None, None, None]) };
}

/// Appends `message` deflated for a window of `window_bits` (without the sync tail), or
/// returns false when it would not be smaller (it then goes out plain, RSV1 clear) or the
/// window is one zlib cannot write.
pub fn compress(message: &[u8], window_bits: u8, out: &mut Vec<u8>) -> bool {
    if !(9..=15).contains(&window_bits) {
        return false;
    }
    let start = out.len();
    DEFLATERS.with(|d| {
        let mut d = d.borrow_mut();
        let z = d[usize::from(window_bits - 9)]
            .get_or_insert_with(|| MessageDeflater::new(CLIENT_LEVEL, window_bits, true));
        z.compress_message(message, out);
    });
    if out.len() - start >= message.len() {
        out.truncate(start);
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use wssedge_proto::ws::deflate::MessageInflater;

    fn agree(v: &str) -> Result<Option<Agreement>, String> {
        parse_agreement(&[v], true)
    }

    #[test]
    fn agreements_as_servers_write_them() {
        // wssedge with context_takeover = "none"
        let a = agree("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
            .unwrap()
            .unwrap();
        assert!(a.server_no_context_takeover && a.client_no_context_takeover);
        assert_eq!((a.client_window_bits, a.server_window_bits), (15, 15));
        // uWebSockets' SHARED_COMPRESSOR: the same two, other order and case.
        let u = agree("permessage-deflate; Client_No_Context_Takeover; server_no_context_takeover")
            .unwrap()
            .unwrap();
        assert_eq!(u, a);
        let w = agree("permessage-deflate; client_max_window_bits=10; server_max_window_bits=12")
            .unwrap()
            .unwrap();
        assert_eq!((w.client_window_bits, w.server_window_bits), (10, 12));
        assert!(!w.server_no_context_takeover);
        assert_eq!(
            agree("permessage-deflate")
                .unwrap()
                .unwrap()
                .client_window_bits,
            15
        );
        assert_eq!(parse_agreement(&[], true), Ok(None));
        assert_eq!(parse_agreement(&[""], false), Ok(None));
    }

    #[test]
    fn answers_a_client_must_fail() {
        for bad in [
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=09",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; foo",
            "permessage-deflate, permessage-deflate",
            "x-webkit-deflate-frame",
            "permessage-deflate; =",
        ] {
            assert!(agree(bad).is_err(), "{bad}");
        }
        assert!(parse_agreement(&["permessage-deflate"], false).is_err());
    }

    #[test]
    fn compressed_messages_inflate_back_and_incompressible_ones_stay_plain() {
        let m = crate::market::echo_message(512, 3);
        let mut out = vec![0xAA];
        assert!(compress(&m, 15, &mut out));
        assert!(out.len() < m.len());
        let mut inf = MessageInflater::new(true);
        inf.inflate(&out[1..], 1 << 20).unwrap();
        inf.finish_message(1 << 20).unwrap();
        assert_eq!(inf.take_message(), m);
        // The same compressor again: no context carried from the last message.
        let mut again = Vec::new();
        assert!(compress(&m, 15, &mut again));
        assert_eq!(again, out[1..]);
        let mut tiny = Vec::new();
        assert!(!compress(b"x", 15, &mut tiny));
        assert!(tiny.is_empty());
        assert!(!compress(&m, 8, &mut tiny));
    }
}
