//! Tests of the JWT room: tokens minted here with aws-lc-rs keys generated at test time.
//!
//! - `mint`: keys, PEM/JWKS files and token construction.
//! - `corpus`: bad tokens, each refused with its precise reason (and no secret in Display).
//! - `algs`: a good token for every algorithm.
//! - `key_files`: PEM, JWKS and secret-file loading, and what they refuse.
//! - `config_tests`: `[jwt]` TOML, defaults and validation.
//! - `extract_tests`: finding the token in header, subprotocol and query.
//! - `flow`: verify + revocation + replay + scope + expiry, as admission chains them.
//! - `props`: nothing panics on arbitrary input.

mod algs;
mod config_tests;
mod corpus;
mod extract_tests;
mod flow;
mod key_files;
mod mint;
mod props;
