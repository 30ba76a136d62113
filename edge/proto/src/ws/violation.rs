//! Why a session fails its peer: the WebSocket rule the peer broke.

/// A protocol violation by the peer. Its label is the text of the close frame the session
/// queues, and the reason the edge counts and audits it under: stable bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Violation {
    /// A 64-bit length with its most significant bit set.
    BadLength,
    InvalidUtf8,
    FrameTooLarge,
    ReservedBits,
    /// A client frame without a mask (the server's rule).
    UnmaskedFrame,
    /// A server frame with a mask (the client's rule).
    MaskedFrame,
    BadOpcode,
    FragmentedControl,
    ControlTooLong,
    ExpectedContinuation,
    MessageTooLarge,
    UnexpectedContinuation,
    /// A close payload of one byte.
    BadClosePayload,
    BadCloseCode,
    /// A compressed message (permessage-deflate) that is not valid DEFLATE data.
    BadCompressedData,
    /// A compressed message whose inflated size passes the message limit (a decompression
    /// bomb is stopped here, within one inflate step of the limit).
    InflatedTooLarge,
}

impl Violation {
    /// Every variant, for tests that pin the labels.
    pub const ALL: [Violation; 16] = [
        Self::BadLength,
        Self::InvalidUtf8,
        Self::FrameTooLarge,
        Self::ReservedBits,
        Self::UnmaskedFrame,
        Self::MaskedFrame,
        Self::BadOpcode,
        Self::FragmentedControl,
        Self::ControlTooLong,
        Self::ExpectedContinuation,
        Self::MessageTooLarge,
        Self::UnexpectedContinuation,
        Self::BadClosePayload,
        Self::BadCloseCode,
        Self::BadCompressedData,
        Self::InflatedTooLarge,
    ];

    /// The label: the close frame's text and the counter's reason.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadLength => "bad_length",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::FrameTooLarge => "frame_too_large",
            Self::ReservedBits => "reserved_bits",
            Self::UnmaskedFrame => "unmasked_frame",
            Self::MaskedFrame => "masked_frame",
            Self::BadOpcode => "bad_opcode",
            Self::FragmentedControl => "fragmented_control",
            Self::ControlTooLong => "control_too_long",
            Self::ExpectedContinuation => "expected_continuation",
            Self::MessageTooLarge => "message_too_large",
            Self::UnexpectedContinuation => "unexpected_continuation",
            Self::BadClosePayload => "bad_close_payload",
            Self::BadCloseCode => "bad_close_code",
            Self::BadCompressedData => "bad_compressed_data",
            Self::InflatedTooLarge => "inflated_too_large",
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Violation {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}
