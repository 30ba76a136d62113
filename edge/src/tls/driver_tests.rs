//! Sans-IO tests of [`TlsSession`]: a rustls client (buffered API) and our server session
//! exchange bytes in memory, in chunks of varying size.

use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use rustls::crypto::aws_lc_rs::{self, cipher_suite};
use rustls::{CipherSuite, ClientConfig, ClientConnection, ProtocolVersion, SupportedCipherSuite};

use super::*;
use crate::bufpool::BufPool;
use crate::tls::devcert::DevCert;
use wssedge_proto::tls_hello::{parse_client_hello, MAX_SNIFFED_HELLO};

fn dev_cert() -> &'static DevCert {
    static CERT: OnceLock<(tempfile::TempDir, DevCert)> = OnceLock::new();
    &CERT
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let cert = crate::tls::devcert::ensure_dev_cert(dir.path()).unwrap();
            (dir, cert)
        })
        .1
}

fn server_config() -> Arc<rustls::ServerConfig> {
    let cert = dev_cert();
    crate::tls::server_config(cert.chain.clone(), cert.key.clone_key()).unwrap()
}

fn client_config(
    suites: &[SupportedCipherSuite],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(dev_cert().chain[1].clone()).unwrap();
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: suites.to_vec(),
        ..aws_lc_rs::default_provider()
    };
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

fn default_client() -> ClientConfig {
    client_config(aws_lc_rs::DEFAULT_CIPHER_SUITES, rustls::ALL_VERSIONS)
}

/// A client and our server session joined by two in-memory "wires".
struct Pair {
    client: ClientConnection,
    server: TlsSession,
    pool: BufPool,
    /// Plaintext the server decrypted.
    server_plain: BytesMut,
    /// Plaintext the client decrypted.
    client_plain: Vec<u8>,
    client_eof: bool,
    /// What the server wrote in the `feed_server` call that failed (its alert).
    error_output: Vec<u8>,
    /// Ciphertext chunk size for the client → server direction.
    chunk: usize,
}

impl Pair {
    fn new(config: ClientConfig, name: &str, chunk: usize) -> Self {
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        Self {
            client: ClientConnection::new(Arc::new(config), name).unwrap(),
            server: TlsSession::new(server_config()).unwrap(),
            pool: BufPool::new(crate::bufpool::POOL_BUFFER_CAPACITY, 4),
            server_plain: BytesMut::new(),
            client_plain: Vec::new(),
            client_eof: false,
            error_output: Vec::new(),
            chunk,
        }
    }

    /// Feeds `wire` to the server `chunk` bytes at a time, like a socket loop would; returns
    /// everything the server wrote.
    fn feed_server(&mut self, wire: &[u8]) -> Result<Vec<u8>, TlsError> {
        let mut out = Vec::new();
        let mut off = 0;
        while off < wire.len() {
            let space = self.server.recv_space(&mut self.pool);
            assert!(space.len() >= MAX_RECORD_LEN);
            let n = self.chunk.min(space.len()).min(wire.len() - off);
            space[..n].copy_from_slice(&wire[off..off + n]);
            self.server.commit_recv(n);
            off += n;
            let result = self.server.process(&mut self.server_plain);
            self.flush_server(&mut out);
            if let Err(e) = result {
                self.error_output = out;
                return Err(e);
            }
            self.server.release_idle(&mut self.pool);
        }
        Ok(out)
    }

    fn flush_server(&mut self, out: &mut Vec<u8>) {
        if self.server.has_pending_output() {
            let buf = self.server.take_output();
            assert!(!self.server.has_pending_output());
            out.extend_from_slice(&buf);
            self.server.restore_output(buf);
        }
    }

    fn client_wire(&mut self) -> Vec<u8> {
        let mut wire = Vec::new();
        while self.client.wants_write() {
            self.client.write_tls(&mut wire).unwrap();
        }
        wire
    }

