//! Every reason the edge gives for turning a connection away or closing it: the one list.
//!
//! A reason is a stable snake_case label: the `reason` of `wssedge_refusals_total` and
//! `wssedge_handshakes_total`, the `"error"` of an HTTP refusal's JSON body, the text of a close
//! frame the edge sends, and the `reason` of an audit record. Dashboards, clients and audit
//! readers key on these bytes, so they are written once, here; code names a [`Reason`], and a
//! typo is a compile error instead of a new label. The two other labelled counters' reasons
//! ([`KtlsFallback`], [`LossyDrop`]) are listed here too.

mod proto;

/// Declares a label enum: its variants with their text, `ALL` in declaration order, `as_str`,
/// `Display`, and comparison with a `&str` (tests hold labels to their bytes).
macro_rules! labels {
    (
        $(#[$meta:meta])*
        pub enum $Enum:ident {
            $( $(#[$doc:meta])* $name:ident => $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $Enum {
            $( $(#[$doc])* $name, )*
        }

        impl $Enum {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$Enum] = &[ $( $Enum::$name, )* ];

            /// The label: what counters, bodies, close frames and audit records carry.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $Enum::$name => $text, )*
                }
            }
        }

        impl std::fmt::Display for $Enum {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<&str> for $Enum {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl PartialEq<$Enum> for &str {
            fn eq(&self, other: &$Enum) -> bool {
                *self == other.as_str()
            }
        }
    };
}

labels! {
    /// Why a connection was refused or closed (see the module doc).
    pub enum Reason {
        // Turned away at accept, before any TLS byte.
        MaxConnections => "max_connections",
        MaxHandshakesInFlight => "max_handshakes_in_flight",
        /// A silent connection closed to admit a newer one (`max_silent_connections`).
        SilentEvicted => "silent_evicted",
        /// Nothing arrived within `first_byte_timeout_ms`.
        FirstByteTimeout => "first_byte_timeout",
        /// A handshake (or upgrade request) that held its place too long, closed when every
        /// place was taken and a new one started.
        HandshakeEvicted => "handshake_evicted",
        AuditBackpressure => "audit_backpressure",
        IpLimit => "ip_limit",
        IpBlocked => "ip_blocked",

        // The TLS handshake.
        /// A handshake that completed (the success label of `wssedge_handshakes_total` and of the
        /// upgrade's audit record).
        Ok => "ok",
        HandshakeTimeout => "handshake_timeout",
        PeerClosedDuringHandshake => "peer_closed_during_handshake",
        NotTls => "not_tls",
        TlsProtocolVersion => "tls_protocol_version",
        TlsHandshakeIncomplete => "tls_handshake_incomplete",
        TlsClosed => "tls_closed",
        TlsKeysExhausted => "tls_keys_exhausted",
        TlsInternal => "tls_internal",
        TlsNoSharedCipher => "tls_no_shared_cipher",
        TlsIncompatible => "tls_incompatible",
        TlsNoApplicationProtocol => "tls_no_application_protocol",
        TlsBadCertificate => "tls_bad_certificate",
        TlsAlertReceived => "tls_alert_received",
        TlsDecryptError => "tls_decrypt_error",
        TlsProtocolError => "tls_protocol_error",
        ClientCertMissing => "client_cert_missing",
        CrlInvalid => "crl_invalid",
        ClientCertUntrusted => "client_cert_untrusted",
        ClientCertRevoked => "client_cert_revoked",
        ClientCertRevocationUnknown => "client_cert_revocation_unknown",
        CrlExpired => "crl_expired",
        ClientCertExpired => "client_cert_expired",
        ClientCertNotYetValid => "client_cert_not_yet_valid",
        ClientCertWrongPurpose => "client_cert_wrong_purpose",
        ClientCertInvalid => "client_cert_invalid",

        // The record layer (kTLS or userspace) after the handshake.
        KtlsHandoffFailed => "ktls_handoff_failed",
        KtlsRequired => "ktls_required",
        TlsRecordReadFailed => "tls_record_read_failed",
        TlsBadRecord => "tls_bad_record",
        TlsRecordOverflow => "tls_record_overflow",
        TlsRekeyFailed => "tls_rekey_failed",
        TlsRekeyUnsupported => "tls_rekey_unsupported",
        TlsKeyLimit => "tls_key_limit",
        TlsAlertUnexpected => "tls_alert_unexpected",
        TlsUnexpectedRecord => "tls_unexpected_record",
        TlsUnexpectedHandshake => "tls_unexpected_handshake",
        WriteTimeout => "write_timeout",
        CloseTimeout => "close_timeout",

        // The upgrade request (HTTP refusals).
        MalformedRequest => "malformed_request",
        BadMethod => "bad_method",
        BadVersion => "bad_version",
        MissingHost => "missing_host",
        BadHost => "bad_host",
        BadUpgradeHeader => "bad_upgrade_header",
        BadConnectionHeader => "bad_connection_header",
        MissingKey => "missing_key",
        BadKey => "bad_key",
        MissingWsVersion => "missing_ws_version",
        UnsupportedWsVersion => "unsupported_ws_version",
        BadHeaderValue => "bad_header_value",
        BadSubprotocol => "bad_subprotocol",
        UnexpectedBody => "unexpected_body",
        /// `Sec-WebSocket-Extensions` breaks the list grammar of RFC 6455 §9.1.
        BadExtensionHeader => "bad_extension_header",
        DeflateUnknownParameter => "deflate_unknown_parameter",
        DeflateRepeatedParameter => "deflate_repeated_parameter",
        DeflateUnexpectedValue => "deflate_unexpected_value",
        DeflateMissingValue => "deflate_missing_value",
        DeflateBadWindowBits => "deflate_bad_window_bits",
        HeadersTooLarge => "headers_too_large",
        TooManyHeaders => "too_many_headers",
        BadPath => "bad_path",
        FragmentInTarget => "fragment_in_target",
        BadTargetChar => "bad_target_char",
        PathBadEscape => "path_bad_escape",
        PathControlByte => "path_control_byte",
        PathEncodedSpace => "path_encoded_space",
        PathNonAscii => "path_non_ascii",
        PathDoubleEncoding => "path_double_encoding",
        PathEncodedDelimiter => "path_encoded_delimiter",
        PathParameter => "path_parameter",
        PathBackslash => "path_backslash",
        PathEmptySegment => "path_empty_segment",
        PathDotSegment => "path_dot_segment",
        OriginMissing => "origin_missing",
        OriginNotAllowed => "origin_not_allowed",
        HostNotAllowed => "host_not_allowed",
        IdentityRequired => "identity_required",
        IdentityNotAllowed => "identity_not_allowed",
        IdentityUnreadable => "identity_unreadable",
        /// An identity at `per_identity_connections` (429).
        IdentityConnectionLimit => "identity_connection_limit",
        CertificateRevoked => "certificate_revoked",
        InternalError => "internal_error",
        /// A panic caught in the connection (HTTP 500 before the upgrade, close 1011 after).
        Panic => "panic",

        // Tokens (JWT).
        TokenMissing => "token_missing",
        TokenAmbiguous => "token_ambiguous",
        BearerWithoutAppProtocol => "bearer_without_app_protocol",
        TokenTooLarge => "token_too_large",
        TokenMalformed => "token_malformed",
        AlgNone => "alg_none",
        AlgNotAllowed => "alg_not_allowed",
        CritUnsupported => "crit_unsupported",
        UnknownKid => "unknown_kid",
        KidRequired => "kid_required",
        KeyAlgMismatch => "key_alg_mismatch",
        BadSignature => "bad_signature",
        ClaimInvalid => "claim_invalid",
        IdentifierInvalid => "identifier_invalid",
        MissingClaim => "missing_claim",
        Expired => "expired",
        NotYetValid => "not_yet_valid",
        IssuedInFuture => "issued_in_future",
        WrongIssuer => "wrong_issuer",
        WrongAudience => "wrong_audience",
        LifetimeTooLong => "lifetime_too_long",
        JtiRequired => "jti_required",
        Revoked => "revoked",
        Kicked => "kicked",
        FleetUnavailable => "fleet_unavailable",
        Replayed => "replayed",
        ReplayStoreFull => "replay_store_full",
        ReplayStoreUnavailable => "replay_store_unavailable",
        ReplayStoreBusy => "replay_store_busy",
        ReplayUnproven => "replay_unproven",
        ReplayCheckUnavailable => "replay_check_unavailable",
        ScopeMissing => "scope_missing",

        // Proxy mode: the route and the upstream.
        NoRoute => "no_route",
        UpstreamUnavailable => "upstream_unavailable",
        UpstreamRefused => "upstream_refused",
        UpstreamTimeout => "upstream_timeout",
        UpstreamConnectFailed => "upstream_connect_failed",
        UpstreamNoAddress => "upstream_no_address",
        UpstreamTlsFailed => "upstream_tls_failed",
        UpstreamMisconfigured => "upstream_misconfigured",
        UpstreamStatus => "upstream_status",
        UpstreamMalformed => "upstream_malformed",
        UpstreamTooLarge => "upstream_too_large",
        UpstreamTooManyHeaders => "upstream_too_many_headers",
        UpstreamBadUpgrade => "upstream_bad_upgrade",
        UpstreamBadConnection => "upstream_bad_connection",
        UpstreamMissingAccept => "upstream_missing_accept",
        UpstreamBadAccept => "upstream_bad_accept",
        UpstreamProtocolMismatch => "upstream_protocol_mismatch",
        UpstreamUnexpectedExtension => "upstream_unexpected_extension",
        UpstreamClosed => "upstream_closed",
        UpstreamReadFailed => "upstream_read_failed",
        UpstreamWriteFailed => "upstream_write_failed",
        UpstreamStalled => "upstream_stalled",
        UpstreamFrameTimeout => "upstream_frame_timeout",
        UpstreamProtocolError => "upstream_protocol_error",
        /// Told to the upstream when the client broke the protocol.
        ClientProtocolError => "client_protocol_error",
        /// Told to the upstream when the client was closed for its rate.
        ClientRateLimited => "client_rate_limited",

        // An open session closed by the edge.
        BufferBudget => "buffer_budget",
        SlowConsumer => "slow_consumer",
        PongTimeout => "pong_timeout",
        FrameTimeout => "frame_timeout",
        IdleTimeout => "idle_timeout",
        TokenExpired => "token_expired",
        GoingAway => "going_away",
        ServiceRestart => "service_restart",
        RateLimited => "rate_limited",
        // The client broke the WebSocket protocol (close 1002/1007/1009).
        BadLength => "bad_length",
        InvalidUtf8 => "invalid_utf8",
        FrameTooLarge => "frame_too_large",
        ReservedBits => "reserved_bits",
        UnmaskedFrame => "unmasked_frame",
        MaskedFrame => "masked_frame",
        BadOpcode => "bad_opcode",
        FragmentedControl => "fragmented_control",
        ControlTooLong => "control_too_long",
        ExpectedContinuation => "expected_continuation",
        MessageTooLarge => "message_too_large",
        BadCompressedData => "bad_compressed_data",
        InflatedTooLarge => "inflated_too_large",
        UnexpectedContinuation => "unexpected_continuation",
        BadClosePayload => "bad_close_payload",
        BadCloseCode => "bad_close_code",
    }
}

labels! {
    /// Why a handshake kTLS could have taken stayed in userspace (or, once the secrets were
    /// out, closed): the `reason` of `wssedge_ktls_fallbacks_total`.
    pub enum KtlsFallback {
        Handshaking => "handshaking",
        CipherUnsupported => "cipher_unsupported",
        UlpFailed => "ulp_failed",
        NotQuiescent => "not_quiescent",
        SecretsUnavailable => "secrets_unavailable",
        CryptoInfo => "crypto_info",
        SetsockoptFailed => "setsockopt_failed",
    }
}

labels! {
    /// Why a lossy route dropped a message: the `reason` of `wssedge_lossy_drops_total`.
    pub enum LossyDrop {
        RateLimit => "rate_limit",
        Backpressure => "backpressure",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every label the edge emitted before reasons were typed, byte for byte and sorted.
    /// Dashboards, clients and audit readers depend on these: a change here is a change of the
    /// edge's public interface, never a refactoring.
    const PINNED: &[&str] = &[
        "alg_none",
        "alg_not_allowed",
        "audit_backpressure",
        "bad_close_code",
        "bad_close_payload",
        "bad_compressed_data",
        "bad_connection_header",
        "bad_extension_header",
        "bad_header_value",
        "bad_host",
        "bad_key",
        "bad_length",
        "bad_method",
        "bad_opcode",
        "bad_path",
        "bad_signature",
        "bad_subprotocol",
        "bad_target_char",
        "bad_upgrade_header",
        "bad_version",
        "bearer_without_app_protocol",
        "buffer_budget",
        "certificate_revoked",
        "claim_invalid",
        "client_cert_expired",
        "client_cert_invalid",
        "client_cert_missing",
        "client_cert_not_yet_valid",
        "client_cert_revocation_unknown",
        "client_cert_revoked",
        "client_cert_untrusted",
        "client_cert_wrong_purpose",
        "client_protocol_error",
        "client_rate_limited",
        "close_timeout",
        "control_too_long",
        "crit_unsupported",
        "crl_expired",
        "crl_invalid",
        "deflate_bad_window_bits",
        "deflate_missing_value",
        "deflate_repeated_parameter",
        "deflate_unexpected_value",
        "deflate_unknown_parameter",
        "expected_continuation",
        "expired",
        "first_byte_timeout",
        "fleet_unavailable",
        "fragment_in_target",
        "fragmented_control",
        "frame_timeout",
        "frame_too_large",
        "going_away",
        "handshake_evicted",
        "handshake_timeout",
        "headers_too_large",
        "host_not_allowed",
        "identifier_invalid",
        "identity_connection_limit",
        "identity_not_allowed",
        "identity_required",
        "identity_unreadable",
        "idle_timeout",
        "inflated_too_large",
        "internal_error",
        "invalid_utf8",
        "ip_blocked",
        "ip_limit",
        "issued_in_future",
        "jti_required",
        "key_alg_mismatch",
        "kicked",
        "kid_required",
        "ktls_handoff_failed",
        "ktls_required",
        "lifetime_too_long",
        "malformed_request",
        "masked_frame",
        "max_connections",
        "max_handshakes_in_flight",
        "message_too_large",
        "missing_claim",
        "missing_host",
        "missing_key",
        "missing_ws_version",
        "no_route",
        "not_tls",
        "not_yet_valid",
        "ok",
        "origin_missing",
        "origin_not_allowed",
        "panic",
        "path_backslash",
        "path_bad_escape",
        "path_control_byte",
        "path_dot_segment",
        "path_double_encoding",
        "path_empty_segment",
        "path_encoded_delimiter",
        "path_encoded_space",
        "path_non_ascii",
        "path_parameter",
        "peer_closed_during_handshake",
        "pong_timeout",
        "rate_limited",
        "replay_check_unavailable",
        "replay_store_busy",
        "replay_store_full",
        "replay_store_unavailable",
        "replay_unproven",
        "replayed",
        "reserved_bits",
        "revoked",
        "scope_missing",
        "service_restart",
        "silent_evicted",
        "slow_consumer",
        "tls_alert_received",
        "tls_alert_unexpected",
        "tls_bad_certificate",
        "tls_bad_record",
        "tls_closed",
        "tls_decrypt_error",
        "tls_handshake_incomplete",
        "tls_incompatible",
        "tls_internal",
        "tls_key_limit",
        "tls_keys_exhausted",
        "tls_no_application_protocol",
        "tls_no_shared_cipher",
        "tls_protocol_error",
        "tls_protocol_version",
        "tls_record_overflow",
        "tls_record_read_failed",
        "tls_rekey_failed",
        "tls_rekey_unsupported",
        "tls_unexpected_handshake",
        "tls_unexpected_record",
        "token_ambiguous",
        "token_expired",
        "token_malformed",
        "token_missing",
        "token_too_large",
        "too_many_headers",
        "unexpected_body",
        "unexpected_continuation",
        "unknown_kid",
        "unmasked_frame",
        "unsupported_ws_version",
        "upstream_bad_accept",
        "upstream_bad_connection",
        "upstream_bad_upgrade",
        "upstream_closed",
        "upstream_connect_failed",
        "upstream_frame_timeout",
        "upstream_malformed",
        "upstream_misconfigured",
        "upstream_missing_accept",
        "upstream_no_address",
        "upstream_protocol_error",
        "upstream_protocol_mismatch",
        "upstream_read_failed",
        "upstream_refused",
        "upstream_stalled",
        "upstream_status",
        "upstream_timeout",
        "upstream_tls_failed",
        "upstream_too_large",
        "upstream_too_many_headers",
        "upstream_unavailable",
        "upstream_unexpected_extension",
        "upstream_write_failed",
        "write_timeout",
        "wrong_audience",
        "wrong_issuer",
    ];

    #[test]
    fn every_label_is_pinned_to_its_bytes() {
        let mut labels: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        assert_eq!(labels, PINNED);
    }

    #[test]
    fn ktls_fallback_and_lossy_drop_labels_are_pinned_to_their_bytes() {
        let ktls: Vec<&str> = KtlsFallback::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            ktls,
            [
                "handshaking",
                "cipher_unsupported",
                "ulp_failed",
                "not_quiescent",
                "secrets_unavailable",
                "crypto_info",
                "setsockopt_failed",
            ]
        );
        let lossy: Vec<&str> = LossyDrop::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(lossy, ["rate_limit", "backpressure"]);
    }

    #[test]
    fn labels_are_snake_case_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            let s = r.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(
                s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{s} is not snake_case"
            );
        }
    }
}
