//! The ClientHello sniffer: what the edge reads from a connection's first handshake records
//! before rustls does (its unbuffered server API does not expose the server name), and the
//! early refusal of bytes that are not TLS at all.
//!
//! Sans-IO: it is handed every byte received so far and resumes where the last call stopped,
//! so a ClientHello dribbled in one-byte records costs linear work.

use crate::tls_wire::{CONTENT_HANDSHAKE, HANDSHAKE_CLIENT_HELLO, TLS12, TLS13};

/// A ClientHello larger than this (rustls' own limit is 64 KiB) is handed to rustls without
/// reading its server name first.
pub const MAX_SNIFFED_HELLO: usize = 0xffff + 4;

/// Largest record a TLS peer may send before encryption (RFC 8446, 5.1).
const MAX_PLAINTEXT_RECORD: usize = 16 * 1024;

/// ClientHello extensions the sniffer reads.
const EXT_SERVER_NAME: u16 = 0;
const EXT_SUPPORTED_VERSIONS: u16 = 43;

/// What the edge reads from a ClientHello before rustls does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloInfo {
    pub legacy_version: u16,
    /// TLS 1.2 or 1.3 offered (legacy_version, or the supported_versions extension).
    pub offers_tls12_or_later: bool,
    /// The host_name of the server_name extension, lower-cased, if it is a valid DNS name
    /// (rustls ignores IP addresses and refuses invalid names; so do we).
    pub sni: Option<String>,
}

/// One look at the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// The ClientHello is not complete yet: call again with more bytes.
    NeedMore,
    /// Something rustls judges (and refuses) better: an interleaved or oversized record,
    /// endless empty fragments, a malformed or huge hello. Stop sniffing, hand over.
    HandOver,
    /// The whole ClientHello was read.
    Hello(HelloInfo),
}

/// The first record is not a TLS handshake record (plain HTTP, SSH, garbage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotTls;

/// Gathers a ClientHello from one or more handshake records.
#[derive(Debug, Default)]
pub struct HelloSniffer {
    /// The records of `data[..pos]` are already gathered into `hello`.
    pos: usize,
    hello: Vec<u8>,
}

impl HelloSniffer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Looks at `data`, every byte received since the connection started (a call sees what
    /// the previous one saw, and maybe more). Once it returns anything but `NeedMore` the
    /// sniffer is done: drop it.
    pub fn sniff(&mut self, data: &[u8]) -> Result<Sniffed, NotTls> {
        match data {
            [] => return Ok(Sniffed::NeedMore),
            [t, ..] if *t != CONTENT_HANDSHAKE => return Err(NotTls),
            [_, major, ..] if *major != 3 => return Err(NotTls),
            [_, _, minor, ..] if *minor > 4 => return Err(NotTls),
            [_, _, _, hi, lo, ..]
                if !(1..=MAX_PLAINTEXT_RECORD)
                    .contains(&usize::from(u16::from_be_bytes([*hi, *lo]))) =>
            {
                return Err(NotTls)
            }
            _ => {}
        }
        loop {
            let pos = self.pos;
            let Some(header) = data.get(pos..pos + 5) else {
                return Ok(Sniffed::NeedMore);
            };
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if header[0] != CONTENT_HANDSHAKE
                || len > MAX_PLAINTEXT_RECORD
                || pos > MAX_SNIFFED_HELLO
            {
                return Ok(Sniffed::HandOver);
            }
            let Some(fragment) = data.get(pos + 5..pos + 5 + len) else {
                return Ok(Sniffed::NeedMore);
            };
            self.hello.extend_from_slice(fragment);
            self.pos = pos + 5 + len;
            let hello = &self.hello;
            if hello.len() >= 4 {
                let body_len = usize::from(hello[1]) << 16
                    | usize::from(hello[2]) << 8
                    | usize::from(hello[3]);
                if hello[0] != HANDSHAKE_CLIENT_HELLO || 4 + body_len > MAX_SNIFFED_HELLO {
                    return Ok(Sniffed::HandOver);
                }
                if hello.len() >= 4 + body_len {
                    return Ok(match parse_client_hello(&hello[4..4 + body_len]) {
                        Some(info) => Sniffed::Hello(info),
                        None => Sniffed::HandOver, // malformed: rustls sends decode_error
                    });
                }
            }
        }
    }
}

/// Parses a ClientHello body (after the 4-byte handshake header); `None` if malformed.
pub fn parse_client_hello(body: &[u8]) -> Option<HelloInfo> {
    let mut r = Reader(body);
    let legacy_version = r.u16()?;
    r.take(32)?; // random
    let n = r.u8()?;
    r.take(n.into())?; // legacy_session_id
    let n = r.u16()?;
    r.take(n.into())?; // cipher_suites
    let n = r.u8()?;
    r.take(n.into())?; // legacy_compression_methods
    let mut info = HelloInfo {
        legacy_version,
        offers_tls12_or_later: legacy_version >= TLS12,
        sni: None,
    };
    if r.0.is_empty() {
        return Some(info); // no extensions at all
    }
    let n = r.u16()?;
    let mut exts = Reader(r.take(n.into())?);
    while !exts.0.is_empty() {
        let typ = exts.u16()?;
        let n = exts.u16()?;
        let mut ext = Reader(exts.take(n.into())?);
        match typ {
            EXT_SERVER_NAME => {
                let n = ext.u16()?;
                let mut names = Reader(ext.take(n.into())?);
                while !names.0.is_empty() {
                    let name_type = names.u8()?;
                    let n = names.u16()?;
                    let name = names.take(n.into())?;
                    if name_type == 0 && info.sni.is_none() {
                        info.sni = std::str::from_utf8(name)
                            .ok()
                            .and_then(|name| rustls_pki_types::DnsName::try_from(name).ok())
                            .map(|dns| dns.to_lowercase_owned().as_ref().to_owned());
                    }
                }
            }
            EXT_SUPPORTED_VERSIONS => {
                // When present it replaces legacy_version (RFC 8446, 4.2.1).
                info.offers_tls12_or_later = false;
                let n = ext.u8()?;
                let mut versions = Reader(ext.take(n.into())?);
                while !versions.0.is_empty() {
                    if matches!(versions.u16()?, TLS12 | TLS13) {
                        info.offers_tls12_or_later = true;
                    }
                }
            }
            _ => {}
        }
    }
    Some(info)
}

