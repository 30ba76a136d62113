//! HTTP/1.1 as the tests speak it: upgrade requests, response heads, one-shot GETs.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{within, WAIT};

pub fn upgrade_request(host: &str, key: &str, extra: &[(&str, &str)]) -> String {
    upgrade_request_path("/", host, key, extra)
}

/// [`upgrade_request`] for another request target (`/path?query`).
pub fn upgrade_request_path(path: &str, host: &str, key: &str, extra: &[(&str, &str)]) -> String {
    let mut r = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in extra {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r
}

/// Writes `bytes` and flushes them. Over TLS the flush is what sends them: tokio-rustls's
/// `write_all` returns once rustls holds the bytes, and leaves them there whenever the socket
/// does not take them at once — which tokio's cooperative budget makes happen to a task that
/// drives many connections (60 upgrades in one `join_all` lost a request that way).
pub async fn send_all<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

/// Reads an HTTP response head (up to the blank line). Returns the head and any bytes after it.
pub async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "EOF before end of response head; got {:?}",
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 1 << 20 {
            return Err(std::io::Error::other("response head too large"));
        }
    }
}

pub fn status_code(head: &str) -> Option<u16> {
    let line = head.lines().next()?;
    let mut parts = line.split_whitespace();
    let proto = parts.next()?;
    if !proto.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Reads until EOF (or a reset), bounded by `d`. Returns the bytes and whether the stream ended
/// (false: still open at the deadline).
pub async fn read_to_close<S: AsyncRead + Unpin>(s: &mut S, d: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + d;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => {
                out.extend_from_slice(&chunk[..n]);
                if out.len() > 64 << 20 {
                    return (out, false);
                }
            }
        }
    }
}

/// A one-shot HTTP/1.1 GET with `Connection: close`; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    within(WAIT, "admin HTTP GET", async {
        let mut s = TcpStream::connect(addr).await.expect("connect admin");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let (head, mut rest) = read_head(&mut s).await.expect("response head");
        let status = status_code(&head).unwrap_or_else(|| panic!("bad status line: {head}"));
        if let Some(len) = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok()) {
            while rest.len() < len {
                let mut chunk = vec![0u8; 65536];
                let n = s.read(&mut chunk).await.expect("read body");
                if n == 0 {
                    break;
                }
                rest.extend_from_slice(&chunk[..n]);
            }
            rest.truncate(len);
        } else if header(&head, "transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            s.read_to_end(&mut rest).await.expect("read body");
            rest = dechunk(&rest);
        } else {
            s.read_to_end(&mut rest).await.expect("read body");
        }
        (status, String::from_utf8_lossy(&rest).into_owned())
    })
    .await
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let size_str = String::from_utf8_lossy(&b[..i]);
        let size =
            usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        b = &b[i + 2..];
        if size == 0 || b.len() < size {
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[(size + 2).min(b.len())..];
    }
    out
}
