//! How many reloads were applied and how many refused, by what was reloaded: the whole
//! configuration (`ctl reload`, SIGHUP) or the CRLs (their files changed, `ctl crl-reload`).
//! A refused reload keeps the running state; the counter is how an operator notices one that
//! no command reported (a CRL file replaced by garbage while serving).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::PrometheusFamilies;

#[derive(Debug, Default)]
pub(crate) struct ReloadStats {
    config_applied: AtomicU64,
    config_refused: AtomicU64,
    crls_applied: AtomicU64,
    crls_refused: AtomicU64,
}

/// What a reload was of.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reloaded {
    Config,
    Crls,
}

impl ReloadStats {
    pub fn note(&self, what: Reloaded, applied: bool) {
        let counter = match (what, applied) {
            (Reloaded::Config, true) => &self.config_applied,
            (Reloaded::Config, false) => &self.config_refused,
            (Reloaded::Crls, true) => &self.crls_applied,
            (Reloaded::Crls, false) => &self.crls_refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl PrometheusFamilies for ReloadStats {
    fn render_families(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP wssedge_reloads_total Reloads by what was reloaded and whether it was applied or refused (the running state kept)\n\
             # TYPE wssedge_reloads_total counter"
        );
        for (what, result, n) in [
            ("config", "applied", &self.config_applied),
            ("config", "refused", &self.config_refused),
            ("crls", "applied", &self.crls_applied),
            ("crls", "refused", &self.crls_refused),
        ] {
            let _ = writeln!(
                out,
                "wssedge_reloads_total{{what=\"{what}\",result=\"{result}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_what_and_result() {
        let s = ReloadStats::default();
        s.note(Reloaded::Crls, false);
        s.note(Reloaded::Crls, false);
        s.note(Reloaded::Config, true);
        let mut text = String::new();
        s.render_families(&mut text);
        assert!(
            text.contains("wssedge_reloads_total{what=\"crls\",result=\"refused\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("wssedge_reloads_total{what=\"config\",result=\"applied\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("wssedge_reloads_total{what=\"crls\",result=\"applied\"} 0\n"),
            "{text}"
        );
        assert!(text.lines().all(|l| !l.starts_with(' ')), "{text}");
    }
}
