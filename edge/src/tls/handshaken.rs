//! Test support: a rustls client and our server session after a real TLS handshake in memory,
//! nothing in flight — what the kTLS and the userspace record hand-offs start from.

use std::sync::Arc;

use bytes::BytesMut;
use rustls::crypto::aws_lc_rs::{self, cipher_suite};
use rustls::{ClientConfig, ClientConnection, SupportedCipherSuite, SupportedProtocolVersion};

use crate::bufpool::{BufPool, POOL_BUFFER_CAPACITY};
use crate::tls::TlsSession;

/// A client and our server session after a completed handshake, nothing in flight.
pub(crate) struct Handshaken {
    pub client: ClientConnection,
    pub server: TlsSession,
    pub pool: BufPool,
    pub _dir: tempfile::TempDir,
}

pub(crate) fn handshaken(
    version: &'static SupportedProtocolVersion,
    suite: SupportedCipherSuite,
) -> Handshaken {
    let dir = tempfile::tempdir().unwrap();
    let cert = crate::tls::devcert::ensure_dev_cert(dir.path()).unwrap();
    let mut server_config =
        (*crate::tls::server_config(cert.chain.clone(), cert.key.clone_key()).unwrap()).clone();
    server_config.enable_secret_extraction = true;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.chain[1].clone()).unwrap();
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![suite],
        ..aws_lc_rs::default_provider()
    };
    let client_config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut h = Handshaken {
        client: ClientConnection::new(Arc::new(client_config), "localhost".try_into().unwrap())
            .unwrap(),
        server: TlsSession::new(Arc::new(server_config)).unwrap(),
        pool: BufPool::new(POOL_BUFFER_CAPACITY, 4),
        _dir: dir,
    };
    let mut plaintext = BytesMut::new();
    for _ in 0..16 {
        let mut wire = Vec::new();
        while h.client.wants_write() {
            h.client.write_tls(&mut wire).unwrap();
        }
        if !wire.is_empty() {
            let space = h.server.recv_space(&mut h.pool);
            space[..wire.len()].copy_from_slice(&wire);
            h.server.commit_recv(wire.len());
            h.server.process(&mut plaintext).unwrap();
        }
        let out = h.server.take_output();
        if !out.is_empty() {
            h.client.read_tls(&mut &out[..]).unwrap();
            h.client.process_new_packets().unwrap();
        }
        if wire.is_empty() && out.is_empty() {
            break;
        }
    }
    assert!(!h.client.is_handshaking() && !h.server.is_handshaking());
    assert!(h.server.is_quiescent());
    h
}

pub(crate) fn tls13() -> Handshaken {
    handshaken(
        &rustls::version::TLS13,
        cipher_suite::TLS13_AES_128_GCM_SHA256,
    )
}
