//! The fan-out scenario's peers that are not Rust: uWebSockets' pub/sub built from a public
//! snapshot, and nginx with Debian's nchan module.
//!
//! uWebSockets: `bench/peers/uws/uws_pubsub.cpp` against uWebSockets at [`UWS_REV`] and the
//! uSockets commit that tag records, taken from bare git snapshots of the two repositories
//! (`WSSEDGE_UWS_GIT` / `WSSEDGE_USOCKETS_GIT`, by default the `.mirror` next to the workspace
//! where the `fetch` tool puts them). Built once into `target/bench/uws/` (g++, make and
//! libssl-dev from apt when missing); rebuilt when the server source changes. Without the
//! snapshots the peer is skipped with the reason. The same source with
//! `-DWSSEDGE_UWS_DEFLATE` and zlib is the compression scenario's uWebSockets
//! (`SHARED_COMPRESSOR`), built into `target/bench/uws-deflate/` (zlib1g-dev when missing).
//!
//! nchan: Debian's `nginx` and `libnginx-mod-nchan`, installed without starting the packaged
//! service (a `policy-rc.d` that says no for the length of the install).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{apt_install, apt_install_quietly, banner, is_root, which, Env};

/// The uWebSockets release the peer is built from (its tag in the snapshot).
pub const UWS_REV: &str = "v20.79.0";
const UWS_SOURCE: &str = include_str!("../../../bench/peers/uws/uws_pubsub.cpp");
const NCHAN_MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";

fn snapshot(env_var: &str, repo: &str, env: &Env) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        return Some(PathBuf::from(p));
    }
    let mirror = env.root.parent()?.join(".mirror").join(repo).join("repo");
    mirror.is_dir().then_some(mirror)
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        Err(format!(
            "{what} failed ({}): {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ))
    }
}

/// The built `uws_pubsub`, or why there is none.
pub fn ensure_uws(env: &Env) -> Result<PathBuf, String> {
    build_uws(env, false)
}

/// `uws_pubsub` with permessage-deflate (`SHARED_COMPRESSOR`, publications compressed), or why
/// there is none.
pub fn ensure_uws_deflate(env: &Env) -> Result<PathBuf, String> {
    build_uws(env, true)
}

