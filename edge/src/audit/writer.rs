//! The writer thread ("wssedge-audit") and the trail's lifecycle: start (continuing an existing
//! chain), batches, fsync cadence, rotation, shutdown.
//!
//! Durability contract: records are durable up to the last fsync ([`AuditStats::durable_seq`]);
//! the writer fsyncs every `fsync_interval_ms` while it has written something, at every
//! rotation, and at shutdown. An I/O error never skips a record: a partial append is cut back
//! to the last complete line and retried with backoff; meanwhile the cores' queues fill and
//! they refuse new connections above the high-water mark.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::audit::chain::{self, hex, ChainWriter, GENESIS};
use crate::audit::config::AuditConfig;
use crate::audit::files::{self, io, read_tail, sync_dir, Tail, TrailPaths};
use crate::audit::key::read_key_file;
use crate::audit::record::{AuditEvent, PrevState, SealReason, TrailEvent};
use crate::audit::sink::{self, AuditHandle, AuditSink, CoreDrain, Pending, Shared};
use crate::audit::stats::AuditStats;
use crate::audit::time::Timestamp;
use crate::audit::AuditError;

/// The writer's idle tick: how late a record may be picked up when no core woke it.
const TICK: Duration = Duration::from_millis(5);
/// Records taken from one core per round, so one busy core cannot starve the others' order.
const ROUND: usize = 4096;
/// Appends happen at least this often within a round, bounding the writer's buffer.
const FLUSH_BYTES: usize = 1 << 20;
/// At shutdown a failing disk is retried this many times before the writer gives up.
const SHUTDOWN_ATTEMPTS: u32 = 20;
const WRITER: &str = concat!("wssedge ", env!("CARGO_PKG_VERSION"));

/// The writer thread and what it shares with the producers.
type Running = (Arc<Shared>, JoinHandle<Result<(), AuditError>>);

/// The running trail. Owned by the process's `server`; [`AuditTrail::shutdown`] after the
/// cores stopped.
pub struct AuditTrail {
    running: Option<Running>,
    stats: Arc<AuditStats>,
    handle: AuditHandle,
}

impl AuditTrail {
    /// Starts the trail: validates `cfg`, loads the key, continues an existing chain (rotating an
    /// existing live file away as it is), writes `open` and `start` records and fsyncs them,
    /// then starts the writer thread. Returns one sink per core, in core order.
    ///
    /// With no `audit.path` the trail is off: the sinks and handle record nothing.
    pub fn start(
        cfg: &AuditConfig,
        cores: usize,
    ) -> Result<(AuditTrail, Vec<AuditSink>), AuditError> {
        Self::start_with(cfg, cores, None)
    }

    /// [`AuditTrail::start`] for the successor of a restart: the previous process still
    /// writes the trail (its sessions are draining) and holds its lock. The writer thread
    /// waits for that lock up to `lock_wait` — the predecessor releases it once it has sealed
    /// the file — and then continues the chain from the seal; records given meanwhile wait in
    /// the cores' queues (above the high-water mark new connections are refused, as always).
    /// `None`: take the lock now or fail, as [`AuditTrail::start`].
    pub fn start_with(
        cfg: &AuditConfig,
        cores: usize,
        lock_wait: Option<Duration>,
    ) -> Result<(AuditTrail, Vec<AuditSink>), AuditError> {
        let Some(path) = &cfg.path else {
            let off = AuditTrail {
                running: None,
                stats: Arc::new(AuditStats::new(Vec::new())),
                handle: AuditHandle::disabled(),
            };
            return Ok((off, (0..cores).map(|_| AuditSink::disabled()).collect()));
        };
        cfg.validate()?;
        let key_path = cfg.key_file.as_deref().unwrap_or(Path::new(""));
        let (key, _) = read_key_file(key_path, true).map_err(|reason| AuditError::Key {
            path: key_path.to_owned(),
            reason,
        })?;
        let (shared, sinks, drains, handle) =
            sink::build(cores, cfg.ring_capacity, cfg.high_water_records());
        let builder = std::thread::Builder::new().name("wssedge-audit".into());
        let spawned = match lock_wait {
            None => {
                let writer = Writer::open(cfg, path, &key, shared.clone(), drains, None)?;
                builder.spawn(move || writer.run())
            }
            Some(wait) => {
                let (cfg, path, shared) = (cfg.clone(), path.clone(), shared.clone());
                builder.spawn(move || {
                    let _dead = DeadOnDrop(shared.clone());
                    let opened = Writer::open(&cfg, &path, &key, shared, drains, Some(wait));
                    match opened {
                        Ok(writer) => writer.run(),
                        Err(e) => {
                            tracing::error!(error = %e, "the audit trail could not be continued; new connections are refused");
                            Err(e)
                        }
                    }
                })
            }
        };
        let thread = spawned.map_err(|e| io(path, "start the audit writer thread", e))?;
        let _ = shared.writer.set(thread.thread().clone());
        Ok((
            AuditTrail {
                stats: shared.stats.clone(),
                running: Some((shared, thread)),
                handle,
            },
            sinks,
        ))
    }

