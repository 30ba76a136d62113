//! The request target's normal form, its refusals, prefix matching and the Host check; and
//! the property that matters: no spelling that a common server resolves to a protected path
//! gets past that path's prefix.

use proptest::prelude::*;

use super::*;
use crate::attack_spellings::{lenient, under, KNOWN};

fn ok(raw: &str) -> RequestTarget {
    RequestTarget::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"))
}

fn reason(raw: &str) -> &'static str {
    match RequestTarget::parse(raw) {
        Ok(t) => panic!("{raw}: accepted as {t}"),
        Err(e) => e.reason(),
    }
}

#[test]
fn reasons_are_pinned() {
    let reasons: Vec<&str> = TargetError::ALL.iter().map(TargetError::reason).collect();
    assert_eq!(
        reasons,
        [
            "bad_path",
            "fragment_in_target",
            "bad_target_char",
            "path_bad_escape",
            "path_control_byte",
            "path_encoded_space",
            "path_non_ascii",
            "path_double_encoding",
            "path_encoded_delimiter",
            "path_parameter",
            "path_backslash",
            "path_empty_segment",
            "path_dot_segment",
        ]
    );
}

#[test]
fn normal_forms() {
    for (raw, path, query) in [
        ("/", "/", None),
        ("/chat?x=1", "/chat", Some("x=1")),
        ("/a/", "/a/", None),
        ("/api/%61dmin/x", "/api/admin/x", None),
        ("/%7Euser/%2e%2E.", "/~user/...", None),
        ("/a%2Db_c.d~e", "/a-b_c.d~e", None),
        // Reserved characters and their escapes are not the same to every upstream: an
        // escape stays one (in uppercase hex), a character stays a character.
        (
            "/x%21%24%26%27%28%29%2a%2B%2c%3D%3A%40",
            "/x%21%24%26%27%28%29%2A%2B%2C%3D%3A%40",
            None,
        ),
        ("/x!$&'()*+,=:@", "/x!$&'()*+,=:@", None),
        (
            "/a%3Cc%3e%22%5B%5d%7B%7c%7d%5E%60",
            "/a%3Cc%3E%22%5B%5D%7B%7C%7D%5E%60",
            None,
        ),
        ("/Trade", "/Trade", None),
        ("/a..b/...", "/a..b/...", None),
        ("/p?", "/p", Some("")),
        ("/p?a=%2F&b=..;/\\|{}", "/p", Some("a=%2F&b=..;/\\|{}")),
        ("/p??x", "/p", Some("?x")),
    ] {
        let t = ok(raw);
        assert_eq!((t.path(), t.query()), (path, query), "{raw}");
        let whole = match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        assert_eq!(t.as_str(), whole);
        assert_eq!(t.to_string(), whole);
        // The normal form is a fixed point.
        assert_eq!(ok(t.as_str()), t, "{raw}");
    }
}

#[test]
fn refusals_name_their_reason() {
    for (raw, want) in [
        ("*", "bad_path"),
        ("http://h/x", "bad_path"),
        ("", "bad_path"),
        ("/x#f", "fragment_in_target"),
        ("/x?y#f", "fragment_in_target"),
        ("/%23#", "fragment_in_target"),
        ("/a<b", "bad_target_char"),
        ("/a|b", "bad_target_char"),
        ("/a[0]", "bad_target_char"),
        ("/caf\u{e9}", "bad_target_char"),
        ("/p?caf\u{e9}", "bad_target_char"),
        ("/a%", "path_bad_escape"),
        ("/a%4", "path_bad_escape"),
        ("/a%zz", "path_bad_escape"),
        ("/a%u002e", "path_bad_escape"),
        ("/%C0%AE%C0%AE/x", "path_non_ascii"),
        ("/%C3", "path_non_ascii"),
        ("/%FF", "path_non_ascii"),
        ("/caf%c3%a9", "path_non_ascii"),
        ("/api/adm%C4%B1n/x", "path_non_ascii"),
        ("/%EF%BC%8Fadmin", "path_non_ascii"),
        ("/trade%20", "path_encoded_space"),
        ("/a%20b", "path_encoded_space"),
        ("/a%00", "path_control_byte"),
        ("/a%0d%0a", "path_control_byte"),
        ("/a%7F", "path_control_byte"),
        ("/a%25", "path_double_encoding"),
        ("/%252e%252e/x", "path_double_encoding"),
        ("/a%2fb", "path_encoded_delimiter"),
        ("/a%2Fb", "path_encoded_delimiter"),
        ("/a%5cb", "path_encoded_delimiter"),
        ("/trade%3b", "path_encoded_delimiter"),
        ("/a%3Fb", "path_encoded_delimiter"),
        ("/a%23b", "path_encoded_delimiter"),
        ("/trade;x=1", "path_parameter"),
        ("/md/..;/trade", "path_parameter"),
        ("/a;", "path_parameter"),
        ("/a\\b", "path_backslash"),
        ("//admin", "path_empty_segment"),
        ("/a//b", "path_empty_segment"),
        ("/a//", "path_empty_segment"),
        ("/.", "path_dot_segment"),
        ("/..", "path_dot_segment"),
        ("/a/./b", "path_dot_segment"),
        ("/a/../b", "path_dot_segment"),
        ("/a/%2e/b", "path_dot_segment"),
        ("/a/.%2E", "path_dot_segment"),
        ("/a/%2e%2e/", "path_dot_segment"),
    ] {
        assert_eq!(reason(raw), want, "{raw}");
    }
}

