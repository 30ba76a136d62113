//! The `Sec-WebSocket-Extensions` list (RFC 6455 §9.1), parsed to the letter:
//!
//! ```text
//! extension-list  = 1#extension
//! extension       = extension-token *( ";" extension-param )
//! extension-param = token [ "=" (token | quoted-string) ]
//! ```
//!
//! A quoted value must be a token once its quotes and escapes are removed (§9.1), so
//! `client_max_window_bits="10"` and `client_max_window_bits=10` are the same parameter. Commas
//! inside a quoted string do not split the list. Empty list elements (`a, , b`) are allowed, as
//! HTTP's `#` rule allows them; anything else that does not fit the grammar is an error naming
//! what is wrong, so a client learns why its upgrade was refused.

/// One offered extension: its name and parameters, in the order written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    /// The extension token, as written (compare case-insensitively).
    pub name: String,
    /// `(name, value)`; `value` is `None` for a parameter written without `=`.
    pub params: Vec<(String, Option<String>)>,
}

/// Why an extension list does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExtensionListError {
    #[error("Sec-WebSocket-Extensions: an extension name is missing or not a token")]
    BadName,
    #[error("Sec-WebSocket-Extensions: a parameter name is missing or not a token")]
    BadParamName,
    #[error("Sec-WebSocket-Extensions: a parameter value is missing, not a token or an unterminated quoted string")]
    BadParamValue,
    #[error(
        "Sec-WebSocket-Extensions: unexpected character after a parameter (expected ';' or ',')"
    )]
    UnexpectedCharacter,
}

/// RFC 7230 §3.2.6 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A cursor over one header value.
struct Cursor<'a> {
    s: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn skip_ows(&mut self) {
        while matches!(self.s.get(self.at), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn token(&mut self) -> Option<String> {
        let start = self.at;
        while self.peek().is_some_and(is_tchar) {
            self.at += 1;
        }
        // Only tchars were taken: ASCII, so the bytes are a valid `str`.
        (self.at > start).then(|| String::from_utf8_lossy(&self.s[start..self.at]).into_owned())
    }

    /// A quoted-string's content, unescaped (the cursor is on the opening quote).
    fn quoted(&mut self) -> Option<String> {
        self.at += 1;
        let mut out = Vec::new();
        loop {
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return String::from_utf8(out).ok();
                }
                b'\\' => {
                    let escaped = *self.s.get(self.at + 1)?;
                    out.push(escaped);
                    self.at += 2;
                }
                b => {
                    out.push(b);
                    self.at += 1;
                }
            }
        }
    }
}

