//! The rule this crate exists for, kept by a test: outside `edge/sys`, the runtime's sources
//! (`edge/src`, and `edge/proto/src` where it exists) hold the word `unsafe` only in the
//! attributes that deny or forbid it — no `unsafe` block, fn or impl, and no comment that would
//! make `grep -rn unsafe edge/src` noisy.

use std::path::{Path, PathBuf};

const ALLOWED: [&str; 2] = ["#![deny(unsafe_code)]", "#![forbid(unsafe_code)]"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every line of `files` that names `unsafe` other than in an allowed attribute.
fn offending_lines(files: &[PathBuf]) -> Vec<String> {
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        for (i, line) in text.lines().enumerate() {
            if line.contains("unsafe") && !ALLOWED.contains(&line.trim()) {
                found.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn the_runtime_outside_sys_has_no_unsafe() {
    let edge = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["src", "proto/src"] {
        let dir = edge.join(dir);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        }
    }
    assert!(
        files.iter().any(|f| f.ends_with("src/lib.rs")),
        "edge/src not found from {}",
        edge.display()
    );
    let found = offending_lines(&files);
    assert!(
        found.is_empty(),
        "`unsafe` belongs in wssedge-sys (edge/sys) behind a safe function; found:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_crate_roots_deny_unsafe_code() {
    let edge = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for root in ["src/lib.rs", "src/main.rs"] {
        let text = std::fs::read_to_string(edge.join(root)).unwrap();
        assert!(
            text.lines()
                .any(|l| l.trim() == "#![deny(unsafe_code)]"
                    || l.trim() == "#![forbid(unsafe_code)]"),
            "edge/{root} must deny unsafe_code"
        );
    }
}

#[test]
fn the_check_sees_blocks_impls_and_comments() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.rs");
    std::fs::write(
        &file,
        "#![deny(unsafe_code)]\n  #![forbid(unsafe_code)]\nfn f() { unsafe { g() } }\n\
         unsafe impl Send for X {}\n// an unsafe remark\n#![allow(unsafe_code)]\n",
    )
    .unwrap();
    let found = offending_lines(&[file]);
    assert_eq!(found.len(), 4, "{found:?}");
}
