//! Cheap byte scans of the fan-out messages (no JSON parse on the hot path) and the reader of
//! nchan's HTTP publish responses.
//!
//! What they rely on: deliveries are `{"topic":"…","seq":S,"data":{"t":T,"n":N,"p":"…"}}`
//! with `data` byte for byte as wssbench published it (compact, `p` last), topic names never
//! contain quotes, and answers to requests start with `{"op":"…"`.

/// The publisher's stamp inside `data`: intended send time (ns since the run's base) and
/// publication number (1, 2, 3…).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub t: u64,
    pub n: u64,
}

/// One server message of the json protocol, classified.
#[derive(Debug, PartialEq, Eq)]
pub enum Msg {
    /// A publication; `seq` from the part before `"data":`.
    Delivery {
        seq: Option<u64>,
        stamp: Stamp,
    },
    /// `{"op":"subscribed",…}` with the topic's last seq, if it says one.
    Subscribed {
        seq: Option<u64>,
    },
    Published,
    Error,
    /// Anything else (another op, a delivery whose data wssbench did not write).
    Other,
}

const DATA_KEY: &[u8] = b"\"data\":";
const OP_PREFIX: &[u8] = b"{\"op\":\"";
/// Where `t` and `n` must be found in `data` if `p` is not (they come first).
const STAMP_HEAD: usize = 64;

/// Every needle here starts with a quote: jump from quote to quote (building a `memmem`
/// searcher per call would cost more than the short scans it does).
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    debug_assert_eq!(needle.first(), Some(&b'"'));
    memchr::memchr_iter(b'"', hay).find(|&i| hay[i..].starts_with(needle))
}

/// The unsigned integer right after `key` in `region`.
fn number_after(region: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(region, key)? + key.len();
    let digits = region[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 || digits > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in &region[at..at + digits] {
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// `t` and `n` from a `data` value (or an nchan delivery, which is the data alone); only the
/// part before `"p":` is looked at, so the pad can hold anything.
pub fn stamp(data: &[u8]) -> Option<Stamp> {
    let head = match find(&data[..data.len().min(STAMP_HEAD + 4)], b"\"p\":") {
        Some(p) => &data[..p],
        None => &data[..data.len().min(STAMP_HEAD)],
    };
    Some(Stamp {
        t: number_after(head, b"\"t\":")?,
        n: number_after(head, b"\"n\":")?,
    })
}

/// Classifies one text message of the json protocol.
pub fn json_message(m: &[u8]) -> Msg {
    if let Some(rest) = m.strip_prefix(OP_PREFIX) {
        let op = &rest[..rest.iter().position(|&b| b == b'"').unwrap_or(rest.len())];
        return match op {
            b"subscribed" => Msg::Subscribed {
                seq: number_after(rest, b"\"seq\":"),
            },
            b"published" => Msg::Published,
            b"error" => Msg::Error,
            _ => Msg::Other,
        };
    }
    let Some(d) = find(m, DATA_KEY) else {
        return Msg::Other;
    };
    match stamp(&m[d + DATA_KEY.len()..]) {
        Some(stamp) => Msg::Delivery {
            seq: number_after(&m[..d], b"\"seq\":"),
            stamp,
        },
        None => Msg::Other,
    }
}

/// The `data` value wssbench publishes: exactly `size` bytes when `size` ≥ [`data_min`].
pub fn write_data(t: u64, n: u64, size: usize, out: &mut Vec<u8>) {
    use std::io::Write as _;
    let start = out.len();
    let _ = write!(out, "{{\"t\":{t},\"n\":{n},\"p\":\"");
    let pad = size.saturating_sub(out.len() - start + 2);
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}");
}

/// The smallest `data` for these largest `t` and `n`.
pub fn data_min(t_max: u64, n_max: u64) -> usize {
    let digits = |v: u64| v.checked_ilog10().unwrap_or(0) as usize + 1;
    r#"{"t":,"n":,"p":""}"#.len() + digits(t_max) + digits(n_max)
}

/// A complete HTTP/1.1 response at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// Head and body: what to consume.
    pub len: usize,
    /// The server will close the connection after it.
    pub close: bool,
}

/// Largest response head and body accepted.
pub const MAX_HTTP_HEAD: usize = 16 << 10;
pub const MAX_HTTP_BODY: usize = 1 << 20;

/// `Ok(None)`: incomplete; `Err`: malformed, too large, or without a length.
pub fn http_response(buf: &[u8]) -> Result<Option<HttpResponse>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let head = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HTTP_HEAD {
                return Err("http: response head too large".into());
            }
            return Ok(None);
        }
        Err(e) => return Err(format!("http: {e}")),
    };
    let status = r.code.unwrap_or(0);
    let mut length = None;
    let mut chunked = false;
    let mut close = r.version == Some(0);
    for h in r.headers.iter() {
        let v = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let l: usize = v.parse().map_err(|_| "http: bad content-length")?;
            if l > MAX_HTTP_BODY {
                return Err("http: body too large".into());
            }
            length = Some(l);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().ends_with("chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = v.eq_ignore_ascii_case("close");
        }
    }
    let body = if (100..200).contains(&status) || status == 204 || status == 304 {
        Some(0)
    } else if chunked {
        chunked_len(&buf[head..])?
    } else if let Some(l) = length {
        (buf.len() >= head + l).then_some(l)
    } else {
        return Err(format!("http: status {status} without a length"));
    };
    Ok(body.map(|b| HttpResponse {
        status,
        len: head + b,
        close,
    }))
}

