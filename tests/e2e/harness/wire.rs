//! WebSocket clients: tokio-tungstenite for well-formed sessions, and a small raw frame codec
//! (independent of the server's) for the frames tungstenite refuses to produce.

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::protocol::{Message, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::{
    header, read_head, send_all, status_code, upgrade_request, within, Server, WAIT, WS_ACCEPT,
    WS_KEY,
};

pub type Ws = WebSocketStream<TlsStream<TcpStream>>;

impl Server {
    /// A WebSocket client (tokio-tungstenite) over our own TLS stream, without client-side size
    /// limits so that the server's limits are the ones under test.
    pub async fn ws(&self) -> Ws {
        ws_over(self.tls().await, &self.url()).await
    }

    /// A raw-frame WebSocket connection: TLS + our own upgrade request.
    pub async fn raw(&self) -> RawWs {
        self.raw_over(self.tls().await).await
    }

    /// The same upgrade over a TLS stream the caller made (its own suite, version or ALPN).
    pub async fn raw_over(&self, mut tls: TlsStream<TcpStream>) -> RawWs {
        let req = upgrade_request(&self.addr.to_string(), WS_KEY, &[]);
        send_all(&mut tls, req.as_bytes())
            .await
            .expect("write upgrade");
        let (head, rest) = within(WAIT, "101 response", read_head(&mut tls))
            .await
            .expect("read 101");
        let status = status_code(&head);
        assert_eq!(status, Some(101), "upgrade refused: {head}");
        let accept = header(&head, "sec-websocket-accept").expect("Sec-WebSocket-Accept");
        assert_eq!(accept, WS_ACCEPT, "wrong accept key");
        RawWs::from_parts(tls, rest)
    }
}

pub fn unlimited_ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None)
}

