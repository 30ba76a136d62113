//! Files the server reads: TOML snippets and secrets with the mode it insists on.

use std::path::Path;

/// The TOML table `[name]` with `defaults` (key, TOML value as written), one `key = value` line
/// each; `overrides` replace a default's value or add a key after them.
pub fn toml_table(
    name: &str,
    defaults: Vec<(String, String)>,
    overrides: &[(&str, &str)],
) -> String {
    let mut keys = defaults;
    for (k, v) in overrides {
        match keys.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = (*v).to_owned(),
            None => keys.push(((*k).to_owned(), (*v).to_owned())),
        }
    }
    let mut out = format!("[{name}]\n");
    for (k, v) in keys {
        out.push_str(&format!("{k} = {v}\n"));
    }
    out
}

/// A path as a TOML basic string (quoted, escaped).
pub fn toml_path(p: &Path) -> String {
    toml_str(p.to_str().expect("UTF-8 path"))
}

pub fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes `bytes` to a new file of mode 0600 (secrets: the server refuses wider modes).
pub fn write_private(path: &Path, bytes: &[u8]) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(bytes).expect("write secret");
}
