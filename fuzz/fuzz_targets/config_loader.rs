//! The configuration loader on arbitrary text: `Config::from_toml`, then `validate`, then every
//! derived value the edge computes at start-up from a configuration that validated.
//! Must never panic: a bad file is an error that names what to fix, never a crash at start or
//! at `wssedge ctl reload`. The seed corpus holds the README's full configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wssedge::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match Config::from_toml(text) {
        Ok(config) => config,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    if let Err(e) = config.validate() {
        assert!(!e.to_string().is_empty());
        return;
    }
    // What start-up derives from a valid configuration must not fail in other ways.
    let s = &config.server;
    let _ = s.drain_timeout();
    let l = &config.limits;
    let _ = (
        l.handshake_timeout(),
        l.first_byte_timeout(),
        l.idle_timeout(),
    );
    let _ = (l.write_timeout(), l.ping_interval(), l.pong_timeout());
    let _ = (l.close_timeout(), l.frame_timeout(), l.ip_limits());
    l.connection_rate()
        .expect("a validated connection_rate compiles");
    l.identity_rate()
        .expect("a validated identity_rate compiles");
    l.control_rate().expect("a validated control_rate compiles");
    if let Some(u) = &config.upstream {
        let _ = (u.connect_timeout(), u.health_interval(), u.health_timeout());
    }
    if let Some(f) = &config.fleet {
        f.target().expect("a validated fleet.redis parses");
    }
});
