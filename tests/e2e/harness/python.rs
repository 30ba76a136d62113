//! Python with `websockets`: an independent WebSocket implementation (RFC 6455 and RFC 7692's
//! permessage-deflate) to hold the edge against. `cargo xtask test` prepares it and names it in
//! `WSSEDGE_E2E_PYTHON`; run alone, the harness makes the same venv under `target/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// The Python to run `tests/e2e/py/` scripts with. Panics, naming what to install, when none
/// can be had: a test that needs the independent peer must not pass without it.
pub fn python_with_websockets() -> PathBuf {
    if let Some(p) = std::env::var_os("WSSEDGE_E2E_PYTHON") {
        return PathBuf::from(p);
    }
    static MADE: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = made.as_ref() {
        return p.clone();
    }
    // target/<profile>/wssedge → target/xtask-venv (the venv `cargo xtask test` uses too).
    let target = Path::new(super::BIN)
        .parent()
        .and_then(Path::parent)
        .expect("the binary lives under target/<profile>/");
    let venv = target.join("xtask-venv");
    let python = venv.join("bin/python");
    if !has_websockets(&python) {
        if !venv.join("bin/pip").is_file() {
            run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        }
        run(Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "websockets>=14",
        ]));
    }
    assert!(
        has_websockets(&python),
        "{} has no `websockets`: run `cargo xtask test --layer e2e`, or install python3-venv",
        python.display()
    );
    *made = Some(python.clone());
    python
}

fn has_websockets(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import websockets.asyncio.client"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(cmd: &mut Command) {
    let st = cmd.stdin(Stdio::null()).status();
    assert!(
        st.as_ref().is_ok_and(|s| s.success()),
        "{cmd:?}: {st:?} (python3-venv and network access to PyPI are needed)"
    );
}

/// The path of a script under `tests/e2e/py/`.
pub fn py_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/e2e/py")
        .join(name)
}
