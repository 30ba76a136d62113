//! echo-plain: plain `ws://` WebSocket echo (tokio-tungstenite over TCP, no TLS); the
//! backend nginx proxies to.

use clap::Parser;
use wssedge_peers::CommonArgs;

/// Plain ws:// echo: text/binary messages come back unchanged; ping→pong; close→close.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    wssedge_peers::run(&cli.common, wssedge_peers::tungstenite_echo)
}
