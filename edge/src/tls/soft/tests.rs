//! Record protection against rustls' own, in memory, for every suite the policy offers.

use std::io::{Read, Write};

use rustls::crypto::aws_lc_rs::cipher_suite;
use rustls::{ExtractedSecrets, SupportedCipherSuite, SupportedProtocolVersion};

use super::protect::{record_len, RecordError, RecordKey};
use crate::tls::handshaken::{handshaken, Handshaken};
use crate::tls::ktls::secrets::tls_version_of;
use crate::tls::ktls::TlsVersion;
use crate::tls::wire::{CONTENT_APPLICATION_DATA, MAX_PLAINTEXT_PER_RECORD};

fn all_suites() -> [(&'static SupportedProtocolVersion, SupportedCipherSuite); 6] {
    use cipher_suite::*;
    let v13 = &rustls::version::TLS13;
    let v12 = &rustls::version::TLS12;
    [
        (v13, TLS13_AES_128_GCM_SHA256),
        (v13, TLS13_AES_256_GCM_SHA384),
        (v13, TLS13_CHACHA20_POLY1305_SHA256),
        (v12, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
        (v12, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
        (v12, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
    ]
}

/// The client, and our two directions' keys taken over from the server session.
fn taken_over(
    version: &'static SupportedProtocolVersion,
    suite: SupportedCipherSuite,
) -> (rustls::ClientConnection, RecordKey, RecordKey, TlsVersion) {
    let Handshaken {
        client,
        server,
        mut pool,
        ..
    } = handshaken(version, suite);
    let tls_version = tls_version_of(version.version).unwrap();
    let conn = server.into_connection(&mut pool).unwrap();
    let (ExtractedSecrets { tx, rx }, _) = conn.dangerous_into_kernel_connection().unwrap();
    let tx = RecordKey::new(tls_version, &tx.1, tx.0).unwrap();
    let rx = RecordKey::new(tls_version, &rx.1, rx.0).unwrap();
    (client, tx, rx, tls_version)
}

fn seal(tx: &mut RecordKey, plaintext: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + tx.prefix_len(), 0);
    out.extend_from_slice(plaintext);
    tx.seal(out, start, CONTENT_APPLICATION_DATA).unwrap();
}

/// Splits `wire` into whole records and opens each; the plaintext of the data records.
fn open_all(rx: &mut RecordKey, wire: &mut [u8]) -> Result<Vec<u8>, RecordError> {
    let mut plain = Vec::new();
    let mut at = 0;
    while at < wire.len() {
        let len = record_len(&wire[at..]).unwrap();
        let record = &mut wire[at..at + len];
        let opened = rx.open(record)?;
        assert_eq!(opened.content_type, CONTENT_APPLICATION_DATA);
        plain.extend_from_slice(&record[opened.start..opened.end]);
        at += len;
    }
    Ok(plain)
}

#[test]
fn every_suite_talks_to_rustls_both_ways() {
    for (version, suite) in all_suites() {
        let name = format!("{:?}", suite.suite());
        let (mut client, mut tx, mut rx, _) = taken_over(version, suite);
        // Ours → rustls: a small record, a full one, then an empty one.
        let big = vec![0xa5u8; MAX_PLAINTEXT_PER_RECORD];
        let mut wire = Vec::new();
        seal(&mut tx, b"hello, subscriber", &mut wire);
        seal(&mut tx, &big, &mut wire);
        seal(&mut tx, b"", &mut wire);
        let mut rest = &wire[..];
        while !rest.is_empty() {
            client.read_tls(&mut rest).unwrap();
            client
                .process_new_packets()
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let mut got = vec![0u8; 17 + big.len()];
        client.reader().read_exact(&mut got).unwrap();
        assert_eq!(&got[..17], b"hello, subscriber", "{name}");
        assert!(got[17..].iter().all(|&b| b == 0xa5), "{name}");
        // rustls → ours: what it cuts into records, in order.
        let sent: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        client.writer().write_all(&sent).unwrap();
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        assert_eq!(open_all(&mut rx, &mut wire).unwrap(), sent, "{name}");
        assert!(rx.seq() > 0, "records were counted");
    }
}

#[test]
fn a_changed_bit_anywhere_in_a_record_is_refused() {
    for (version, suite) in all_suites() {
        let (mut client, _, mut rx, _) = taken_over(version, suite);
        client.writer().write_all(b"order 42: buy 1 BTC").unwrap();
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        assert_eq!(record_len(&wire), Some(wire.len()), "one record");
        // A refused record leaves the sequence number alone, so every forgery meets the same
        // key state; the genuine record opens after all of them. Byte 0 (the type) and the
        // length bytes are covered by the AAD (1.3: the whole header; 1.2: type and length).
        for i in (0..wire.len()).filter(|&i| i != 1 && i != 2) {
            let mut forged = wire.clone();
            forged[i] ^= 0x01;
            let len = record_len(&forged).unwrap();
            if len != forged.len() {
                continue; // a changed length is a framing matter, not the AEAD's
            }
            let result = rx.open(&mut forged);
            assert!(
                result.is_err(),
                "{:?}: byte {i} flipped was accepted",
                suite.suite()
            );
        }
        let opened = rx.open(&mut wire).unwrap();
        assert_eq!(&wire[opened.start..opened.end], b"order 42: buy 1 BTC");
    }
}

#[test]
fn oversized_and_padding_only_records_are_refused() {
    let (_, _, mut rx, _) = taken_over(
        &rustls::version::TLS13,
        cipher_suite::TLS13_AES_128_GCM_SHA256,
    );
    let mut huge = vec![0u8; 5 + MAX_PLAINTEXT_PER_RECORD + 256 + 1];
    huge[..3].copy_from_slice(&[CONTENT_APPLICATION_DATA, 3, 3]);
    let n = (huge.len() - 5) as u16;
    huge[3..5].copy_from_slice(&n.to_be_bytes());
    assert_eq!(rx.open(&mut huge), Err(RecordError::Overflow));
    let mut wrong_type = vec![22u8, 3, 3, 0, 17];
    wrong_type.resize(5 + 17, 0);
    assert_eq!(rx.open(&mut wrong_type), Err(RecordError::Unexpected));
}

/// Our sealed TLS 1.3 record carries the type inside: a handshake-type plaintext (our
/// KeyUpdate) reaches rustls as a handshake message, not as data.
#[test]
fn the_inner_content_type_is_what_rustls_sees() {
    let (mut client, mut tx, _, _) = taken_over(
        &rustls::version::TLS13,
        cipher_suite::TLS13_AES_128_GCM_SHA256,
    );
    let mut wire = Vec::new();
    let start = wire.len();
    wire.resize(tx.prefix_len(), 0);
    // An alert record: close_notify.
    wire.extend_from_slice(&[1, 0]);
    tx.seal(&mut wire, start, crate::tls::wire::CONTENT_ALERT)
        .unwrap();
    client.read_tls(&mut &wire[..]).unwrap();
    let state = client.process_new_packets().unwrap();
    assert!(state.peer_has_closed(), "rustls took it as close_notify");
}

// --- the session ---

use bytes::{Bytes, BytesMut};

use super::{take_over, SoftTls, TakeOverError};
use crate::bufpool::BufPool;
use crate::ws::{MessageKind, Outbox, Payload, Session, SessionLimits};

fn soft(
    version: &'static SupportedProtocolVersion,
    suite: SupportedCipherSuite,
    limit: Option<u64>,
) -> (rustls::ClientConnection, SoftTls, BufPool) {
    let Handshaken {
        client,
        server,
        mut pool,
        ..
    } = handshaken(version, suite);
    match take_over(server, &mut pool, limit) {
        Ok(s) => (client, s, pool),
        Err(TakeOverError::NotYet(_)) => panic!("a quiescent session is taken"),
        Err(TakeOverError::Broken(e)) => panic!("{e}"),
    }
}

/// Our records → the client; what it reads.
fn to_client(s: &mut SoftTls, client: &mut rustls::ClientConnection) -> Vec<u8> {
    let wire = s.pending_output().to_vec();
    s.consume_output(wire.len());
    let mut rest = &wire[..];
    while !rest.is_empty() {
        client.read_tls(&mut rest).unwrap();
        client.process_new_packets().unwrap();
    }
    let mut got = Vec::new();
    let _ = client.reader().read_to_end(&mut got);
    got
}

/// The client's records → us, in reads of `chunk` bytes; the plaintext.
fn to_server(
    client: &mut rustls::ClientConnection,
    s: &mut SoftTls,
    pool: &mut BufPool,
    chunk: usize,
) -> Result<BytesMut, crate::tls::TlsError> {
    let mut wire = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut wire).unwrap();
    }
    let mut plain = BytesMut::new();
    for piece in wire.chunks(chunk) {
        let space = s.recv_space(pool);
        space[..piece.len()].copy_from_slice(piece);
        s.commit_recv(piece.len());
        s.process(&mut plain)?;
    }
    Ok(plain)
}

#[test]
fn frames_go_out_copied_once_and_data_comes_in_across_read_boundaries() {
    for (version, suite) in all_suites() {
        let (mut client, mut s, mut pool) = soft(version, suite, None);
        let publication = Bytes::from_static(b"{\"topic\":\"t\",\"seq\":1,\"data\":7}");
        let mut session = Session::new(SessionLimits::default());
        let mut outbox = Outbox::new();
        for _ in 0..1000 {
            session.send(MessageKind::Text, Payload::Single(publication.clone()));
        }
        while let Some(f) = session.poll_transmit() {
            outbox.push(f);
        }
        let total = outbox.len();
        assert_eq!(s.encrypt_from(&mut outbox, usize::MAX).unwrap(), total);
        assert!(outbox.is_empty());
        let records = s.pending_output().len() - total;
        let got = to_client(&mut s, &mut client);
        assert_eq!(got.len(), total, "{:?}", suite.suite());
        assert!(
            records < 3 * 40,
            "a few records' overhead, not one per frame: {records} B"
        );
        client.writer().write_all(&vec![7u8; 50_000]).unwrap();
        let plain = to_server(&mut client, &mut s, &mut pool, 1000).unwrap();
        assert_eq!(plain.len(), 50_000);
        assert!(!s.holds_partial_record());
        s.release_idle(&mut pool);
        assert!(
            !s.holds_read_buffer(),
            "an idle session keeps no read buffer"
        );
    }
}

#[test]
fn key_updates_are_followed_both_ways() {
    let (mut client, mut s, mut pool) = soft(
        &rustls::version::TLS13,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        None,
    );
    // The client updates its keys and asks for ours (rustls' refresh_traffic_keys).
    client.refresh_traffic_keys().unwrap();
    client
        .writer()
        .write_all(b"after the client's update")
        .unwrap();
    let plain = to_server(&mut client, &mut s, &mut pool, 7).unwrap();
    assert_eq!(&plain[..], b"after the client's update");
    // Our answer went out under the old keys, data under the new.
    s.encrypt(b"after ours").unwrap();
    assert_eq!(to_client(&mut s, &mut client), b"after ours");
}

/// KeyUpdates with nothing between them are a flood past 32 in a row (each costs a key
/// derivation and a KeyUpdate of ours); with data between them they go on for ever.
#[test]
fn a_run_of_key_updates_without_data_is_refused_past_the_bound() {
    let (mut client, mut s, mut pool) = soft(
        &rustls::version::TLS13,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        None,
    );
    for i in 0..100 {
        client.refresh_traffic_keys().unwrap();
        client.writer().write_all(&[i]).unwrap();
        let plain = to_server(&mut client, &mut s, &mut pool, 4096).unwrap();
        assert_eq!(&plain[..], [i]);
        // Our answering KeyUpdate, and data after it (rustls bounds runs the same way).
        s.encrypt(&[i]).unwrap();
        assert_eq!(to_client(&mut s, &mut client), [i]);
    }
    for _ in 0..crate::tls::ktls::key_budget::MAX_KEY_UPDATES_WITHOUT_DATA {
        client.refresh_traffic_keys().unwrap();
        to_server(&mut client, &mut s, &mut pool, 4096).expect("within the bound");
        // Our KeyUpdates are not shown to the client (its own bound would refuse them).
        let answered = s.pending_output().len();
        assert!(answered > 0, "each is answered");
        s.consume_output(answered);
    }
    client.refresh_traffic_keys().unwrap();
    let err = to_server(&mut client, &mut s, &mut pool, 4096).expect_err("one past the bound");
    assert!(
        matches!(
            err,
            crate::tls::TlsError::Rustls(rustls::Error::PeerMisbehaved(
                rustls::PeerMisbehaved::TooManyKeyUpdateRequests
            ))
        ),
        "{err:?}"
    );
}

#[test]
fn tls13_keys_are_renewed_before_the_limit_and_tls12_closes() {
    let (mut client, mut s, mut pool) = soft(
        &rustls::version::TLS13,
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        Some(64),
    );
    for i in 0..500u32 {
        s.encrypt(&i.to_be_bytes()).unwrap();
        assert_eq!(to_client(&mut s, &mut client), i.to_be_bytes());
        client.writer().write_all(&i.to_le_bytes()).unwrap();
        let plain = to_server(&mut client, &mut s, &mut pool, 4096).unwrap();
        assert_eq!(&plain[..], &i.to_le_bytes()[..], "record {i}");
    }
    let (mut client, mut s, _) = soft(
        &rustls::version::TLS12,
        cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        Some(64),
    );
    let sent = (0..100).take_while(|_| s.encrypt(b"x").is_ok()).count();
    assert!(sent < 64, "closed before the limit ({sent} records)");
    assert_eq!(to_client(&mut s, &mut client).len(), sent);
}

#[test]
fn close_notify_both_ways_and_nothing_after_it() {
    let (mut client, mut s, mut pool) = soft(
        &rustls::version::TLS13,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        None,
    );
    client.send_close_notify();
    let plain = to_server(&mut client, &mut s, &mut pool, 4096).unwrap();
    assert!(plain.is_empty() && s.peer_closed());
    s.queue_close_notify().unwrap();
    assert!(
        s.encrypt(b"late").is_err(),
        "nothing after our close_notify"
    );
    let wire = s.pending_output().to_vec();
    client.read_tls(&mut &wire[..]).unwrap();
    assert!(client.process_new_packets().unwrap().peer_has_closed());
}

#[test]
fn a_forged_record_and_an_oversized_header_end_the_session() {
    let (mut client, mut s, mut pool) = soft(
        &rustls::version::TLS13,
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        None,
    );
    client.writer().write_all(b"genuine").unwrap();
    let mut wire = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut wire).unwrap();
    }
    let last = wire.len() - 1;
    wire[last] ^= 0x80;
    let space = s.recv_space(&mut pool);
    space[..wire.len()].copy_from_slice(&wire);
    s.commit_recv(wire.len());
    let err = s.process(&mut BytesMut::new()).unwrap_err();
    assert_eq!(err.reason(), crate::reason::Reason::TlsDecryptError);
    // A header announcing more than a record may hold is refused before it arrives.
    let (_, mut s, mut pool) = soft(
        &rustls::version::TLS12,
        cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        None,
    );
    let space = s.recv_space(&mut pool);
    space[..5].copy_from_slice(&[23, 3, 3, 0xff, 0xff]);
    s.commit_recv(5);
    let err = s.process(&mut BytesMut::new()).unwrap_err();
    assert_eq!(err.reason(), crate::reason::Reason::TlsProtocolError);
}

/// A client that only sends is asked for new keys (TLS 1.3) before its key wears out.
#[test]
fn a_client_that_only_sends_is_asked_for_new_keys() {
    let (mut client, mut s, mut pool) = soft(
        &rustls::version::TLS13,
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        Some(64),
    );
    for i in 0..300u32 {
        client.writer().write_all(&i.to_be_bytes()).unwrap();
        let plain = to_server(&mut client, &mut s, &mut pool, 4096)
            .unwrap_or_else(|e| panic!("record {i}: {e}"));
        assert_eq!(&plain[..], &i.to_be_bytes()[..]);
        // Our KeyUpdates (with update_requested) reach the client, which answers.
        assert!(to_client(&mut s, &mut client).is_empty());
    }
}
