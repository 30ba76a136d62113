//! Tests of the JWT checks: tokens minted with aws-lc-rs keys generated at test time
//! ([`super::mint`]), key files held in memory ([`fixture`]).
//!
//! - `fixture`: the test keys as the files a configuration names, and a loader over them.
//! - `corpus`: bad tokens, each refused with its precise reason (and no secret in Display).
//! - `algs`: a good token for every algorithm.
//! - `config_tests`: `[jwt]` TOML, defaults and validation.
//! - `extract_tests`: finding the token in header, subprotocol and query.
//! - `props`: nothing panics on arbitrary input.
//!
//! Reading real files (permissions, size caps, the kid from the file stem) and the checks that
//! need the edge's stores (revocation, replay) are tested in the edge.

mod algs;
mod config_tests;
mod corpus;
mod extract_tests;
mod fixture;
mod props;
