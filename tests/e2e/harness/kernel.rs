//! What the kernel says: kTLS availability, a process's resident memory, a socket's buffers.

use std::net::Ipv4Addr;
use std::path::Path;

/// The kernel's kTLS statistics; the file exists once the `tls` module is loaded.
pub const TLS_STAT: &str = "/proc/net/tls_stat";

/// Whether this kernel offers kTLS. A kernel built with `CONFIG_TLS=m` shows `TLS_STAT` only
/// after the module is loaded, so ask for the ULP once (as the server would, which makes the
/// kernel load it) before deciding; on a kernel without TLS that request just fails.
pub fn kernel_has_ktls() -> bool {
    if Path::new(TLS_STAT).exists() {
        return true;
    }
    request_tls_ulp();
    Path::new(TLS_STAT).exists()
}

/// `setsockopt(TCP_ULP, "tls")` on a connected loopback socket, result ignored: its only purpose
/// is the kernel's module autoload.
fn request_tls_ulp() {
    use std::os::fd::AsRawFd;
    let Ok(listener) = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)) else {
        return;
    };
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    let Ok(client) = std::net::TcpStream::connect(addr) else {
        return;
    };
    let _accepted = listener.accept();
    let ulp = b"tls";
    // SAFETY: the fd belongs to `client`, which outlives the call; the option value points to
    // `ulp.len()` readable bytes and that is the length passed.
    let _ = unsafe {
        libc::setsockopt(
            client.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_ULP,
            ulp.as_ptr().cast(),
            ulp.len() as libc::socklen_t,
        )
    };
}

/// `VmRSS` of process `pid` in bytes, from `/proc/PID/status`.
pub fn vm_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// One socket's kernel memory as `ss -m` prints it: `skmem:(r…,rb…,t…,tb…,f…,w…,o…,bl…,d…)`
/// (receive queue and buffer, transmit allocation and buffer, forward alloc, write queue,
/// option memory, backlog, drops).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SkMem {
    pub r: u64,
    pub rb: u64,
    pub t: u64,
    pub tb: u64,
    pub f: u64,
    pub w: u64,
    pub o: u64,
    pub bl: u64,
    pub d: u64,
}

/// Parses the first `skmem:(…)` in `text`.
pub fn parse_skmem(text: &str) -> Option<SkMem> {
    let start = text.find("skmem:(")? + "skmem:(".len();
    let end = start + text[start..].find(')')?;
    let mut m = SkMem::default();
    for field in text[start..end].split(',') {
        let split = field.find(|c: char| c.is_ascii_digit())?;
        let (name, value) = field.split_at(split);
        let value: u64 = value.parse().ok()?;
        match name {
            "r" => m.r = value,
            "rb" => m.rb = value,
            "t" => m.t = value,
            "tb" => m.tb = value,
            "f" => m.f = value,
            "w" => m.w = value,
            "o" => m.o = value,
            "bl" => m.bl = value,
            "d" => m.d = value,
            _ => {}
        }
    }
    Some(m)
}
