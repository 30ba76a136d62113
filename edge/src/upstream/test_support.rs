//! Upstream TLS over the test PKI ([`crate::tls::testpki`]): the `[upstream.tls]` files for a
//! CA and an optional client certificate, and the production client config built from them.

use std::path::Path;
use std::sync::Arc;

use super::config::UpstreamTls;
use crate::tls::testpki::{Leaf, TestPki};

/// `[upstream.tls]` trusting `pki`, with `client` as the client certificate; the files are
/// written to `dir` (`ca.pem`, `client.pem`, `client.key`).
pub fn upstream_tls(pki: &TestPki, client: Option<&Leaf>, dir: &Path) -> UpstreamTls {
    let ca = pki.write_ca(dir, "ca.pem");
    let (cert, key) = client.map(|c| c.write(dir, "client")).unzip();
    UpstreamTls { ca, cert, key }
}

/// The production client config over [`upstream_tls`] (its files only live while it is built).
pub fn client_config(pki: &TestPki, client: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    let dir = tempfile::tempdir().unwrap();
    super::client_config(&upstream_tls(pki, client, dir.path())).unwrap()
}
