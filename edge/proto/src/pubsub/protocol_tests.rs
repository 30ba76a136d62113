use proptest::prelude::*;

use super::*;

const LIMITS: RequestLimits = RequestLimits {
    max_topics: 4,
    max_data_bytes: 64,
};

fn parse(text: &str) -> Result<Request<'_>, Refusal> {
    parse_request(text.as_bytes(), &LIMITS)
}

fn refused(text: &str) -> (Option<u64>, Reason) {
    match parse(text) {
        Err(r) => (r.id, r.reason),
        Ok(req) => panic!("{text} was accepted as {req:?}"),
    }
}

#[test]
fn subscribe_with_and_without_since() {
    let req = parse(
        r#"{"op":"subscribe","id":1,"topics":["trades.BTC-USD","book.ETH"],"since":{"trades.BTC-USD":{"epoch":"e1","seq":41}}}"#,
    )
    .expect("valid");
    assert_eq!(
        req,
        Request::Subscribe {
            id: 1,
            topics: vec![
                SubscribeTopic {
                    topic: "trades.BTC-USD".into(),
                    since: Some(Since {
                        epoch: "e1".into(),
                        seq: 41
                    })
                },
                SubscribeTopic {
                    topic: "book.ETH".into(),
                    since: None
                },
            ]
        }
    );
    let req = parse(r#" { "topics" : ["a"] , "id" : 7 , "op" : "subscribe" } "#).expect("valid");
    assert!(matches!(req, Request::Subscribe { id: 7, topics } if topics[0].since.is_none()));
}

#[test]
fn unsubscribe_and_publish() {
    assert_eq!(
        parse(r#"{"op":"unsubscribe","id":2,"topics":["a","b"]}"#),
        Ok(Request::Unsubscribe {
            id: 2,
            topics: vec!["a".into(), "b".into()]
        })
    );
    let text = r#"{"op":"publish","id":3,"topic":"t","data":{"p" : 1.50, "q":[1,2]}}"#;
    match parse(text).expect("valid") {
        Request::Publish { id, topic, data } => {
            assert_eq!((id, topic.as_str()), (3, "t"));
            assert_eq!(data.get(), r#"{"p" : 1.50, "q":[1,2]}"#, "byte for byte");
        }
        other => panic!("{other:?}"),
    }
    let escaped_op = r#"{"op":"\u0070ublish","id":3,"topic":"t","data":null}"#;
    assert!(matches!(parse(escaped_op), Ok(Request::Publish { .. })));
}

#[test]
fn the_id_is_echoed_when_it_can_be_read() {
    assert_eq!(
        refused(r#"{"op":"dance","id":5}"#),
        (Some(5), Reason::BadRequest)
    );
    assert_eq!(refused(r#"{"id":5}"#), (Some(5), Reason::BadRequest));
    assert_eq!(
        refused(r#"{"op":"subscribe","id":5,"topics":["a"],"extra":1}"#),
        (Some(5), Reason::BadRequest)
    );
    assert_eq!(
        refused(r#"{"op":"subscribe","id":5,"topics":["a"],"topics":["b"]}"#),
        (Some(5), Reason::BadRequest),
        "a repeated member"
    );
    assert_eq!(
        refused(r#"{"op":"subscribe","id":18446744073709551615}"#),
        (Some(u64::MAX), Reason::BadRequest)
    );
    for unreadable in [
        r#"{"op":"subscribe","topics":["a"]}"#,
        r#"{"op":"subscribe","id":-1,"topics":["a"]}"#,
        r#"{"op":"subscribe","id":1.5,"topics":["a"]}"#,
        r#"{"op":"subscribe","id":"1","topics":["a"]}"#,
        r#"{"op":"subscribe","id":18446744073709551616,"topics":["a"]}"#,
        r#"{"op":"subscribe","id":null,"topics":["a"]}"#,
        "not json",
        "",
        "[1,2]",
        "\"op\"",
        r#"{"op":"subscribe","id":1,"topics":["a"]} trailing"#,
        r#"{"op":"subscribe","id":1,"topics":["a"]"#,
    ] {
        assert_eq!(
            refused(unreadable),
            (None, Reason::BadRequest),
            "{unreadable}"
        );
    }
    assert_eq!(
        parse_request(
            b"{\"op\":\"subscribe\",\"id\":1,\"topics\":[\"\xff\"]}",
            &LIMITS
        )
        .map_err(|r| (r.id, r.reason)),
        Err((None, Reason::BadRequest)),
        "not UTF-8"
    );
}

#[test]
fn members_are_checked_per_op() {
    for text in [
        r#"{"op":"subscribe","id":1}"#,
        r#"{"op":"subscribe","id":1,"topics":[]}"#,
        r#"{"op":"subscribe","id":1,"topics":"a"}"#,
        r#"{"op":"subscribe","id":1,"topics":[1]}"#,
        r#"{"op":"subscribe","id":1,"topics":["a","a"]}"#,
        r#"{"op":"subscribe","id":1,"topics":["a"],"data":1}"#,
        r#"{"op":"subscribe","id":1,"topics":["a"],"since":{"b":{"epoch":"e","seq":1}}}"#,
        r#"{"op":"subscribe","id":1,"topics":["a"],"since":{"a":{"epoch":"e","seq":-1}}}"#,
        r#"{"op":"subscribe","id":1,"topics":["a"],"since":{"a":{"epoch":"e"}}}"#,
        r#"{"op":"subscribe","id":1,"topics":["a"],"since":{"a":{"epoch":"e","seq":1,"x":0}}}"#,
        r#"{"op":"subscribe","id":1,"topics":["a"],"since":{"a":{"epoch":"e","seq":1},"a":{"epoch":"e","seq":2}}}"#,
        r#"{"op":"subscribe","id":1,"topics":["a"],"since":null}"#,
        r#"{"op":"unsubscribe","id":1,"topics":["a"],"since":{}}"#,
        r#"{"op":"unsubscribe","id":1,"topic":"a"}"#,
        r#"{"op":"publish","id":1,"topic":"a"}"#,
        r#"{"op":"publish","id":1,"data":1}"#,
        r#"{"op":"publish","id":1,"topic":5,"data":1}"#,
        r#"{"op":"publish","id":1,"topic":"a","data":1,"topics":["a"]}"#,
        r#"{"op":"Publish","id":1,"topic":"a","data":1}"#,
        r#"{"op":1,"id":1,"topic":"a","data":1}"#,
    ] {
        assert_eq!(refused(text), (Some(1), Reason::BadRequest), "{text}");
    }
}

#[test]
fn topic_and_size_bounds_have_their_own_reasons() {
    assert_eq!(
        refused(r#"{"op":"subscribe","id":1,"topics":["a","b","c","d","e"]}"#),
        (Some(1), Reason::TooManyTopics)
    );
    assert!(parse(r#"{"op":"subscribe","id":1,"topics":["a","b","c","d"]}"#).is_ok());
    for bad_topic in [r#""a b""#, r#""a\"b""#, r#""""#, r#""é""#, r#""a\u0000""#] {
        for text in [
            format!(r#"{{"op":"subscribe","id":1,"topics":[{bad_topic}]}}"#),
            format!(r#"{{"op":"unsubscribe","id":1,"topics":["ok",{bad_topic}]}}"#),
            format!(r#"{{"op":"publish","id":1,"topic":{bad_topic},"data":0}}"#),
        ] {
            assert_eq!(refused(&text), (Some(1), Reason::TopicInvalid), "{text}");
        }
    }
    let fits = format!(
        r#"{{"op":"publish","id":9,"topic":"t","data":"{}"}}"#,
        "x".repeat(62)
    );
    assert!(parse(&fits).is_ok(), "64 bytes with the quotes");
    let over = format!(
        r#"{{"op":"publish","id":9,"topic":"t","data":"{}"}}"#,
        "x".repeat(63)
    );
    assert_eq!(refused(&over), (Some(9), Reason::DataTooLarge));
}

#[test]
fn refusals_carry_a_detail_for_the_log() {
    let r = parse(r#"{"op":"subscribe","id":1,"topics":["a"],"colour":"red"}"#).unwrap_err();
    assert!(r.detail.contains("colour"), "{}", r.detail);
    assert_eq!(
        r.encode(),
        r#"{"op":"error","id":1,"reason":"bad_request"}"#
    );
    let r = parse(r#"{"op":"publish","id":1,"topic":"a\nb","data":0}"#).unwrap_err();
    assert!(
        r.detail.contains("\\n") && !r.detail.contains('\n'),
        "{}",
        r.detail
    );
}

#[test]
fn encoders_write_exact_compact_json() {
    assert_eq!(
        encode_subscribed(
            1,
            &[
                SubscribedTopic {
                    topic: "trades.BTC-USD",
                    epoch: "x7Ab",
                    seq: 57,
                    recovered: true
                },
                SubscribedTopic {
                    topic: "book.ETH",
                    epoch: "q",
                    seq: 0,
                    recovered: false
                },
            ]
        ),
        r#"{"op":"subscribed","id":1,"topics":[{"topic":"trades.BTC-USD","epoch":"x7Ab","seq":57,"recovered":true},{"topic":"book.ETH","epoch":"q","seq":0,"recovered":false}]}"#
    );
    assert_eq!(
        encode_subscribed(0, &[]),
        r#"{"op":"subscribed","id":0,"topics":[]}"#
    );
    assert_eq!(encode_unsubscribed(2), r#"{"op":"unsubscribed","id":2}"#);
    assert_eq!(
        encode_published(u64::MAX, 58),
        r#"{"op":"published","id":18446744073709551615,"seq":58}"#
    );
    assert_eq!(
        encode_error(None, Reason::BadRequest),
        r#"{"op":"error","id":null,"reason":"bad_request"}"#
    );
    assert_eq!(
        encode_error(Some(3), Reason::NotAllowed),
        r#"{"op":"error","id":3,"reason":"not_allowed"}"#
    );
    let data = RawValue::from_string(r#"{"px" : "1.50" ,"q":[ ]}"#.into()).expect("json");
    assert_eq!(
        encode_publication("trades.BTC-USD", 58, &data),
        Bytes::from_static(
            br#"{"topic":"trades.BTC-USD","seq":58,"data":{"px" : "1.50" ,"q":[ ]}}"#
        )
    );
}

#[test]
fn every_reason_has_its_stable_name() {
    let all = [
        (Reason::BadRequest, "bad_request"),
        (Reason::TopicInvalid, "topic_invalid"),
        (Reason::TooManyTopics, "too_many_topics"),
        (Reason::DataTooLarge, "data_too_large"),
        (Reason::NotAllowed, "not_allowed"),
        (Reason::FleetUnavailable, "fleet_unavailable"),
    ];
    for (reason, name) in all {
        assert_eq!(reason.as_str(), name);
        assert_eq!(reason.to_string(), name);
    }
}

#[test]
fn caller_chosen_strings_are_escaped() {
    let epoch = "a\"b\\c\n\u{1}\u{1f}\u{7f}é\u{2028}";
    let text = encode_subscribed(
        1,
        &[SubscribedTopic {
            topic: "t",
            epoch,
            seq: 1,
            recovered: false,
        }],
    );
    assert!(text.contains(r#""epoch":"a\"b\\c\n\u0001\u001f"#), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(v["topics"][0]["epoch"], epoch);
}

#[test]
fn feed_frames_are_topic_and_data_only() {
    let frame = br#"{"data":[1, 2 ,3],"topic":"trades.BTC-USD"}"#;
    let p = parse_feed_publication(frame, 64).expect("valid");
    assert_eq!(
        (p.topic.as_str(), p.data.get()),
        ("trades.BTC-USD", "[1, 2 ,3]")
    );
    let cases: [(&[u8], FeedFrameError); 7] = [
        (br#"{"topic":"t"}"#, FeedFrameError::Missing("data")),
        (br#"{"data":1}"#, FeedFrameError::Missing("topic")),
        (br#"{"topic":1,"data":1}"#, FeedFrameError::TopicNotString),
        (
            br#"{"topic":"t","data":1,"seq":4}"#,
            FeedFrameError::UnexpectedMember("seq".into()),
        ),
        (
            br#"{"op":"publish","topic":"t","data":1}"#,
            FeedFrameError::UnexpectedMember("op".into()),
        ),
        (
            br#"{"topic":"a b","data":1}"#,
            FeedFrameError::Topic {
                topic: "a b".into(),
                reason: TopicError::Char { at: 1, byte: b' ' },
            },
        ),
        (
            br#"{"topic":"t","data":"0123456789"}"#,
            FeedFrameError::DataTooLarge { len: 12, max: 10 },
        ),
    ];
    for (frame, want) in cases {
        let got = parse_feed_publication(frame, 10).map(|p| p.topic);
        assert_eq!(got, Err(want), "{}", String::from_utf8_lossy(frame));
    }
    assert!(matches!(
        parse_feed_publication(b"{\"topic\":\"t\",", 10),
        Err(FeedFrameError::NotJson(_))
    ));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_feed_parser(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_feed_publication(&bytes, 64);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_parser(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_request(&bytes, &LIMITS);
    }

    #[test]
    fn json_shaped_noise_never_panics_the_parser(
        parts in proptest::collection::vec(
            prop_oneof![
                Just("{"), Just("}"), Just("["), Just("]"), Just(","), Just(":"),
                Just("\"op\""), Just("\"subscribe\""), Just("\"publish\""), Just("\"id\""),
                Just("\"topics\""), Just("\"topic\""), Just("\"data\""), Just("\"since\""),
                Just("\"epoch\""), Just("\"seq\""), Just("1"), Just("-1"), Just("null"),
                Just("\"a\""), Just("1e400"), Just("\"\\ud800\""),
            ],
            0..40,
        )
    ) {
        let text = parts.concat();
        let _ = parse(&text);
    }

    #[test]
    fn any_valid_publish_round_trips_its_data(
        value in arb_json(),
        id in any::<u64>(),
        topic in "[A-Za-z0-9._:-]{1,128}",
        pretty in any::<bool>(),
    ) {
        let data = if pretty {
            serde_json::to_string_pretty(&value).expect("encodes")
        } else {
            serde_json::to_string(&value).expect("encodes")
        };
        let text = format!(r#"{{"data": {data} ,"topic":"{topic}","op":"publish","id":{id}}}"#);
        let limits = RequestLimits { max_topics: 1, max_data_bytes: data.len() };
        let req = parse_request(text.as_bytes(), &limits).expect("valid publish");
        let Request::Publish { id: got_id, topic: got_topic, data: got } = req else {
            panic!("not a publish: {req:?}");
        };
        prop_assert_eq!(got_id, id);
        prop_assert_eq!(&got_topic, &topic);
        prop_assert_eq!(got.get(), data.as_str());
        let frame = encode_publication(&got_topic, 7, got);
        let expected = format!(r#"{{"topic":"{topic}","seq":7,"data":{data}}}"#);
        prop_assert_eq!(&frame[..], expected.as_bytes());
        // Compared through one parser: serde_json's default float parsing is not exact, but it
        // reads the same bytes the same way.
        let back: serde_json::Value = serde_json::from_slice(&frame).expect("frame is JSON");
        let sent: serde_json::Value = serde_json::from_str(&data).expect("data is JSON");
        prop_assert_eq!(&back["data"], &sent);
    }

    #[test]
    fn escaped_strings_decode_to_themselves(s in any::<String>()) {
        let mut out = String::new();
        push_json_string(&mut out, &s);
        let back: String = serde_json::from_str(&out).expect("valid JSON string");
        prop_assert_eq!(back, s);
    }
}

/// JSON values of every kind, nested a few levels.
fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        (-1e300f64..1e300).prop_map(serde_json::Value::from),
        any::<String>().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}
