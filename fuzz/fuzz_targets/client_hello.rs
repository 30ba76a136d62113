//! The ClientHello sniffer (`wssedge_proto::tls_hello`) on arbitrary first bytes of a
//! connection, delivered in chunk sizes taken from the input, as a dribbling client would.
//! Must never panic; a call that needs more bytes must say so until the bytes come; the
//! answer must not depend on how the bytes were split; a server name read is a lower-case DNS name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wssedge_proto::tls_hello::{parse_client_hello, HelloSniffer, Sniffed};

fuzz_target!(|data: &[u8]| {
    let Some((&step, wire)) = data.split_first() else {
        return;
    };
    let step = usize::from(step % 32) + 1;

    let whole = HelloSniffer::new().sniff(wire);
    let mut dribbled = HelloSniffer::new();
    let mut end = 0;
    let split = loop {
        end = (end + step).min(wire.len());
        let seen = dribbled.sniff(&wire[..end]);
        if seen != Ok(Sniffed::NeedMore) || end == wire.len() {
            break seen;
        }
    };
    assert_eq!(whole, split, "the answer depends on how the bytes arrived");
    if let Ok(Sniffed::Hello(info)) = &whole {
        if let Some(sni) = &info.sni {
            assert!(
                !sni.is_empty() && !sni.bytes().any(|b| b.is_ascii_uppercase()),
                "{sni}"
            );
        }
    }
    // The body parser alone, on the same bytes.
    if let Some(info) = parse_client_hello(wire) {
        if let Some(sni) = &info.sni {
            assert!(!sni.bytes().any(|b| b.is_ascii_uppercase()), "{sni}");
        }
    }
});
