//! The hand-off and the kernel record layer's bookkeeping, driven by real rustls handshakes in
//! memory (no kTLS needed: these run on any kernel).

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;

use bytes::BytesMut;
use rustls::crypto::aws_lc_rs::cipher_suite;
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};

use super::secrets::{cipher_of_suite, crypto_info_of, tls_version_of};
use super::*;
use crate::bufpool::{BufPool, POOL_BUFFER_CAPACITY};
use crate::tls::handshaken::{handshaken, tls13, Handshaken};

fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

fn claims_everything() -> KtlsSupport {
    KtlsSupport {
        ulp_error: None,
        supported: TlsVersion::ALL
            .iter()
            .flat_map(|v| Cipher::ALL.iter().map(move |c| (*v, *c)))
            .collect(),
        refused: Vec::new(),
        tx_rekey: false,
    }
}

fn kernel_tls(h: Handshaken, record_limit: u64, kernel_rekey: bool) -> KernelTls {
    let mut pool = h.pool;
    let negotiated = h.server.negotiated().unwrap();
    let conn = h.server.into_connection(&mut pool).unwrap();
    let (secrets, kernel) = conn.dangerous_into_kernel_connection().unwrap();
    KernelTls::new(
        kernel,
        KernelParams {
            version: tls_version_of(negotiated.version).unwrap(),
            cipher: cipher_of_suite(negotiated.suite).unwrap(),
            record_limit,
            kernel_rekey,
        },
        secrets.tx.0,
        secrets.rx.0,
    )
}

#[test]
fn the_secrets_of_all_six_suites_fit_the_kernel_layouts_with_exact_sequence_numbers() {
    use cipher_suite::*;
    let cases: [(
        &'static SupportedProtocolVersion,
        SupportedCipherSuite,
        usize,
    ); 6] = [
        (&rustls::version::TLS13, TLS13_AES_128_GCM_SHA256, 40),
        (&rustls::version::TLS13, TLS13_AES_256_GCM_SHA384, 56),
        (&rustls::version::TLS13, TLS13_CHACHA20_POLY1305_SHA256, 56),
        (
            &rustls::version::TLS12,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            40,
        ),
        (
            &rustls::version::TLS12,
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            56,
        ),
        (
            &rustls::version::TLS12,
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            56,
        ),
    ];
    for (version, suite, len) in cases {
        let mut h = handshaken(version, suite);
        let tls_version = tls_version_of(version.version).unwrap();
        let conn = h.server.into_connection(&mut h.pool).unwrap();
        let (secrets, _) = conn.dangerous_into_kernel_connection().unwrap();
        let (tx_seq, tx) = &secrets.tx;
        let (rx_seq, rx) = &secrets.rx;
        let info = crypto_info_of(tls_version, tx, *tx_seq).unwrap();
        assert_eq!(info.as_bytes().len(), len, "{:?}", suite.suite());
        assert_eq!(
            crypto_info_of(tls_version, rx, *rx_seq)
                .unwrap()
                .as_bytes()
                .len(),
            len
        );
        // The carried-over sequence numbers: TLS 1.3 sent one record of session tickets and
        // received none after the keys changed; TLS 1.2 counted both Finished messages.
        let expected = match tls_version {
            TlsVersion::Tls13 => (1, 0),
            TlsVersion::Tls12 => (1, 1),
        };
        assert_eq!((*tx_seq, *rx_seq), expected, "{:?}", suite.suite());
        assert_eq!(
            &info.as_bytes()[info.as_bytes().len() - 8..],
            &tx_seq.to_be_bytes(),
            "rec_seq carries the sequence number over"
        );
    }
}

#[test]
fn a_cipher_the_kernel_lacks_stays_in_userspace_untouched() {
    let h = tls13();
    let (_c, s) = tcp_pair();
    let mut pool = BufPool::new(POOL_BUFFER_CAPACITY, 4);
    let mut support = claims_everything();
    support
        .supported
        .retain(|p| *p != (TlsVersion::Tls13, Cipher::Aes128Gcm));
    match offload(h.server, s.as_fd(), &mut pool, &support, None) {
        Err(OffloadError::Fallback { tls, reason, .. }) => {
            assert_eq!(reason, "cipher_unsupported");
            assert!(tls.is_quiescent());
        }
        other => panic!("expected a fallback, got {other:?}"),
    }
}

/// The ULP goes on before the secrets are taken: a kernel that refuses it (like these CI
/// hosts) leaves a session that still serves in userspace.
#[test]
fn a_refused_ulp_leaves_a_working_userspace_session() {
    let Handshaken {
        mut client,
        server,
        mut pool,
        _dir,
    } = tls13();
    let (_c, s) = tcp_pair();
    match offload(server, s.as_fd(), &mut pool, &claims_everything(), None) {
        Err(OffloadError::Fallback {
            mut tls, reason, ..
        }) => {
            assert_eq!(reason, "ulp_failed");
            tls.encrypt(b"still served").unwrap();
            let out = tls.take_output();
            client.read_tls(&mut &out[..]).unwrap();
            client.process_new_packets().unwrap();
            let mut got = [0u8; 32];
            let n = std::io::Read::read(&mut client.reader(), &mut got).unwrap();
            assert_eq!(&got[..n], b"still served");
        }
        // A kernel with kTLS takes it.
        Ok(kernel) => assert!(
            std::path::Path::new("/proc/net/tls_stat").exists(),
            "{kernel:?}"
        ),
        Err(e) => panic!("unexpected {e:?}"),
    }
}

