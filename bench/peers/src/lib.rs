//! Shared pieces of the peer servers that `cargo xtask bench` measures side by side with
//! wssedge: the common command line, runtime construction, the TLS acceptor, the accept
//! loop (TCP_NODELAY on every socket, one task per connection, errors stay per connection),
//! the tokio-tungstenite echo used by two peers, and the nginx config renderer.

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::{StreamExt as _, TryStreamExt as _};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

/// Options every peer takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Address to listen on (port 0 picks a free port; the chosen one is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Runtime worker threads: 1 = current-thread runtime, N > 1 = multi-thread with N workers.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: u16,
    /// Report per-connection errors on stderr (off by default: benchmarks end connections abruptly).
    #[arg(long)]
    pub verbose: bool,
}

/// Certificate options of the TLS peers.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate chain (leaf first).
    #[arg(long)]
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[arg(long)]
    pub key: PathBuf,
}

/// The tokio runtime the `--threads` option asks for.
pub fn runtime(threads: u16) -> anyhow::Result<tokio::runtime::Runtime> {
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(threads))
            .enable_all()
            .build()?
    };
    Ok(rt)
}

/// A rustls server config (aws-lc-rs provider, TLS 1.2 and 1.3, ALPN `http/1.1`).
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<rustls::ServerConfig> {
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", cert.display());
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A tokio-rustls acceptor over [`server_config`].
pub fn tls_acceptor(tls: &TlsArgs) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server_config(
        &tls.cert, &tls.key,
    )?)))
}

/// Binds `addr` and prints the one `listening on ADDR` line (resolved port) on stdout.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {local}")?;
    out.flush()?;
    Ok(listener)
}

/// Accepts forever: sets TCP_NODELAY and runs `handler` on its own task per connection.
/// A failing connection is dropped (and reported with `verbose`); the server keeps going.
pub async fn serve<F, Fut>(listener: TcpListener, verbose: bool, handler: F) -> anyhow::Result<()>
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning or exiting.
                if verbose {
                    eprintln!("accept: {e}");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if let Err(e) = sock.set_nodelay(true) {
            if verbose {
                eprintln!("{peer}: TCP_NODELAY: {e}");
            }
        }
        let conn = handler(sock);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                if verbose {
                    eprintln!("{peer}: {e:#}");
                }
            }
        });
    }
}

/// Parses the arguments, builds the runtime, binds and serves: the whole `main` of a peer.
pub fn run<F, Fut>(common: &CommonArgs, handler: F) -> anyhow::Result<()>
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let rt = runtime(common.threads)?;
    rt.block_on(async {
        let listener = bind(common.listen).await?;
        serve(listener, common.verbose, handler).await
    })
}

/// The tokio-tungstenite echo: accept the upgrade, then forward every text/binary message
/// back. tungstenite answers pings and closes itself; `forward` feeds messages as they come
/// and flushes whenever the read side has nothing more ready (one flush per batch).
pub async fn tungstenite_echo<S>(stream: S) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ws = tokio_tungstenite::accept_async(stream)
        .await
        .context("websocket handshake")?;
    let (sink, source) = ws.split();
    source
        .try_filter(|msg| std::future::ready(msg.is_text() || msg.is_binary()))
        .forward(sink)
        .await
        .context("echo")?;
    Ok(())
}

pub mod broadcast;
pub mod nginx;
pub use nginx::{nginx_args, render_nginx_conf, NGINX_CONF_TEMPLATE};
