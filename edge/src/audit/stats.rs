//! Counters for /metrics: plain atomics, read with Relaxed loads, never reset.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::audit::sink::CoreGauge;

/// The trail's counters. The lead renders them; nothing here allocates or locks.
#[derive(Default)]
pub struct AuditStats {
    /// Records appended to the file (not yet necessarily durable: see `fsyncs`).
    pub records_written: AtomicU64,
    /// Records that went through a core's overflow list because its ring was full.
    pub records_overflowed: AtomicU64,
    /// Records a sink or handle was given after the writer had stopped; they are not in the
    /// trail. Non-zero means shutdown ran before the cores stopped (a lifecycle bug).
    pub records_late: AtomicU64,
    pub bytes_written: AtomicU64,
    pub fsyncs: AtomicU64,
    pub rotations: AtomicU64,
    /// Failed writes, fsyncs and renames (each retried; the trail never skips a record).
    pub write_errors: AtomicU64,
    /// The seq of the last record known durable (after its fsync); `u64::MAX` before the first.
    pub durable_seq: AtomicU64,
    pub(crate) cores: Vec<CoreGauge>,
}

impl AuditStats {
    pub(crate) fn new(cores: Vec<CoreGauge>) -> Self {
        AuditStats {
            durable_seq: AtomicU64::new(u64::MAX),
            cores,
            ..Default::default()
        }
    }

    pub fn cores(&self) -> usize {
        self.cores.len()
    }

    /// Records queued on `core` (ring plus overflow), not yet written.
    pub fn core_depth(&self, core: usize) -> usize {
        self.cores.get(core).map_or(0, CoreGauge::depth)
    }

    /// Records of `core` that went through its overflow list.
    pub fn core_overflowed(&self, core: usize) -> u64 {
        self.cores.get(core).map_or(0, CoreGauge::overflowed)
    }
}

impl std::fmt::Debug for AuditStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        f.debug_struct("AuditStats")
            .field("records_written", &r(&self.records_written))
            .field("records_overflowed", &r(&self.records_overflowed))
            .field("records_late", &r(&self.records_late))
            .field("fsyncs", &r(&self.fsyncs))
            .field("rotations", &r(&self.rotations))
            .field("write_errors", &r(&self.write_errors))
            .field(
                "depths",
                &(0..self.cores())
                    .map(|c| self.core_depth(c))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}
