//! Least privilege after start (`[server] user`): the edge binds its listeners (a port below
//! 1024 needs CAP_NET_BIND_SERVICE) and loads its eBPF limiter (CAP_BPF, CAP_NET_ADMIN,
//! CAP_PERFMON) first, then, before it starts any other thread or serves a connection:
//! - becomes the configured user when started as root (uids, gids, supplementary groups);
//! - takes every capability it will never need again out of the bounding set (when it may);
//! - empties its effective set: serving needs no capability (the eBPF maps are read and
//!   updated through descriptors it already holds);
//! - keeps in its permitted, inheritable and ambient sets only what a restart's new process
//!   needs to start the same way — the eBPF limiter's capabilities when the limit is in the
//!   kernel, nothing otherwise (the new process inherits the listeners, so it binds nothing
//!   it did not have; a restart that adds a port below 1024 is refused and the old process
//!   keeps serving);
//! - sets no_new_privs.
//!
//! Capabilities are per thread; the drop happens while the process has one thread, so every
//! thread started later (cores, audit writer, admin, control) inherits the reduced sets.
//! Started as root without `[server] user`, the edge stays root and says so in its log.

use wssedge_sys::privilege::{self as sys, CapabilitySet, UserIds};

/// The capabilities a restart's new process needs to load the eBPF limiter again.
pub const EBPF_LIMITER: CapabilitySet = CapabilitySet::BPF
    .union(CapabilitySet::NET_ADMIN)
    .union(CapabilitySet::PERFMON);

/// Why the edge cannot run as the configured user. Exit 2: the operator's to fix.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("[server] user = {0:?}: no such user on this host (create it, e.g. `adduser --system --group {0}`)")]
    UnknownUser(String),
    #[error(
        "[server] user = {user:?} (uid {target}) but this process runs as uid {uid} and may not \
         change users: start it as root, or as {user:?} itself"
    )]
    CannotBecome { user: String, target: u32, uid: u32 },
    #[error(
        "capabilities are per thread and {0} threads already run: the privilege drop must come \
         before any thread starts (a wssedge bug)"
    )]
    Threads(usize),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> PrivilegeError {
    move |source| PrivilegeError::Io { what, source }
}

/// Who will serve, decided before anything binds.
#[derive(Debug, Clone)]
pub struct Plan {
    user: Option<(String, UserIds)>,
}

/// What the drop did, for the log line and the tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dropped {
    /// Root with no `[server] user`: nothing changed.
    StillRoot,
    /// Nothing to give back (no capability held, already the user).
    Nothing,
    /// Serving as `uid` with no effective capability; `kept` for a restart's new process.
    Reduced { uid: u32, kept: CapabilitySet },
}

impl Plan {
    /// Looks the user up and checks this process can become it.
    pub fn resolve(user: Option<&str>) -> Result<Plan, PrivilegeError> {
        let Some(name) = user else {
            return Ok(Plan { user: None });
        };
        let ids = sys::lookup_user(name)
            .map_err(io("looking up [server] user"))?
            .ok_or_else(|| PrivilegeError::UnknownUser(name.to_owned()))?;
        let (uid, euid) = sys::uids();
        let caps = sys::capabilities().map_err(io("reading capabilities"))?;
        let may_switch = caps
            .permitted
            .contains(CapabilitySet::SETUID | CapabilitySet::SETGID);
        if (uid != ids.uid || euid != ids.uid) && !may_switch {
            return Err(PrivilegeError::CannotBecome {
                user: name.to_owned(),
                target: ids.uid,
                uid: euid,
            });
        }
        Ok(Plan {
            user: Some((name.to_owned(), ids)),
        })
    }

    /// The uid that will serve (the control socket's directory must be private to it).
    pub fn serving_uid(&self) -> u32 {
        self.user
            .as_ref()
            .map_or_else(|| sys::uids().1, |(_, ids)| ids.uid)
    }

    /// Gives a directory this process made before the drop (the development certificate's),
    /// and the files directly in it, to the user it will serve as: a reload re-reads them.
    /// Nothing to do when it serves as who it is.
    pub fn hand_over_dir(&self, dir: &std::path::Path) -> Result<(), PrivilegeError> {
        let Some((_, ids)) = &self.user else {
            return Ok(());
        };
        if sys::uids().1 == ids.uid {
            return Ok(());
        }
        let chown = |p: &std::path::Path| {
            std::os::unix::fs::chown(p, Some(ids.uid), Some(ids.gid))
                .map_err(io("giving the state directory to [server] user"))
        };
        chown(dir)?;
        for entry in std::fs::read_dir(dir).map_err(io("reading the state directory"))? {
            let entry = entry.map_err(io("reading the state directory"))?;
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                chown(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Drops to the plan's user and capabilities, keeping `keep` for a restart's new process.
    pub fn drop_privileges(&self, keep: CapabilitySet) -> Result<Dropped, PrivilegeError> {
        let (uid, euid) = sys::uids();
        let caps = sys::capabilities().map_err(io("reading capabilities"))?;
        let ambient = sys::ambient().map_err(io("reading the ambient capabilities"))?;
        let switch = self
            .user
            .as_ref()
            .filter(|(_, ids)| ids.uid != uid || ids.uid != euid)
            .map(|(_, ids)| *ids);
        if switch.is_none() && euid == 0 {
            if self.user.is_none() {
                tracing::warn!(
                    "running as root with every capability: set [server] user (e.g. \"wssedge\") \
                     to serve as that user once the listeners are bound"
                );
            }
            return Ok(Dropped::StillRoot);
        }
        let holds = !caps.permitted.is_empty() || !ambient.is_empty();
        if switch.is_none() && !holds {
            return Ok(Dropped::Nothing);
        }
        let threads = sys::thread_count().map_err(io("counting threads"))?;
        if threads != 1 {
            return Err(PrivilegeError::Threads(threads));
        }
        let bounded = sys::shrink_bounding_set(keep).map_err(io("shrinking the bounding set"))?;
        if let Some(ids) = switch {
            sys::become_user(ids).map_err(io("changing user"))?;
        }
        sys::forbid_new_privileges().map_err(io("setting no_new_privs"))?;
        let kept = sys::keep_only_for_exec(keep).map_err(io("dropping capabilities"))?;
        let after = sys::capabilities().map_err(io("reading capabilities"))?;
        let serving_uid = sys::uids().1;
        tracing::info!(
            uid = serving_uid,
            user = self.user.as_ref().map_or("", |(name, _)| name.as_str()),
            effective = ?after.effective,
            kept_for_restart = ?kept,
            bounding_set_shrunk = bounded,
            "privileges dropped: serving with no effective capability"
        );
        Ok(Dropped::Reduced {
            uid: serving_uid,
            kept,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_user_is_refused_with_what_to_do() {
        let e = Plan::resolve(Some("no-such-user-wssedge-x")).unwrap_err();
        assert!(matches!(e, PrivilegeError::UnknownUser(_)));
        assert!(e.to_string().contains("adduser --system"), "{e}");
    }

    #[test]
    fn no_user_serves_as_who_we_are() {
        let plan = Plan::resolve(None).unwrap();
        assert_eq!(plan.serving_uid(), sys::uids().1);
    }

    /// Root may become anyone; the plan names the target's uid for the control socket check.
    #[test]
    fn root_plans_to_become_nobody() {
        if sys::uids().1 != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let nobody = sys::lookup_user("nobody").unwrap().expect("nobody exists");
        let plan = Plan::resolve(Some("nobody")).unwrap();
        assert_eq!(plan.serving_uid(), nobody.uid);
    }
}
