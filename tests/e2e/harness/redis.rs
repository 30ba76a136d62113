//! A real `redis-server` (Debian's package; `cargo xtask test` installs it) on a free loopback
//! port, with no persistence, killed by its own PID on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{which, WAIT};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// `requirepass`, when started with one.
    password: Option<String>,
    /// TLS only (`--tls-port`, no plain port): the CA that signed its certificate.
    pub tls_ca: Option<std::path::PathBuf>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(None)
    }

    /// With `requirepass`.
    pub fn with_password(password: &str) -> RedisServer {
        Self::start_with(Some(password.to_string()))
    }

    fn start_with(password: Option<String>) -> RedisServer {
        let port = free_port();
        let mut r = RedisServer {
            child: None,
            port,
            dir: tempfile::tempdir().expect("tempdir"),
            password,
            tls_ca: None,
        };
        r.restart();
        r
    }

    /// TLS only, with a certificate for 127.0.0.1 signed by a CA of its own (`tls_ca`).
    pub fn with_tls() -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let (chain, key, ca) = super::issue_localhost_chain("redis test CA");
        for (name, pem) in [("chain.pem", &chain), ("key.pem", &key), ("ca.pem", &ca)] {
            std::fs::write(dir.path().join(name), pem).expect("write PEM");
        }
        let mut r = RedisServer {
            child: None,
            port: free_port(),
            tls_ca: Some(dir.path().join("ca.pem")),
            dir,
            password: None,
        };
        r.restart();
        r
    }

    /// A port nothing listens on (a Redis that is not there yet).
    pub fn unstarted() -> RedisServer {
        RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            password: None,
            tls_ca: None,
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls_ca.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    fn binary() -> PathBuf {
        which("redis-server").unwrap_or_else(|| {
            panic!("redis-server is not installed (apt-get install redis-server; `cargo xtask test` does it)")
        })
    }

    /// Starts it (again) on its port, empty, and waits until it answers PING.
    pub fn restart(&mut self) {
        self.kill();
        let mut cmd = Command::new(Self::binary());
        if self.tls_ca.is_some() {
            let at = |name: &str| self.dir.path().join(name);
            cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(at("chain.pem"))
                .arg("--tls-key-file")
                .arg(at("key.pem"))
                .arg("--tls-ca-cert-file")
                .arg(at("ca.pem"))
                .args(["--tls-auth-clients", "no"]);
        } else {
            cmd.args(["--port", &self.port.to_string()]);
        }
        cmd.args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        self.child = Some(cmd.spawn().expect("spawn redis-server"));
        let deadline = Instant::now() + WAIT;
        while !self.answers_ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server on :{} did not answer PING",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the state in memory is gone with it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        if self.tls_ca.is_some() {
            return true; // listening; a PING would need a TLS client here
        }
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut req = String::new();
        if let Some(p) = &self.password {
            req.push_str(&format!("AUTH {p}\r\n"));
        }
        req.push_str("PING\r\n");
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while !got.ends_with(b"+PONG\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        true
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