/// Parses every `Sec-WebSocket-Extensions` header value of a request, in order, into the
/// extensions they offer.
pub fn parse_extension_list<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Extension>, ExtensionListError> {
    let mut out = Vec::new();
    for value in values {
        let mut c = Cursor {
            s: value.as_bytes(),
            at: 0,
        };
        loop {
            c.skip_ows();
            match c.peek() {
                None => break,
                Some(b',') => {
                    c.at += 1;
                    continue;
                }
                Some(_) => {}
            }
            let name = c.token().ok_or(ExtensionListError::BadName)?;
            let mut params = Vec::new();
            loop {
                c.skip_ows();
                match c.peek() {
                    None | Some(b',') => break,
                    Some(b';') => c.at += 1,
                    Some(_) => return Err(ExtensionListError::UnexpectedCharacter),
                }
                c.skip_ows();
                let pname = c.token().ok_or(ExtensionListError::BadParamName)?;
                c.skip_ows();
                let value = if c.peek() == Some(b'=') {
                    c.at += 1;
                    c.skip_ows();
                    let v = if c.peek() == Some(b'"') {
                        c.quoted()
                    } else {
                        c.token()
                    };
                    match v {
                        Some(v) if !v.is_empty() && v.bytes().all(is_tchar) => Some(v),
                        _ => return Err(ExtensionListError::BadParamValue),
                    }
                } else {
                    None
                };
                params.push((pname, value));
            }
            out.push(Extension { name, params });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(v: &str) -> Result<Vec<Extension>, ExtensionListError> {
        parse_extension_list([v])
    }

    fn ext(name: &str, params: &[(&str, Option<&str>)]) -> Extension {
        Extension {
            name: name.into(),
            params: params
                .iter()
                .map(|(n, v)| ((*n).into(), v.map(Into::into)))
                .collect(),
        }
    }

    #[test]
    fn what_browsers_and_libraries_send() {
        assert_eq!(
            one("permessage-deflate; client_max_window_bits").unwrap(),
            [ext(
                "permessage-deflate",
                &[("client_max_window_bits", None)]
            )]
        );
        assert_eq!(
            one("permessage-deflate; server_no_context_takeover; client_max_window_bits=10, permessage-deflate").unwrap(),
            [
                ext(
                    "permessage-deflate",
                    &[
                        ("server_no_context_takeover", None),
                        ("client_max_window_bits", Some("10"))
                    ]
                ),
                ext("permessage-deflate", &[]),
            ]
        );
    }

    #[test]
    fn quoted_values_unescape_to_tokens_and_keep_their_commas_inside() {
        assert_eq!(
            one(r#"x;a="10" ; b = "1\0" ,y"#).unwrap(),
            [
                ext("x", &[("a", Some("10")), ("b", Some("10"))]),
                ext("y", &[])
            ]
        );
        // A comma inside quotes is not a token: the value is refused, the list not split there.
        assert_eq!(one(r#"x; a="1,2""#), Err(ExtensionListError::BadParamValue));
        assert_eq!(one(r#"x; a="10"#), Err(ExtensionListError::BadParamValue));
        assert_eq!(one(r#"x; a="""#), Err(ExtensionListError::BadParamValue));
    }

    #[test]
    fn several_headers_and_empty_elements() {
        let got = parse_extension_list(["a", " , b;c ,", ""]).unwrap();
        assert_eq!(got, [ext("a", &[]), ext("b", &[("c", None)])]);
        assert!(parse_extension_list([]).unwrap().is_empty());
    }

    #[test]
    fn every_way_to_break_the_grammar_is_named() {
        use ExtensionListError as E;
        for (v, e) in [
            ("; a", E::BadName),
            ("=x", E::BadName),
            ("a;", E::BadParamName),
            ("a; ;b", E::BadParamName),
            ("a; =1", E::BadParamName),
            ("a; b=", E::BadParamValue),
            ("a; b=,", E::BadParamValue),
            ("a; b=1 2", E::UnexpectedCharacter),
            ("a b", E::UnexpectedCharacter),
            ("a; b=\"1 2\"", E::BadParamValue),
            ("a; b=\u{e9}", E::BadParamValue),
            ("\u{e9}", E::BadName),
        ] {
            assert_eq!(one(v), Err(e), "{v:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_input_parses_or_is_refused_without_panic(s in "[ -~\t]{0,64}") {
            let _ = one(&s);
        }

        #[test]
        fn a_written_list_reads_back(
            exts in proptest::collection::vec(
                ("[a-z][a-z_-]{0,8}", proptest::collection::vec(("[a-z_]{1,8}", proptest::option::of("[0-9a-z]{1,4}"), proptest::bool::ANY), 0..4)),
                1..4,
            )
        ) {
            let text: Vec<String> = exts.iter().map(|(n, ps)| {
                let mut s = n.clone();
                for (p, v, quote) in ps {
                    s.push_str(" ; ");
                    s.push_str(p);
                    if let Some(v) = v {
                        if *quote { s.push_str(&format!("=\"{v}\"")) } else { s.push_str(&format!("={v}")) }
                    }
                }
                s
            }).collect();
            let got = one(&text.join(" , ")).unwrap();
            let want: Vec<Extension> = exts.iter().map(|(n, ps)| Extension {
                name: n.clone(),
                params: ps.iter().map(|(p, v, _)| (p.clone(), v.clone())).collect(),
            }).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }
}
