//! Becoming another user and giving capabilities back: the one `unsafe` call is the user
//! lookup (`getpwnam_r`, so that NSS sources other than /etc/passwd count); the id and
//! capability changes go through rustix's safe calls.
//!
//! Every change here is made for the *calling thread* (rustix issues the raw system calls;
//! glibc's process-wide `setresuid` broadcast is not used). [`thread_count`] lets the caller
//! prove it is the only thread before relying on that: with one thread, the thread is the
//! process, and every thread created later inherits what it holds.

use std::ffi::CString;
use std::io;

pub use rustix::thread::CapabilitySet;
use rustix::thread::{self as rt, CapabilitySets};

/// A user's ids as the system's user database gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserIds {
    pub uid: u32,
    /// The user's primary group.
    pub gid: u32,
}

/// Looks a user up by name. `Ok(None)`: no such user.
pub fn lookup_user(name: &str) -> io::Result<Option<UserIds>> {
    let Ok(cname) = CString::new(name) else {
        return Ok(None);
    };
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: `pwd` is written by getpwnam_r before it returns 0 with `result` set; `buf`
        // outlives the call and its length is passed; the strings `pwd` points into `buf` are
        // not read (only the two ids, copied out before `buf` changes).
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: see above; `cname` is a valid NUL-terminated string.
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        match rc {
            0 if result.is_null() => return Ok(None),
            0 => {
                return Ok(Some(UserIds {
                    uid: pwd.pw_uid,
                    gid: pwd.pw_gid,
                }))
            }
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            // "Not found" has several spellings across NSS modules.
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// How many threads this process runs (the entries of /proc/self/task).
pub fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// The calling thread's real and effective uid.
pub fn uids() -> (u32, u32) {
    (
        rustix::process::getuid().as_raw(),
        rustix::process::geteuid().as_raw(),
    )
}

/// The calling thread's capability sets.
pub fn capabilities() -> io::Result<CapabilitySets> {
    Ok(rt::capabilities(None)?)
}

/// The capabilities in the calling thread's ambient set.
pub fn ambient() -> io::Result<CapabilitySet> {
    let mut set = CapabilitySet::empty();
    for cap in each_capability() {
        // EINVAL: a capability this kernel does not know; it cannot be ambient.
        if rt::capability_is_in_ambient_set(cap).unwrap_or(false) {
            set |= cap;
        }
    }
    Ok(set)
}

/// Every single capability the kernel knows of (by its last capability number).
pub fn each_capability() -> impl Iterator<Item = CapabilitySet> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40)
        .min(63);
    (0..=last).filter_map(|bit| CapabilitySet::from_bits(1u64 << bit))
}

/// Becomes `user` (all three uids and gids, supplementary groups reduced to the primary one),
/// keeping the permitted capabilities across the uid change (`PR_SET_KEEPCAPS`; the kernel
/// clears the effective set). Needs CAP_SETUID and CAP_SETGID.
pub fn become_user(user: UserIds) -> io::Result<()> {
    let gid = rustix::process::Gid::from_raw(user.gid);
    let uid = rustix::process::Uid::from_raw(user.uid);
    rt::set_keep_capabilities(true)?;
    rt::set_thread_groups(&[gid])?;
    rt::set_thread_res_gid(gid, gid, gid)?;
    rt::set_thread_res_uid(uid, uid, uid)?;
    rt::set_keep_capabilities(false)?;
    Ok(())
}

/// Takes every capability not in `keep` out of the bounding set (needs CAP_SETPCAP; without
/// it nothing changes and false is returned).
pub fn shrink_bounding_set(keep: CapabilitySet) -> io::Result<bool> {
    if !capabilities()?.effective.contains(CapabilitySet::SETPCAP) {
        return Ok(false);
    }
    for cap in each_capability().filter(|c| !keep.contains(*c)) {
        if rt::capability_is_in_bounding_set(cap).unwrap_or(false) {
            rt::remove_capability_from_bounding_set(cap)?;
        }
    }
    Ok(true)
}

/// Leaves the calling thread with no effective capability and `keep` (less what it does not
/// hold) as its permitted, inheritable and ambient sets: nothing it can use now, and exactly
/// `keep` for a program it executes. Returns what was kept.
pub fn keep_only_for_exec(keep: CapabilitySet) -> io::Result<CapabilitySet> {
    let now = capabilities()?;
    let kept = now.permitted & keep;
    rt::set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::empty(),
            permitted: kept,
            inheritable: kept,
        },
    )?;
    rt::clear_ambient_capability_set()?;
    for cap in each_capability().filter(|c| kept.contains(*c)) {
        rt::configure_capability_in_ambient_set(cap, true)?;
    }
    Ok(kept)
}

/// Sets `PR_SET_NO_NEW_PRIVS`: no program this process executes gains privileges from a
/// set-user-ID bit or file capabilities (ambient capabilities still pass).
pub fn forbid_new_privileges() -> io::Result<()> {
    Ok(rt::set_no_new_privs(true)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_and_a_made_up_name_is_not() {
        let root = lookup_user("root").unwrap().expect("root exists");
        assert_eq!(root, UserIds { uid: 0, gid: 0 });
        assert_eq!(lookup_user("no-such-user-wssedge-x").unwrap(), None);
        assert_eq!(lookup_user("nul\0inside").unwrap(), None);
    }

    #[test]
    fn each_capability_is_one_bit_and_includes_bpf() {
        let all: Vec<_> = each_capability().collect();
        assert!(all.iter().all(|c| c.bits().count_ones() == 1));
        assert!(all.contains(&CapabilitySet::NET_BIND_SERVICE));
        assert!(
            all.contains(&CapabilitySet::BPF),
            "this kernel knows CAP_BPF"
        );
    }

    #[test]
    fn this_thread_is_counted() {
        assert!(thread_count().unwrap() >= 1);
    }

    /// Runs in a thread of its own: the change is per thread, so the test process keeps its
    /// capabilities on every other thread.
    #[test]
    fn keeping_only_bpf_for_exec_empties_the_effective_set() {
        std::thread::spawn(|| {
            let before = capabilities().unwrap();
            let kept = keep_only_for_exec(CapabilitySet::BPF).unwrap();
            let after = capabilities().unwrap();
            assert!(after.effective.is_empty());
            assert_eq!(after.permitted, before.permitted & CapabilitySet::BPF);
            assert_eq!(kept, after.permitted);
            assert_eq!(ambient().unwrap(), kept);
        })
        .join()
        .unwrap();
    }
}