    pub fn is_enabled(&self) -> bool {
        self.running.is_some()
    }

    /// A producer for the control socket and reloads (records carry `"core":null`).
    pub fn handle(&self) -> AuditHandle {
        self.handle.clone()
    }

    pub fn stats(&self) -> Arc<AuditStats> {
        self.stats.clone()
    }

    /// Drains every queue, writes `stop` and a seal, fsyncs and joins the writer. Call it after
    /// the core threads have ended: a record given later is not written (it is counted in
    /// `records_late`).
    pub fn shutdown(mut self) -> Result<(), AuditError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), AuditError> {
        let Some((shared, thread)) = self.running.take() else {
            return Ok(());
        };
        shared.stop.store(true, Ordering::Release);
        thread.thread().unpark();
        thread.join().map_err(|_| AuditError::WriterPanicked)?
    }

    /// Tests: end the writer the way SIGKILL would: no drain, no `stop`, no seal.
    #[cfg(test)]
    pub(crate) fn kill(mut self) {
        if let Some((shared, thread)) = self.running.take() {
            shared.abort.store(true, Ordering::Release);
            thread.thread().unpark();
            let _ = thread.join();
        }
    }

    #[cfg(test)]
    pub(crate) fn inject_write_failures(&self, n: u32) {
        if let Some((shared, _)) = &self.running {
            shared.inject_write_failures.store(n, Ordering::Release);
        }
    }

    #[cfg(test)]
    pub(crate) fn pause(&self, paused: bool) {
        if let Some((shared, thread)) = &self.running {
            shared.pause.store(paused, Ordering::Release);
            thread.thread().unpark();
        }
    }
}

impl Drop for AuditTrail {
    /// A trail dropped without `shutdown` (an early return in main) still seals its file.
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!(error = %e, "audit trail did not shut down cleanly");
        }
    }
}

struct LiveFile {
    file: File,
    /// Bytes of complete lines in the file: a failed append is cut back to this.
    len: u64,
    first_seq: u64,
    /// A failed append may have left part of a line: cut back before the next one.
    needs_trim: bool,
}

struct Writer {
    paths: TrailPaths,
    chain: ChainWriter,
    key_id: String,
    live: LiveFile,
    buf: Vec<u8>,
    buf_records: u64,
    batch: Vec<Pending>,
    rotate_bytes: u64,
    fsync_every: Duration,
    last_fsync: Instant,
    dirty: bool,
    shared: Arc<Shared>,
    drains: Vec<CoreDrain>,
    _lock: File,
}

