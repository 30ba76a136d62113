//! The command line: `check --config`, refused starts (exit 2) and `--cert/--key`.

use std::io::Write;

use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

fn config_file(toml: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(toml.as_bytes()).unwrap();
    f.flush().unwrap();
    f
}

const VALID: &str = r#"
[server]
listen = ["127.0.0.1:8443"]
cores = 2
admin = "127.0.0.1:9901"
state_dir = "wssedge-dev"

[limits]
max_connections = 10000
max_handshakes_in_flight = 256
handshake_timeout_ms = 5000
idle_timeout_ms = 300000
max_frame_bytes = 16777216
max_message_bytes = 16777216
max_buffered_bytes_per_core = 268435456
max_request_bytes = 8192
max_headers = 64
"#;

fn check(toml: &str) -> (Option<i32>, String) {
    let f = config_file(toml);
    let (code, _out, err) = run_wssedge(&["check", "--config", f.path().to_str().unwrap()]);
    (code, err)
}

#[test]
fn check_accepts_a_valid_config() {
    let (code, err) = check(VALID);
    assert_eq!(code, Some(0), "stderr: {err}");
    let (code, err) = check("");
    assert_eq!(
        code,
        Some(0),
        "an empty config (all defaults) must be valid; stderr: {err}"
    );
}

#[test]
fn check_print_shows_the_configuration_in_force() {
    let f =
        config_file("[jwt]\naudience = \"wssedge\"\nhs_secret_file = \"/etc/wssedge/hs.key\"\n");
    let path = f.path().to_str().unwrap();
    let (code, out, err) = run_wssedge(&["check", "--config", path, "--print"]);
    assert_eq!(code, Some(0), "stderr: {err}");
    assert!(
        err.contains("configuration is valid"),
        "the verdict goes to stderr: {err}"
    );
    let printed: toml::Value = toml::from_str(&out).expect("stdout is TOML alone");
    // The single value came back as the list it stands for, and defaults are spelled out.
    assert_eq!(
        printed["jwt"]["audience"],
        toml::Value::Array(vec!["wssedge".into()])
    );
    assert_eq!(
        printed["limits"]["max_message_bytes"].as_integer(),
        Some(16 << 20)
    );
    assert_eq!(
        printed["server"]["listen"][0].as_str(),
        Some("127.0.0.1:8443")
    );
    // What it prints is itself a configuration `check` accepts.
    let again = config_file(&out);
    let (code, out2, err) = run_wssedge(&[
        "check",
        "--config",
        again.path().to_str().unwrap(),
        "--print",
    ]);
    assert_eq!((code, out2), (Some(0), out), "stderr: {err}");
}

#[test]
fn check_names_an_unknown_key() {
    let (code, err) = check("[limits]\nmax_conections = 5\n");
    assert_eq!(code, Some(2), "stderr: {err}");
    assert!(
        err.contains("max_conections"),
        "stderr does not name the key: {err}"
    );
    let (code, err) = check("[serverr]\ncores = 1\n");
    assert_eq!(code, Some(2), "stderr: {err}");
    assert!(
        err.contains("serverr"),
        "stderr does not name the section: {err}"
    );
}

#[test]
fn check_names_a_bad_value() {
    let (code, err) = check("[server]\nlisten = [\"not-an-address\"]\n");
    assert_eq!(code, Some(2), "stderr: {err}");
    assert!(
        err.contains("listen"),
        "stderr does not name the key: {err}"
    );
    assert!(
        err.contains("not-an-address"),
        "stderr does not name the value: {err}"
    );

    let (code, err) = check("[limits]\nmax_frame_bytes = \"big\"\n");
    assert_eq!(code, Some(2), "stderr: {err}");
    assert!(
        err.contains("max_frame_bytes"),
        "stderr does not name the key: {err}"
    );
    assert!(err.contains("big"), "stderr does not name the value: {err}");
}

#[test]
fn check_names_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let (code, _out, err) = run_wssedge(&["check", "--config", missing.to_str().unwrap()]);
    assert_eq!(code, Some(2), "stderr: {err}");
    assert!(
        err.contains("nope.toml"),
        "stderr does not name the file: {err}"
    );

    // A config naming a missing certificate is refused the same way.
    let (code, err) =
        check("[tls]\ncert = \"/nonexistent/leaf.pem\"\nkey = \"/nonexistent/key.pem\"\n");
    assert_eq!(code, Some(2), "stderr: {err}");
    assert!(
        err.contains("/nonexistent/"),
        "stderr does not name the file: {err}"
    );
}

#[test]
fn serve_refuses_bad_config_with_exit_2() {
    let (status, _out, err) = ServerBuilder::new()
        .config("[limits]\nno_such_limit = 1\n")
        .run_expect_exit();
    assert_eq!(status.code(), Some(2), "stderr: {err}");
    assert!(err.contains("no_such_limit"), "stderr: {err}");
}

#[test]
fn dev_cert_on_non_loopback_listener_is_refused() {
    let (status, out, err) = ServerBuilder::new().listen("0.0.0.0:0").run_expect_exit();
    assert_eq!(status.code(), Some(2), "stdout: {out}\nstderr: {err}");
    assert!(!out.contains("listening on"), "it listened: {out}");
}

#[test]
fn second_instance_on_the_same_address_exits_2() {
    let first = Server::start();
    let (status, out, err) = ServerBuilder::new()
        .listen(&first.addr.to_string())
        .run_expect_exit();
    assert_eq!(status.code(), Some(2), "stdout: {out}\nstderr: {err}");
    assert!(
        !out.contains("listening on"),
        "second instance listened: {out}"
    );
    // The first one is unaffected.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut ws = first.ws().await;
        assert_eq!(
            message_text(&echo(&mut ws, Message::text("first")).await),
            "first"
        );
    });
}

