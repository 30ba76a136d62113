//! Shared pieces of the peer servers.