#[test]
fn prefixes_match_segments_case_insensitively() {
    let p = |s: &str| PathPrefix::parse(s).unwrap();
    let api = p("/api");
    assert_eq!(api.strip("/api"), Some(""));
    assert_eq!(api.strip("/api/x"), Some("/x"));
    assert_eq!(api.strip("/API/x"), Some("/x"));
    assert_eq!(api.strip("/Api"), Some(""));
    assert_eq!(api.strip("/apiary"), None);
    assert_eq!(api.strip("/ap"), None);
    assert_eq!(api.strip("/"), None);
    let feeds = p("/feeds/");
    assert_eq!(feeds.strip("/feeds/x"), Some("/x"));
    assert_eq!(feeds.strip("/FEEDS/"), Some("/"));
    assert_eq!(feeds.strip("/feeds"), None);
    // A rule on the directory covers its bare name (a rule lookup's second try).
    assert!(!feeds.covers("/feeds") && feeds.covers_bare("/feeds") && feeds.covers_bare("/FEEDS"));
    assert!(!feeds.covers_bare("/feeds/x") && !feeds.covers_bare("/feed"));
    assert!(!p("/").covers_bare("") && !p("/api").covers_bare("/api"));
    let root = p("/");
    assert_eq!(root.strip("/a/b"), Some("/a/b"));
    assert_eq!(root.strip("/"), Some("/"));
    assert!(p("/Trade").covers("/trade/x"));
    assert!(p("/a").same_as(&p("/A")));
    assert!(!p("/a").same_as(&p("/a/")));
    assert_eq!(p("/x").to_string(), "/x");
    for bad in [
        "", "api", "/a?b", "/a#b", "/a/../b", "/a/./b", "//a", "/a//b", "/a;b", "/a\\b", "/a%41",
        "/a%2F", "/a b", "/é", "/a,b", "/a:b", "/a@b", "/a!", "/a=b",
    ] {
        assert_eq!(
            PathPrefix::parse(bad),
            Err(PathPrefix::REQUIREMENT),
            "{bad}"
        );
    }
}

#[test]
fn hosts() {
    for good in [
        "h",
        "edge.example.com",
        "edge.example.com:8443",
        "EDGE.example:1",
        "10.0.0.1",
        "10.0.0.1:65535",
        "[::1]",
        "[::1]:443",
        "[2001:db8::1]:8443",
        "xn--bcher-kva.example",
        "a_b-c.d",
    ] {
        assert!(valid_host(good), "{good}");
    }
    for bad in [
        "",
        ":80",
        "h:",
        "h:0x1",
        "h:65536",
        "h:123456",
        "h:1:2",
        "h:port",
        "h:0",
        "a%41b",
        "a%2Fb",
        "a,b",
        "a;b",
        "sub!$&'()*+=delims",
        "a~b",
        "evil.example/admin",
        "evil.example?x",
        "evil.example#x",
        "user@evil.example",
        "a\"b",
        "a\\b",
        "<script>",
        "a b",
        "a%4",
        "a%zz",
        "[::1",
        "[::1]x",
        "[::1]:",
        "[not-v6]",
        "[v1.future]",
        "[fe80::1%25eth0]",
        "caf\u{e9}",
    ] {
        assert!(!valid_host(bad), "{bad}");
    }
}

// ---------------------------------------------------------------------------------------------
// The property, against the model of what common servers make of a path
// ---------------------------------------------------------------------------------------------

#[test]
fn the_model_resolves_the_reported_spellings() {
    for &(raw, want) in KNOWN {
        assert_eq!(lenient(raw), want, "{raw}");
        let refused_or_caught = match RequestTarget::parse(raw) {
            Err(_) => true,
            Ok(t) => PathPrefix::parse(want).unwrap().covers(t.path()),
        };
        assert!(refused_or_caught, "{raw} gets past {want}");
    }
}

/// Protected paths the generator spells.
const PROTECTED: &[&str] = &[
    "/api/admin",
    "/api/admin/x",
    "/trade",
    "/trade/orders",
    "/admin/x",
    "/risk/kill",
];