/// The length of a complete chunked body (trailers included), or `None` if incomplete.
fn chunked_len(b: &[u8]) -> Result<Option<usize>, String> {
    let mut at = 0;
    loop {
        let Some(eol) = memchr::memmem::find(&b[at..], b"\r\n") else {
            return if b.len() - at > 1024 {
                Err("http: bad chunk line".into())
            } else {
                Ok(None)
            };
        };
        let line = std::str::from_utf8(&b[at..at + eol]).map_err(|_| "http: bad chunk line")?;
        let hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(hex, 16).map_err(|_| "http: bad chunk size")?;
        if size > MAX_HTTP_BODY || at > MAX_HTTP_BODY {
            return Err("http: body too large".into());
        }
        at += eol + 2;
        if size == 0 {
            // trailers, then an empty line
            loop {
                let Some(eol) = memchr::memmem::find(&b[at..], b"\r\n") else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some(at));
                }
                if at > MAX_HTTP_BODY {
                    return Err("http: trailers too large".into());
                }
            }
        }
        if b.len() < at + size + 2 {
            return Ok(None);
        }
        if &b[at + size..at + size + 2] != b"\r\n" {
            return Err("http: chunk without CRLF".into());
        }
        at += size + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(t: u64, n: u64, size: usize) -> Vec<u8> {
        let mut v = Vec::new();
        write_data(t, n, size, &mut v);
        v
    }

    #[test]
    fn data_has_the_asked_size_and_parses_as_json() {
        for (t, n, size) in [(0, 1, 64), (123_456_789_012, 99_999, 1024), (9, 9, 20)] {
            let d = data(t, n, size);
            assert_eq!(d.len(), size, "{}", String::from_utf8_lossy(&d));
            let v: serde_json::Value = serde_json::from_slice(&d).unwrap();
            assert_eq!(v["t"], t);
            assert_eq!(v["n"], n);
            assert_eq!(stamp(&d), Some(Stamp { t, n }));
        }
        assert_eq!(data_min(9, 9), 20);
        assert_eq!(data_min(10, 0), 21);
        // below the minimum: no pad, still valid
        assert_eq!(data(1, 1, 5), br#"{"t":1,"n":1,"p":""}"#);
    }

    #[test]
    fn delivery_seq_and_stamp() {
        let mut m = br#"{"topic":"trades.BTC-USD","seq":58,"data":"#.to_vec();
        m.extend(data(1_000_000, 7, 64));
        m.push(b'}');
        assert_eq!(
            json_message(&m),
            Msg::Delivery {
                seq: Some(58),
                stamp: Stamp { t: 1_000_000, n: 7 }
            }
        );
    }

    #[test]
    fn keys_inside_the_pad_do_not_confuse() {
        // a pad that spells seq, data, t and n must not be read
        let m = br#"{"topic":"a.b","seq":3,"data":{"t":5,"n":6,"p":"\"seq\":9,\"data\":{\"t\":1,\"n\":2"}}"#;
        assert_eq!(
            json_message(m),
            Msg::Delivery {
                seq: Some(3),
                stamp: Stamp { t: 5, n: 6 }
            }
        );
        // the stamp keys must come before p
        assert_eq!(stamp(br#"{"p":"x","t":1,"n":2}"#), None);
        assert_eq!(stamp(br#"{"t":1,"p":"\"n\":2"}"#), None);
    }

    #[test]
    fn answers() {
        assert_eq!(
            json_message(
                br#"{"op":"subscribed","id":1,"topics":[{"topic":"x","epoch":"e","seq":57,"recovered":true}]}"#
            ),
            Msg::Subscribed { seq: Some(57) }
        );
        assert_eq!(
            json_message(br#"{"op":"subscribed","id":1,"topics":["x"]}"#),
            Msg::Subscribed { seq: None }
        );
        assert_eq!(
            json_message(br#"{"op":"published","id":3,"seq":58}"#),
            Msg::Published
        );
        assert_eq!(
            json_message(br#"{"op":"error","id":3,"reason":"not_allowed"}"#),
            Msg::Error
        );
        assert_eq!(json_message(br#"{"op":"unsubscribed","id":2}"#), Msg::Other);
        assert_eq!(
            json_message(br#"{"topic":"x","seq":1,"data":[1,2]}"#),
            Msg::Other
        );
        assert_eq!(json_message(b"garbage"), Msg::Other);
    }

    #[test]
    fn numbers_are_bounded() {
        assert_eq!(
            number_after(b"\"seq\":18446744073709551615", b"\"seq\":"),
            Some(u64::MAX)
        );
        assert_eq!(
            number_after(b"\"seq\":18446744073709551616", b"\"seq\":"),
            None
        );
        assert_eq!(number_after(b"\"seq\":-1", b"\"seq\":"), None);
        assert_eq!(number_after(b"\"seq\":", b"\"seq\":"), None);
    }

    #[test]
    fn nchan_responses() {
        let r201 = b"HTTP/1.1 201 Created\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 11\r\nConnection: keep-alive\r\n\r\nqueued: 1\r\nXY";
        let want = HttpResponse {
            status: 201,
            len: r201.len() - 2,
            close: false,
        };
        assert_eq!(http_response(r201).unwrap(), Some(want));
        // every prefix is incomplete, never an error
        for cut in 0..r201.len() - 2 {
            assert_eq!(http_response(&r201[..cut]).unwrap(), None, "cut {cut}");
        }
        let chunked = b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        assert_eq!(
            http_response(chunked).unwrap(),
            Some(HttpResponse {
                status: 202,
                len: chunked.len() - 4,
                close: true
            })
        );
        for cut in 0..chunked.len() - 4 {
            assert_eq!(http_response(&chunked[..cut]).unwrap(), None, "cut {cut}");
        }
        assert_eq!(
            http_response(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap(),
            Some(HttpResponse {
                status: 100,
                len: 25,
                close: false
            })
        );
        assert!(http_response(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n").is_err());
        assert!(http_response(b"NOT HTTP\r\n\r\n").is_err());
        assert!(http_response(&vec![b'a'; MAX_HTTP_HEAD + 1]).is_err());
        assert!(
            http_response(b"HTTP/1.1 201 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }
}
