//! Topic names.
//!
//! A topic name is 1 to [`MAX_TOPIC_BYTES`] bytes of ASCII letters, digits and `.`, `_`, `:`,
//! `-`. Names travel into log lines, metric labels and the JSON the edge writes, and are
//! compared byte for byte; with this alphabet none of them needs escaping anywhere, no two
//! spellings look alike (no Unicode confusables, case folding or normalisation forms), and a
//! client cannot forge a log line or a label with a quote, a backslash or a control byte.

/// Long enough for `book.BTC-USD:L2.v3`-style names; short enough to be a sane label value.
pub const MAX_TOPIC_BYTES: usize = 128;

/// Why a topic name (or a `[[pubsub.topics]]` prefix) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("a topic name must not be empty")]
    Empty,
    #[error("a topic name is at most {MAX_TOPIC_BYTES} bytes (this one has {len})")]
    TooLong { len: usize },
    #[error(
        "byte {byte:#04x} at offset {at} is not allowed; topic names hold ASCII letters, digits \
         and '.', '_', ':', '-' only"
    )]
    Char { at: usize, byte: u8 },
}

/// Whether `b` may appear in a topic name.
pub fn is_topic_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
}

/// Checks a topic name against the rules above.
pub fn check_topic(name: &str) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    check_topic_bytes(name)
}

/// The rules without the non-empty one: a `[[pubsub.topics]]` prefix may be `""` (every topic).
pub(crate) fn check_topic_bytes(name: &str) -> Result<(), TopicError> {
    if name.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong { len: name.len() });
    }
    match name.bytes().enumerate().find(|&(_, b)| !is_topic_byte(b)) {
        Some((at, byte)) => Err(TopicError::Char { at, byte }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn market_data_names_pass() {
        for name in [
            "trades.BTC-USD",
            "book.ETH-USD:L2",
            "a",
            "ticker_all",
            "0",
            "x.y.z-1:2_3",
        ] {
            assert_eq!(check_topic(name), Ok(()), "{name}");
        }
        assert_eq!(check_topic(&"a".repeat(MAX_TOPIC_BYTES)), Ok(()));
    }

    #[test]
    fn empty_and_too_long_are_refused() {
        assert_eq!(check_topic(""), Err(TopicError::Empty));
        assert_eq!(
            check_topic(&"a".repeat(MAX_TOPIC_BYTES + 1)),
            Err(TopicError::TooLong {
                len: MAX_TOPIC_BYTES + 1
            })
        );
    }

    #[test]
    fn hostile_spellings_are_refused_with_the_offset() {
        let cases: &[(&str, usize, u8)] = &[
            ("trades BTC", 6, b' '),
            ("trades\"}", 6, b'"'),
            ("a\\u0000", 1, b'\\'),
            ("a\nfake log line", 1, b'\n'),
            ("a\r", 1, b'\r'),
            ("\u{0}", 0, 0),
            ("tab\there", 3, b'\t'),
            ("del\u{7f}", 3, 0x7f),
            ("a/b", 1, b'/'),
            ("a*", 1, b'*'),
            ("{x}", 0, b'{'),
            ("a=b,c", 1, b'='),
        ];
        for &(name, at, byte) in cases {
            assert_eq!(
                check_topic(name),
                Err(TopicError::Char { at, byte }),
                "{name:?}"
            );
        }
    }

    #[test]
    fn unicode_is_refused_including_lookalikes() {
        // Cyrillic `а` (U+0430) looks like `a`; the fullwidth dot like `.`; U+2028 breaks lines
        // in some log viewers; U+202E reverses the text around it.
        for name in [
            "trаdes",
            "trades\u{ff0e}BTC",
            "a\u{2028}b",
            "\u{202e}dsu",
            "é",
        ] {
            assert!(
                matches!(check_topic(name), Err(TopicError::Char { byte, .. }) if byte >= 0x80),
                "{name:?}"
            );
        }
    }

    #[test]
    fn the_error_says_what_is_allowed() {
        let e = check_topic("a b").unwrap_err().to_string();
        assert!(
            e.contains("0x20") && e.contains("ASCII letters, digits"),
            "{e}"
        );
    }
}
