//! peer-tungstenite: wss:// echo with tokio 1 + tokio-rustls 0.26 + tokio-tungstenite 0.30.

use clap::Parser;
use wssedge_peers::{CommonArgs, TlsArgs};

/// wss:// echo: text/binary messages come back unchanged; ping→pong; close→close.
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
            let tls = acceptor.accept(sock).await?;
            wssedge_peers::tungstenite_echo(tls).await
        }
    })
}
