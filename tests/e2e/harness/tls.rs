//! TLS clients (tokio-rustls) that trust the server's CA, with strict and tolerant handshakes.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use super::{within, Server, WAIT};

impl Server {
    pub fn tls_config(&self) -> Arc<ClientConfig> {
        let ca = self
            .ca_pem
            .as_ref()
            .expect("server runs with the dev certificate");
        client_config_trusting(ca, &[])
    }

    /// TCP + TLS to the server, trusting its dev CA (server name 127.0.0.1).
    pub async fn tls(&self) -> TlsStream<TcpStream> {
        tls_connect(self.addr, self.tls_config()).await
    }
}

pub fn client_config_trusting(ca_pem: &Path, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots_trusting(ca_pem))
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// A root store holding every certificate of the PEM file `ca_pem`.
pub fn roots_trusting(ca_pem: &Path) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_pem)
        .unwrap_or_else(|e| panic!("read {}: {e}", ca_pem.display()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("parse {}: {e}", ca_pem.display()));
    assert!(
        !certs.is_empty(),
        "{} holds no certificate",
        ca_pem.display()
    );
    for c in certs {
        roots.add(c).expect("add CA");
    }
    roots
}

pub async fn tls_connect(addr: SocketAddr, cfg: Arc<ClientConfig>) -> TlsStream<TcpStream> {
    within(WAIT, "TLS connect", async {
        let tcp = TcpStream::connect(addr).await.expect("TCP connect");
        tcp.set_nodelay(true).unwrap();
        let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
        TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .expect("TLS handshake")
    })
    .await
}

/// TCP + TLS, reporting a failed handshake (or a timeout) instead of panicking.
pub async fn try_tls_connect(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "TCP connect timed out")
        })??;
    try_tls_over(tcp, cfg).await
}

/// The TLS handshake over a connected `tcp` (bounded by `WAIT`).
pub async fn try_tls_over(
    tcp: TcpStream,
    cfg: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    match tokio::time::timeout(WAIT, TlsConnector::from(cfg).connect(name, tcp)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("TLS connect did not finish within {WAIT:?}"),
        )),
    }
}
