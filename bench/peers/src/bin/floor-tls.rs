//! floor-tls: raw TLS echo with tokio-rustls, no WebSocket. The cost floor of TLS alone.

use clap::Parser;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use wssedge_peers::{CommonArgs, TlsArgs};

/// Raw TLS echo: decrypts whatever arrives and sends it back encrypted.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    tls: TlsArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let acceptor = wssedge_peers::tls_acceptor(&cli.tls)?;
    wssedge_peers::run(&cli.common, move |sock| {
        let acceptor = acceptor.clone();
        async move {
            let mut tls = acceptor.accept(sock).await?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = tls.read(&mut buf).await?;
                if n == 0 {
                    tls.shutdown().await?;
                    return Ok(());
                }
                tls.write_all(&buf[..n]).await?;
                tls.flush().await?;
            }
        }
    })
}
