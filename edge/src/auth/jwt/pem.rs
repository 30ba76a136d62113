//! The PEM envelope (RFC 7468), strictly: one block, a known label, base64 body.

use base64::Engine as _;

/// One decoded PEM block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemBlock {
    pub label: String,
    pub der: Vec<u8>,
}

/// Decodes every `-----BEGIN X-----` … `-----END X-----` block of `text`. Text outside the
/// blocks is ignored (RFC 7468 §2 allows explanatory text); inside, only base64 lines.
pub fn parse(text: &str) -> Result<Vec<PemBlock>, String> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, String)> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let line_no = n + 1;
        match &mut open {
            None => {
                if let Some(label) = boundary(line, "BEGIN") {
                    open = Some((label.to_owned(), String::new()));
                } else if line.starts_with("-----") {
                    return Err(format!("line {line_no}: a PEM boundary without BEGIN"));
                }
            }
            Some((label, body)) => {
                if let Some(end) = boundary(line, "END") {
                    if end != label {
                        return Err(format!("line {line_no}: END {end} closes BEGIN {label}"));
                    }
                    let der = base64::engine::general_purpose::STANDARD
                        .decode(body.as_bytes())
                        .map_err(|e| format!("block {label}: bad base64 ({e})"))?;
                    blocks.push(PemBlock {
                        label: std::mem::take(label),
                        der,
                    });
                    open = None;
                } else if line.starts_with("-----") {
                    return Err(format!("line {line_no}: a boundary inside {label}"));
                } else if line.contains(':') {
                    return Err(format!(
                        "line {line_no}: PEM headers (encrypted or legacy PEM) are not supported"
                    ));
                } else {
                    body.push_str(line);
                }
            }
        }
    }
    if let Some((label, _)) = open {
        return Err(format!("BEGIN {label} has no END"));
    }
    Ok(blocks)
}

fn boundary<'a>(line: &'a str, kind: &str) -> Option<&'a str> {
    line.strip_prefix("-----")?
        .strip_suffix("-----")?
        .strip_prefix(kind)?
        .strip_prefix(' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_block_with_surrounding_text() {
        let text = "comment\n-----BEGIN PUBLIC KEY-----\nAAEC\nAw==\n-----END PUBLIC KEY-----\n";
        let b = parse(text).unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].label, "PUBLIC KEY");
        assert_eq!(b[0].der, vec![0, 1, 2, 3]);
    }

    #[test]
    fn broken_envelopes_are_refused() {
        for text in [
            "-----BEGIN PUBLIC KEY-----\nAAEC\n",
            "-----BEGIN PUBLIC KEY-----\nAAEC\n-----END PRIVATE KEY-----\n",
            "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n",
            "-----END PUBLIC KEY-----\n",
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n-----END RSA PRIVATE KEY-----\n",
        ] {
            assert!(parse(text).is_err(), "{text}");
        }
    }
}
