//! The `wssedge` command line. Everything else lives in the library.

#![deny(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use wssedge::config::{Config, ConfigError, Overrides};

#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A kernel-assisted, thread-per-core WSS (WebSocket over TLS) edge.
#[derive(Parser)]
#[command(name = "wssedge", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve WSS (echo). With no flags: 127.0.0.1:8443 with a development certificate.
    Serve(ServeArgs),
    /// Validate a configuration file and exit (0 valid, 2 refused), like `nginx -t`.
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Print the configuration in force as TOML (every default spelled out, URL passwords
        /// redacted) on stdout; the verdict goes to stderr.
        #[arg(long)]
        print: bool,
    },
    /// Audit trail tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Send a command to a running wssedge's control socket (`wssedge ctl --control PATH help`).
    Ctl {
        /// The control socket of the running wssedge (its --control PATH).
        #[arg(long, value_name = "PATH")]
        control: PathBuf,
        /// The command and its arguments, e.g. `revoke-subject alice`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        command: Vec<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the HMAC chain of audit trail files, across rotations (0 intact, 1 a problem
    /// found — the first edited, missing or reordered record, or an unsealed tail — 2 usage).
    Verify {
        /// The trail's HMAC key file.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The trail's files (rotated ones and the live one; order does not matter).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file; flags override its values.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// WSS listen address (repeatable). Port 0 picks one ephemeral port for all cores.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// PEM certificate chain (leaf first).
    #[arg(long, value_name = "PEM", requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[arg(long, value_name = "PEM", requires = "cert")]
    key: Option<PathBuf>,
    /// Run on the first N CPUs this process may use.
    #[arg(long, value_name = "N", conflicts_with = "cpus")]
    cores: Option<usize>,
    /// Run on exactly these CPUs (comma-separated).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    cpus: Option<Vec<usize>>,
    /// Admin listener (/metrics, /healthz, /readyz).
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Where the development certificate is kept.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Control socket (Unix, mode 0600) for `wssedge ctl`.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
}

/// Exit code for anything the operator must fix (bad config, address already served).
const EXIT_REFUSED: u8 = 2;

fn load(path: Option<&PathBuf>) -> Result<Config, ConfigError> {
    match path {
        Some(p) => Config::from_file(p),
        None => Ok(Config::default()),
    }
}

/// `wssedge check`: the verdict, and with `--print` the configuration in force.
fn check(path: &PathBuf, print: bool) -> ExitCode {
    let loaded = load(Some(path)).and_then(|c| c.validate().map(|()| c));
    let config = match loaded {
        Ok(config) => config,
        Err(e) => {
            eprintln!("wssedge: {e}");
            return ExitCode::from(EXIT_REFUSED);
        }
    };
    let verdict = format!("{}: configuration is valid", path.display());
    if !print {
        println!("{verdict}");
        return ExitCode::SUCCESS;
    }
    match config.effective_toml() {
        Ok(text) => {
            print!("{text}");
            eprintln!("{verdict}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wssedge: cannot print the configuration: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    // Before any thread exists, so every thread inherits the mask and only the signal thread
    // ever sees SIGTERM/SIGINT/SIGHUP/SIGUSR2.
    if let Err(e) = wssedge::signals::block_stop_signals() {
        eprintln!("wssedge: cannot block SIGTERM/SIGINT/SIGHUP/SIGUSR2: {e}");
        return ExitCode::FAILURE;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match Cli::parse().command {
        Command::Check { config, print } => check(&config, print),
        Command::Serve(args) => serve(args),
        Command::Audit {
            command: AuditCommand::Verify { key, files },
        } => {
            let code = wssedge::audit::run_cli(&key, &files);
            ExitCode::from(u8::try_from(code).unwrap_or(EXIT_REFUSED))
        }
        Command::Ctl { control, command } => {
            let code = wssedge::control::run_cli(&control, &command);
            ExitCode::from(u8::try_from(code).unwrap_or(EXIT_REFUSED))
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let mut cfg = match load(args.config.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wssedge: {e}");
            return ExitCode::from(EXIT_REFUSED);
        }
    };
    cfg.apply(Overrides {
        listen: args.listen,
        cert: args.cert,
        key: args.key,
        cores: args.cores,
        cpus: args.cpus,
        admin: args.admin,
        state_dir: args.state_dir,
        control: args.control,
    });
    let running = match wssedge::server::start(cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wssedge: {e}");
            return ExitCode::from(EXIT_REFUSED);
        }
    };
    let mut out = std::io::stdout().lock();
    for addr in &running.listening {
        let _ = match &running.dev_ca {
            Some(ca) => writeln!(out, "listening on wss://{addr}/ (trust {})", ca.display()),
            None => writeln!(out, "listening on wss://{addr}/"),
        };
    }
    let _ = writeln!(out, "admin on http://{}/", running.admin);
    let _ = out.flush();
    drop(out);
    tracing::info!(cpus = ?running.cpus, "serving");
    if let Err(e) = wssedge::signals::watch_stop_signals(running.commands()) {
        eprintln!("wssedge: cannot watch for SIGTERM/SIGINT/SIGHUP/SIGUSR2: {e}");
        return ExitCode::FAILURE;
    }
    if running.wait() {
        eprintln!("wssedge: stopped; the audit trail is sealed");
        ExitCode::SUCCESS
    } else {
        eprintln!("wssedge: every core has stopped");
        ExitCode::FAILURE
    }
}
