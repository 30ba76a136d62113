//! floor-tcp: raw TCP echo, no TLS and no WebSocket. The cost floor of the kernel path.

use clap::Parser;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use wssedge_peers::CommonArgs;

/// Raw TCP echo: copies whatever bytes arrive back to the sender.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    wssedge_peers::run(&cli.common, |mut sock| async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = sock.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            sock.write_all(&buf[..n]).await?;
        }
    })
}