fn build_uws(env: &Env, deflate: bool) -> Result<PathBuf, String> {
    let dir = env
        .target
        .join("bench")
        .join(if deflate { "uws-deflate" } else { "uws" });
    let bin = dir.join("uws_pubsub");
    let stamp = dir.join("built-from");
    let want = format!("{UWS_REV}\n{}\ndeflate={deflate}", fnv(UWS_SOURCE));
    if bin.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return Ok(bin);
    }
    let uws_git = snapshot("WSSEDGE_UWS_GIT", "uNetworking+uWebSockets", env).ok_or(
        "no uWebSockets snapshot (fetch github:uNetworking/uWebSockets, or set WSSEDGE_UWS_GIT)",
    )?;
    let us_git = snapshot("WSSEDGE_USOCKETS_GIT", "uNetworking+uSockets", env).ok_or(
        "no uSockets snapshot (fetch github:uNetworking/uSockets, or set WSSEDGE_USOCKETS_GIT)",
    )?;
    let missing: Vec<&str> = [("g++", "g++"), ("make", "make")]
        .into_iter()
        .filter(|(tool, _)| which(tool).is_none())
        .map(|(_, pkg)| pkg)
        .chain((!Path::new("/usr/include/openssl/ssl.h").exists()).then_some("libssl-dev"))
        .chain((deflate && !Path::new("/usr/include/zlib.h").exists()).then_some("zlib1g-dev"))
        .collect();
    if !missing.is_empty() {
        if !is_root() {
            return Err(format!(
                "uWebSockets needs {} (run as root to install)",
                missing.join(" ")
            ));
        }
        banner(&format!("installing {} for uWebSockets", missing.join(" ")));
        apt_install(&missing).map_err(|e| format!("apt-get install: {e:#}"))?;
    }
    banner(&format!(
        "building uWebSockets {UWS_REV} pub/sub peer{}",
        if deflate {
            " with SHARED_COMPRESSOR"
        } else {
            ""
        }
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let src = dir.join("src");
    std::fs::create_dir_all(&src).map_err(|e| e.to_string())?;
    let archive = |git: &Path, rev: &str, prefix: &str| -> Result<(), String> {
        let script = format!(
            "git --git-dir='{}' archive --prefix='{prefix}' '{rev}' | tar -x -C '{}'",
            git.display(),
            src.display()
        );
        run(Command::new("sh").args(["-c", &script]), "git archive")
    };
    archive(&uws_git, UWS_REV, "uWebSockets/")?;
    let gitlink = Command::new("git")
        .arg("--git-dir")
        .arg(&uws_git)
        .args(["ls-tree", UWS_REV, "uSockets"])
        .output()
        .map_err(|e| e.to_string())?;
    let us_rev = String::from_utf8_lossy(&gitlink.stdout)
        .split_whitespace()
        .nth(2)
        .map(str::to_owned)
        .ok_or("the uWebSockets tag records no uSockets commit")?;
    let u = src.join("uWebSockets");
    let _ = std::fs::remove_dir(u.join("uSockets"));
    archive(&us_git, &us_rev, "uWebSockets/uSockets/")?;
    run(
        Command::new("make")
            .arg("-C")
            .arg(u.join("uSockets"))
            .arg("WITH_OPENSSL=1"),
        "make uSockets",
    )?;
    let cpp = dir.join("uws_pubsub.cpp");
    std::fs::write(&cpp, UWS_SOURCE).map_err(|e| e.to_string())?;
    // Without zlib uWS turns any compression option off; with it, `-lz`.
    let (defines, zlib): (&[&str], &[&str]) = if deflate {
        (&["-DLIBUS_USE_OPENSSL", "-DWSSEDGE_UWS_DEFLATE"], &["-lz"])
    } else {
        (&["-DLIBUS_USE_OPENSSL", "-DUWS_NO_ZLIB"], &[])
    };
    run(
        Command::new("g++")
            .args([
                "-std=c++20",
                "-O3",
                "-march=native",
                "-flto=1",
                "-flto-partition=one",
            ])
            .args(defines)
            .arg(format!("-I{}", u.join("src").display()))
            .arg(format!("-I{}", u.join("uSockets/src").display()))
            .arg(&cpp)
            .arg(u.join("uSockets/uSockets.a"))
            .args(["-lssl", "-lcrypto"])
            .args(zlib)
            .arg("-o")
            .arg(&bin),
        "g++ uws_pubsub",
    )?;
    std::fs::write(&stamp, want).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&src);
    Ok(bin)
}

/// nginx with the nchan module (installed when missing), and the module's path.
pub fn ensure_nchan() -> Result<(PathBuf, PathBuf), String> {
    let module = PathBuf::from(NCHAN_MODULE);
    let nginx = super::find_nginx();
    if let (Some(n), true) = (&nginx, module.is_file()) {
        return Ok((n.clone(), module));
    }
    if !is_root() || which("apt-get").is_none() {
        return Err(
            "nginx with nchan is not installed and cannot be (need root and apt-get)".into(),
        );
    }
    banner("installing nginx and libnginx-mod-nchan");
    // The package would start nginx's own service on :80; it is not ours to run.
    apt_install_quietly(&["nginx", "libnginx-mod-nchan"])
        .map_err(|e| format!("apt-get install nginx libnginx-mod-nchan: {e:#}"))?;
    let nginx = super::find_nginx().ok_or("nginx installed but no nginx binary found")?;
    if !module.is_file() {
        return Err(format!(
            "libnginx-mod-nchan installed but {NCHAN_MODULE} is missing"
        ));
    }
    Ok((nginx, module))
}

fn fnv(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}
