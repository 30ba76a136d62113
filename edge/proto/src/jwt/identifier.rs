//! The one rule for the identifiers a revocation names: a token's `sub` and `jti`, a value in
//! the revocations file, the argument of `wssedge ctl revoke-*` / `unrevoke-*`.
//!
//! Revocations match byte for byte. A value the operator cannot type back exactly — padded
//! with whitespace, holding a control character, an invisible one or a space that only looks
//! like U+0020 — could be admitted and then never revoked (the file trims its lines, the control
//! socket refuses such arguments, a terminal shows nothing of a zero-width space). So the same
//! check runs everywhere: at verification a token whose `sub` or `jti` fails it is refused
//! (401 `identifier_invalid`), and a revocation naming such a value is refused with the same
//! words. Whatever the edge admits can then be revoked, and whatever can be revoked can be
//! admitted.
//!
//! An exact identifier:
//! - is 1 to [`MAX_IDENTIFIER_BYTES`] bytes of UTF-8;
//! - neither starts nor ends with whitespace (Unicode `White_Space`);
//! - contains no control character (Unicode `Cc`: C0, DEL, C1 — tabs and newlines included);
//! - contains no whitespace but U+0020 (no NO-BREAK SPACE, ideographic space, line separator…);
//! - contains no invisible character: Unicode's `Default_Ignorable_Code_Point` set (zero-width
//!   spaces and joiners, bidi controls, the BOM, soft hyphen, variation selectors, tags…) and
//!   the interlinear annotation characters U+FFF9–U+FFFB.
//!
//! Everything else is allowed as it is — letters of any script, digits, punctuation, symbols,
//! inner U+0020 spaces, private-use characters. No normalisation: `é` precomposed and `e` plus a
//! combining accent are different identifiers, as they are to the issuer; the audit record shows
//! each one as it must be revoked.

/// Longest identifier accepted: far above real `jti`s and subjects (UUIDs, URIs, account ids),
/// low enough to keep revocation sets, logs and audit records small.
pub const MAX_IDENTIFIER_BYTES: usize = 1024;

/// Why a value is not an exact identifier. The text is fixed (it never quotes the value, which
/// may come from a token), and says what to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    #[error("not an exact identifier: it is empty")]
    Empty,
    #[error("not an exact identifier: it is longer than {MAX_IDENTIFIER_BYTES} bytes")]
    TooLong,
    #[error("not an exact identifier: it has leading or trailing whitespace")]
    SurroundingWhitespace,
    #[error("not an exact identifier: it contains a control character")]
    Control,
    #[error(
        "not an exact identifier: it contains an invisible character or a space other than U+0020"
    )]
    Invisible,
}

/// Checks `value` against the rule (see the module).
pub fn check_identifier(value: &str) -> Result<(), IdentifierError> {
    if value.is_empty() {
        return Err(IdentifierError::Empty);
    }
    if value.len() > MAX_IDENTIFIER_BYTES {
        return Err(IdentifierError::TooLong);
    }
    let padded = |c: Option<char>| c.is_some_and(char::is_whitespace);
    if padded(value.chars().next()) || padded(value.chars().next_back()) {
        return Err(IdentifierError::SurroundingWhitespace);
    }
    for c in value.chars() {
        if c.is_control() {
            return Err(IdentifierError::Control);
        }
        if (c.is_whitespace() && c != ' ') || is_invisible(c) {
            return Err(IdentifierError::Invisible);
        }
    }
    Ok(())
}

/// Unicode 15.1 `Default_Ignorable_Code_Point` (DerivedCoreProperties.txt), plus U+FFF9–U+FFFB.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFB}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exact_identifiers_pass() {
        for ok in [
            "alice",
            "svc account #7",
            "550e8400-e29b-41d4-a716-446655440000",
            "spiffe://bank.test/trading/desk-1",
            "user@example.com",
            "Zoë",
            "山田",
            "e\u{301}", // e + combining acute: visible, kept as it is
            "\u{E000}", // private use
            "a",
        ] {
            assert_eq!(check_identifier(ok), Ok(()), "{ok:?}");
        }
        assert_eq!(check_identifier(&"x".repeat(MAX_IDENTIFIER_BYTES)), Ok(()));
    }

    #[test]
    fn each_violation_has_its_reason() {
        use IdentifierError::*;
        for (bad, why) in [
            ("", Empty),
            (" alice", SurroundingWhitespace),
            ("alice ", SurroundingWhitespace),
            ("alice\t", SurroundingWhitespace),
            ("\nalice", SurroundingWhitespace),
            ("alice\u{a0}", SurroundingWhitespace),
            ("\u{3000}alice", SurroundingWhitespace),
            ("ali\u{7}ce", Control),
            ("ali\tce", Control),
            ("a\u{7f}b", Control),
            ("a\u{85}b", Control),
            ("a\u{0}b", Control),
            ("a\u{a0}b", Invisible),
            ("a\u{2028}b", Invisible),
            ("alice\u{200b}", Invisible),
            ("al\u{202e}ice", Invisible),
            ("\u{feff}alice", Invisible),
            ("a\u{ad}b", Invisible),
            ("a\u{2066}b", Invisible),
            ("a\u{fe0f}", Invisible),
            ("a\u{e0041}", Invisible),
        ] {
            assert_eq!(check_identifier(bad), Err(why), "{bad:?}");
        }
        assert_eq!(
            check_identifier(&"x".repeat(MAX_IDENTIFIER_BYTES + 1)),
            Err(TooLong)
        );
        // The messages never quote the value and name the rule.
        for e in [Empty, TooLong, SurroundingWhitespace, Control, Invisible] {
            assert!(e.to_string().starts_with("not an exact identifier: "));
        }
    }

    proptest! {
        /// Whatever passes is its own trimmed form and shows every character it holds: what
        /// is admitted can be typed back. (That it survives a revocations-file line and that a
        /// parsed revocation passes this rule is tested beside the revocation parser.)
        #[test]
        fn a_passing_value_is_its_own_trimmed_form(s in "\\PC{0,40}") {
            if check_identifier(&s).is_ok() {
                prop_assert_eq!(s.trim(), s.as_str());
                prop_assert!(!s.chars().any(|c| c.is_control() || is_invisible(c)));
            }
        }
    }
}