    fn feed_client(&mut self, wire: &[u8]) -> Result<(), rustls::Error> {
        let mut rest = wire;
        while !rest.is_empty() {
            let n = self.client.read_tls(&mut rest).unwrap();
            assert!(n > 0);
            self.client.process_new_packets()?;
            self.drain_client_plain();
        }
        Ok(())
    }

    fn drain_client_plain(&mut self) {
        let mut buf = [0u8; 32 * 1024];
        loop {
            match self.client.reader().read(&mut buf) {
                Ok(0) => {
                    self.client_eof = true;
                    return;
                }
                Ok(n) => self.client_plain.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => panic!("client read: {e}"),
            }
        }
    }

    /// Moves bytes both ways until neither side has anything to say.
    fn pump(&mut self) -> Result<(), TlsError> {
        for _ in 0..32 {
            let c2s = self.client_wire();
            let s2c = self.feed_server(&c2s)?;
            let mut extra = Vec::new();
            self.flush_server(&mut extra);
            let s2c = [s2c, extra].concat();
            if c2s.is_empty() && s2c.is_empty() {
                return Ok(());
            }
            self.feed_client(&s2c)
                .expect("client accepts the server's bytes");
        }
        panic!("no quiescence after 32 rounds");
    }

    fn handshake(&mut self) {
        self.pump().unwrap();
        assert!(!self.client.is_handshaking());
        assert!(!self.server.is_handshaking());
    }

    fn server_send(&mut self, data: &[u8]) {
        self.server.encrypt(data).unwrap();
        let mut out = Vec::new();
        self.flush_server(&mut out);
        self.feed_client(&out).unwrap();
    }
}

const CHUNKS: [usize; 3] = [1, 7, usize::MAX];

#[test]
fn handshake_and_echo_tls13_and_tls12_in_all_chunk_sizes() {
    for (version, expect) in [
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
    ] {
        for chunk in CHUNKS {
            let mut pair = Pair::new(
                client_config(aws_lc_rs::DEFAULT_CIPHER_SUITES, &[version]),
                "localhost",
                chunk,
            );
            assert!(pair.server.is_handshaking());
            assert!(pair.server.negotiated().is_none());
            pair.handshake();
            let negotiated = pair.server.negotiated().unwrap();
            assert_eq!(negotiated.version, expect, "chunk {chunk}");
            assert_eq!(negotiated.alpn.as_deref(), Some(&b"http/1.1"[..]));
            assert_eq!(negotiated.sni.as_deref(), Some("localhost"));
            assert!(pair.server.is_quiescent(), "chunk {chunk}");
            assert!(
                !pair.server.holds_read_buffer(),
                "drained after the handshake"
            );

            pair.client
                .writer()
                .write_all(b"hello from the client")
                .unwrap();
            pair.pump().unwrap();
            assert_eq!(&pair.server_plain[..], b"hello from the client");
            pair.server_send(b"hello from the server");
            assert_eq!(pair.client_plain, b"hello from the server");
        }
    }
}

#[test]
fn each_of_the_six_suites_completes() {
    let suites = [
        (
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            ProtocolVersion::TLSv1_3,
        ),
        (
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            ProtocolVersion::TLSv1_3,
        ),
        (
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            ProtocolVersion::TLSv1_3,
        ),
        (
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            ProtocolVersion::TLSv1_2,
        ),
        (
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            ProtocolVersion::TLSv1_2,
        ),
        (
            cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            ProtocolVersion::TLSv1_2,
        ),
    ];
    for (i, (suite, version)) in suites.into_iter().enumerate() {
        let chunk = CHUNKS[i % CHUNKS.len()];
        let mut pair = Pair::new(
            client_config(&[suite], rustls::ALL_VERSIONS),
            "127.0.0.1",
            chunk,
        );
        pair.handshake();
        let negotiated = pair.server.negotiated().unwrap();
        assert_eq!(negotiated.suite.suite(), suite.suite());
        assert_eq!(negotiated.version, version);
        assert_eq!(negotiated.sni, None, "an IP address is not sent as SNI");
        pair.client.writer().write_all(b"ping").unwrap();
        pair.pump().unwrap();
        assert_eq!(&pair.server_plain[..], b"ping");
        pair.server_send(b"pong");
        assert_eq!(pair.client_plain, b"pong");
    }
}