/// A minimal big-endian reader for the ClientHello.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello record: legacy version, no suites, one server_name.
    fn hello_record(legacy: u16, sni: &str, versions: &[u16]) -> Vec<u8> {
        let mut body = legacy.to_be_bytes().to_vec();
        body.extend_from_slice(&[0; 32]);
        body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
        let mut exts = Vec::new();
        let name = sni.as_bytes();
        let list_len = 3 + name.len();
        exts.extend_from_slice(&EXT_SERVER_NAME.to_be_bytes());
        exts.extend_from_slice(&((2 + list_len) as u16).to_be_bytes());
        exts.extend_from_slice(&(list_len as u16).to_be_bytes());
        exts.push(0);
        exts.extend_from_slice(&(name.len() as u16).to_be_bytes());
        exts.extend_from_slice(name);
        if !versions.is_empty() {
            exts.extend_from_slice(&EXT_SUPPORTED_VERSIONS.to_be_bytes());
            exts.extend_from_slice(&((1 + 2 * versions.len()) as u16).to_be_bytes());
            exts.push((2 * versions.len()) as u8);
            for v in versions {
                exts.extend_from_slice(&v.to_be_bytes());
            }
        }
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut msg = vec![HANDSHAKE_CLIENT_HELLO, 0];
        msg.extend_from_slice(&(body.len() as u16).to_be_bytes());
        msg.extend_from_slice(&body);
        let mut rec = vec![CONTENT_HANDSHAKE, 3, 1];
        rec.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        rec.extend_from_slice(&msg);
        rec
    }

    #[test]
    fn reads_the_server_name_and_versions() {
        let rec = hello_record(TLS12, "Edge.Example", &[TLS13]);
        let Ok(Sniffed::Hello(info)) = HelloSniffer::new().sniff(&rec) else {
            panic!("one record holds the hello");
        };
        assert_eq!(info.sni.as_deref(), Some("edge.example"));
        assert!(info.offers_tls12_or_later);

        let old = hello_record(0x0302, "old.example", &[0x0302]);
        let Ok(Sniffed::Hello(info)) = HelloSniffer::new().sniff(&old) else {
            panic!("an old hello is read too");
        };
        assert!(
            !info.offers_tls12_or_later,
            "supported_versions replaces legacy_version"
        );

        let ip = hello_record(TLS12, "10.0.0.1", &[]);
        let Ok(Sniffed::Hello(info)) = HelloSniffer::new().sniff(&ip) else {
            panic!("an IP address in server_name is not an error");
        };
        assert_eq!(info.sni, None);
    }

    #[test]
    fn a_hello_dribbled_byte_by_byte_in_one_byte_records_is_gathered() {
        let rec = hello_record(TLS12, "a.example", &[]);
        // Re-frame the handshake message as one-byte records.
        let mut wire = Vec::new();
        for b in &rec[5..] {
            wire.extend_from_slice(&[CONTENT_HANDSHAKE, 3, 1, 0, 1, *b]);
        }
        let mut s = HelloSniffer::new();
        for end in 1..wire.len() {
            assert_eq!(s.sniff(&wire[..end]), Ok(Sniffed::NeedMore), "at {end}");
        }
        assert!(matches!(s.sniff(&wire), Ok(Sniffed::Hello(_))));
    }

    #[test]
    fn what_is_not_tls_is_refused_at_once_and_oddities_are_handed_to_rustls() {
        let s = || HelloSniffer::new();
        assert_eq!(s().sniff(b"GET / HTTP/1.1\r\n"), Err(NotTls));
        assert_eq!(s().sniff(&[22, 2]), Err(NotTls), "SSL 2/3-era major");
        assert_eq!(s().sniff(&[22, 3, 9]), Err(NotTls));
        assert_eq!(
            s().sniff(&[22, 3, 1, 0, 0]),
            Err(NotTls),
            "empty first record"
        );
        assert_eq!(
            s().sniff(&[22, 3, 1, 0x40, 1]),
            Err(NotTls),
            "record over 16 KiB"
        );
        assert_eq!(s().sniff(&[]), Ok(Sniffed::NeedMore));
        assert_eq!(
            s().sniff(&[22, 3, 1, 0, 4, 2, 0, 0, 0]),
            Ok(Sniffed::HandOver),
            "not a hello"
        );
        let rec = hello_record(TLS12, "a.example", &[]);
        let mut truncated = rec.clone();
        truncated[5 + 4 + 2 + 32] = 200; // session id longer than the body
        assert_eq!(s().sniff(&truncated), Ok(Sniffed::HandOver), "malformed");
        let mut interleaved = vec![22, 3, 1, 0, 1, rec[5]];
        interleaved.extend_from_slice(&[21, 3, 1, 0, 2, 1, 0]);
        assert_eq!(s().sniff(&interleaved), Ok(Sniffed::HandOver));
    }
}
