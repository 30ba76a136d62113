//! `[jwt]` as TOML: defaults, unknown keys, and each validation with its key and fix.

use crate::jwt::{ExpiryPolicy, JwtConfig, TokenSource};

fn parse(text: &str) -> Result<JwtConfig, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

fn invalid(c: &JwtConfig) -> String {
    c.validate().expect_err("should be refused").to_string()
}

fn base() -> JwtConfig {
    JwtConfig {
        hs_secret_file: Some("/etc/wssedge/hs.key".into()),
        ..JwtConfig::default()
    }
}

#[test]
fn defaults() {
    let c = parse("hs_secret_file = \"/k\"").unwrap();
    assert_eq!(c.leeway_s, 30);
    assert_eq!(c.required_claims, vec!["exp", "sub"]);
    assert_eq!(c.scope_claim, "scope");
    assert_eq!(c.max_token_bytes, 8192);
    assert_eq!(c.max_tracked_jti, 1_000_000);
    assert_eq!(c.sources, vec![TokenSource::Header]);
    assert_eq!(c.query_param, "access_token");
    assert_eq!(c.subprotocol_prefix, "bearer.");
    assert_eq!(c.expiry, ExpiryPolicy::Close);
    assert!(!c.single_use);
    c.validate().unwrap();
}

#[test]
fn a_full_section_parses() {
    let c = parse(
        r#"
        keys = ["/etc/wssedge/jwt/issuer-2024.pem"]
        jwks = "/etc/wssedge/jwt/keys.jwks"
        algorithms = ["ES256", "EdDSA"]
        issuer = "https://issuer.example"
        audience = ["wss-edge", "exchange"]
        leeway_s = 5
        required_claims = ["exp", "sub", "jti"]
        scope_claim = "scp"
        scopes = [{ path_prefix = "/trade", scope = "trade" }, { path_prefix = "/md", scope = "market-data" }]
        single_use = true
        max_token_lifetime_s = 900
        max_token_bytes = 4096
        max_tracked_jti = 200000
        sources = ["header", "subprotocol", "query"]
        expiry = "ignore"
        "#,
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.scopes[1].scope, "market-data");
    assert_eq!(c.expiry, ExpiryPolicy::Ignore);
    assert_eq!(c.sources.len(), 3);
}

#[test]
fn unknown_keys_and_values_are_refused_by_the_parser() {
    assert!(parse("hs_secret = \"/k\"")
        .unwrap_err()
        .contains("hs_secret"));
    assert!(parse("sources = [\"cookie\"]").is_err());
    assert!(parse("expiry = \"kill\"").is_err());
    assert!(parse("scopes = [{ path_prefix = \"/a\", scope = \"x\", extra = 1 }]").is_err());
}

#[test]
fn validation_names_key_and_fix() {
    let cases: Vec<(JwtConfig, &str, &str)> = vec![
        (JwtConfig::default(), "jwt", "at least one of"),
        (
            JwtConfig {
                algorithms: vec!["none".into()],
                ..base()
            },
            "jwt.algorithms",
            "never allowed",
        ),
        (
            JwtConfig {
                algorithms: vec!["hs256".into()],
                ..base()
            },
            "jwt.algorithms",
            "case-sensitive",
        ),
        (
            JwtConfig {
                algorithms: vec!["HS256".into(), "HS256".into()],
                ..base()
            },
            "jwt.algorithms",
            "twice",
        ),
        (
            JwtConfig {
                algorithms: vec!["RS256".into()],
                ..base()
            },
            "jwt.algorithms",
            "needs `keys` or `jwks`",
        ),
        (
            JwtConfig {
                keys: vec!["/k.pem".into()],
                hs_secret_file: None,
                algorithms: vec!["HS256".into()],
                ..base()
            },
            "jwt.algorithms",
            "hs_secret_file",
        ),
        (
            JwtConfig {
                issuer: Some(String::new()),
                ..base()
            },
            "jwt.issuer",
            "empty",
        ),
        (
            JwtConfig {
                audience: vec!["a".into(), "a".into()],
                ..base()
            },
            "jwt.audience",
            "twice",
        ),
        (
            JwtConfig {
                leeway_s: 3600,
                ..base()
            },
            "jwt.leeway_s",
            "NTP",
        ),
        (
            JwtConfig {
                required_claims: vec![String::new()],
                ..base()
            },
            "jwt.required_claims",
            "empty",
        ),
        (
            JwtConfig {
                scope_claim: String::new(),
                ..base()
            },
            "jwt.scope_claim",
            "claim",
        ),
        (
            JwtConfig {
                single_use: true,
                required_claims: vec!["sub".into()],
                ..base()
            },
            "jwt.single_use",
            "\"exp\"",
        ),
        (
            JwtConfig {
                max_token_lifetime_s: Some(0),
                ..base()
            },
            "jwt.max_token_lifetime_s",
            "at least 1",
        ),
        (
            JwtConfig {
                max_token_bytes: 10,
                ..base()
            },
            "jwt.max_token_bytes",
            "within",
        ),
        (
            JwtConfig {
                single_use: true,
                max_tracked_jti: 0,
                ..base()
            },
            "jwt.max_tracked_jti",
            "at least 1",
        ),
        (
            JwtConfig {
                sources: vec![],
                ..base()
            },
            "jwt.sources",
            "at least one",
        ),
        (
            JwtConfig {
                sources: vec![TokenSource::Query, TokenSource::Query],
                ..base()
            },
            "jwt.sources",
            "twice",
        ),
        (
            JwtConfig {
                query_param: "a b".into(),
                ..base()
            },
            "jwt.query_param",
            "letters",
        ),
        (
            JwtConfig {
                subprotocol_prefix: "bearer ".into(),
                ..base()
            },
            "jwt.subprotocol_prefix",
            "tchar",
        ),
        (
            JwtConfig {
                scopes: vec![crate::jwt::ScopeRule {
                    path_prefix: "trade".into(),
                    scope: "t".into(),
                }],
                ..base()
            },
            "jwt.scopes.path_prefix",
            "'/'",
        ),
    ];
    for (c, key, hint) in cases {
        let e = invalid(&c);
        assert!(
            e.contains(&format!("`{key}`")) && e.contains(hint),
            "{key}: {e}"
        );
    }
}
