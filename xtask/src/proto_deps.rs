//! The protocol crate's promise, checked by Cargo rather than by grep: `wssedge-proto` is
//! sans-IO, so no runtime, libc or socket crate may enter its dependency tree. Run as the
//! first step of the unit layer.
//!
//! The check is for the host target, the one CI builds: `sha1` pulls `cpufeatures`, which
//! needs libc only on aarch64 (to ask the kernel for CPU features), not for any I/O.

use anyhow::{bail, Context, Result};

use crate::Env;

/// Crates that would bring a runtime, raw system calls or sockets into the protocol crate.
const FORBIDDEN: [&str; 7] = [
    "monoio", "tokio", "mio", "io-uring", "libc", "nix", "socket2",
];

/// Fails, naming the offenders, when a forbidden crate is among `wssedge-proto`'s normal
/// (non-dev, non-build) dependencies.
pub fn check(env: &Env) -> Result<()> {
    let args = [
        "tree",
        "-p",
        "wssedge-proto",
        "-e",
        "normal",
        "--prefix",
        "none",
        "--format",
        "{p}",
    ];
    eprintln!("$ cargo {}", args.join(" "));
    let out = env
        .cargo()
        .args(args)
        .output()
        .context("running cargo tree")?;
    if !out.status.success() {
        bail!(
            "cargo tree -p wssedge-proto failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let tree = String::from_utf8_lossy(&out.stdout);
    let found = forbidden_in(&tree);
    if !found.is_empty() {
        bail!(
            "wssedge-proto must stay sans-IO, but its dependency tree holds {}: \
             see `cargo tree -p wssedge-proto -e normal -i <crate>` for who pulls it in",
            found.join(", ")
        );
    }
    eprintln!("wssedge-proto: no runtime, libc or socket crate among its dependencies");
    Ok(())
}

/// The forbidden crates named in `cargo tree --prefix none --format {p}` output.
fn forbidden_in(tree: &str) -> Vec<&'static str> {
    let names: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    FORBIDDEN
        .into_iter()
        .filter(|f| names.contains(f))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_forbidden_crates_by_exact_name() {
        let clean = "wssedge-proto v0.1.0 (/x/edge/proto)\nbytes v1.12.2\nlibc-print v0.1.0\n";
        assert!(forbidden_in(clean).is_empty());
        let dirty = "wssedge-proto v0.1.0 (/x)\nlibc v0.2.191\nmonoio v0.2.4\nlibc v0.2.191 (*)\n";
        assert_eq!(forbidden_in(dirty), ["monoio", "libc"]);
    }
}