fn record_lengths(mut wire: &[u8]) -> Vec<(u8, usize)> {
    let mut records = Vec::new();
    while wire.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([wire[3], wire[4]]));
        records.push((wire[0], len));
        wire = &wire[5 + len..];
    }
    assert!(wire.is_empty(), "whole records only");
    records
}

#[test]
fn one_mebibyte_each_way() {
    let data: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    for (version, chunk) in [
        (&rustls::version::TLS13, usize::MAX),
        (&rustls::version::TLS12, 1000),
        (&rustls::version::TLS13, 7),
    ] {
        let mut pair = Pair::new(
            client_config(aws_lc_rs::DEFAULT_CIPHER_SUITES, &[version]),
            "localhost",
            chunk,
        );
        pair.handshake();

        let mut sent = 0;
        while sent < data.len() {
            sent += pair.client.writer().write(&data[sent..]).unwrap();
            pair.pump().unwrap();
        }
        assert_eq!(pair.server_plain.len(), data.len());
        assert!(pair.server_plain[..] == data[..]);
        assert!(!pair.server.holds_read_buffer());

        pair.server.encrypt(&data).unwrap();
        let out = pair.server.take_output();
        let records = record_lengths(&out);
        assert!(records.len() >= 64, "{} records", records.len());
        assert!(
            records
                .iter()
                .all(|&(typ, len)| typ == 23 && len <= 16 * 1024 + 256),
            "≤ 16 KiB records"
        );
        pair.feed_client(&out).unwrap();
        pair.server.restore_output(out);
        assert_eq!(pair.client_plain.len(), data.len());
        assert!(pair.client_plain == data);
    }
}

