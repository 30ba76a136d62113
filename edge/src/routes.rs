//! `[[routes]]`: which path serves what — an upstream group (proxy) or the pub/sub protocol.
//!
//! A route maps a path prefix to its target; the longest matching prefix wins, on a segment
//! boundary and ASCII-case-insensitively (a [`PathPrefix`]: `/md` matches `/md`, `/MD`, `/md/x`
//! and `/md?x`, never `/mdx`). The path is the upgrade parser's normalised one
//! ([`RequestTarget`]): dot segments, encoded separators and the other spellings that could
//! resolve into a path the route never meant to expose are refused before routing.
//!
//! Paths without a route keep the edge's mode: echo, or 404 when an `[upstream]` exists.
//! Group routes are resolved further by the upstream room (its own table of group routes);
//! this table only says which kind of route a path falls under.

use serde::Deserialize;

use crate::config_error::ConfigError;
use crate::ws::{PathPrefix, RequestTarget};

/// `[[routes]]`: exactly one of `group` and `pubsub = true`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// A plain path prefix starting with `/` ([`PathPrefix`]), matched case-insensitively.
    pub prefix: String,
    /// The `[[upstream.groups]]` name sessions on this path are forwarded to.
    #[serde(default)]
    pub group: Option<String>,
    /// Sessions on this path speak the pub/sub protocol (`[pubsub]`).
    #[serde(default)]
    pub pubsub: bool,
    /// Whole messages may be dropped under backpressure or rate limits (market data; group
    /// routes only).
    #[serde(default)]
    pub lossy: bool,
    /// permessage-deflate on this path, over `[compression] enabled` (absent: that decides).
    #[serde(default)]
    pub compression: Option<bool>,
}

impl Route {
    /// The upstream group, for group routes.
    pub fn group(&self) -> Option<&str> {
        if self.pubsub {
            None
        } else {
            self.group.as_deref()
        }
    }
}

/// What a path falls under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// A group route: the upstream room picks the group and the member.
    Upstream,
    /// The pub/sub protocol.
    PubSub,
}

