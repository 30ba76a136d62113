//! The wire format: every command, every kind of malformed request, the response shapes.

use serde_json::json;

use crate::control::protocol::{MAX_REQUEST_LINE, MAX_RESPONSE_LINE};
use crate::control::{parse_request, ProtocolError, Request, Response, RevocationKind};

fn all_requests() -> Vec<Request> {
    vec![
        Request::Revoke {
            kind: RevocationKind::Jti,
            value: "j-1".into(),
        },
        Request::Unrevoke {
            kind: RevocationKind::Subject,
            value: "alice".into(),
        },
        Request::Revocations,
        Request::Status,
        Request::Reload,
        Request::Drain,
        Request::CrlReload,
        Request::Restart,
        Request::Kick {
            subject: "mallory".into(),
        },
        Request::Sessions { subject: None },
    ]
}

#[test]
fn every_command_has_its_documented_wire_form_and_parses_back() {
    let expected = [
        r#"{"cmd":"revoke","kind":"jti","value":"j-1"}"#,
        r#"{"cmd":"unrevoke","kind":"subject","value":"alice"}"#,
        r#"{"cmd":"revocations"}"#,
        r#"{"cmd":"status"}"#,
        r#"{"cmd":"reload"}"#,
        r#"{"cmd":"drain"}"#,
        r#"{"cmd":"crl-reload"}"#,
        r#"{"cmd":"restart"}"#,
        r#"{"cmd":"kick","subject":"mallory"}"#,
        r#"{"cmd":"sessions"}"#,
    ];
    for (request, wire) in all_requests().iter().zip(expected) {
        let line = request.to_line();
        assert_eq!(line, format!("{wire}\n").into_bytes());
        assert_eq!(&parse_request(wire.as_bytes()).unwrap(), request);
    }
    // COMMANDS and name() agree with the serde names, in the same order.
    let names: Vec<_> = all_requests().iter().map(Request::name).collect();
    assert_eq!(names, Request::COMMANDS);
}

#[test]
fn field_order_and_whitespace_do_not_matter() {
    let request = parse_request(br#" { "value" : "x" , "kind":"subject", "cmd":"revoke" } "#);
    assert_eq!(
        request.unwrap(),
        Request::Revoke {
            kind: RevocationKind::Subject,
            value: "x".into()
        }
    );
}

fn error_of(line: &str) -> String {
    parse_request(line.as_bytes()).unwrap_err().to_string()
}

#[test]
fn malformed_requests_are_refused_with_what_to_fix() {
    let cases: &[(&str, &[&str])] = &[
        ("{\"cmd\":", &["not valid JSON", "one JSON object per line"]),
        ("[1,2]", &["a JSON array, not an object"]),
        ("\"status\"", &["a JSON string, not an object"]),
        (
            "{}",
            &["no \"cmd\"", "revoke, unrevoke, revocations, status"],
        ),
        ("{\"cmd\":5}", &["must be a string", "crl-reload"]),
        (
            "{\"cmd\":\"stats\"}",
            &["unknown command `stats`", "status"],
        ),
        (
            r#"{"cmd":"revoke","kind":"jti","value":"a","force":true}"#,
            &[
                "`revoke`",
                "unknown field `force`",
                "expected `kind` or `value`",
            ],
        ),
        (
            r#"{"cmd":"status","verbose":true}"#,
            &["`status`", "unknown field `verbose`", "no arguments"],
        ),
        (
            r#"{"cmd":"revoke","kind":"session","value":"a"}"#,
            &["unknown variant `session`", "`jti` or `subject`"],
        ),
        (
            r#"{"cmd":"revoke","kind":"jti"}"#,
            &["missing field `value`"],
        ),
        (
            r#"{"cmd":"unrevoke","kind":"jti","value":7}"#,
            &["invalid type"],
        ),
        (r#"{"cmd":"revoke","kind":"jti","value":""}"#, &["is empty"]),
        (
            r#"{"cmd":"revoke","kind":"jti","value":" a"}"#,
            &["whitespace"],
        ),
        (
            r#"{"cmd":"revoke","kind":"jti","value":"a\nb"}"#,
            &["control character"],
        ),
    ];
    for (line, needles) in cases {
        let message = error_of(line);
        for needle in *needles {
            assert!(
                message.contains(needle),
                "{line} → {message} (wanted {needle})"
            );
        }
    }
    assert_eq!(parse_request(b"\xff\xfe"), Err(ProtocolError::NotUtf8));
}

#[test]
fn echoed_client_input_is_cut_short() {
    let long = "x".repeat(10_000);
    let message = error_of(&format!(r#"{{"cmd":"{long}"}}"#));
    assert!(message.len() < 300, "{} bytes", message.len());
    let message = error_of(&format!(r#"{{"cmd":"status","{long}":1}}"#));
    assert!(message.len() < 600, "{} bytes", message.len());
    let value = "v".repeat(2000);
    let message = error_of(&format!(
        r#"{{"cmd":"revoke","kind":"jti","value":"{value}"}}"#
    ));
    assert!(message.contains("longer than 1024"), "{message}");
}

#[test]
fn an_over_long_line_is_refused_before_parsing() {
    let line = vec![b' '; MAX_REQUEST_LINE + 1];
    assert_eq!(
        parse_request(&line),
        Err(ProtocolError::LineTooLong {
            max: MAX_REQUEST_LINE
        })
    );
}

#[test]
fn responses_have_the_documented_shapes() {
    let ok = Response::ok(&json!({"a": 1}));
    assert_eq!(ok.to_line(), b"{\"ok\":true,\"result\":{\"a\":1}}\n");
    assert_eq!(Response::done().to_line(), b"{\"ok\":true,\"result\":{}}\n");
    let err = Response::error("nope");
    assert_eq!(err.to_line(), b"{\"ok\":false,\"error\":\"nope\"}\n");
    // Read side: lenient about extra fields and a missing result, strict about a missing error.
    let parsed: Response = serde_json::from_str(r#"{"ok":true,"extra":1}"#).unwrap();
    assert_eq!(parsed, Response::done());
    let parsed: Response = serde_json::from_str(r#"{"ok":false,"error":"x"}"#).unwrap();
    assert_eq!(parsed, Response::error("x"));
    assert!(serde_json::from_str::<Response>(r#"{"ok":false}"#).is_err());
}

#[test]
fn an_oversized_response_becomes_an_error_line() {
    let huge = Response::Ok(json!({ "blob": "x".repeat(MAX_RESPONSE_LINE) }));
    let line = huge.to_line();
    assert!(line.len() < 200);
    let parsed: Response = serde_json::from_slice(&line[..line.len() - 1]).unwrap();
    assert!(matches!(parsed, Response::Error(e) if e.contains("response limit")));
}

#[test]
fn not_supported_yet_names_the_command() {
    let response = Response::not_supported_yet(&Request::Drain);
    assert!(matches!(response, Response::Error(e) if e.contains("`drain` is not supported")));
}
