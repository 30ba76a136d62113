//! Which scope a request path needs: the rule with the longest matching `path_prefix`.
//!
//! Prefixes are [`PathPrefix`]es: whole path segments, ASCII-case-insensitive. `/api` covers
//! `/api`, `/API` and `/api/orders` but not `/apiary`; a prefix ending in `/` covers everything
//! below it. The query is never part of the match. The path is the upgrade parser's normalised
//! one ([`RequestTarget`]): a spelling an upstream could resolve differently (`..`, `%2f`,
//! `..;`, `//`, `\`) is refused before any rule is asked.

use super::config::{JwtConfigError, ScopeRule};
use crate::ws::{PathPrefix, RequestTarget};

#[derive(Debug, Clone, Default)]
pub struct ScopeRules {
    /// Longest prefix first.
    rules: Vec<(PathPrefix, String)>,
}

impl ScopeRules {
    pub fn new(rules: &[ScopeRule]) -> Result<Self, JwtConfigError> {
        let mut compiled = Vec::with_capacity(rules.len());
        for (i, r) in rules.iter().enumerate() {
            let prefix = PathPrefix::parse(&r.path_prefix).map_err(|reason| {
                JwtConfigError::invalid("jwt.scopes.path_prefix", &r.path_prefix, reason)
            })?;
            if r.scope.is_empty() || r.scope.contains(char::is_whitespace) {
                return Err(JwtConfigError::invalid(
                    "jwt.scopes.scope",
                    &r.scope,
                    "must be one non-empty scope without spaces",
                ));
            }
            if rules[..i]
                .iter()
                .any(|o| o.path_prefix.eq_ignore_ascii_case(&r.path_prefix))
            {
                return Err(JwtConfigError::invalid(
                    "jwt.scopes.path_prefix",
                    &r.path_prefix,
                    "listed twice (prefixes match case-insensitively)",
                ));
            }
            compiled.push((prefix, r.scope.clone()));
        }
        compiled.sort_by_key(|(p, _)| std::cmp::Reverse(p.as_str().len()));
        Ok(Self { rules: compiled })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// What `target` needs.
    pub fn requirement(&self, target: &RequestTarget) -> Requirement<'_> {
        let path = target.path();
        let rule = (self.rules.iter().find(|(p, _)| p.covers(path)))
            .or_else(|| self.rules.iter().find(|(p, _)| p.covers_bare(path)));
        match rule {
            Some((_, scope)) => Requirement::Scope(scope),
            None => Requirement::Open,
        }
    }

    /// May a token with `scopes` open `target`?
    pub fn allows(&self, target: &RequestTarget, scopes: &[String]) -> bool {
        match self.requirement(target) {
            Requirement::Open => true,
            Requirement::Scope(need) => scopes.iter().any(|s| s == need),
        }
    }
}

/// What a request path needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement<'a> {
    /// No rule covers it.
    Open,
    /// The scope of the longest matching rule.
    Scope(&'a str),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(target: &str) -> RequestTarget {
        RequestTarget::parse(target).unwrap()
    }

    fn rules(list: &[(&str, &str)]) -> ScopeRules {
        let v: Vec<_> = list
            .iter()
            .map(|(p, s)| ScopeRule {
                path_prefix: (*p).into(),
                scope: (*s).into(),
            })
            .collect();
        ScopeRules::new(&v).unwrap()
    }

    #[test]
    fn longest_prefix_wins_on_segment_boundaries() {
        let r = rules(&[
            ("/", "basic"),
            ("/api", "api"),
            ("/api/admin", "admin"),
            ("/feed/", "feed"),
        ]);
        let cases = [
            ("/", "basic"),
            ("/other", "basic"),
            ("/api", "api"),
            ("/api?x=1", "api"),
            ("/api/orders", "api"),
            ("/apiary", "basic"),
            ("/api/admin", "admin"),
            ("/api/admin/users", "admin"),
            ("/api/administrator", "api"),
            ("/feed/x", "feed"),
            ("/feed", "basic"),
            // Case-insensitive, on the normalised path.
            ("/API/Admin", "admin"),
            ("/Api/orders", "api"),
            ("/%61pi/%61dmin/x", "admin"),
            ("/FEED/x", "feed"),
        ];
        for (path, want) in cases {
            assert_eq!(r.requirement(&t(path)), Requirement::Scope(want), "{path}");
        }
        let only_api = rules(&[("/api", "api")]);
        assert_eq!(only_api.requirement(&t("/public")), Requirement::Open);
        assert!(only_api.allows(&t("/public"), &[]));
        assert!(!only_api.allows(&t("/api/x"), &[]));
        assert!(!only_api.allows(&t("/Api/x"), &[]));
        assert!(only_api.allows(&t("/api/x"), &["read".into(), "api".into()]));
        assert!(ScopeRules::default().allows(&t("/api"), &[]));
    }

    #[test]
    fn bad_rules_are_refused() {
        for (p, s) in [
            ("api", "x"),
            ("/api", ""),
            ("/api", "a b"),
            ("/a/../b", "x"),
            ("/a?b", "x"),
            ("/a;b", "x"),
            ("/a%2fb", "x"),
            ("/a%61", "x"),
            ("//a", "x"),
            ("/a\\b", "x"),
        ] {
            let v = [ScopeRule {
                path_prefix: p.into(),
                scope: s.into(),
            }];
            assert!(ScopeRules::new(&v).is_err(), "{p} {s}");
        }
        let dup = [
            ScopeRule {
                path_prefix: "/a".into(),
                scope: "x".into(),
            },
            ScopeRule {
                path_prefix: "/a".into(),
                scope: "y".into(),
            },
        ];
        assert!(ScopeRules::new(&dup).is_err());
        let dup_case = [
            ScopeRule {
                path_prefix: "/Trade".into(),
                scope: "x".into(),
            },
            ScopeRule {
                path_prefix: "/trade".into(),
                scope: "y".into(),
            },
        ];
        assert!(ScopeRules::new(&dup_case).is_err());
    }
}