#[test]
fn data_pipelined_after_the_client_finished_reaches_plaintext() {
    for chunk in CHUNKS {
        let mut pair = Pair::new(
            client_config(aws_lc_rs::DEFAULT_CIPHER_SUITES, &[&rustls::version::TLS13]),
            "localhost",
            chunk,
        );
        // ClientHello → server flight → client.
        let hello = pair.client_wire();
        let flight = pair.feed_server(&hello).unwrap();
        assert!(pair.server.is_handshaking());
        pair.feed_client(&flight).unwrap();
        assert!(!pair.client.is_handshaking());
        // Finished and application data leave the client in one write.
        pair.client
            .writer()
            .write_all(b"GET /chat HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let wire = pair.client_wire();
        let tickets = pair.feed_server(&wire).unwrap();
        assert!(!pair.server.is_handshaking(), "chunk {chunk}");
        assert_eq!(
            &pair.server_plain[..],
            b"GET /chat HTTP/1.1\r\nHost: localhost\r\n\r\n",
            "chunk {chunk}"
        );
        assert!(pair.server.is_quiescent());
        assert!(
            !tickets.is_empty(),
            "session tickets follow the client's Finished"
        );
        pair.feed_client(&tickets).unwrap();
    }
}

#[test]
fn a_partial_record_at_the_end_of_the_handshake_read_is_kept_and_completed() {
    let mut pair = Pair::new(default_client(), "localhost", usize::MAX);
    let hello = pair.client_wire();
    let flight = pair.feed_server(&hello).unwrap();
    pair.feed_client(&flight).unwrap();
    pair.client.writer().write_all(&[b'x'; 3000]).unwrap();
    let wire = pair.client_wire();
    // Finished plus half of the data record in one read.
    let cut = wire.len() - 1500;
    let tickets = pair.feed_server(&wire[..cut]).unwrap();
    pair.feed_client(&tickets).unwrap();
    assert!(!pair.server.is_handshaking());
    assert!(!pair.server.is_quiescent(), "a partial record is buffered");
    assert!(pair.server.buffered_ciphertext() > 0);
    assert!(pair.server.holds_read_buffer());
    // Encrypting now must not consume the partial record.
    pair.server.encrypt(b"early reply").unwrap();
    assert!(pair.server.buffered_ciphertext() > 0);
    let reply = pair.feed_server(&wire[cut..]).unwrap();
    assert_eq!(pair.server_plain.len(), 3000);
    assert!(pair.server.is_quiescent());
    pair.feed_client(&reply).unwrap();
    assert_eq!(pair.client_plain, b"early reply");
}

/// Before the kernel hand-off, reads stop at record boundaries: the bound names exactly the bytes
/// that complete the record in the buffer (header first when even that is cut).
#[test]
fn bytes_to_record_boundary_completes_the_partial_record_exactly() {
    let mut pair = Pair::new(default_client(), "localhost", usize::MAX);
    let hello = pair.client_wire();
    let flight = pair.feed_server(&hello).unwrap();
    pair.feed_client(&flight).unwrap();
    let finished = pair.client_wire();
    let tickets = pair.feed_server(&finished).unwrap();
    pair.feed_client(&tickets).unwrap();
    assert!(!pair.server.is_handshaking());
    assert_eq!(pair.server.bytes_to_record_boundary(), 0);
    pair.client.writer().write_all(&[b'y'; 5000]).unwrap();
    pair.client.writer().write_all(&[b'z'; 100]).unwrap();
    let wire = pair.client_wire();
    let records = record_lengths(&wire);
    let first = 5 + records[0].1;
    // Three bytes of the header: two more complete it.
    pair.feed_server(&wire[..3]).unwrap();
    assert_eq!(pair.server.bytes_to_record_boundary(), 2);
    // Feed exactly what the bound asks for, twice: the header, then the body.
    let mut off = 3;
    for _ in 0..2 {
        let need = pair.server.bytes_to_record_boundary();
        assert!(need > 0);
        pair.feed_server(&wire[off..off + need]).unwrap();
        off += need;
    }
    assert_eq!(off, first, "the bound ends on the record boundary");
    assert_eq!(pair.server.bytes_to_record_boundary(), 0);
    assert!(pair.server.is_quiescent());
    assert_eq!(pair.server_plain.len(), 5000);
}

#[test]
fn close_notify_both_ways() {
    for chunk in CHUNKS {
        let mut pair = Pair::new(default_client(), "localhost", chunk);
        pair.handshake();
        pair.client.writer().write_all(b"last words").unwrap();
        pair.client.send_close_notify();
        pair.pump().unwrap();
        assert_eq!(&pair.server_plain[..], b"last words");
        assert!(pair.server.peer_closed());
        assert!(!pair.client_eof);

        // We may still send, then close.
        pair.server.encrypt(b"bye").unwrap();
        pair.server.queue_close_notify().unwrap();
        pair.server.queue_close_notify().unwrap();
        let out = pair.server.take_output();
        pair.feed_client(&out).unwrap();
        assert_eq!(pair.client_plain, b"bye");
        assert!(pair.client_eof, "the client saw our close_notify");
        assert!(matches!(
            pair.server.encrypt(b"more"),
            Err(TlsError::Closed)
        ));
    }
}

#[test]
fn server_close_notify_reaches_the_client_first() {
    let mut pair = Pair::new(default_client(), "localhost", 7);
    pair.handshake();
    pair.server.queue_close_notify().unwrap();
    let out = pair.server.take_output();
    pair.feed_client(&out).unwrap();
    assert!(pair.client_eof);
    assert!(!pair.server.peer_closed());
}

#[test]
fn plain_http_is_not_tls() {
    for chunk in CHUNKS {
        let mut pair = Pair::new(default_client(), "localhost", chunk);
        let err = pair
            .feed_server(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap_err();
        assert_eq!(err.reason(), "not_tls");
        assert!(!pair.server.has_pending_output());
        // Sticky.
        assert_eq!(
            pair.server
                .process(&mut BytesMut::new())
                .unwrap_err()
                .reason(),
            "not_tls"
        );
    }
    for garbage in [
        &[0x16, 0x01, 0x00][..],
        &[0x16, 0x03, 0x09],
        &[0x16, 0x03, 0x01, 0x00, 0x00],
        &[0x80, 0x2e, 0x01],
    ] {
        let mut pair = Pair::new(default_client(), "localhost", usize::MAX);
        assert_eq!(
            pair.feed_server(garbage).unwrap_err().reason(),
            "not_tls",
            "{garbage:?}"
        );
    }
}

/// A TLS 1.1 ClientHello as an old client sends it: legacy_version 0x0302, no
/// supported_versions extension.
fn tls11_client_hello(sni: &str) -> Vec<u8> {
    let mut ext = Vec::new();
    // server_name
    let name = sni.as_bytes();
    let mut list = vec![0u8];
    list.extend_from_slice(&(name.len() as u16).to_be_bytes());
    list.extend_from_slice(name);
    ext.extend_from_slice(&0u16.to_be_bytes());
    ext.extend_from_slice(&((list.len() + 2) as u16).to_be_bytes());
    ext.extend_from_slice(&(list.len() as u16).to_be_bytes());
    ext.extend_from_slice(&list);
    // ec_point_formats: uncompressed
    ext.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    // supported_groups: x25519, secp256r1, secp384r1
    ext.extend_from_slice(&[
        0x00, 0x0a, 0x00, 0x08, 0x00, 0x06, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18,
    ]);

    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[0x42; 32]);
    body.push(0); // session id
    let suites: [u16; 5] = [0xc009, 0xc013, 0xc00a, 0x002f, 0x00ff];
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);

    let mut handshake = vec![1];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[test]
fn a_tls11_client_gets_a_protocol_version_alert() {
    for chunk in CHUNKS {
        let mut pair = Pair::new(default_client(), "localhost", chunk);
        let mut out = Vec::new();
        let wire = tls11_client_hello("old.example");
        let mut off = 0;
        let err = loop {
            let space = pair.server.recv_space(&mut pair.pool);
            let n = chunk.min(wire.len() - off);
            space[..n].copy_from_slice(&wire[off..off + n]);
            pair.server.commit_recv(n);
            off += n;
            let result = pair.server.process(&mut pair.server_plain);
            pair.flush_server(&mut out);
            if let Err(e) = result {
                break e;
            }
            assert!(off < wire.len(), "the hello must be refused");
        };
        assert_eq!(err.reason(), "tls_protocol_version", "{err}");
        assert!(
            matches!(err, TlsError::ProtocolVersion { offered: 0x0302 }),
            "{err}"
        );
        // One alert record: fatal (2), protocol_version (70).
        assert_eq!(out.len(), 7, "{out:02x?}");
        assert_eq!(out[0], 0x15, "content type alert");
        assert_eq!(&out[3..], &[0x00, 0x02, 0x02, 70]);
        assert!(!pair.server.has_pending_output());
    }
}

#[test]
fn sni_is_read_from_the_client_hello() {
    let hello = tls11_client_hello("Old.Example");
    // record header (5) + handshake header (4)
    let info = parse_client_hello(&hello[9..]).unwrap();
    assert_eq!(info.sni.as_deref(), Some("old.example"));
    assert_eq!(info.legacy_version, 0x0302);
    assert!(!info.offers_tls12_or_later);
    assert_eq!(
        parse_client_hello(&tls11_client_hello("10.0.0.1")[9..])
            .unwrap()
            .sni,
        None
    );
    assert_eq!(parse_client_hello(&hello[9..40]), None, "truncated");

    // A ClientHello split over two records (legal, rare) is still read.
    let mut pair = Pair::new(default_client(), "LocalHost", usize::MAX);
    let hello = pair.client_wire();
    assert_eq!(
        usize::from(u16::from_be_bytes([hello[3], hello[4]])) + 5,
        hello.len(),
        "one record"
    );
    let (a, b) = hello[5..].split_at(20);
    let mut split = Vec::new();
    for part in [a, b] {
        split.extend_from_slice(&hello[..3]);
        split.extend_from_slice(&(part.len() as u16).to_be_bytes());
        split.extend_from_slice(part);
    }
    let space = pair.server.recv_space(&mut pair.pool);
    space[..split.len() - 1].copy_from_slice(&split[..split.len() - 1]);
    pair.server.commit_recv(split.len() - 1);
    pair.server.process(&mut pair.server_plain).unwrap();
    assert!(!pair.server.has_pending_output(), "incomplete: waiting");
    let space = pair.server.recv_space(&mut pair.pool);
    space[0] = *split.last().unwrap();
    pair.server.commit_recv(1);
    pair.server.process(&mut pair.server_plain).unwrap();
    let mut flight = Vec::new();
    pair.flush_server(&mut flight);
    pair.feed_client(&flight).unwrap();
    pair.handshake();
    assert_eq!(
        pair.server.negotiated().unwrap().sni.as_deref(),
        Some("localhost")
    );
}

#[test]
fn endless_empty_handshake_fragments_do_not_grow_the_buffer_forever() {
    let mut pair = Pair::new(default_client(), "localhost", usize::MAX);
    let mut wire = vec![0x16, 0x03, 0x01, 0x00, 0x01, 0x01];
    for _ in 0..20_000 {
        wire.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x00]);
    }
    let err = pair.feed_server(&wire).unwrap_err();
    assert_eq!(err.reason(), "tls_protocol_error", "{err}");
    assert!(pair.server.buffered_ciphertext() < 2 * MAX_SNIFFED_HELLO);
}

