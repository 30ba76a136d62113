//! peer-broadcast: wss:// pub/sub with tokio 1 + tokio-rustls 0.26 + tokio-tungstenite 0.30 and
//! one tokio `broadcast` channel per topic (the fan-out benchmark's Rust peer).

use clap::Parser;
use wssedge_peers::broadcast::{serve_connection, Hub};
use wssedge_peers::{CommonArgs, TlsArgs};

/// wss:// pub/sub speaking the client side of wssedge's protocol (subscribe, unsubscribe,
/// publish); a subscriber more than `--capacity` publications behind is closed with 1008.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    tls: TlsArgs,
    /// Publications a subscriber may fall behind (wssedge's `[pubsub] queue_messages`).
    #[arg(long, default_value_t = 4096)]
    capacity: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let acceptor = wssedge_peers::tls_acceptor(&cli.tls)?;
    let hub = Hub::new(cli.capacity);
    wssedge_peers::run(&cli.common, move |sock| {
        let acceptor = acceptor.clone();
        let hub = hub.clone();
        async move {
            let tls = acceptor.accept(sock).await?;
            serve_connection(tls, hub).await
        }
    })
}
