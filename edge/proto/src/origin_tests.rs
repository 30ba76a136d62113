use super::*;

fn policy(origins: &[&str], hosts: &[&str], require_origin: bool) -> OriginPolicy {
    OriginPolicy::from_config(&OriginConfig {
        allowed_origins: origins.iter().map(|s| (*s).to_owned()).collect(),
        allowed_hosts: hosts.iter().map(|s| (*s).to_owned()).collect(),
        require_origin,
    })
    .unwrap()
}

#[test]
fn origin_table() {
    let p = policy(
        &[
            "https://app.example.com",
            "https://*.trade.example.com",
            "https://admin.example.com:8443",
            "http://localhost:*",
            "https://[2001:db8::1]",
            "https://xn--bcher-kva.example",
        ],
        &[],
        false,
    );
    let allowed = [
        "https://app.example.com",
        "HTTPS://APP.Example.COM",
        "https://app.example.com:443",
        "https://app.example.com.",
        "https://eu.trade.example.com",
        "https://a.b.trade.example.com",
        "https://admin.example.com:8443",
        "http://localhost:3000",
        "http://localhost",
        "https://[2001:db8:0::1]",
        "https://xn--bcher-kva.example",
    ];
    let refused = [
        "https://app.example.com:8443",  // portless entry = default port only
        "http://app.example.com",        // scheme is part of the origin
        "https://trade.example.com",     // wildcard never matches the apex
        "https://eviltrade.example.com", // nor a name merely ending the same
        "https://trade.example.com.evil.com",
        "https://admin.example.com", // entry names :8443
        "https://app.example.com/",  // an origin has no path
        "https://app.example.com/x",
        "https://user@app.example.com",
        "https://app.example.com:0",
        "https://app.example.com:99999",
        "https://app.example.com:+443",
        "https://app.example.com:",
        "null", // not listed
        "NULL",
        "app.example.com",
        "https://*.trade.example.com", // a wildcard is not an origin
        "https://bücher.example",      // raw Unicode: browsers send punycode
        "https://app.example.com https://x.com",
        "",
    ];
    for o in allowed {
        assert_eq!(p.check_origin(Some(o)), Ok(()), "{o}");
    }
    for o in refused {
        assert_eq!(
            p.check_origin(Some(o)),
            Err(OriginRefusal::OriginNotAllowed),
            "{o}"
        );
    }
    // Missing Origin is fine unless required.
    assert_eq!(p.check_origin(None), Ok(()));
}

#[test]
fn null_only_when_listed_and_missing_only_when_required() {
    let p = policy(&["null"], &[], true);
    assert_eq!(p.check_origin(Some("null")), Ok(()));
    assert_eq!(
        p.check_origin(Some("https://a.example.com")),
        Err(OriginRefusal::OriginNotAllowed)
    );
    assert_eq!(p.check_origin(None), Err(OriginRefusal::OriginMissing));
    let open = policy(&[], &[], false);
    assert_eq!(
        open.check_origin(Some("null")),
        Ok(()),
        "empty list checks nothing"
    );
    assert_eq!(open.check_origin(Some("garbage")), Ok(()));
    assert_eq!(open.check_origin(None), Ok(()));
    let required = policy(&[], &[], true);
    assert_eq!(
        required.check_origin(None),
        Err(OriginRefusal::OriginMissing)
    );
    assert_eq!(required.check_origin(Some("https://any.example")), Ok(()));
}

#[test]
fn host_table() {
    let p = policy(
        &[],
        &[
            "edge.example.com",
            "*.edge.example.com:8443",
            "192.0.2.10",
            "[::1]:9443",
        ],
        false,
    );
    let allowed = [
        "edge.example.com",
        "EDGE.example.com:443",
        "edge.example.com:8443", // no port in the entry: any port
        "edge.example.com.",
        "eu.edge.example.com:8443",
        "a.b.edge.example.com:8443",
        "192.0.2.10",
        "192.0.2.10:1234",
        "[::1]:9443",
        "[0:0::1]:9443",
    ];
    let refused = [
        "eu.edge.example.com", // implied 443, entry wants 8443
        "edge.example.com.evil.com",
        "notedge.example.com",
        "example.com",
        "192.0.2.11",
        "[::1]", // implied 443
        "::1",
        "edge.example.com:",
        "edge.example.com:abc",
        "edge.example.com:65536",
        "[::1",
        "",
        "*.edge.example.com:8443", // a wildcard is not a host
    ];
    for h in allowed {
        assert_eq!(p.check_host(h), Ok(()), "{h}");
    }
    for h in refused {
        assert_eq!(p.check_host(h), Err(OriginRefusal::HostNotAllowed), "{h}");
    }
    assert_eq!(policy(&[], &[], false).check_host("anything:1"), Ok(()));
}

#[test]
fn check_answers_host_first() {
    let p = policy(&["https://a.example.com"], &["a.example.com"], true);
    assert_eq!(
        p.check("b.example.com", None),
        Err(OriginRefusal::HostNotAllowed)
    );
    assert_eq!(
        p.check("a.example.com", None),
        Err(OriginRefusal::OriginMissing)
    );
    assert_eq!(
        p.check("a.example.com", Some("https://a.example.com")),
        Ok(())
    );
}

#[test]
fn statuses_and_reasons() {
    assert_eq!(OriginRefusal::OriginMissing.status(), 403);
    assert_eq!(OriginRefusal::OriginNotAllowed.status(), 403);
    assert_eq!(OriginRefusal::HostNotAllowed.status(), 421);
    assert_eq!(OriginRefusal::HostNotAllowed.reason(), "host_not_allowed");
}

#[test]
fn bad_entries_are_refused_with_the_key() {
    for (origins, hosts) in [
        (vec!["*.example.com"], vec![]), // no scheme
        (vec!["https://*.com"], vec![]), // too broad
        (vec!["https://a.*.example.com"], vec![]),
        (vec!["https://*example.com"], vec![]),
        (vec!["https://example.com/"], vec![]),
        (vec!["https://bücher.example"], vec![]),
        (vec!["chrome-extension://abcdef"], vec![]), // no default port: needs one
        (vec!["https://example.com:0"], vec![]),
        (vec![], vec!["*.com"]),
        (vec![], vec!["*.192.0.2"]),
        (vec![], vec!["2001:db8::1"]),
        (vec![], vec!["host:port"]),
        (vec![], vec!["a..b"]),
        (vec![], vec![""]),
    ] {
        let c = OriginConfig {
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            allowed_hosts: hosts.iter().map(|s| s.to_string()).collect(),
            require_origin: false,
        };
        let e = c
            .validate()
            .expect_err(&format!("{origins:?} {hosts:?}"))
            .to_string();
        let key = if origins.is_empty() {
            "origin.allowed_hosts"
        } else {
            "origin.allowed_origins"
        };
        assert!(e.contains(key), "{e}");
    }
    let ok = OriginConfig {
        allowed_origins: vec!["chrome-extension://abcdef:*".into(), "null".into()],
        allowed_hosts: vec!["*.example.com".into()],
        require_origin: true,
    };
    ok.validate().unwrap();
}