#[test]
fn records_are_counted_and_the_connection_closes_before_the_limit() {
    let mut k = kernel_tls(tls13(), 1000, false);
    let threshold = 1000 - 1000 / 16;
    // The count starts at the carried-over sequence number: one record of session tickets.
    assert_eq!(k.records(), (1, 0));
    // A 40 KiB write is three records; small writes are one each.
    assert_eq!(k.restore_output(Vec::new(), 40 * 1024), 3);
    for _ in 4..threshold - 1 {
        assert_eq!(k.restore_output(Vec::new(), 100), 1);
    }
    assert_eq!(k.records().0, threshold - 1);
    assert!(
        k.wants_sync(),
        "{} writes since the last exact count",
        threshold - 2
    );
    assert!(!k.key_limit_reached());
    k.restore_output(Vec::new(), 1);
    assert!(
        k.key_limit_reached(),
        "closed before the limit, at {threshold}"
    );
    assert!(!k.tx_rekey_due(), "this kernel cannot rekey");
}

#[test]
fn received_records_count_as_a_lower_bound_and_close_too() {
    let mut k = kernel_tls(tls13(), 100, false);
    let mut pool = BufPool::new(POOL_BUFFER_CAPACITY, 4);
    let mut plaintext = BytesMut::new();
    let _ = k.recv_space(&mut pool);
    assert_eq!(k.commit_recv(16 * 1024 + 1), 2);
    k.drain_into(&mut plaintext);
    assert_eq!(plaintext.len(), 16 * 1024 + 1);
    for _ in 2..94 {
        let _ = k.recv_space(&mut pool);
        k.commit_recv(10);
        k.drain_into(&mut plaintext);
    }
    assert!(k.key_limit_reached(), "100 - 100/16 = 94 records received");
    k.release_idle(&mut pool);
    assert!(
        !k.holds_read_buffer(),
        "a drained read buffer goes back to the pool"
    );
}

#[test]
fn where_the_kernel_can_rekey_tls13_rekeys_instead_of_closing() {
    let mut k = kernel_tls(tls13(), 1000, true);
    for _ in 0..1000 - 1000 / 16 {
        k.restore_output(Vec::new(), 1);
    }
    assert!(k.tx_rekey_due());
    assert!(!k.key_limit_reached());
    // A rekey that never happens still closes before the limit.
    for _ in 0..1000 / 16 - 1000 / 64 {
        k.restore_output(Vec::new(), 1);
    }
    assert!(k.key_limit_reached());
    // TLS 1.2 has no KeyUpdate: it closes even where the kernel could rekey.
    let mut k12 = kernel_tls(
        handshaken(
            &rustls::version::TLS12,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        1000,
        true,
    );
    for _ in 0..1000 - 1000 / 16 {
        k12.restore_output(Vec::new(), 1);
    }
    assert!(!k12.tx_rekey_due());
    assert!(k12.key_limit_reached());
}

#[test]
fn an_idle_kernel_session_keeps_no_buffers() {
    let mut k = kernel_tls(tls13(), 1000, false);
    let mut pool = BufPool::new(POOL_BUFFER_CAPACITY, 4);
    k.queue(&[7; 60 * 1024]).unwrap();
    let out = k.take_output();
    k.restore_output(out, 60 * 1024);
    assert!(
        k.holds_output_buffer(),
        "kept for the next write of a burst"
    );
    let _ = k.recv_space(&mut pool);
    k.commit_recv(10);
    let mut plaintext = BytesMut::new();
    k.drain_into(&mut plaintext);
    k.release_idle(&mut pool);
    assert!(!k.holds_read_buffer());
    assert!(!k.has_pending_output());
    assert_eq!(pool.spare(), 1, "the read buffer went back to the pool");
    assert!(!k.holds_output_buffer(), "the output buffer is freed");
}

#[test]
fn nothing_is_queued_after_close_notify() {
    let mut k = kernel_tls(tls13(), 1000, false);
    k.queue(b"last words").unwrap();
    let (_c, s) = tcp_pair();
    // On a socket without the ULP the close_notify goes out as plain bytes; what matters here
    // is that no data may follow it.
    let _ = k.send_close_notify(s.as_fd());
    assert!(k.queue(b"more").is_err());
}

#[test]
fn the_required_error_names_what_is_missing_and_what_to_do() {
    let err = KtlsRequiredError {
        support: "no TCP ULP".into(),
    };
    assert_eq!(
        err.to_string(),
        "[tls] ktls = \"required\" but this kernel cannot offload every TLS version and cipher \
         the edge negotiates: no TCP ULP. Run on a kernel with kTLS (CONFIG_TLS, the tls module \
         loaded) or set [tls] ktls = \"auto\""
    );
}
