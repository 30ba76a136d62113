//! A whole server session, sans-IO: bytes in (an upgrade request, then frames, then a close,
//! as a client would send them in chunks of any size), events and bytes out (a refusal or the
//! 101, then echoed messages, pongs and the close). Must never panic, and:
//! - a refused upgrade gets 400/405/426/431 and nothing else happens;
//! - an accepted path is in normal form: ASCII, no `//`, `;`, `\`, dot segment or encoded
//!   delimiter, and normalising it again changes nothing (so no rule can be stepped around);
//! - nothing follows a terminal event, and a terminal event leaves the session closed;
//! - the server never masks, and never sends more than it was sent (no amplification)
//!   beyond the 101 and one close frame.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wssedge_proto::ws::{
    parse_upgrade, write_response_101, Event, HandshakeLimits, RequestTarget, Session,
    SessionLimits, SessionState,
};

const HANDSHAKE: HandshakeLimits = HandshakeLimits {
    max_request_bytes: 2048,
    max_headers: 32,
};
const LIMITS: SessionLimits = SessionLimits {
    max_frame_bytes: 4096,
    max_message_bytes: 16 * 1024,
};
/// The largest close frame: 2-byte header, 2-byte code, 123 bytes of reason.
const MAX_CLOSE_FRAME: usize = 2 + 125;

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(step) % 97 + 1;
    let mut chunks = stream.chunks(step);

    // The upgrade, as many reads as it takes.
    let mut request = Vec::new();
    let (req, consumed) = loop {
        let Some(chunk) = chunks.next() else {
            return; // the client went quiet mid-request
        };
        request.extend_from_slice(chunk);
        match parse_upgrade(&request, &HANDSHAKE) {
            Ok(Some(done)) => break done,
            Ok(None) => assert!(request.len() < HANDSHAKE.max_request_bytes),
            Err(e) => {
                assert!(matches!(e.status(), 400 | 405 | 426 | 431), "{e:?}");
                return;
            }
        }
    };
    assert!(consumed <= request.len());
    check_normal_form(&req.path);
    let mut response = Vec::new();
    write_response_101(&req, None, None, &mut response);
    assert!(response.starts_with(b"HTTP/1.1 101 ") && response.ends_with(b"\r\n\r\n"));

    // The session: the rest of the request's last read, then every later chunk.
    let mut session = Session::new(LIMITS);
    let mut buf = BytesMut::from(&request[consumed..]);
    let (mut bytes_in, mut bytes_out) = (buf.len(), 0usize);
    let mut terminal = false;
    loop {
        session.receive(&mut buf);
        while let Some(event) = session.poll_event() {
            assert!(!terminal, "an event after the terminal one: {event:?}");
            match event {
                Event::Message(m) => {
                    assert!(m.payload.len() <= LIMITS.max_message_bytes);
                    session.send(m.kind, m.payload); // the echo app
                }
                Event::Ping(p) | Event::Pong(p) => assert!(p.len() <= 125),
                Event::PeerClosed { .. } | Event::Failed { .. } => terminal = true,
            }
        }
        while let Some(frame) = session.poll_transmit() {
            assert_eq!(
                frame.header()[1] & 0x80,
                0,
                "a server frame is never masked"
            );
            bytes_out += frame.wire_len();
        }
        assert!(
            bytes_out <= bytes_in + MAX_CLOSE_FRAME,
            "{bytes_out} bytes out for {bytes_in} in"
        );
        assert!(session.buffered_bytes() <= LIMITS.max_message_bytes);
        let Some(chunk) = chunks.next() else { break };
        if terminal {
            break; // the transport stops reading once the session has ended
        }
        buf.extend_from_slice(chunk);
        bytes_in += chunk.len();
    }
    if terminal {
        assert_eq!(session.state(), SessionState::Closed);
    }
});

fn check_normal_form(target: &RequestTarget) {
    let path = target.path();
    assert!(path.starts_with('/'), "{path}");
    assert!(path.is_ascii(), "{path}");
    assert!(
        !path.contains("//") && !path.contains(';') && !path.contains('\\'),
        "{path}"
    );
    assert!(!path.contains('#'), "{path}");
    for segment in path.split('/') {
        assert!(segment != "." && segment != "..", "a dot segment in {path}");
    }
    let upper = path.to_ascii_uppercase();
    for escape in ["%2F", "%5C", "%3B", "%3F", "%23", "%25", "%2E"] {
        assert!(!upper.contains(escape), "{escape} kept in {path}");
    }
    let again = RequestTarget::parse(target.as_str()).expect("a normal form parses");
    assert!(again == *target, "normalising twice changed {path}");
}
