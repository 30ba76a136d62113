//! Finding the token: each source, their combinations, and what is refused.

use crate::jwt::{extract_token, redact_query_token, JwtConfig, TokenSource, TokenSources};

fn sources(list: &[TokenSource]) -> TokenSources {
    TokenSources::from_config(&JwtConfig {
        sources: list.to_vec(),
        ..JwtConfig::default()
    })
}

fn protos(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

const ALL: &[TokenSource] = &[
    TokenSource::Header,
    TokenSource::Subprotocol,
    TokenSource::Query,
];

#[test]
fn authorization_header() {
    let s = sources(&[TokenSource::Header]);
    for h in [
        "Bearer abc.def.ghi",
        "bearer abc.def.ghi",
        "BEARER   abc.def.ghi",
        " Bearer abc.def.ghi ",
    ] {
        let t = extract_token(&s, Some(h), &[], None).unwrap().unwrap();
        assert_eq!(
            (t.token.as_str(), t.source),
            ("abc.def.ghi", TokenSource::Header),
            "{h}"
        );
        assert!(t.app_protocols.is_empty());
    }
    // Another scheme is no bearer token; no header is none either.
    assert_eq!(
        extract_token(&s, Some("Basic dXNlcjpwYXNz"), &[], None),
        Ok(None)
    );
    assert_eq!(extract_token(&s, None, &[], None), Ok(None));
    assert_eq!(extract_token(&s, Some("Bearerabc"), &[], None), Ok(None));
    for bad in ["Bearer", "Bearer ", "Bearer a b", "Bearer a,b"] {
        let e = extract_token(&s, Some(bad), &[], None).unwrap_err();
        assert_eq!(e.reason(), "token_malformed", "{bad}");
    }
    let big = format!("Bearer {}", "a".repeat(8193));
    assert_eq!(
        extract_token(&s, Some(&big), &[], None)
            .unwrap_err()
            .reason(),
        "token_too_large"
    );
}

#[test]
fn subprotocol_selects_the_app_protocol_and_never_the_token() {
    let s = sources(&[TokenSource::Subprotocol]);
    let t = extract_token(&s, None, &protos(&["chat.v2", "bearer.abc.def.ghi"]), None)
        .unwrap()
        .unwrap();
    assert_eq!(t.token, "abc.def.ghi");
    assert_eq!(t.source, TokenSource::Subprotocol);
    assert_eq!(t.app_protocol(), Some("chat.v2"));
    // Order does not matter; every non-bearer offer stays selectable, in the client's order.
    let t = extract_token(&s, None, &protos(&["bearer.x.y.z", "v1", "v2"]), None)
        .unwrap()
        .unwrap();
    assert_eq!(t.app_protocols, protos(&["v1", "v2"]));
    assert!(t.app_protocols.iter().all(|p| !p.contains("x.y.z")));
    // A bearer offer alone: the 101 would have nothing to select but the token.
    let e = extract_token(&s, None, &protos(&["bearer.x.y.z"]), None).unwrap_err();
    assert_eq!(
        (e.reason(), e.status()),
        ("bearer_without_app_protocol", 400)
    );
    let e = extract_token(&s, None, &protos(&["v1", "bearer.a", "bearer.b"]), None).unwrap_err();
    assert_eq!(e.reason(), "token_ambiguous");
    let e = extract_token(&s, None, &protos(&["v1", "bearer."]), None).unwrap_err();
    assert_eq!(e.reason(), "token_malformed");
    // Prefixes are case-sensitive like subprotocol names.
    assert_eq!(
        extract_token(&s, None, &protos(&["v1", "Bearer.x"]), None),
        Ok(None)
    );
    assert_eq!(extract_token(&s, None, &protos(&["v1"]), None), Ok(None));
}

#[test]
fn query_parameter_is_percent_decoded() {
    let s = sources(&[TokenSource::Query]);
    let get = |q: &str| extract_token(&s, None, &[], Some(q));
    assert_eq!(get("access_token=a.b.c").unwrap().unwrap().token, "a.b.c");
    assert_eq!(
        get("?room=1&access_token=a%2Eb.c&x")
            .unwrap()
            .unwrap()
            .token,
        "a.b.c"
    );
    assert_eq!(get("access%5Ftoken=a.b.c").unwrap().unwrap().token, "a.b.c");
    assert_eq!(get("room=1"), Ok(None));
    assert_eq!(get("access_tokens=a.b.c"), Ok(None));
    assert_eq!(
        get("access_token=a&access_token=b").unwrap_err().reason(),
        "token_ambiguous"
    );
    for bad in [
        "access_token=",
        "access_token",
        "access_token=%zz",
        "access_token=%E2%82",
        "access_token=%",
    ] {
        assert_eq!(get(bad).unwrap_err().reason(), "token_malformed", "{bad}");
    }
    // Over the cap once decoded, and so long it cannot decode under the cap.
    let big = format!("access_token={}", "a".repeat(9000));
    assert_eq!(get(&big).unwrap_err().reason(), "token_too_large");
    let huge = format!("access_token={}", "%41".repeat(9000));
    assert_eq!(get(&huge).unwrap_err().reason(), "token_too_large");
}

#[test]
fn exactly_one_token_across_sources() {
    let s = sources(ALL);
    let p = protos(&["v1", "bearer.s.s.s"]);
    let e = extract_token(&s, Some("Bearer h.h.h"), &p, None).unwrap_err();
    assert_eq!((e.reason(), e.status()), ("token_ambiguous", 400));
    assert!(e.to_string().contains("header") && e.to_string().contains("subprotocol"));
    let e = extract_token(&s, Some("Bearer h.h.h"), &[], Some("access_token=q.q.q")).unwrap_err();
    assert_eq!(e.reason(), "token_ambiguous");
    // Even the same token twice.
    let e = extract_token(&s, Some("Bearer a.b.c"), &[], Some("access_token=a.b.c")).unwrap_err();
    assert_eq!(e.reason(), "token_ambiguous");
    assert_eq!(
        extract_token(&s, None, &p, Some("x=1"))
            .unwrap()
            .unwrap()
            .token,
        "s.s.s"
    );
    assert_eq!(extract_token(&s, None, &[], None), Ok(None));
    // Disabled sources are not looked at at all.
    let header_only = sources(&[TokenSource::Header]);
    let t = extract_token(
        &header_only,
        Some("Bearer h.h.h"),
        &p,
        Some("access_token=%zz"),
    )
    .unwrap()
    .unwrap();
    assert_eq!(t.token, "h.h.h");
}

#[test]
fn debug_never_prints_the_token() {
    let s = sources(&[TokenSource::Header]);
    let t = extract_token(&s, Some("Bearer secret.token.value"), &[], None)
        .unwrap()
        .unwrap();
    let shown = format!("{t:?}");
    assert!(!shown.contains("secret"), "{shown}");
}

#[test]
fn query_tokens_are_redacted_from_targets() {
    let cases = [
        ("/ws", "/ws"),
        ("/ws?room=1", "/ws?room=1"),
        ("/ws?access_token=a.b.c", "/ws"),
        ("/ws?room=1&access_token=a.b.c&x=2", "/ws?room=1&x=2"),
        ("/ws?access%5Ftoken=a.b.c&room=1", "/ws?room=1"),
        ("/ws?access_token", "/ws"),
        // Spellings a looser reader takes for the token: any case, trailing junk, `;`.
        ("/ws?ACCESS_TOKEN=a.b.c&room=1", "/ws?room=1"),
        ("/ws?room=1&Access_Token=a.b.c", "/ws?room=1"),
        ("/ws?access_token%00=a.b.c&room=1", "/ws?room=1"),
        ("/ws?%20access_token%09=a.b.c", "/ws"),
        ("/ws?x=1;access_token=a.b.c", "/ws?x=1"),
        ("/ws?x=1;access_token=a.b.c;y=2&z=3", "/ws?x=1;y=2&z=3"),
        // Not the token: another name that merely contains it.
        ("/ws?my_access_token=1", "/ws?my_access_token=1"),
        ("/ws?access_tokens=1", "/ws?access_tokens=1"),
    ];
    for (target, want) in cases {
        assert_eq!(redact_query_token(target, "access_token"), want, "{target}");
    }
}
