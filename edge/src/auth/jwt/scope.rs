//! Which scope a request path needs: the rule with the longest matching `path_prefix`.
//!
//! Prefixes match whole path segments: `/api` covers `/api` and `/api/orders` but not
//! `/apiary`; a prefix ending in `/` covers everything below it. The query is never part of
//! the match. A path with dot segments or encoded separators (`/public/../admin`,
//! `/public/%2e%2e/admin`, `%2f`, `\`) could be normalised differently by an upstream than
//! here, so while any rule exists such a path is allowed by none.

use super::config::ScopeRule;
use crate::config::ConfigError;

#[derive(Debug, Clone, Default)]
pub struct ScopeRules {
    /// Longest prefix first.
    rules: Vec<ScopeRule>,
}

impl ScopeRules {
    pub fn new(rules: &[ScopeRule]) -> Result<Self, ConfigError> {
        for (i, r) in rules.iter().enumerate() {
            if !r.path_prefix.starts_with('/') {
                return Err(ConfigError::invalid(
                    "jwt.scopes.path_prefix",
                    &r.path_prefix,
                    "must start with '/'",
                ));
            }
            if r.path_prefix.contains(['?', '#']) || has_ambiguous_segment(&r.path_prefix) {
                return Err(ConfigError::invalid(
                    "jwt.scopes.path_prefix",
                    &r.path_prefix,
                    "must be a plain path: no query, fragment, dot segments or %-escapes",
                ));
            }
            if r.scope.is_empty() || r.scope.contains(char::is_whitespace) {
                return Err(ConfigError::invalid(
                    "jwt.scopes.scope",
                    &r.scope,
                    "must be one non-empty scope without spaces",
                ));
            }
            if rules[..i].iter().any(|o| o.path_prefix == r.path_prefix) {
                return Err(ConfigError::invalid(
                    "jwt.scopes.path_prefix",
                    &r.path_prefix,
                    "listed twice",
                ));
            }
        }
        let mut rules = rules.to_vec();
        rules.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        Ok(Self { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// What `target` (a path, optionally with its query) needs.
    pub fn requirement(&self, target: &str) -> Requirement<'_> {
        if self.rules.is_empty() {
            return Requirement::Open;
        }
        let path = target.split(['?', '#']).next().unwrap_or_default();
        if has_ambiguous_segment(path) {
            return Requirement::AmbiguousPath;
        }
        match self.rules.iter().find(|r| covers(&r.path_prefix, path)) {
            Some(r) => Requirement::Scope(&r.scope),
            None => Requirement::Open,
        }
    }

    /// May a token with `scopes` open `target`?
    pub fn allows(&self, target: &str, scopes: &[String]) -> bool {
        match self.requirement(target) {
            Requirement::Open => true,
            Requirement::Scope(need) => scopes.iter().any(|s| s == need),
            Requirement::AmbiguousPath => false,
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
    /// Dot segments or encoded separators while rules exist: allowed by none.
    AmbiguousPath,
}

fn covers(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

fn has_ambiguous_segment(path: &str) -> bool {
    if path.contains('\\') {
        return true;
    }
    if path.contains('%') {
        let lower = path.to_ascii_lowercase();
        if ["%2e", "%2f", "%5c"].iter().any(|e| lower.contains(e)) {
            return true;
        }
    }
    path.split('/').any(|seg| seg == "." || seg == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

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
        ];
        for (path, want) in cases {
            assert_eq!(r.requirement(path), Requirement::Scope(want), "{path}");
        }
        let only_api = rules(&[("/api", "api")]);
        assert_eq!(only_api.requirement("/public"), Requirement::Open);
        assert!(only_api.allows("/public", &[]));
        assert!(!only_api.allows("/api/x", &[]));
        assert!(only_api.allows("/api/x", &["read".into(), "api".into()]));
    }

    #[test]
    fn ambiguous_paths_match_nothing_while_rules_exist() {
        let r = rules(&[("/public", "p")]);
        for path in [
            "/public/../admin",
            "/public/%2E%2e/admin",
            "/public%2fx",
            "/a/./b",
            "/a\\b",
        ] {
            assert!(!r.allows(path, &["p".into()]), "{path}");
            assert_eq!(r.requirement(path), Requirement::AmbiguousPath, "{path}");
        }
        assert!(ScopeRules::default().allows("/public/../admin", &[]));
    }

    #[test]
    fn bad_rules_are_refused() {
        for (p, s) in [
            ("api", "x"),
            ("/api", ""),
            ("/api", "a b"),
            ("/a/../b", "x"),
            ("/a?b", "x"),
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
    }
}