/// One spelling of `path`: each character and each slash spelled one of the ways a lenient
/// server reads back as that character (or as nothing), per the choices in `how`.
fn spell(path: &str, how: &[u8], tail: u8) -> String {
    let mut out = String::new();
    let mut choices = how.iter().copied().cycle();
    let bytes = path.as_bytes();
    for (i, &c) in bytes.iter().enumerate() {
        let k = choices.next().unwrap_or(0);
        if c == b'/' {
            out.push_str(match (i, k % 18) {
                (_, 0..=3) => "/",
                (_, 4) => "//",
                (0, _) => "/",
                (_, 5) => "\\",
                (_, 6) => "%2F",
                (_, 7) => "%2f",
                (_, 8) => "/./",
                (_, 9) => "/.;/",
                (_, 10) => "/%2e/",
                (_, 11) => "/zz/../",
                (_, 12) => "/zz/..;/",
                (_, 13) => "/zz/%2e%2e/",
                (_, 14) => "/;a=b/",
                (_, 15) => "%5C",
                (_, 16) => "/%252e/",
                _ => "/zz/.%2E/",
            });
            continue;
        }
        match (k % 10, c) {
            (0..=2, _) => out.push(c as char),
            (3, _) => out.push(c.to_ascii_uppercase() as char),
            (4, _) => out.push_str(&format!("%{c:02X}")),
            (5, _) => out.push_str(&format!("%{c:02x}")),
            (6, _) => out.push_str(&format!("%25{c:02X}")),
            (7, _) => out.push_str(&format!("%{:02X}", c.to_ascii_uppercase())),
            // What Java's case-insensitive match reads as the ASCII letter.
            (8, b'i') => out.push_str("%C4%B1"),
            (8, b's') => out.push_str("%C5%BF"),
            (8, b'k') => out.push_str("%E2%84%AA"),
            _ => out.push(c as char),
        }
        // The end of a segment: maybe a parameter, maybe spaces a matcher trims.
        let segment_end = bytes.get(i + 1).is_none_or(|&n| n == b'/');
        if segment_end && k % 5 == 4 {
            out.push_str(";jsessionid=1");
        }
        if segment_end && k % 7 == 6 {
            out.push_str("%20");
        }
    }
    out.push_str(match tail % 5 {
        0 | 1 => "",
        2 => "?q=1",
        3 => "#frag",
        _ => "?a=b#c",
    });
    out
}

/// The generator reaches both sides: spellings the edge normalises (case, escapes of
/// unreserved characters) and spellings it refuses, so the property below tests both.
#[test]
fn the_spelling_generator_covers_accepted_and_refused_spellings() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..4000 {
        let how: Vec<u8> = (0..24).map(|_| next() as u8).collect();
        let protected = PROTECTED[i % PROTECTED.len()];
        let raw = spell(protected, &how, next() as u8);
        assert!(under(&lenient(&raw), protected), "{raw}");
        match RequestTarget::parse(&raw) {
            Ok(t) => {
                accepted += 1;
                assert!(
                    PathPrefix::parse(protected).unwrap().covers(t.path()),
                    "{raw}"
                );
            }
            Err(_) => refused += 1,
        }
    }
    assert!(
        accepted > 100 && refused > 100,
        "{accepted} accepted, {refused} refused"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, failure_persistence: None, ..ProptestConfig::default() })]

    /// No spelling of a protected path that a lenient server resolves to it gets past its
    /// prefix: it is refused, or normalised into a path the prefix covers.
    #[test]
    fn spellings_of_a_protected_path_are_refused_or_caught(
        which in 0..PROTECTED.len(),
        how in proptest::collection::vec(any::<u8>(), 1..40),
        tail in any::<u8>(),
    ) {
        let protected = PROTECTED[which];
        let raw = spell(protected, &how, tail);
        prop_assert!(under(&lenient(&raw), protected), "model: {} is {}", raw, lenient(&raw));
        if let Ok(t) = RequestTarget::parse(&raw) {
            prop_assert!(
                PathPrefix::parse(protected).unwrap().covers(t.path()),
                "{} normalised to {} gets past {}", raw, t, protected
            );
        }
    }

    /// For any target the edge accepts: every prefix decides about the normal path exactly as
    /// it would about what a lenient upstream makes of the raw target and of the forwarded
    /// normal one; and the normal form is a fixed point.
    #[test]
    fn an_accepted_target_means_one_thing_to_every_server(
        raw in "/[aAdD/.;%25eEfF2c\\\\?#=x]{0,24}",
    ) {
        if let Ok(t) = RequestTarget::parse(&raw) {
            prop_assert_eq!(&RequestTarget::parse(t.as_str()).unwrap(), &t);
            // (A prefix ending in `/` covers what is below it, not the bare path, while a lenient
            // server merges `/d/` and `/d`: that is the rule's meaning, not a spelling.)
            for prefix in ["/", "/a", "/a/d", "/ad", "/a.d", "/d"] {
                let p = PathPrefix::parse(prefix).unwrap();
                let ours = p.covers(t.path());
                prop_assert_eq!(ours, under(&lenient(t.as_str()), prefix), "{} as {} under {}", raw, t, prefix);
                prop_assert_eq!(ours, under(&lenient(&raw), prefix), "{} as {} under {}", raw, t, prefix);
            }
        }
    }

    #[test]
    fn never_panics(raw in "\\PC{0,40}") {
        let _ = RequestTarget::parse(&raw);
        let _ = valid_host(&raw);
        let _ = PathPrefix::parse(&raw);
    }
}
