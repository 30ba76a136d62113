//! Kicks: `wssedge ctl kick --subject S` closes the subject's live sessions (1008 `kicked`) on
//! this node and, in a fleet, on every node. Unlike a revocation a kick refuses nothing
//! afterwards: the client may come back at once (a forced re-login, a moved account).
//!
//! Shared like the revocations (arc-swap, copy on write): each core remembers the last
//! [`Kicks::version`] it acted on and closes the sessions of the subjects kicked since. Only the
//! newest [`KEPT`] kicks are kept; a core that fell further behind than that (it cannot: cores
//! look every tick) would act on the ones kept.

use std::collections::VecDeque;

/// Kicks remembered for cores that have not looked yet.
pub const KEPT: usize = 1024;

#[derive(Debug, Clone, Default)]
pub struct Kicks {
    version: u64,
    /// (the version that kick made, the subject), oldest first.
    recent: VecDeque<(u64, String)>,
}

impl Kicks {
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn kick(&mut self, subject: &str) {
        self.version += 1;
        if self.recent.len() >= KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back((self.version, subject.to_owned()));
    }

    /// The subjects kicked after `version`.
    pub fn since(&self, version: u64) -> impl Iterator<Item = &str> {
        self.recent
            .iter()
            .filter(move |(v, _)| *v > version)
            .map(|(_, s)| s.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_sees_the_kicks_since_it_last_looked() {
        let mut k = Kicks::default();
        k.kick("alice");
        let seen = k.version();
        k.kick("bob");
        k.kick("carol");
        assert_eq!(k.since(seen).collect::<Vec<_>>(), ["bob", "carol"]);
        assert_eq!(k.since(k.version()).count(), 0);
        for i in 0..2 * KEPT {
            k.kick(&format!("s{i}"));
        }
        assert_eq!(k.since(0).count(), KEPT, "bounded");
    }
}