#[test]
fn state_dir_gets_the_dev_ca_and_reuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca1 = {
        let srv = ServerBuilder::new().state_dir(dir.path()).start();
        let trust = srv.ca_pem.clone().expect("dev cert line names the CA");
        assert_eq!(trust, dir.path().join("dev-ca.pem"));
        std::fs::read(&trust).unwrap()
    };
    // A second run on the same state dir keeps the CA (clients keep trusting it).
    let srv = ServerBuilder::new().state_dir(dir.path()).start();
    let ca2 = std::fs::read(srv.ca_pem.as_ref().unwrap()).unwrap();
    assert_eq!(ca1, ca2, "the dev CA changed between runs");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut ws = srv.ws().await;
        assert_eq!(
            message_text(&echo(&mut ws, Message::text("again")).await),
            "again"
        );
    });
}

/// A CA and a leaf for 127.0.0.1 made here, independent of the server's dev certificate code,
/// written to `dir`: (leaf + chain, key, CA).
fn make_cert_chain(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let (chain_pem, key_pem, ca_pem) = issue_localhost_chain("e2e test CA");
    let cert = dir.join("leaf+chain.pem");
    let key = dir.join("key.pem");
    let ca = dir.join("ca.pem");
    std::fs::write(&cert, chain_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    std::fs::write(&ca, ca_pem).unwrap();
    (cert, key, ca)
}

#[test]
fn serve_with_cert_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = make_cert_chain(dir.path());
    let srv = ServerBuilder::new()
        .arg("--cert")
        .arg(cert.to_str().unwrap())
        .arg("--key")
        .arg(key.to_str().unwrap())
        .start();
    assert!(srv.ca_pem.is_none(), "--cert must not announce a dev CA");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tls = tls_connect(srv.addr, client_config_trusting(&ca, &[])).await;
        let mut ws = ws_over(tls, &srv.url()).await;
        assert_eq!(
            message_text(&echo(&mut ws, Message::text("own cert")).await),
            "own cert"
        );
    });

    // The same through the config file.
    let toml = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\n",
        cert.to_str().unwrap(),
        key.to_str().unwrap()
    );
    let srv = ServerBuilder::new().config(&toml).start();
    rt.block_on(async {
        let tls = tls_connect(srv.addr, client_config_trusting(&ca, &[])).await;
        let mut ws = ws_over(tls, &srv.url()).await;
        assert_eq!(
            message_text(&echo(&mut ws, Message::text("from config")).await),
            "from config"
        );
    });
}

#[test]
fn listen_admin_state_dir_and_cpus_come_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("from-config");
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ncpus = [0]\nadmin = \"127.0.0.1:0\"\nstate_dir = {:?}\n",
        state.to_str().unwrap()
    );
    let srv = ServerBuilder::new()
        .config(&toml)
        .config_only()
        .state_dir(&state)
        .start();
    assert_eq!(
        srv.ca_pem.as_deref(),
        Some(state.join("dev-ca.pem").as_path()),
        "the dev CA is not in the configured state_dir"
    );
    assert!(state.join("dev-ca.pem").is_file());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut ws = srv.ws().await;
        assert_eq!(
            message_text(&echo(&mut ws, Message::text("configured")).await),
            "configured"
        );
        srv.wait_metric("wssedge_connections_accepted_total", &[], 1.0)
            .await;
    });
}

#[test]
fn cpus_flag_pins_the_cores() {
    let srv = ServerBuilder::new()
        .no_cores_flag()
        .arg("--cpus")
        .arg("0")
        .start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut ws = srv.ws().await;
        assert_eq!(
            message_text(&echo(&mut ws, Message::text("pinned")).await),
            "pinned"
        );
    });
}

/// `--help` is the installed host's manual (the package ships the README beside it): every
/// flag `serve --help` names is in the README's table, every flag of the table is in the
/// help, and every command `wssedge ctl help` lists is on the README's ctl line.
#[test]
fn the_help_text_and_the_readme_name_the_same_flags_and_commands() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let flags = |text: &str| -> std::collections::BTreeSet<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| w.starts_with("--") && w.len() > 2 && w != &"--help")
            .map(str::to_owned)
            .collect()
    };
    let (code, help, _) = run_wssedge(&["serve", "--help"]);
    assert_eq!(code, Some(0));
    let table: String = readme
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        flags(&help),
        flags(&table),
        "serve --help vs the README's flag table"
    );
    let (code, ctl_help, ctl_err) = run_wssedge(&["ctl", "--control", "/nonexistent", "help"]);
    let ctl_help = format!("{ctl_help}{ctl_err}");
    assert!(code.is_some(), "{ctl_help}");
    let usage = readme
        .split("wssedge ctl --control PATH COMMAND")
        .nth(1)
        .and_then(|rest| rest.split("wssedge audit verify").next())
        .expect("the README's ctl line");
    let readme_words: std::collections::BTreeSet<&str> = usage
        .split(|c: char| !(c.is_ascii_lowercase() || c == '-'))
        .collect();
    // `ctl help` lists its commands one per line, indented: "  revoke-jti ID   …".
    let commands: Vec<&str> = ctl_help
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        .collect();
    assert!(
        commands.len() >= 10,
        "the commands of `ctl help`: {commands:?}\n{ctl_help}"
    );
    for command in &commands {
        assert!(
            readme_words.contains(command),
            "`wssedge ctl help` names {command:?}, the README's ctl line does not"
        );
    }
}