/// Checks every route on its own and against the others. Whether a group exists is the
/// upstream section's check ([`crate::upstream::UpstreamConfig::validate`]).
pub fn validate(routes: &[Route], has_upstream: bool) -> Result<(), ConfigError> {
    for (i, r) in routes.iter().enumerate() {
        PathPrefix::parse(&r.prefix)
            .map_err(|reason| ConfigError::invalid("routes.prefix", &r.prefix, reason))?;
        if routes[..i]
            .iter()
            .any(|o| o.prefix.eq_ignore_ascii_case(&r.prefix))
        {
            return Err(ConfigError::invalid(
                "routes.prefix",
                &r.prefix,
                "two routes with the same prefix (prefixes match case-insensitively)",
            ));
        }
        match (&r.group, r.pubsub) {
            (Some(group), true) => {
                return Err(ConfigError::invalid(
                    "routes.group",
                    group,
                    format!(
                        "route {:?} has both `group` and `pubsub = true`: write exactly one",
                        r.prefix
                    ),
                ))
            }
            (None, false) => {
                return Err(ConfigError::invalid(
                    "routes.prefix",
                    &r.prefix,
                    "a route needs `group = \"…\"` (proxy) or `pubsub = true`",
                ))
            }
            (None, true) if r.lossy => {
                return Err(ConfigError::invalid(
                    "routes.lossy",
                    &r.prefix,
                    "`lossy` is for group routes; a pub/sub topic's slow-consumer policy is \
                     [[pubsub.topics]] slow = \"drop\" | \"conflate\"",
                ))
            }
            (Some(group), false) if !has_upstream => {
                return Err(ConfigError::invalid(
                    "routes.group",
                    group,
                    "routes need an [upstream] section with their groups",
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The routes' kinds by prefix, longest prefix first.
#[derive(Debug, Clone, Default)]
pub struct RouteKinds {
    routes: Vec<(PathPrefix, usize, RouteKind, Option<bool>)>,
}

impl RouteKinds {
    /// From validated routes (prefixes that are not plain paths are dropped here).
    pub fn new(routes: &[Route]) -> Self {
        let mut routes: Vec<(PathPrefix, usize, RouteKind, Option<bool>)> = routes
            .iter()
            .filter_map(|r| {
                let prefix = PathPrefix::parse(&r.prefix).ok()?;
                let kind = if r.pubsub {
                    RouteKind::PubSub
                } else {
                    RouteKind::Upstream
                };
                Some((prefix, r.prefix.len(), kind, r.compression))
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.1));
        Self { routes }
    }

    /// Whether any route serves pub/sub.
    pub fn has_pubsub(&self) -> bool {
        self.routes.iter().any(|r| r.2 == RouteKind::PubSub)
    }

    /// The kind of the longest route whose prefix covers `target`'s path.
    pub fn kind(&self, target: &RequestTarget) -> Option<RouteKind> {
        self.longest(target).map(|r| r.2)
    }

    /// The `compression` of the longest route covering `target`'s path, if it says.
    pub fn compression(&self, target: &RequestTarget) -> Option<bool> {
        self.longest(target).and_then(|r| r.3)
    }

    fn longest(
        &self,
        target: &RequestTarget,
    ) -> Option<&(PathPrefix, usize, RouteKind, Option<bool>)> {
        let path = target.path();
        self.routes
            .iter()
            .find(|(prefix, ..)| prefix.strip(path).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Wrapper {
        routes: Vec<Route>,
    }

    fn routes(toml: &str) -> Vec<Route> {
        toml::from_str::<Wrapper>(toml).unwrap().routes
    }

    fn target(s: &str) -> RequestTarget {
        RequestTarget::parse(s).unwrap()
    }

    const MIXED: &str = r#"
[[routes]]
prefix = "/md"
pubsub = true
[[routes]]
prefix = "/md/raw"
group = "feed"
[[routes]]
prefix = "/orders"
group = "orders"
lossy = true
"#;

    #[test]
    fn the_longest_prefix_decides_the_kind_whatever_the_spelling() {
        let r = routes(MIXED);
        validate(&r, true).unwrap();
        let kinds = RouteKinds::new(&r);
        assert!(kinds.has_pubsub());
        for (path, kind) in [
            ("/md", Some(RouteKind::PubSub)),
            ("/MD/trades", Some(RouteKind::PubSub)),
            ("/md?x=1", Some(RouteKind::PubSub)),
            ("/md/raw", Some(RouteKind::Upstream)),
            ("/md/RAW/x", Some(RouteKind::Upstream)),
            ("/md/rawx", Some(RouteKind::PubSub)),
            ("/mdx", None),
            ("/orders/1", Some(RouteKind::Upstream)),
            ("/", None),
        ] {
            assert_eq!(kinds.kind(&target(path)), kind, "{path}");
        }
        assert_eq!(r[1].group(), Some("feed"));
        assert_eq!(r[0].group(), None);
    }

    #[test]
    fn pubsub_routes_need_no_upstream_but_group_routes_do() {
        let only_pubsub = routes("[[routes]]\nprefix = \"/md\"\npubsub = true\n");
        validate(&only_pubsub, false).unwrap();
        let e = validate(&routes(MIXED), false).unwrap_err().to_string();
        assert!(e.contains("[upstream]"), "{e}");
    }

    #[test]
    fn a_route_is_exactly_one_of_group_and_pubsub() {
        for (toml, says) in [
            (
                "[[routes]]\nprefix = \"/md\"\npubsub = true\ngroup = \"g\"\n",
                "exactly one",
            ),
            ("[[routes]]\nprefix = \"/md\"\n", "pubsub = true"),
            (
                "[[routes]]\nprefix = \"/md\"\npubsub = true\nlossy = true\n",
                "slow-consumer",
            ),
            (
                "[[routes]]\nprefix = \"/md\"\npubsub = true\n[[routes]]\nprefix = \"/MD\"\npubsub = true\n",
                "same prefix",
            ),
            ("[[routes]]\nprefix = \"md\"\npubsub = true\n", "routes.prefix"),
        ] {
            let e = validate(&routes(toml), true).unwrap_err().to_string();
            assert!(e.contains(says), "{toml}: {e}");
        }
    }
}
