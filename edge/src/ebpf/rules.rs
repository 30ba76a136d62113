//! The limit rules shared by the kernel limiter and the userspace fallback: a default
//! per-IP limit plus per-CIDR overrides (longest prefix wins, 0 = blocked).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Deserialize;

/// `[limits]` in the config file.
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Open connections (handshakes included) per source address; 0 = unlimited.
    #[serde(default)]
    pub per_ip_connections: u32,
    /// Per-CIDR limits that replace the default (longest prefix wins); `limit = 0` blocks.
    #[serde(default)]
    pub ip_overrides: Vec<IpOverride>,
}

/// One `ip_overrides` entry: `{ cidr = "10.0.0.0/8", limit = 1000 }`.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IpOverride {
    /// `a.b.c.d/n`, `x::y/n`, or a bare address (a single host).
    pub cidr: String,
    /// Connections per source address inside the CIDR; 0 = blocked.
    pub limit: u32,
}

/// Why a `[limits]` table is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitConfigError {
    #[error("limits.ip_overrides[{index}] cidr {cidr:?}: {reason}")]
    BadCidr {
        index: usize,
        cidr: String,
        reason: CidrError,
    },
    #[error("limits.ip_overrides[{index}] cidr {cidr:?}: duplicates ip_overrides[{first}]")]
    Duplicate {
        index: usize,
        first: usize,
        cidr: String,
    },
}

/// The limit that applies to one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Unlimited,
    Blocked,
    Max(u32),
}

/// A CIDR over the 16-byte address space (IPv4 mapped into IPv6: `a.b.c.d/n` is
/// `::ffff:a.b.c.d/(96+n)`), as the kernel's LPM trie keys it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: [u8; 16],
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: &[u8; 16]) -> bool {
        let full = usize::from(self.prefix / 8);
        let rest = self.prefix % 8;
        if self.addr[..full] != ip[..full] {
            return false;
        }
        if rest == 0 {
            return true;
        }
        let mask = 0xffu8 << (8 - rest);
        self.addr[full] & mask == ip[full] & mask
    }
}

/// The 16-byte key of an address: IPv4 (and IPv4-mapped IPv6) as `::ffff:a.b.c.d`.
pub fn key_of(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address of a 16-byte key (mapped IPv4 comes back as IPv4).
pub fn addr_of(key: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(key);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// Why a CIDR entry is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{addr:?} is not an IPv4 or IPv6 address")]
    NotAnAddress { addr: String },
    #[error("prefix length {len:?} is not 0..={max}")]
    PrefixLength { len: String, max: u8 },
    #[error("host bits set (did you mean {canonical}?)")]
    HostBits { canonical: String },
}

fn parse_cidr(s: &str) -> Result<Cidr, CidrError> {
    let s = s.trim();
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| CidrError::NotAnAddress {
        addr: addr.to_owned(),
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len: u8 = match len {
        None => max,
        Some(l) => l
            .parse()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| CidrError::PrefixLength {
                len: l.to_owned(),
                max,
            })?,
    };
    let (key, prefix) = match ip {
        IpAddr::V4(v4) => (key_of(IpAddr::V4(v4)), 96 + len),
        IpAddr::V6(v6) => (v6.octets(), len),
    };
    let mut net = Cidr { addr: key, prefix };
    // Keep only the prefix bits; refuse host bits so a typo (10.0.0.1/8) is not silent.
    let mut masked = [0u8; 16];
    for (i, b) in masked.iter_mut().enumerate() {
        let bits = usize::from(prefix).saturating_sub(i * 8).min(8);
        let mask = if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
        *b = key[i] & mask;
    }
    if masked != key {
        let canonical = match ip {
            IpAddr::V4(_) => format!(
                "{}/{len}",
                Ipv4Addr::from(<[u8; 4]>::try_from(&masked[12..]).expect("4 bytes"))
            ),
            IpAddr::V6(_) => format!("{}/{len}", Ipv6Addr::from(masked)),
        };
        return Err(CidrError::HostBits { canonical });
    }
    net.addr = masked;
    Ok(net)
}

/// A validated `[limits]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleTable {
    /// Default per-IP limit in kernel form ([`super::maps::UNLIMITED`] = none).
    pub default_limit: u32,
    /// Overrides, longest prefix first; limit 0 = blocked.
    pub overrides: Vec<(Cidr, u32)>,
}

impl LimitConfig {
    /// Parses every CIDR; errors name the entry (`limits.ip_overrides[2] cidr "…": …`).
    pub fn validate(&self) -> Result<RuleTable, LimitConfigError> {
        let mut overrides: Vec<(Cidr, u32)> = Vec::with_capacity(self.ip_overrides.len());
        let mut seen: Vec<(Cidr, usize)> = Vec::new();
        for (index, o) in self.ip_overrides.iter().enumerate() {
            let cidr = parse_cidr(&o.cidr).map_err(|reason| LimitConfigError::BadCidr {
                index,
                cidr: o.cidr.clone(),
                reason,
            })?;
            if let Some((_, first)) = seen.iter().find(|(c, _)| *c == cidr) {
                return Err(LimitConfigError::Duplicate {
                    index,
                    first: *first,
                    cidr: o.cidr.clone(),
                });
            }
            seen.push((cidr, index));
            overrides.push((cidr, o.limit));
        }
        overrides.sort_by_key(|o| std::cmp::Reverse(o.0.prefix));
        Ok(RuleTable {
            default_limit: match self.per_ip_connections {
                0 => super::maps::UNLIMITED,
                n => n,
            },
            overrides,
        })
    }
}

