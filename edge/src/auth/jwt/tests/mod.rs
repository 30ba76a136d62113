//! Tests of the JWT room that need files or the edge's stores; the checks themselves are
//! tested in `wssedge_proto::jwt` (corpus, algorithms, extraction, config, properties).
//!
//! - `mint`: the test keys of `wssedge_proto::jwt::mint` as PEM/JWKS/secret files.
//! - `key_files`: PEM, JWKS and secret-file loading, and what they refuse.
//! - `flow`: verify + revocation + replay + scope + expiry, as admission chains them.

mod flow;
mod key_files;
mod mint;
