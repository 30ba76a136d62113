//! Configuration keys that take a list take a single value too: operators write
//! `audience = "wssedge"` for the one audience they have, and a refusal saying "expected a
//! sequence" teaches them nothing. Use with `#[serde(deserialize_with = "one_or_many")]` (or
//! [`option_one_or_many`] on an `Option<Vec<_>>`).
//!
//! A hand-written visitor rather than an untagged enum: an untagged enum reports any bad item
//! as "did not match any variant", where this passes the item's own error through (a bad
//! socket address says so).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, IntoDeserializer, SeqAccess, Visitor};

/// A list, or one value standing for a list of one.
pub fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    d.deserialize_any(OneOrMany(PhantomData))
}

/// [`one_or_many`] for a key that may be absent (`None`) or given as a value or a list.
pub fn option_one_or_many<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    one_or_many(d).map(Some)
}

struct OneOrMany<T>(PhantomData<T>);

impl<T> OneOrMany<T> {
    fn one<'de, E>(v: impl IntoDeserializer<'de, E>) -> Result<Vec<T>, E>
    where
        T: Deserialize<'de>,
        E: de::Error,
    {
        T::deserialize(v.into_deserializer()).map(|t| vec![t])
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOrMany<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list, or a single value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element()? {
            out.push(item);
        }
        Ok(out)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<T>, E> {
        Self::one(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Vec<T>, E> {
        Self::one(v)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Vec<T>, E> {
        Self::one(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Vec<T>, E> {
        Self::one(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Vec<T>, E> {
        Self::one(v)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Vec<T>, E> {
        Self::one(v)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Vec<T>, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map)).map(|t| vec![t])
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::PathBuf;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(default, deny_unknown_fields)]
    struct Keys {
        #[serde(deserialize_with = "one_or_many")]
        names: Vec<String>,
        #[serde(deserialize_with = "one_or_many")]
        listen: Vec<SocketAddr>,
        #[serde(deserialize_with = "one_or_many")]
        files: Vec<PathBuf>,
        #[serde(deserialize_with = "option_one_or_many")]
        cpus: Option<Vec<usize>>,
    }

    fn keys(toml_text: &str) -> Result<Keys, String> {
        toml::from_str(toml_text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_single_value_is_a_list_of_one() {
        let k = keys(
            "names = \"wssedge\"\nlisten = \"127.0.0.1:443\"\nfiles = \"/etc/a.pem\"\ncpus = 3",
        )
        .unwrap();
        assert_eq!(k.names, ["wssedge"]);
        assert_eq!(k.listen, ["127.0.0.1:443".parse::<SocketAddr>().unwrap()]);
        assert_eq!(k.files, [PathBuf::from("/etc/a.pem")]);
        assert_eq!(k.cpus, Some(vec![3]));
    }

    #[test]
    fn lists_stay_lists_and_absent_keys_keep_their_default() {
        let k = keys("names = [\"a\", \"b\"]\ncpus = [0, 1]\nlisten = []").unwrap();
        assert_eq!(k.names, ["a", "b"]);
        assert_eq!(k.cpus, Some(vec![0, 1]));
        assert!(k.listen.is_empty());
        assert_eq!(keys("").unwrap(), Keys::default());
    }

    #[test]
    fn a_bad_item_says_what_is_wrong_with_it() {
        let e = keys("listen = \"not an address\"").unwrap_err();
        assert!(e.contains("listen") && e.contains("socket address"), "{e}");
        let e = keys("listen = [\"127.0.0.1:1\", \"nope\"]").unwrap_err();
        assert!(e.contains("socket address"), "{e}");
        let e = keys("cpus = \"one\"").unwrap_err();
        assert!(e.contains("cpus"), "{e}");
        let e = keys("names = 5").unwrap_err();
        assert!(e.contains("names") && e.contains("string"), "{e}");
    }
}