pub async fn ws_over(tls: TlsStream<TcpStream>, url: &str) -> Ws {
    let (ws, resp) = within(
        WAIT,
        "WebSocket upgrade",
        tokio_tungstenite::client_async_with_config(url, tls, Some(unlimited_ws_config())),
    )
    .await
    .expect("WebSocket upgrade");
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// Sends `msg` and returns the next data message (pongs for our pings are skipped).
pub async fn echo(ws: &mut Ws, msg: Message) -> Message {
    within(WAIT, "send", ws.send(msg)).await.expect("send");
    next_data(ws).await
}

/// The next text/binary message (or close), skipping pings/pongs.
pub async fn next_data(ws: &mut Ws) -> Message {
    loop {
        let m = within(WAIT, "next message", ws.next()).await;
        match m {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return m,
            Some(Err(e)) => panic!("WebSocket error: {e}"),
            None => panic!("connection ended while waiting for a message"),
        }
    }
}

pub fn message_text(m: &Message) -> &str {
    match m {
        Message::Text(t) => t.as_str(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Encodes one frame. `mask: None` produces an (illegal from a client) unmasked frame.
pub fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    frame_rsv(fin, 0, opcode, payload, mask)
}

pub fn frame_rsv(fin: bool, rsv: u8, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(((fin as u8) << 7) | ((rsv & 0x7) << 4) | (opcode & 0x0f));
    let m = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

pub const MASK: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);

/// A masked client frame.
pub fn cframe(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(fin, opcode, payload, MASK)
}

pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == OP_CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
    /// The reason text of a close frame (lossy UTF-8; empty without one).
    pub fn close_reason(&self) -> String {
        match self.payload.get(2..) {
            Some(r) if self.opcode == OP_CLOSE => String::from_utf8_lossy(r).into_owned(),
            _ => String::new(),
        }
    }
}

/// What the server did next.
#[derive(Debug)]
pub enum Event {
    Frame(Frame),
    /// EOF or reset without (further) frames.
    Closed,
}

/// Takes one complete frame off the front of `buf`, if one is there (frames from any source:
/// a `FrameReader`, or plaintext a blocking rustls client collected).
pub fn take_frame(buf: &mut Vec<u8>) -> Option<Frame> {
    let b = &*buf;
    if b.len() < 2 {
        return None;
    }
    let fin = b[0] & 0x80 != 0;
    let rsv = (b[0] >> 4) & 0x7;
    let opcode = b[0] & 0x0f;
    let masked = b[1] & 0x80 != 0;
    let (len, mut off) = match b[1] & 0x7f {
        126 => {
            if b.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([b[2], b[3]]) as usize, 4)
        }
        127 => {
            if b.len() < 10 {
                return None;
            }
            (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            )
        }
        n => (n as usize, 2),
    };
    let mask = if masked {
        if b.len() < off + 4 {
            return None;
        }
        let k = [b[off], b[off + 1], b[off + 2], b[off + 3]];
        off += 4;
        Some(k)
    } else {
        None
    };
    if b.len() < off + len {
        return None;
    }
    let mut payload = b[off..off + len].to_vec();
    if let Some(k) = mask {
        for (i, x) in payload.iter_mut().enumerate() {
            *x ^= k[i % 4];
        }
    }
    buf.drain(..off + len);
    Some(Frame {
        fin,
        rsv,
        opcode,
        masked,
        payload,
    })
}

pub struct FrameReader<R> {
    pub io: R,
    pub buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Takes one complete frame off the front of `buf`, if one is there.
    pub fn parse_buffered(&mut self) -> Option<Frame> {
        take_frame(&mut self.buf)
    }

    /// The next frame, or `Closed` on EOF/reset. Panics after `WAIT`.
    pub async fn next(&mut self) -> Event {
        within(WAIT, "next frame from server", self.next_inner()).await
    }

    async fn next_inner(&mut self) -> Event {
        let mut chunk = vec![0u8; 65536];
        loop {
            if let Some(f) = self.parse_buffered() {
                return Event::Frame(f);
            }
            match self.io.read(&mut chunk).await {
                Ok(0) | Err(_) => return Event::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until a close frame arrives (returns its code, `None` for an empty close) or the
    /// stream ends (panics). Data frames and pings on the way are ignored.
    pub async fn expect_close(&mut self) -> Option<u16> {
        self.expect_close_frame().await.close_code()
    }

    /// Like `expect_close`, but returns the whole close frame (code and reason).
    pub async fn expect_close_frame(&mut self) -> Frame {
        loop {
            match self.next().await {
                Event::Frame(f) if f.opcode == OP_CLOSE => return f,
                Event::Frame(_) => continue,
                Event::Closed => panic!("connection ended without a close frame"),
            }
        }
    }

    /// Reads one whole data message (reassembling fragments; control frames skipped).
    pub async fn message(&mut self) -> (u8, Vec<u8>) {
        let mut kind = None;
        let mut data = Vec::new();
        loop {
            match self.next().await {
                Event::Frame(f) if f.opcode >= 0x8 => {
                    assert_ne!(
                        f.opcode,
                        OP_CLOSE,
                        "got close {:?} while waiting for a message",
                        f.close_code()
                    );
                }
                Event::Frame(f) => {
                    assert!(!f.masked, "server frames must not be masked");
                    if kind.is_none() {
                        assert_ne!(
                            f.opcode, OP_CONT,
                            "message started with a continuation frame"
                        );
                        kind = Some(f.opcode);
                    } else {
                        assert_eq!(
                            f.opcode, OP_CONT,
                            "new data frame inside a fragmented message"
                        );
                    }
                    data.extend_from_slice(&f.payload);
                    if f.fin {
                        return (kind.unwrap(), data);
                    }
                }
                Event::Closed => panic!("connection ended while waiting for a message"),
            }
        }
    }
}

pub struct RawWs<S = TlsStream<TcpStream>> {
    pub rd: FrameReader<ReadHalf<S>>,
    pub wr: WriteHalf<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawWs<S> {
    /// A raw connection over an already upgraded stream; `buffered` holds bytes read past the
    /// 101 (or past the last frame) that belong to the next frames.
    pub fn from_parts(stream: S, buffered: Vec<u8>) -> RawWs<S> {
        let (r, w) = tokio::io::split(stream);
        RawWs {
            rd: FrameReader {
                io: r,
                buf: buffered,
            },
            wr: w,
        }
    }
    /// The stream back (to reach its TLS state) and the bytes read but not yet parsed.
    pub fn into_parts(self) -> (S, Vec<u8>) {
        (self.rd.io.unsplit(self.wr), self.rd.buf)
    }
    pub async fn send(&mut self, bytes: &[u8]) {
        within(WAIT, "write frame", self.wr.write_all(bytes))
            .await
            .expect("write frame");
        self.wr.flush().await.expect("flush");
    }
    /// Like `send`, but tolerates the server having closed already.
    pub async fn send_lossy(&mut self, bytes: &[u8]) -> bool {
        match tokio::time::timeout(WAIT, self.wr.write_all(bytes)).await {
            Ok(Ok(())) => self.wr.flush().await.is_ok(),
            _ => false,
        }
    }
    pub async fn expect_close(&mut self) -> Option<u16> {
        self.rd.expect_close().await
    }
    pub async fn message(&mut self) -> (u8, Vec<u8>) {
        self.rd.message().await
    }
    pub async fn next(&mut self) -> Event {
        self.rd.next().await
    }
}