#[test]
fn no_shared_cipher() {
    let config = client_config(
        &[cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256],
        &[&rustls::version::TLS12],
    );
    let mut pair = Pair::new(config, "localhost", usize::MAX);
    let hello = pair.client_wire();
    let err = pair.feed_server(&hello).unwrap_err();
    assert_eq!(err.reason(), "tls_no_shared_cipher", "{err}");
    let out = std::mem::take(&mut pair.error_output);
    assert_eq!(
        out.first(),
        Some(&0x15),
        "a handshake_failure alert is sent"
    );
    let client_err = pair.feed_client(&out).unwrap_err();
    assert!(
        matches!(client_err, rustls::Error::AlertReceived(_)),
        "{client_err}"
    );
}

#[test]
fn a_client_that_rejects_our_certificate_sends_an_alert() {
    let mut config = default_client();
    config.alpn_protocols.clear();
    let mut pair = Pair::new(config, "example.com", usize::MAX);
    let hello = pair.client_wire();
    let flight = pair.feed_server(&hello).unwrap();
    let client_err = pair.feed_client(&flight).unwrap_err();
    assert!(
        matches!(client_err, rustls::Error::InvalidCertificate(_)),
        "{client_err}"
    );
    let alert = pair.client_wire();
    let err = pair.feed_server(&alert).unwrap_err();
    assert_eq!(err.reason(), "tls_alert_received", "{err}");
}