impl RuleTable {
    /// The limit for `ip`: the longest matching override, else the default.
    pub fn limit_of(&self, ip: IpAddr) -> Limit {
        let key = key_of(ip);
        let raw = self
            .overrides
            .iter()
            .find(|(c, _)| c.contains(&key))
            .map_or(self.default_limit, |(_, l)| *l);
        match raw {
            0 => Limit::Blocked,
            super::maps::UNLIMITED => Limit::Unlimited,
            n => Limit::Max(n),
        }
    }
}

#[cfg(test)]
impl LimitConfig {
    /// A default limit and `(cidr, limit)` overrides, for tests.
    pub(crate) fn for_tests(default: u32, overrides: &[(&str, u32)]) -> LimitConfig {
        LimitConfig {
            per_ip_connections: default,
            ip_overrides: overrides
                .iter()
                .map(|(cidr, limit)| IpOverride {
                    cidr: (*cidr).to_owned(),
                    limit: *limit,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(default: u32, o: &[(&str, u32)]) -> LimitConfig {
        LimitConfig::for_tests(default, o)
    }

    #[test]
    fn longest_prefix_wins_and_zero_blocks() {
        let t = cfg(
            3,
            &[
                ("10.0.0.0/8", 100),
                ("10.1.0.0/16", 0),
                ("10.1.2.3", 7),
                ("2001:db8::/32", 0),
                ("2001:db8:1::/48", 9),
            ],
        )
        .validate()
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(t.limit_of(ip("192.0.2.1")), Limit::Max(3));
        assert_eq!(t.limit_of(ip("10.9.9.9")), Limit::Max(100));
        assert_eq!(t.limit_of(ip("10.1.9.9")), Limit::Blocked);
        assert_eq!(t.limit_of(ip("10.1.2.3")), Limit::Max(7));
        assert_eq!(t.limit_of(ip("::ffff:10.1.2.3")), Limit::Max(7));
        assert_eq!(t.limit_of(ip("2001:db8:2::1")), Limit::Blocked);
        assert_eq!(t.limit_of(ip("2001:db8:1::1")), Limit::Max(9));
        assert_eq!(t.limit_of(ip("::1")), Limit::Max(3));
        let open = cfg(0, &[]).validate().unwrap();
        assert_eq!(open.limit_of(ip("1.2.3.4")), Limit::Unlimited);
        let all = cfg(5, &[("0.0.0.0/0", 0)]).validate().unwrap();
        assert_eq!(all.limit_of(ip("1.2.3.4")), Limit::Blocked);
        assert_eq!(
            all.limit_of(ip("::2")),
            Limit::Max(5),
            "v4 /0 covers only IPv4"
        );
    }

    #[test]
    fn bad_entries_are_named() {
        let e = cfg(1, &[("10.0.0.0/8", 1), ("10.0.0.1/8", 2)])
            .validate()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "limits.ip_overrides[1] cidr \"10.0.0.1/8\": host bits set (did you mean 10.0.0.0/8?)"
        );
        let e = cfg(1, &[("10.0.0.0/33", 1)]).validate().unwrap_err();
        assert!(e.to_string().contains("ip_overrides[0]") && e.to_string().contains("0..=32"));
        let e = cfg(1, &[("fe80::/129", 1)]).validate().unwrap_err();
        assert!(e.to_string().contains("0..=128"));
        let e = cfg(1, &[("banana/3", 1)]).validate().unwrap_err();
        assert!(e.to_string().contains("not an IPv4 or IPv6 address"));
        let e = cfg(1, &[("::1", 1), ("::1/128", 2)])
            .validate()
            .unwrap_err();
        assert_eq!(
            e,
            LimitConfigError::Duplicate {
                index: 1,
                first: 0,
                cidr: "::1/128".into()
            }
        );
    }

    #[test]
    fn deserializes_strictly() {
        let c: LimitConfig = toml::from_str(
            "per_ip_connections = 4\nip_overrides = [{ cidr = \"10.0.0.0/8\", limit = 0 }]",
        )
        .unwrap();
        assert_eq!(c, cfg(4, &[("10.0.0.0/8", 0)]));
        assert!(toml::from_str::<LimitConfig>("per_ip = 4").is_err());
        assert!(toml::from_str::<LimitConfig>(
            "ip_overrides = [{ cidr = \"::/0\", limit = 1, x = 2 }]"
        )
        .is_err());
        assert_eq!(
            toml::from_str::<LimitConfig>("").unwrap(),
            LimitConfig::default()
        );
    }

    #[test]
    fn keys_round_trip() {
        for s in ["127.0.0.2", "::1", "2001:db8::5"] {
            let ip: IpAddr = s.parse().unwrap();
            assert_eq!(addr_of(key_of(ip)), ip);
        }
    }
}
