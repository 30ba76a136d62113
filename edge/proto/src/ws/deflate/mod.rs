//! permessage-deflate (RFC 7692), sans-IO: the negotiation of the upgrade and the payload
//! transform. The session applies it: RSV1 on a compressed message's first frame only, never on
//! a control frame, the message cap on the inflated size.
//!
//! - [`negotiate`]: offers in, the agreement and the 101's `Sec-WebSocket-Extensions` out.
//! - [`codec`]: [`MessageDeflater`] and [`MessageInflater`] on flate2 + zlib-rs.

pub mod codec;
pub mod negotiate;

pub use codec::{InflateError, InflateProgress, MessageDeflater, MessageInflater};
pub use negotiate::{
    negotiate, ContextTakeover, DeflateAgreement, DeflateOfferError, DeflateParams,
    PERMESSAGE_DEFLATE,
};

#[cfg(test)]
mod tests;