#[test]
fn a_tampered_record_is_a_decrypt_error_with_an_encrypted_alert() {
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut pair = Pair::new(
            client_config(aws_lc_rs::DEFAULT_CIPHER_SUITES, &[version]),
            "localhost",
            usize::MAX,
        );
        pair.handshake();
        pair.client.writer().write_all(b"secret").unwrap();
        let mut wire = pair.client_wire();
        let last = wire.len() - 1;
        wire[last] ^= 1;
        let err = pair.feed_server(&wire).unwrap_err();
        assert_eq!(err.reason(), "tls_decrypt_error");
        let out = std::mem::take(&mut pair.error_output);
        let records = record_lengths(&out);
        assert_eq!(records.len(), 1);
        // TLS 1.3 hides the alert inside an application_data record; TLS 1.2 shows type 21.
        let expect_type = if version.version == ProtocolVersion::TLSv1_3 {
            23
        } else {
            21
        };
        assert_eq!(records[0].0, expect_type);
        let client_err = pair.feed_client(&out).unwrap_err();
        assert_eq!(
            client_err,
            rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac)
        );
        assert!(pair.server.encrypt(b"x").is_err());
    }
}

#[test]
fn encrypt_before_the_handshake_is_refused_without_breaking_the_session() {
    let mut pair = Pair::new(default_client(), "localhost", usize::MAX);
    assert!(matches!(
        pair.server.encrypt(b"too early"),
        Err(TlsError::HandshakeNotComplete)
    ));
    assert!(matches!(
        pair.server.queue_close_notify(),
        Err(TlsError::HandshakeNotComplete)
    ));
    let hello = pair.client_wire();
    let flight = pair.feed_server(&hello).unwrap();
    assert!(matches!(
        pair.server.encrypt(b"still early"),
        Err(TlsError::HandshakeNotComplete)
    ));
    pair.feed_client(&flight).unwrap();
    pair.pump().unwrap();
    assert!(!pair.server.is_handshaking());
    pair.server_send(b"now");
    assert_eq!(pair.client_plain, b"now");
}