/// Takes the trail's lock, waiting up to `wait` for another process to let go of it.
fn lock_waiting(paths: &TrailPaths, wait: Option<Duration>) -> Result<File, AuditError> {
    let deadline = wait.map(|w| Instant::now() + w);
    let mut waiting = false;
    loop {
        match files::lock(paths) {
            Ok(lock) => {
                if waiting {
                    tracing::info!(
                        "audit trail: the previous process has let go; continuing its chain"
                    );
                }
                return Ok(lock);
            }
            Err(e) => match deadline {
                Some(d) if Instant::now() < d => {
                    if !waiting {
                        tracing::info!("audit trail: waiting for the previous process to seal it");
                        waiting = true;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => return Err(e),
            },
        }
    }
}

/// Marks the writer gone however its thread ends (a panic included), so cores stop admitting.
struct DeadOnDrop(Arc<Shared>);

impl Drop for DeadOnDrop {
    fn drop(&mut self) {
        self.0.writer_dead.store(true, Ordering::Release);
    }
}

impl Writer {
    fn open(
        cfg: &AuditConfig,
        path: &Path,
        key: &[u8],
        shared: Arc<Shared>,
        drains: Vec<CoreDrain>,
        lock_wait: Option<Duration>,
    ) -> Result<Writer, AuditError> {
        let paths = TrailPaths::new(path)?;
        let lock = lock_waiting(&paths, lock_wait)?;
        let key = chain::new_key(key);
        let key_id = chain::key_id(&key);

        // A rotation cut short by a crash: the next file either never replaced the live one
        // (drop it: nothing chains from it) or is all that is left of it (adopt it).
        if paths.next.exists() {
            if paths.live.exists() {
                std::fs::remove_file(&paths.next).map_err(|e| io(&paths.next, "remove", e))?;
            } else {
                std::fs::rename(&paths.next, &paths.live)
                    .map_err(|e| io(&paths.next, "rename", e))?;
            }
            sync_dir(&paths.dir).map_err(|e| io(&paths.dir, "fsync", e))?;
        }

        // Where the chain continues from. An existing live file is never rewritten: sealed or
        // not, it is rotated away as it is and the new file chains from its last intact record.
        let now = Timestamp::now();
        let (prev_file, tail): (Option<String>, Option<Tail>) = if paths.live.exists() {
            let tail = read_tail(&paths.live, &key)?;
            let name = paths.rotated_name(now, tail.first_seq);
            rename_new(&paths.live, &paths.dir.join(&name))
                .map_err(|e| io(&paths.live, &format!("rotate it to {name}"), e))?;
            (Some(name), Some(tail))
        } else if let Some((_, newest)) = paths.rotated()?.pop() {
            let tail = read_tail(&newest, &key)?;
            let name = newest.file_name().map(|n| n.to_string_lossy().into_owned());
            (name, Some(tail))
        } else {
            (None, None)
        };
        let (next_seq, prev_mac, prev_state) = match &tail {
            None => (0, GENESIS, PrevState::Genesis),
            Some(t) => {
                let state = match (t.sealed, t.torn) {
                    (true, _) => PrevState::Sealed,
                    (false, true) => PrevState::Torn,
                    (false, false) => PrevState::Unsealed,
                };
                (t.last_seq + 1, t.last_mac, state)
            }
        };
        if let (Some(name), Some(t)) = (&prev_file, &tail) {
            if !t.sealed {
                tracing::warn!(
                    file = %name, last_seq = t.last_seq, state = prev_state.as_str(),
                    "audit trail: the previous file ends without a seal (the edge was killed); kept as it is, \
                     the new file continues from its last intact record"
                );
            }
        }

        let mut chain = ChainWriter::new(key, next_seq, prev_mac);
        let first_seq = chain.next_seq();
        let mut first = Vec::new();
        let prev_mac_hex = hex(&prev_mac);
        chain.append(
            &mut first,
            now,
            None,
            &TrailEvent::Open {
                prev_file: prev_file.as_deref(),
                prev_seq: tail.as_ref().map(|t| t.last_seq),
                prev_mac: &prev_mac_hex,
                prev_state,
                key_id: &key_id,
                writer: WRITER,
            },
        );
        chain.append(
            &mut first,
            now,
            None,
            &AuditEvent::Start {
                version: env!("CARGO_PKG_VERSION").into(),
                pid: std::process::id(),
            },
        );
        let file = create_next(&paths.next, &first).map_err(|e| io(&paths.next, "create", e))?;
        std::fs::rename(&paths.next, &paths.live).map_err(|e| io(&paths.next, "rename", e))?;
        sync_dir(&paths.dir).map_err(|e| io(&paths.dir, "fsync", e))?;
        let stats = &shared.stats;
        stats.records_written.fetch_add(2, Ordering::Relaxed);
        stats
            .bytes_written
            .fetch_add(first.len() as u64, Ordering::Relaxed);
        stats
            .durable_seq
            .store(chain.next_seq() - 1, Ordering::Relaxed);
        tracing::info!(path = %path.display(), first_seq, "audit trail started");

        Ok(Writer {
            live: LiveFile {
                file,
                len: first.len() as u64,
                first_seq,
                needs_trim: false,
            },
            paths,
            chain,
            key_id,
            // Room for a full flush batch plus one record, so the buffer never regrows.
            buf: Vec::with_capacity(FLUSH_BYTES + (64 << 10)),
            buf_records: 0,
            batch: Vec::new(),
            rotate_bytes: cfg.rotate_bytes,
            fsync_every: Duration::from_millis(cfg.fsync_interval_ms),
            last_fsync: Instant::now(),
            dirty: false,
            shared,
            drains,
            _lock: lock,
        })
    }

    fn run(mut self) -> Result<(), AuditError> {
        let _dead = DeadOnDrop(self.shared.clone());
        loop {
            #[cfg(test)]
            if self.shared.abort.load(Ordering::Acquire) {
                return Ok(());
            }
            #[cfg(test)]
            if self.shared.pause.load(Ordering::Acquire)
                && !self.shared.stop.load(Ordering::Acquire)
            {
                std::thread::park_timeout(TICK);
                continue;
            }
            let stopping = self.shared.stop.load(Ordering::Acquire);
            if stopping {
                // From here on producers count their records as late instead of queueing them.
                self.shared.closed.store(true, Ordering::Release);
            }
            let n = self.drain_round()?;
            self.flush()?;
            if self.dirty && self.last_fsync.elapsed() >= self.fsync_every {
                self.fsync()?;
            }
            if n == 0 {
                if stopping {
                    break;
                }
                std::thread::park_timeout(self.idle_wait());
            }
        }
        let now = Timestamp::now();
        self.chain
            .append(&mut self.buf, now, None, &AuditEvent::Stop {});
        self.chain.append(
            &mut self.buf,
            now,
            None,
            &TrailEvent::Seal {
                reason: SealReason::Shutdown,
                next: &self.paths.name,
            },
        );
        self.buf_records += 2;
        self.fsync()?;
        tracing::info!(last_seq = self.chain.next_seq() - 1, "audit trail sealed");
        Ok(())
    }

    fn idle_wait(&self) -> Duration {
        if self.dirty {
            TICK.min(self.fsync_every.saturating_sub(self.last_fsync.elapsed()))
                .max(Duration::from_micros(100))
        } else {
            TICK
        }
    }

    /// One pass over every queue; returns how many records it took.
    fn drain_round(&mut self) -> Result<usize, AuditError> {
        let mut batch = std::mem::take(&mut self.batch);
        let mut n = 0;
        for d in &self.drains {
            n += d.drain(ROUND, |p| batch.push(p));
        }
        let control = self.shared.take_control();
        n += control.len();
        batch.extend(control);
        for p in batch.drain(..) {
            self.append(&p)?;
        }
        self.batch = batch;
        Ok(n)
    }

    fn append(&mut self, p: &Pending) -> Result<(), AuditError> {
        self.chain.append(&mut self.buf, p.at, p.core, &*p.event);
        self.buf_records += 1;
        if self.live.len + self.buf.len() as u64 >= self.rotate_bytes {
            self.rotate()?;
        } else if self.buf.len() >= FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Appends the buffered lines to the live file.
    fn flush(&mut self) -> Result<(), AuditError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let Writer {
            live,
            buf,
            shared,
            paths,
            ..
        } = self;
        retry(shared, &paths.live, "append to", || {
            if live.needs_trim {
                live.file.set_len(live.len)?;
                live.needs_trim = false;
            }
            let result = write_all(&mut live.file, buf, shared);
            live.needs_trim = result.is_err();
            result
        })?;
        live.len += buf.len() as u64;
        let stats = &shared.stats;
        stats
            .bytes_written
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        stats
            .records_written
            .fetch_add(self.buf_records, Ordering::Relaxed);
        self.buf.clear();
        self.buf_records = 0;
        self.dirty = true;
        Ok(())
    }

    fn fsync(&mut self) -> Result<(), AuditError> {
        self.flush()?;
        let file = &self.live.file;
        retry(&self.shared, &self.paths.live, "fsync", || file.sync_data())?;
        let stats = &self.shared.stats;
        stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        stats
            .durable_seq
            .store(self.chain.next_seq() - 1, Ordering::Relaxed);
        self.last_fsync = Instant::now();
        self.dirty = false;
        Ok(())
    }

    /// Seal, fsync, create the next file with its `open` under the hidden name, rename the live
    /// file to its rotated name, move the next file into place, fsync the directory. A crash at
    /// any step leaves a state [`Writer::open`] continues from.
    fn rotate(&mut self) -> Result<(), AuditError> {
        let now = Timestamp::now();
        self.chain.append(
            &mut self.buf,
            now,
            None,
            &TrailEvent::Seal {
                reason: SealReason::Rotate,
                next: &self.paths.name,
            },
        );
        self.buf_records += 1;
        self.fsync()?;

        let rotated = self.paths.rotated_name(now, self.live.first_seq);
        let rotated_path = self.paths.dir.join(&rotated);
        let prev_seq = self.chain.next_seq() - 1;
        let prev_mac = hex(self.chain.last_mac());
        let first_seq = self.chain.next_seq();
        let mut open = Vec::new();
        self.chain.append(
            &mut open,
            now,
            None,
            &TrailEvent::Open {
                prev_file: Some(&rotated),
                prev_seq: Some(prev_seq),
                prev_mac: &prev_mac,
                prev_state: PrevState::Sealed,
                key_id: &self.key_id,
                writer: WRITER,
            },
        );
        let (shared, paths) = (&self.shared, &self.paths);
        let file = retry(shared, &paths.next, "create", || {
            create_next(&paths.next, &open)
        })?;
        retry(shared, &paths.live, "rotate", || {
            rename_new(&paths.live, &rotated_path)
        })?;
        retry(shared, &paths.next, "rename", || {
            std::fs::rename(&paths.next, &paths.live)
        })?;
        retry(shared, &paths.dir, "fsync", || sync_dir(&paths.dir))?;

        self.live = LiveFile {
            file,
            len: open.len() as u64,
            first_seq,
            needs_trim: false,
        };
        let stats = &self.shared.stats;
        stats.rotations.fetch_add(1, Ordering::Relaxed);
        stats.records_written.fetch_add(1, Ordering::Relaxed);
        stats
            .bytes_written
            .fetch_add(open.len() as u64, Ordering::Relaxed);
        stats.durable_seq.store(first_seq, Ordering::Relaxed);
        Ok(())
    }
}

fn write_all(file: &mut File, buf: &[u8], _shared: &Shared) -> std::io::Result<()> {
    #[cfg(test)]
    if _shared
        .inject_write_failures
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
    {
        // Half a batch reaches the file, as with a full disk mid-write.
        file.write_all(&buf[..buf.len() / 2])?;
        return Err(std::io::Error::other("injected write failure"));
    }
    file.write_all(buf)
}

/// Creates the next file under its hidden name with its first lines, durably. Owner-only: the
/// trail names clients and their identities.
fn create_next(path: &Path, first: &[u8]) -> std::io::Result<File> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(first)?;
    file.sync_data()?;
    Ok(file)
}

/// Renames without replacing: a rotated file is never overwritten.
fn rename_new(from: &Path, to: &Path) -> std::io::Result<()> {
    if to.exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} already exists", to.display()),
        ));
    }
    std::fs::rename(from, to)
}

/// Retries an I/O step with backoff until it succeeds; at shutdown it gives up after
/// [`SHUTDOWN_ATTEMPTS`] so the process can still exit.
fn retry<T>(
    shared: &Shared,
    path: &Path,
    action: &str,
    mut op: impl FnMut() -> std::io::Result<T>,
) -> Result<T, AuditError> {
    let mut delay = Duration::from_millis(10);
    let mut failures = 0u32;
    loop {
        match op() {
            Ok(v) => return Ok(v),
            Err(e) => {
                failures += 1;
                shared.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                if shared.stop.load(Ordering::Acquire) && failures >= SHUTDOWN_ATTEMPTS {
                    return Err(io(path, action, e));
                }
                tracing::error!(
                    path = %path.display(), action, error = %e, failures,
                    "audit trail I/O failed; retrying (no record is skipped; cores refuse new connections once their queues pass the high-water mark)"
                );
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
}
