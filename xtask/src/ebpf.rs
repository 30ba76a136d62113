//! `cargo xtask ebpf`: rebuilds `ebpf/obj/edge.bpf.o` from `ebpf/src/edge.bpf.c` with clang and
//! writes `ebpf/obj/edge.bpf.o.sha256` (`sha256sum` of the sources, the convention of
//! cilium/ebpf's bpf2go): the object is committed so `cargo build` needs no clang, and a unit
//! test of the edge crate fails when the hash no longer matches the sources.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::{apt_install, banner, is_root, which, Env};

/// Sources hashed into the `.sha256` file, in this order (the edge crate's test agrees).
const SOURCES: [&str; 2] = ["ebpf/src/edge.bpf.c", "ebpf/include/edge_maps.h"];
const OBJECT: &str = "ebpf/obj/edge.bpf.o";

pub fn run(args: &[String]) -> Result<bool> {
    if let Some(a) = args.first() {
        bail!("`cargo xtask ebpf` takes no arguments (got {a:?})");
    }
    let env = Env::detect();
    ensure_toolchain()?;
    build(&env.root)?;
    Ok(true)
}

fn ensure_toolchain() -> Result<()> {
    let headers = Path::new("/usr/include/bpf/bpf_helpers.h").is_file();
    if which("clang").is_some() && headers {
        return Ok(());
    }
    if !is_root() || which("apt-get").is_none() {
        bail!("clang and libbpf-dev are missing and cannot be installed (need root and apt-get)");
    }
    banner("installing clang libbpf-dev");
    apt_install(&["clang", "libbpf-dev"])
}

fn build(root: &Path) -> Result<()> {
    // Debian's multiarch include directory (asm/types.h for the UAPI headers).
    let arch_include = format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    std::fs::create_dir_all(root.join("ebpf/obj"))?;
    let mut cmd = Command::new("clang");
    cmd.current_dir(root).args([
        "-O2",
        "-g",
        "-target",
        "bpf",
        // BPF_FETCH atomics (the reservation's fetch-and-add result): kernel 5.12+.
        "-mcpu=v3",
        "-D__TARGET_ARCH_x86",
        "-Wall",
        "-Werror",
        "-I",
        "ebpf/include",
        "-I",
        &arch_include,
        "-c",
        SOURCES[0],
        "-o",
        OBJECT,
    ]);
    eprintln!("$ {cmd:?}");
    let st = cmd.status().context("spawn clang")?;
    if !st.success() {
        bail!("clang failed ({st})");
    }
    let out = Command::new("sha256sum")
        .current_dir(root)
        .args(SOURCES)
        .stdin(Stdio::null())
        .output()
        .context("spawn sha256sum")?;
    if !out.status.success() {
        bail!("sha256sum failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let hash_file = format!("{OBJECT}.sha256");
    std::fs::write(root.join(&hash_file), &out.stdout)
        .with_context(|| format!("write {hash_file}"))?;
    let size = std::fs::metadata(root.join(OBJECT))?.len();
    eprintln!("xtask: wrote {OBJECT} ({size} bytes) and {hash_file}; commit both");
    Ok(())
}
