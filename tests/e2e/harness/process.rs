//! The server under test as a child process: starting `wssedge serve` with a builder, reading
//! its start lines, killing it (by its own PID) on drop; and one-shot `wssedge` commands.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::{within, WAIT};

pub const BIN: &str = env!("CARGO_BIN_EXE_wssedge");

/// How to start a server. Defaults: one core, `--listen 127.0.0.1:0 --admin 127.0.0.1:0`, a
/// fresh temporary state dir, the dev certificate.
pub struct ServerBuilder {
    config: Option<String>,
    cores: Option<u32>,
    listen: Option<String>,
    args: Vec<String>,
    state_dir: Option<PathBuf>,
    /// Pass no --listen/--admin/--state-dir/--cores: the config file must supply them.
    config_only: bool,
    /// A program (and its arguments) that execs the server: `setpriv …`.
    via: Vec<String>,
    env: Vec<(String, String)>,
    /// The temporary directory (config file, default state dir) readable by every user: for a
    /// server that serves, or starts, as another user.
    open_tmp: bool,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerBuilder {
    pub fn new() -> Self {
        ServerBuilder {
            config: None,
            cores: Some(1),
            listen: None,
            args: Vec::new(),
            state_dir: None,
            config_only: false,
            via: Vec::new(),
            env: Vec::new(),
            open_tmp: false,
        }
    }
    /// Starts the server through `program` (which must exec it, keeping the pid).
    pub fn via(mut self, program: &[&str]) -> Self {
        self.via = program.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
    /// The config file and default state dir's parent readable (and traversable) by all.
    pub fn open_tmp(mut self) -> Self {
        self.open_tmp = true;
        self
    }
    /// TOML written to a file in the state dir and passed with `--config`.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_string());
        self
    }
    pub fn cores(mut self, n: u32) -> Self {
        self.cores = Some(n);
        self
    }
    /// Leave the core count to the config file / the server's default.
    pub fn no_cores_flag(mut self) -> Self {
        self.cores = None;
        self
    }
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = Some(addr.to_string());
        self
    }
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    /// Take listen/admin/state dir/cores from the config file only.
    pub fn config_only(mut self) -> Self {
        self.config_only = true;
        self
    }
    pub fn state_dir(mut self, dir: &Path) -> Self {
        self.state_dir = Some(dir.to_path_buf());
        self
    }

    fn command(&self, tmp: &Path) -> Command {
        let state = self.state_dir.clone().unwrap_or_else(|| tmp.join("state"));
        if self.open_tmp {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o755))
                .expect("chmod the temporary directory");
        }
        let mut cmd = match self.via.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(BIN);
                cmd
            }
            None => Command::new(BIN),
        };
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.arg("serve");
        if let Some(cfg) = &self.config {
            let path = tmp.join("wssedge.toml");
            std::fs::write(&path, cfg).expect("write config");
            cmd.arg("--config").arg(path);
        }
        if !self.config_only {
            cmd.arg("--listen")
                .arg(self.listen.as_deref().unwrap_or("127.0.0.1:0"));
            cmd.arg("--admin").arg("127.0.0.1:0");
            cmd.arg("--state-dir").arg(state);
            if let Some(n) = self.cores {
                cmd.arg("--cores").arg(n.to_string());
            }
        }
        cmd.args(&self.args);
        cmd.env("RUST_BACKTRACE", "1");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Starts the server and waits for both start lines (listening + admin).
    pub fn start(self) -> Server {
        match self.try_start() {
            Ok(s) => s,
            Err(e) => panic!("server did not start: {e}"),
        }
    }

    pub fn try_start(self) -> Result<Server, String> {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cmd = self.command(tmp.path());
        let child = cmd.spawn().map_err(|e| format!("spawn {BIN}: {e}"))?;
        let mut proc = Proc::new(child);

        let deadline = Instant::now() + WAIT;
        let mut ws: Option<(SocketAddr, Option<PathBuf>)> = None;
        let mut admin: Option<SocketAddr> = None;
        while ws.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match proc.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(parsed) = parse_listening(&line) {
                        ws.get_or_insert(parsed);
                    } else if let Some(a) = parse_admin(&line) {
                        admin.get_or_insert(a);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "no start lines within {WAIT:?}; stdout so far {:?}; stderr:\n{}",
                        proc.stdout_seen(),
                        proc.stderr()
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = proc.wait_timeout(Duration::from_secs(5));
                    return Err(format!(
                        "server exited before its start lines ({status:?}); stdout {:?}; stderr:\n{}",
                        proc.stdout_seen(),
                        proc.stderr()
                    ));
                }
            }
        }
        let (addr, trust) = ws.unwrap();
        Ok(Server {
            proc,
            addr,
            admin: admin.unwrap(),
            ca_pem: trust,
            _tmp: tmp,
        })
    }

    /// Runs `serve` expecting it to exit by itself (a refused start); returns its exit status
    /// and stderr. Kills it after `WAIT` if it does not exit (and panics).
    pub fn run_expect_exit(self) -> (ExitStatus, String, String) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cmd = self.command(tmp.path());
        let child = cmd.spawn().expect("spawn wssedge");
        let mut proc = Proc::new(child);
        match proc.wait_timeout(WAIT) {
            Some(status) => {
                // Let the reader threads drain.
                std::thread::sleep(Duration::from_millis(50));
                (status, proc.stdout_seen().join("\n"), proc.stderr())
            }
            None => panic!(
                "wssedge serve was expected to exit but still runs after {WAIT:?}; stdout {:?}; stderr:\n{}",
                proc.stdout_seen(),
                proc.stderr()
            ),
        }
    }
}

