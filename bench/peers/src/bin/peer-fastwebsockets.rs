//! peer-fastwebsockets: wss:// echo with fastwebsockets 0.10 (hyper 1 upgrade) over
//! tokio-rustls 0.26. A `FragmentCollector` reassembles fragmented messages; fastwebsockets
//! answers pings and closes itself (auto-pong, auto-close).

use std::convert::Infallible;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use fastwebsockets::upgrade::{self, UpgradeFut};
use fastwebsockets::{FragmentCollector, OpCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
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

async fn echo(fut: UpgradeFut) -> anyhow::Result<()> {
    let mut ws = fut.await.context("upgrade")?;
    ws.set_auto_pong(true);
    ws.set_auto_close(true);
    let mut ws = FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
}

async fn handle(
    mut req: Request<Incoming>,
    verbose: bool,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    if !upgrade::is_upgrade_request(&req) {
        return Ok(bad_request());
    }
    match upgrade::upgrade(&mut req) {
        Ok((response, fut)) => {
            tokio::spawn(async move {
                if let Err(e) = echo(fut).await {
                    if verbose {
                        eprintln!("websocket: {e:#}");
                    }
                }
            });
            Ok(response)
        }
        Err(_) => Ok(bad_request()),
    }
}

fn bad_request() -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let acceptor = wssedge_peers::tls_acceptor(&cli.tls)?;
    let verbose = cli.common.verbose;
    wssedge_peers::run(&cli.common, move |sock| {
        let acceptor = acceptor.clone();
        async move {
            let tls = acceptor.accept(sock).await?;
            http1::Builder::new()
                .serve_connection(
                    TokioIo::new(tls),
                    service_fn(move |req| handle(req, verbose)),
                )
                .with_upgrades()
                .await?;
            Ok(())
        }
    })
}