#[test]
fn release_idle_returns_the_buffer_only_when_drained() {
    let mut pair = Pair::new(default_client(), "localhost", usize::MAX);
    pair.handshake();
    assert!(!pair.server.holds_read_buffer());
    let spare = pair.pool.spare();
    assert!(spare >= 1, "the handshake's buffer went back to the pool");

    pair.client.writer().write_all(&[b'a'; 5000]).unwrap();
    let wire = pair.client_wire();
    let (head, tail) = wire.split_at(wire.len() / 2);

    let space = pair.server.recv_space(&mut pair.pool);
    assert_eq!(pair.pool.spare(), spare - 1, "taken from the pool");
    space[..head.len()].copy_from_slice(head);
    pair.server.commit_recv(head.len());
    pair.server.process(&mut pair.server_plain).unwrap();
    assert!(pair.server_plain.is_empty());
    pair.server.release_idle(&mut pair.pool);
    assert!(
        pair.server.holds_read_buffer(),
        "a partial record keeps its buffer"
    );
    assert_eq!(pair.server.buffered_ciphertext(), head.len());
    assert_eq!(pair.pool.spare(), spare - 1);

    let space = pair.server.recv_space(&mut pair.pool);
    space[..tail.len()].copy_from_slice(tail);
    pair.server.commit_recv(tail.len());
    pair.server.process(&mut pair.server_plain).unwrap();
    assert_eq!(pair.server_plain.len(), 5000);
    assert_eq!(pair.server.buffered_ciphertext(), 0);
    pair.server.release_idle(&mut pair.pool);
    assert!(!pair.server.holds_read_buffer());
    assert_eq!(pair.pool.spare(), spare, "given back");
}

#[test]
fn recv_space_compacts_and_grows_for_a_whole_record() {
    let mut pool = BufPool::new(8 * 1024, 2);
    let mut session = TlsSession::new(server_config()).unwrap();
    assert!(session.recv_space(&mut pool).len() >= MAX_RECORD_LEN);
    // A record header announcing 16 KiB, then part of it.
    let space = session.recv_space(&mut pool);
    space[..5].copy_from_slice(&[0x16, 0x03, 0x01, 0x40, 0x00]);
    space[5..9].copy_from_slice(&[1, 0, 0x3f, 0xfc]);
    session.commit_recv(9);
    session.process(&mut BytesMut::new()).unwrap();
    assert_eq!(session.buffered_ciphertext(), 9);
    assert!(session.recv_space(&mut pool).len() >= MAX_RECORD_LEN);
}