/// `listening on wss://127.0.0.1:PORT/ (trust DIR/dev-ca.pem)` or `listening on wss://ADDR/`.
pub fn parse_listening(line: &str) -> Option<(SocketAddr, Option<PathBuf>)> {
    let rest = line.trim().strip_prefix("listening on wss://")?;
    let (addr, tail) = rest.split_once('/')?;
    let addr: SocketAddr = addr.parse().ok()?;
    let trust = tail
        .trim()
        .strip_prefix("(trust ")
        .and_then(|t| t.strip_suffix(')'))
        .map(PathBuf::from);
    Some((addr, trust))
}

/// `admin on http://127.0.0.1:PORT/`.
pub fn parse_admin(line: &str) -> Option<SocketAddr> {
    let rest = line.trim().strip_prefix("admin on http://")?;
    rest.trim_end_matches('/').parse().ok()
}

/// A child process with its stdout lines on a channel and its stderr collected; killed (by its
/// own PID) and reaped on drop.
pub struct Proc {
    child: Child,
    pub lines: mpsc::Receiver<String>,
    seen: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<String>>,
}

impl Proc {
    fn new(mut child: Child) -> Proc {
        let (tx, rx) = mpsc::channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().expect("piped stdout");
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                seen2.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut errp = child.stderr.take().expect("piped stderr");
        let err2 = err.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match errp.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut e = err2.lock().unwrap();
                        // Keep the tail bounded: a chatty server must not eat the test's memory.
                        if e.len() > 1 << 20 {
                            let cut = e.len() - (1 << 19);
                            let cut = (cut..e.len())
                                .find(|i| e.is_char_boundary(*i))
                                .unwrap_or(e.len());
                            e.drain(..cut);
                        }
                        e.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            }
        });
        Proc {
            child,
            lines: rx,
            seen,
            err,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }
    /// Waits until the process's stderr holds `needle` (what it says: `what`).
    pub async fn wait_stderr(&self, what: &str, needle: &str) {
        super::eventually(what, |_| async move {
            let log = self.stderr();
            match log.contains(needle) {
                true => Ok(()),
                false => Err(log),
            }
        })
        .await;
    }
    pub fn stdout_seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
    /// As [`Proc::wait_timeout`], without blocking the test's runtime: its other tasks (clients
    /// the process is still serving) go on while it waits.
    pub async fn exited_within(&mut self, d: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + d;
        loop {
            if let Some(end) = self.exit_by(deadline) {
                return end;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    pub fn wait_timeout(&mut self, d: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + d;
        loop {
            if let Some(end) = self.exit_by(deadline) {
                return end;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    /// One look while waiting for the exit: `Some(status)` when it exited, `Some(None)` past
    /// the deadline, `None` to look again.
    fn exit_by(&mut self, deadline: Instant) -> Option<Option<ExitStatus>> {
        match self.try_wait() {
            Some(s) => Some(Some(s)),
            None if Instant::now() >= deadline => Some(None),
            None => None,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- wssedge (pid {}) stderr ----\n{}",
                self.child.id(),
                self.stderr()
            );
        }
    }
}

/// A running server; killed when dropped.
pub struct Server {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The dev CA the server announced (`None` with `--cert`).
    pub ca_pem: Option<PathBuf>,
    _tmp: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Server {
        ServerBuilder::new().start()
    }
    pub fn with_config(toml: &str) -> Server {
        ServerBuilder::new().config(toml).start()
    }

    /// The configuration file the server was started with (to rewrite it before a reload).
    pub fn config_path(&self) -> PathBuf {
        self._tmp.path().join("wssedge.toml")
    }

    pub fn url(&self) -> String {
        format!("wss://{}/", self.addr)
    }
}

/// Runs a command with a time bound; returns (status, stdout, stderr). `None` on timeout
/// (the child is killed).
pub async fn run_cmd(
    mut cmd: tokio::process::Command,
    d: Duration,
) -> Option<(ExitStatus, String, String)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().ok()?;
    match tokio::time::timeout(d, child.wait_with_output()).await {
        Ok(Ok(out)) => Some((
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )),
        _ => None,
    }
}

/// Runs `wssedge ARGS...` to completion (bounded); returns (exit code, stdout, stderr).
pub fn run_wssedge(args: &[&str]) -> (Option<i32>, String, String) {
    let child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wssedge");
    let mut p = Proc::new(child);
    let status = p
        .wait_timeout(WAIT)
        .unwrap_or_else(|| panic!("wssedge {args:?} did not exit within {WAIT:?}"));
    std::thread::sleep(Duration::from_millis(50));
    (status.code(), p.stdout_seen().join("\n"), p.stderr())
}

pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// What a `wssedge …` command run by [`wssedge_cmd`] did.
#[derive(Debug)]
pub struct CmdOut {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// The command's process id (the pid the control socket sees through SO_PEERCRED).
    pub pid: u32,
    /// When the process had exited.
    pub ended: Instant,
}

/// Runs `wssedge ARGS…` without blocking the runtime, bounded by `WAIT` (panics beyond).
pub async fn wssedge_cmd(args: &[&str]) -> CmdOut {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("spawn wssedge");
    let pid = child.id().unwrap_or(0);
    let out = within(WAIT, "wssedge command", child.wait_with_output())
        .await
        .expect("wait for wssedge");
    CmdOut {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        pid,
        ended: Instant::now(),
    }
}

/// `wssedge ctl --control SOCKET ARGS…`.
pub async fn ctl(socket: &Path, args: &[&str]) -> CmdOut {
    let socket = socket.to_str().expect("UTF-8 socket path");
    let mut all = vec!["ctl", "--control", socket];
    all.extend_from_slice(args);
    wssedge_cmd(&all).await
}
