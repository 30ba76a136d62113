//! The reasons of `wssedge-proto`'s refusals and violations, as [`Reason`]s. The protocol crate
//! keeps its own labels (it cannot see this one); each mapping here is exhaustive, and the tests
//! below hold both labels to the same bytes.

use wssedge_proto::jwt::JwtRefusal;
use wssedge_proto::origin::OriginRefusal;
use wssedge_proto::ws::upstream_101::ResponseError;
use wssedge_proto::ws::{HandshakeError, TargetError, Violation};

use super::Reason;

impl From<&HandshakeError> for Reason {
    fn from(e: &HandshakeError) -> Self {
        use HandshakeError as E;
        match e {
            E::Malformed(_) => Reason::MalformedRequest,
            E::BadMethod => Reason::BadMethod,
            E::BadVersion => Reason::BadVersion,
            E::BadTarget(t) => Reason::from(*t),
            E::MissingHost => Reason::MissingHost,
            E::BadHost => Reason::BadHost,
            E::BadUpgradeHeader => Reason::BadUpgradeHeader,
            E::BadConnectionHeader => Reason::BadConnectionHeader,
            E::MissingKey => Reason::MissingKey,
            E::BadKey => Reason::BadKey,
            E::MissingWsVersion => Reason::MissingWsVersion,
            E::UnsupportedWsVersion => Reason::UnsupportedWsVersion,
            E::BadHeaderValue => Reason::BadHeaderValue,
            E::BadSubprotocol => Reason::BadSubprotocol,
            E::UnexpectedBody => Reason::UnexpectedBody,
            E::HeadersTooLarge => Reason::HeadersTooLarge,
            E::TooManyHeaders => Reason::TooManyHeaders,
        }
    }
}

impl From<TargetError> for Reason {
    fn from(e: TargetError) -> Self {
        use TargetError as E;
        match e {
            E::NotOriginForm => Reason::BadPath,
            E::Fragment => Reason::FragmentInTarget,
            E::BadChar => Reason::BadTargetChar,
            E::BadEscape => Reason::PathBadEscape,
            E::ControlByte => Reason::PathControlByte,
            E::EncodedSpace => Reason::PathEncodedSpace,
            E::NonAscii => Reason::PathNonAscii,
            E::DoubleEncoding => Reason::PathDoubleEncoding,
            E::EncodedDelimiter => Reason::PathEncodedDelimiter,
            E::Parameter => Reason::PathParameter,
            E::Backslash => Reason::PathBackslash,
            E::EmptySegment => Reason::PathEmptySegment,
            E::DotSegment => Reason::PathDotSegment,
        }
    }
}

impl From<OriginRefusal> for Reason {
    fn from(e: OriginRefusal) -> Self {
        match e {
            OriginRefusal::OriginMissing => Reason::OriginMissing,
            OriginRefusal::OriginNotAllowed => Reason::OriginNotAllowed,
            OriginRefusal::HostNotAllowed => Reason::HostNotAllowed,
        }
    }
}

impl From<&JwtRefusal> for Reason {
    fn from(e: &JwtRefusal) -> Self {
        use JwtRefusal as E;
        match e {
            E::TokenMissing => Reason::TokenMissing,
            E::TokenAmbiguous { .. } => Reason::TokenAmbiguous,
            E::BearerWithoutAppProtocol => Reason::BearerWithoutAppProtocol,
            E::TooLarge { .. } => Reason::TokenTooLarge,
            E::Malformed(_) => Reason::TokenMalformed,
            E::AlgNone => Reason::AlgNone,
            E::AlgNotAllowed(_) => Reason::AlgNotAllowed,
            E::CritUnsupported => Reason::CritUnsupported,
            E::UnknownKid => Reason::UnknownKid,
            E::KidRequired(_) => Reason::KidRequired,
            E::KeyAlgMismatch(_) => Reason::KeyAlgMismatch,
            E::BadSignature => Reason::BadSignature,
            E::ClaimInvalid(_) => Reason::ClaimInvalid,
            E::IdentifierInvalid { .. } => Reason::IdentifierInvalid,
            E::MissingClaim(_) => Reason::MissingClaim,
            E::Expired => Reason::Expired,
            E::NotYetValid => Reason::NotYetValid,
            E::IssuedInFuture => Reason::IssuedInFuture,
            E::WrongIssuer => Reason::WrongIssuer,
            E::WrongAudience => Reason::WrongAudience,
            E::LifetimeTooLong { .. } => Reason::LifetimeTooLong,
            E::JtiRequired => Reason::JtiRequired,
            E::Revoked(_) => Reason::Revoked,
            E::Replayed => Reason::Replayed,
            E::ReplayStoreFull => Reason::ReplayStoreFull,
            E::ReplayStoreUnavailable => Reason::ReplayStoreUnavailable,
            E::ReplayUnproven => Reason::ReplayUnproven,
            E::ReplayCheckUnavailable => Reason::ReplayCheckUnavailable,
            E::ScopeMissing => Reason::ScopeMissing,
        }
    }
}

