//! `parse_upgrade` on arbitrary bytes: must never panic; a success is self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wssedge_proto::ws::{parse_upgrade, write_response_101, HandshakeLimits};

fuzz_target!(|data: &[u8]| {
    let limits = HandshakeLimits {
        max_request_bytes: 512,
        max_headers: 16,
    };
    match parse_upgrade(data, &limits) {
        Ok(Some((req, consumed))) => {
            assert!(consumed <= data.len() && consumed <= limits.max_request_bytes);
            let mut out = Vec::new();
            write_response_101(&req, req.protocols.first().map(String::as_str), None, &mut out);
            assert!(out.ends_with(b"\r\n\r\n"));
        }
        Ok(None) => assert!(data.len() < limits.max_request_bytes),
        Err(e) => {
            assert!(matches!(e.status(), 400 | 405 | 426 | 431));
            assert!(!e.reason().is_empty());
        }
    }
});
