//! A test corpus shared by this crate's unit tests and the end-to-end suite: spellings of
//! protected paths that common servers read back as those paths, and a model of such a
//! lenient server. The edge itself never uses it.

/// Spellings reported against path rules, each with the path a lenient server serves for it.
/// The unit tests check that the target parser refuses each or normalises it under its rule;
/// the end-to-end tests send each through the edge and expect it refused.
pub const KNOWN: &[(&str, &str)] = &[
    ("/api/%61dmin/x", "/api/admin/x"),
    ("//admin/x", "/admin/x"),
    ("/trade;x=1", "/trade"),
    ("/md/..;/trade", "/trade"),
    ("/trade%3b", "/trade"),
    ("/Trade", "/trade"),
    ("/u/..%2fsecret", "/secret"),
    ("/u/%2F..%2F..%2Fsecret", "/secret"),
    ("/u/..\\secret", "/secret"),
    ("/u/%252e%252e/secret", "/secret"),
];

/// The path a lenient server serves for `target` — the union of what Tomcat, Jetty, Spring,
/// nginx and Go do: query and fragment cut, percent-decoding until nothing changes (so double
/// encoding too), `\` read as `/`, `;parameters` dropped from every segment (so `..;` is
/// `..`), whitespace trimmed from segments (Spring's `trimTokens`), slashes merged, dot
/// segments resolved, and case ignored the way Java does (`equalsIgnoreCase`: `ı` is `i`,
/// `ſ` is `s`, the Kelvin sign is `k`).
pub fn lenient(target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let mut p = path.as_bytes().to_vec();
    for _ in 0..8 {
        let next = decode_once(&p);
        if next == p {
            break;
        }
        p = next;
    }
    let p = String::from_utf8_lossy(&p).replace('\\', "/");
    let p: String = p
        .chars()
        .map(|c| match c {
            '\u{131}' => 'i',
            '\u{17f}' => 's',
            '\u{212a}' => 'k',
            c => c,
        })
        .collect();
    let mut out: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg.split(';').next().unwrap_or_default().trim() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/")).to_ascii_lowercase()
}

/// Whether a lenient server's `path` is `prefix` or below it (segment-wise).
pub fn under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// One round of percent-decoding; a bad escape stays as it is.
fn decode_once(s: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}