impl From<&ResponseError> for Reason {
    fn from(e: &ResponseError) -> Self {
        use ResponseError as E;
        match e {
            E::Status(_) => Reason::UpstreamStatus,
            E::Malformed(_) => Reason::UpstreamMalformed,
            E::TooLarge(_) => Reason::UpstreamTooLarge,
            E::TooManyHeaders => Reason::UpstreamTooManyHeaders,
            E::BadUpgrade => Reason::UpstreamBadUpgrade,
            E::BadConnection => Reason::UpstreamBadConnection,
            E::MissingAccept => Reason::UpstreamMissingAccept,
            E::BadAccept => Reason::UpstreamBadAccept,
            E::Protocol { .. } => Reason::UpstreamProtocolMismatch,
            E::UnexpectedExtension => Reason::UpstreamUnexpectedExtension,
        }
    }
}

impl From<Violation> for Reason {
    fn from(v: Violation) -> Self {
        use Violation as V;
        match v {
            V::BadLength => Reason::BadLength,
            V::InvalidUtf8 => Reason::InvalidUtf8,
            V::FrameTooLarge => Reason::FrameTooLarge,
            V::ReservedBits => Reason::ReservedBits,
            V::UnmaskedFrame => Reason::UnmaskedFrame,
            V::MaskedFrame => Reason::MaskedFrame,
            V::BadOpcode => Reason::BadOpcode,
            V::FragmentedControl => Reason::FragmentedControl,
            V::ControlTooLong => Reason::ControlTooLong,
            V::ExpectedContinuation => Reason::ExpectedContinuation,
            V::MessageTooLarge => Reason::MessageTooLarge,
            V::UnexpectedContinuation => Reason::UnexpectedContinuation,
            V::BadClosePayload => Reason::BadClosePayload,
            V::BadCloseCode => Reason::BadCloseCode,
            V::BadCompressedData => Reason::BadCompressedData,
            V::InflatedTooLarge => Reason::InflatedTooLarge,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(proto: &str, edge: Reason) {
        assert_eq!(
            proto,
            edge.as_str(),
            "the protocol crate and the edge disagree"
        );
    }

    #[test]
    fn upgrade_refusals_keep_the_protocol_crates_labels() {
        use HandshakeError as E;
        let all = [
            E::Malformed("x"),
            E::BadMethod,
            E::BadVersion,
            E::MissingHost,
            E::BadHost,
            E::BadUpgradeHeader,
            E::BadConnectionHeader,
            E::MissingKey,
            E::BadKey,
            E::MissingWsVersion,
            E::UnsupportedWsVersion,
            E::BadHeaderValue,
            E::BadSubprotocol,
            E::UnexpectedBody,
            E::HeadersTooLarge,
            E::TooManyHeaders,
        ];
        for e in all.iter().chain(TargetError::ALL.map(E::BadTarget).iter()) {
            same(e.reason(), Reason::from(e));
        }
        for e in TargetError::ALL {
            same(e.reason(), Reason::from(e));
        }
    }

    #[test]
    fn origin_refusals_keep_the_protocol_crates_labels() {
        for e in [
            OriginRefusal::OriginMissing,
            OriginRefusal::OriginNotAllowed,
            OriginRefusal::HostNotAllowed,
        ] {
            same(e.reason(), Reason::from(e));
        }
    }

    #[test]
    fn jwt_refusals_keep_the_protocol_crates_labels() {
        use wssedge_proto::jwt::{Alg, IdentifierError, RevokedBy};
        use JwtRefusal as E;
        let all = [
            E::TokenMissing,
            E::TokenAmbiguous {
                first: "header",
                second: "query",
            },
            E::BearerWithoutAppProtocol,
            E::TooLarge { max: 1 },
            E::Malformed("x"),
            E::AlgNone,
            E::AlgNotAllowed(None),
            E::AlgNotAllowed(Some(Alg::Hs256)),
            E::CritUnsupported,
            E::UnknownKid,
            E::KidRequired(Alg::Rs256),
            E::KeyAlgMismatch(Alg::Es256),
            E::BadSignature,
            E::ClaimInvalid("exp".into()),
            E::IdentifierInvalid {
                claim: "sub",
                why: IdentifierError::Empty,
            },
            E::MissingClaim("aud".into()),
            E::Expired,
            E::NotYetValid,
            E::IssuedInFuture,
            E::WrongIssuer,
            E::WrongAudience,
            E::LifetimeTooLong { max: 1 },
            E::JtiRequired,
            E::Revoked(RevokedBy::Jti),
            E::Revoked(RevokedBy::Subject),
            E::Replayed,
            E::ReplayStoreFull,
            E::ReplayStoreUnavailable,
            E::ReplayUnproven,
            E::ReplayCheckUnavailable,
            E::ScopeMissing,
        ];
        for e in &all {
            same(e.reason(), Reason::from(e));
        }
    }

    #[test]
    fn upstream_101_errors_keep_the_protocol_crates_labels() {
        use ResponseError as E;
        for e in [
            E::Status(500),
            E::Malformed("x"),
            E::TooLarge(1),
            E::TooManyHeaders,
            E::BadUpgrade,
            E::BadConnection,
            E::MissingAccept,
            E::BadAccept,
            E::Protocol {
                offered: None,
                got: None,
            },
            E::UnexpectedExtension,
        ] {
            same(e.reason(), Reason::from(&e));
        }
    }

    #[test]
    fn violations_keep_the_protocol_crates_labels() {
        for v in Violation::ALL {
            same(v.as_str(), Reason::from(v));
        }
    }
}