#[test]
fn output_buffers_are_reused_and_capped() {
    let mut pair = Pair::new(default_client(), "localhost", usize::MAX);
    pair.handshake();
    pair.server.encrypt(b"small").unwrap();
    let out = pair.server.take_output();
    assert!(out.len() > 5);
    let ptr = out.as_ptr();
    pair.feed_client(&out).unwrap();
    pair.server.restore_output(out);
    pair.server.encrypt(b"again").unwrap();
    let out = pair.server.take_output();
    assert_eq!(out.as_ptr(), ptr, "the written buffer was reused");
    pair.feed_client(&out).unwrap();
    assert_eq!(pair.client_plain, b"smallagain");

    pair.server.encrypt(&vec![0u8; 256 * 1024]).unwrap();
    let big = pair.server.take_output();
    pair.feed_client(&big).unwrap();
    pair.server.restore_output(big);
    pair.server.encrypt(b"x").unwrap();
    assert!(
        pair.server.take_output().capacity() < MAX_RETAINED_OUTPUT,
        "an oversized buffer is not kept"
    );
}

#[test]
fn reasons_are_stable() {
    use rustls::{Error as E, PeerIncompatible as P};
    let cases = [
        (TlsError::NotTls, "not_tls"),
        (
            E::PeerIncompatible(P::Tls12NotOffered).into(),
            "tls_protocol_version",
        ),
        (
            E::PeerIncompatible(P::NoCipherSuitesInCommon).into(),
            "tls_no_shared_cipher",
        ),
        (
            E::InvalidCertificate(rustls::CertificateError::BadEncoding).into(),
            "client_cert_invalid",
        ),
        (
            E::InvalidCertificate(rustls::CertificateError::UnknownIssuer).into(),
            "client_cert_untrusted",
        ),
        (
            E::InvalidCertificate(rustls::CertificateError::Revoked).into(),
            "client_cert_revoked",
        ),
        (E::NoCertificatesPresented.into(), "client_cert_missing"),
        (
            E::AlertReceived(rustls::AlertDescription::HandshakeFailure).into(),
            "tls_alert_received",
        ),
        (E::DecryptError.into(), "tls_decrypt_error"),
        (
            E::InvalidMessage(rustls::InvalidMessage::MissingData("x")).into(),
            "tls_protocol_error",
        ),
        (E::General("x".into()).into(), "tls_internal"),
        (TlsError::Internal("x"), "tls_internal"),
    ];
    for (err, reason) in cases {
        assert_eq!(err.reason(), reason, "{err}");
    }
    let _ = CipherSuite::TLS13_AES_128_GCM_SHA256;
}

/// A ClientHello dribbled as one-byte records, one per read: sniffing resumes where it stopped
/// (linear work), and the handshake still completes with the SNI read.
#[test]
fn a_client_hello_in_one_byte_records_read_one_by_one() {
    let mut pair = Pair::new(default_client(), "localhost", usize::MAX);
    let hello = pair.client_wire();
    let mut records = Vec::new();
    for b in &hello[5..] {
        records.push([hello[0], hello[1], hello[2], 0, 1, *b]);
    }
    for r in &records {
        let space = pair.server.recv_space(&mut pair.pool);
        space[..r.len()].copy_from_slice(r);
        pair.server.commit_recv(r.len());
        pair.server.process(&mut pair.server_plain).unwrap();
    }
    let mut flight = Vec::new();
    pair.flush_server(&mut flight);
    pair.feed_client(&flight).unwrap();
    pair.handshake();
    assert_eq!(
        pair.server.negotiated().unwrap().sni.as_deref(),
        Some("localhost")
    );
}

#[test]
fn nothing_is_encrypted_after_our_close_notify() {
    let mut pair = Pair::new(default_client(), "localhost", 7);
    pair.handshake();
    pair.server.queue_close_notify().unwrap();
    let before = pair.server.take_output();
    assert!(matches!(
        pair.server.encrypt(b"late"),
        Err(TlsError::Closed)
    ));
    assert!(
        !pair.server.has_pending_output(),
        "no record after close_notify"
    );
    pair.feed_client(&before).unwrap();
    assert!(pair.client_eof);
}
