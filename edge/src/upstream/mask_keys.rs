//! The masking keys of the edge's client-role sessions (towards upstreams), from aws-lc's
//! CSPRNG — the same library rustls uses.

use crate::ws::MaskKeySource;

/// The system CSPRNG as a [`MaskKeySource`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemMaskKeys;

impl MaskKeySource for SystemMaskKeys {
    fn fill(&mut self, buf: &mut [u8]) {
        // aws-lc's DRBG does not fail once seeded. Were it to, the keys would repeat: that
        // weakens only the browser cache-poisoning defence masking exists for (RFC 6455
        // §10.3), which an edge talking to its own upstreams does not rely on.
        let _ = aws_lc_rs::rand::fill(buf);
    }
}
