//! Incremental UTF-8 validation across chunk (and frame) boundaries.
//!
//! Built on `simdutf8::compat`, whose error tells an invalid sequence (`error_len() == Some`)
//! from a valid but incomplete one at the end of the input (`error_len() == None`). Up to three
//! bytes of an incomplete trailing sequence are carried to the next chunk, so every byte is
//! judged as early as possible: an invalid byte fails the moment it arrives.

/// The input is not valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid UTF-8")]
pub struct Utf8Error;

/// A streaming UTF-8 validator.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    partial: [u8; 4],
    partial_len: usize,
}

impl Utf8Validator {
    /// A validator at a character boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets any carried incomplete sequence (start of a new message).
    pub fn reset(&mut self) {
        self.partial_len = 0;
    }

    /// True while the input so far ends inside a (so far valid) multi-byte sequence.
    pub fn is_incomplete(&self) -> bool {
        self.partial_len > 0
    }

    /// Validates the next chunk. An incomplete sequence at the end of `chunk` is carried over;
    /// any byte that cannot start or continue a valid sequence is an error.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), Utf8Error> {
        if self.partial_len > 0 {
            // Complete the carried sequence with at most 3 new bytes.
            let take = chunk.len().min(4 - self.partial_len);
            let mut tmp = [0u8; 7];
            tmp[..self.partial_len].copy_from_slice(&self.partial[..self.partial_len]);
            tmp[self.partial_len..self.partial_len + take].copy_from_slice(&chunk[..take]);
            let tmp = &tmp[..self.partial_len + take];
            match simdutf8::compat::from_utf8(tmp) {
                Ok(_) => {
                    self.partial_len = 0;
                    chunk = &chunk[take..];
                }
                Err(e) if e.error_len().is_some() && e.valid_up_to() < self.partial_len => {
                    return Err(Utf8Error);
                }
                Err(e) if e.valid_up_to() < self.partial_len => {
                    // Still incomplete: the chunk was too short to finish the sequence.
                    self.partial[self.partial_len..self.partial_len + take]
                        .copy_from_slice(&chunk[..take]);
                    self.partial_len += take;
                    return Ok(());
                }
                Err(e) => {
                    // The carried sequence completed; continue right after it.
                    let used = e.valid_up_to() - self.partial_len;
                    self.partial_len = 0;
                    chunk = &chunk[used..];
                }
            }
        }
        // The common case, valid text, takes the faster validator; only a chunk that fails it
        // is looked at again for where and why.
        if simdutf8::basic::from_utf8(chunk).is_ok() {
            return Ok(());
        }
        match simdutf8::compat::from_utf8(chunk) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(Utf8Error),
            Err(e) => {
                let tail = &chunk[e.valid_up_to()..];
                self.partial[..tail.len()].copy_from_slice(tail);
                self.partial_len = tail.len();
                Ok(())
            }
        }
    }

    /// Ends the input: an incomplete trailing sequence is an error. Resets the validator.
    pub fn finish(&mut self) -> Result<(), Utf8Error> {
        let incomplete = self.partial_len > 0;
        self.partial_len = 0;
        if incomplete {
            Err(Utf8Error)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunked(data: &[u8], cuts: &[usize]) -> Result<(), Utf8Error> {
        let mut v = Utf8Validator::new();
        let mut start = 0;
        for &c in cuts {
            let c = c.clamp(start, data.len());
            v.feed(&data[start..c])?;
            start = c;
        }
        v.feed(&data[start..])?;
        v.finish()
    }

    #[test]
    fn byte_at_a_time_valid() {
        let s = "héllo wörld € 𝄞 ok".as_bytes();
        let mut v = Utf8Validator::new();
        for b in s {
            v.feed(std::slice::from_ref(b)).unwrap();
        }
        v.finish().unwrap();
    }

    #[test]
    fn invalid_detected_without_waiting() {
        let mut v = Utf8Validator::new();
        v.feed(b"abc").unwrap();
        assert_eq!(v.feed(&[0xff]), Err(Utf8Error));
        // A lead byte followed by a bad continuation fails on the continuation.
        let mut v = Utf8Validator::new();
        v.feed(&[0xce]).unwrap();
        assert!(v.is_incomplete());
        assert_eq!(v.feed(&[0x41]), Err(Utf8Error));
        // Out-of-range 4-byte sequence (> U+10FFFF) fails at its second byte.
        let mut v = Utf8Validator::new();
        v.feed(&[0xf4]).unwrap();
        assert_eq!(v.feed(&[0x90]), Err(Utf8Error));
        // Surrogates.
        let mut v = Utf8Validator::new();
        v.feed(&[0xed]).unwrap();
        assert_eq!(v.feed(&[0xa0]), Err(Utf8Error));
    }

    #[test]
    fn incomplete_at_end_fails_finish() {
        let mut v = Utf8Validator::new();
        v.feed(&[0xe2, 0x82]).unwrap();
        assert_eq!(v.finish(), Err(Utf8Error));
        // finish resets.
        v.feed(b"x").unwrap();
        v.finish().unwrap();
    }

    #[test]
    fn partial_completes_then_more_text() {
        let mut v = Utf8Validator::new();
        v.feed(&[0xf0, 0x9d]).unwrap();
        v.feed(&[0x84, 0x9e, b'a', 0xc3]).unwrap();
        v.feed(&[0xa9]).unwrap();
        v.finish().unwrap();
        let mut v = Utf8Validator::new();
        v.feed(&[0xf0, 0x9d]).unwrap();
        assert_eq!(v.feed(&[0x84, 0x9e, 0xff]), Err(Utf8Error));
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn agrees_with_std(data in proptest::collection::vec(
                               prop_oneof![any::<u8>(), 0x80u8..0xc0, Just(b'a')], 0..40),
                           cuts in proptest::collection::vec(0usize..40, 0..6)) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            prop_assert_eq!(chunked(&data, &cuts).is_ok(), std::str::from_utf8(&data).is_ok());
        }

        #[test]
        fn valid_strings_any_split(s in "\\PC{0,30}", cuts in proptest::collection::vec(0usize..130, 0..8)) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            prop_assert!(chunked(s.as_bytes(), &cuts).is_ok());
        }
    }
}
