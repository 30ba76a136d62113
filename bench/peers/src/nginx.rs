//! The nginx peer's configuration: a template filled in for each benchmark run.
//!
//! This file has no dependencies on purpose: `xtask` compiles it too (`#[path]`), so the
//! benchmark driver can render the config without building the peer servers' libraries.

use std::path::Path;

/// The nginx config template (see `nginx.conf.in`).
pub const NGINX_CONF_TEMPLATE: &str = include_str!("../nginx.conf.in");

/// Fills the nginx template: `listen` (e.g. `127.0.0.1:8443`), `backend` (the echo-plain
/// address, e.g. `127.0.0.1:9001`), the certificate and key paths, and `prefix`, a writable
/// directory that receives the pid file, error log and temp directories.
pub fn render_nginx_conf(
    listen: &str,
    backend: &str,
    cert: &Path,
    key: &Path,
    prefix: &Path,
) -> String {
    NGINX_CONF_TEMPLATE
        .replace("@LISTEN@", listen)
        .replace("@BACKEND@", backend)
        .replace("@CERT@", &cert.display().to_string())
        .replace("@KEY@", &key.display().to_string())
        .replace("@PREFIX@", &prefix.display().to_string())
}

/// The nginx + nchan pub/sub config template (see `nchan.conf.in`).
pub const NCHAN_CONF_TEMPLATE: &str = include_str!("../nchan.conf.in");

/// Fills the nchan template: `listen`, the certificate and key, `module` (the absolute path of
/// `ngx_nchan_module.so`) and `prefix` (as for [`render_nginx_conf`]).
pub fn render_nchan_conf(
    listen: &str,
    cert: &Path,
    key: &Path,
    module: &Path,
    prefix: &Path,
) -> String {
    NCHAN_CONF_TEMPLATE
        .replace("@LISTEN@", listen)
        .replace("@CERT@", &cert.display().to_string())
        .replace("@KEY@", &key.display().to_string())
        .replace("@MODULE@", &module.display().to_string())
        .replace("@PREFIX@", &prefix.display().to_string())
}

/// The arguments that run nginx on a config rendered by [`render_nginx_conf`] and written
/// to `PREFIX/nginx.conf`: `-p PREFIX/ -e PREFIX/error.log -c PREFIX/nginx.conf` (`-e` keeps
/// even start-up errors out of /var/log). nginx stays in the foreground (`daemon off`);
/// stop it with SIGTERM (fast) or SIGQUIT (graceful) to the master's PID.
pub fn nginx_args(prefix: &Path) -> Vec<std::ffi::OsString> {
    let mut dir = prefix.as_os_str().to_owned();
    dir.push("/");
    vec![
        "-p".into(),
        dir,
        "-e".into(),
        prefix.join("error.log").into(),
        "-c".into(),
        prefix.join("nginx.conf").into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_conf_is_fully_rendered() {
        let conf = render_nginx_conf(
            "127.0.0.1:8443",
            "127.0.0.1:9001",
            Path::new("/tmp/x/leaf.pem"),
            Path::new("/tmp/x/leaf.key"),
            Path::new("/tmp/x/nginx"),
        );
        assert!(!conf.contains('@'), "placeholder left:\n{conf}");
        assert!(conf.contains("listen 127.0.0.1:8443 ssl;"));
        assert!(conf.contains("server 127.0.0.1:9001;"));
        assert!(conf.contains("ssl_certificate /tmp/x/leaf.pem;"));
        assert!(conf.contains("ssl_certificate_key /tmp/x/leaf.key;"));
        assert!(conf.contains("pid /tmp/x/nginx/nginx.pid;"));
        assert!(conf.contains("daemon off;"));
        assert!(conf.contains("worker_processes 1;"));
        // Every placeholder of the template is one render_nginx_conf fills.
        for placeholder in NGINX_CONF_TEMPLATE.split('@').skip(1).step_by(2) {
            assert!(
                ["LISTEN", "BACKEND", "CERT", "KEY", "PREFIX"].contains(&placeholder),
                "unknown placeholder @{placeholder}@"
            );
        }
    }

    #[test]
    fn nginx_args_point_into_the_prefix() {
        let args = nginx_args(Path::new("/tmp/x/nginx"));
        let args: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "-p",
                "/tmp/x/nginx/",
                "-e",
                "/tmp/x/nginx/error.log",
                "-c",
                "/tmp/x/nginx/nginx.conf"
            ]
        );
    }
}
