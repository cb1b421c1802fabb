//! YAML as the original opsbro read it: a key given twice in a mapping is not an error, the
//! last one wins (PyYAML's behaviour), but each repeat is reported so that the operator can
//! clean the file.

use std::cell::RefCell;
use std::fmt;

use serde::de::{DeserializeSeed, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};
use serde_yaml::Value as Yaml;
use serde_yaml::value::{Tag, TaggedValue};

/// A document and the keys that were given more than once (in the order met).
#[derive(Debug)]
pub struct Lenient {
    /// The document, each repeated key holding its last value.
    pub value: Yaml,
    /// Keys met again in the same mapping.
    pub repeated: Vec<String>,
}

/// Parse one YAML document, accepting repeated keys (last one wins).
pub fn parse(text: &str) -> Result<Lenient, serde_yaml::Error> {
    let repeated = RefCell::new(Vec::new());
    let value = Seed(&repeated).deserialize(serde_yaml::Deserializer::from_str(text))?;
    Ok(Lenient {
        value,
        repeated: repeated.into_inner(),
    })
}

/// The 1-based line of the last line of `text` that sets `key` in a mapping (`key:` or
/// `"key":`, any indent), for the diagnostic of a repeated key.
pub fn last_line_of_key(text: &str, key: &str) -> Option<usize> {
    let quoted = [
        format!("{key}:"),
        format!("{key} :"),
        format!("\"{key}\":"),
        format!("'{key}':"),
    ];
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.trim_start().trim_start_matches("- ");
            quoted.iter().any(|q| t.starts_with(q.as_str())) || {
                // `key   :` with several blanks before the colon.
                t.strip_prefix(key)
                    .is_some_and(|r| r.trim_start().starts_with(':'))
            }
        })
        .map(|(i, _)| i + 1)
        .last()
}

#[derive(Clone, Copy)]
struct Seed<'a>(&'a RefCell<Vec<String>>);

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Yaml;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Yaml, D::Error> {
        d.deserialize_any(self)
    }
}

fn key_text(k: &Yaml) -> String {
    match k {
        Yaml::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Yaml;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Yaml, E> {
        Ok(Yaml::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Yaml, E> {
        Ok(Yaml::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Yaml, E> {
        Ok(Yaml::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Yaml, E> {
        Ok(Yaml::Number(v.into()))
    }
    fn visit_str<E>(self, v: &str) -> Result<Yaml, E> {
        Ok(Yaml::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Yaml, E> {
        Ok(Yaml::String(v))
    }
    fn visit_unit<E>(self) -> Result<Yaml, E> {
        Ok(Yaml::Null)
    }
    fn visit_none<E>(self) -> Result<Yaml, E> {
        Ok(Yaml::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Yaml, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Yaml, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            out.push(v);
        }
        Ok(Yaml::Sequence(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Yaml, A::Error> {
        let mut out = serde_yaml::Mapping::new();
        while let Some(k) = map.next_key_seed(self)? {
            let v = map.next_value_seed(self)?;
            let text = key_text(&k);
            // Last one wins, as in the original (PyYAML).
            if out.insert(k, v).is_some() {
                self.0.borrow_mut().push(text);
            }
        }
        Ok(Yaml::Mapping(out))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Yaml, A::Error> {
        let (tag, variant): (String, _) = data.variant()?;
        let value = variant.newtype_variant_seed(self)?;
        Ok(Yaml::Tagged(Box::new(TaggedValue {
            tag: Tag::new(tag),
            value,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_key_keeps_the_last_value_and_is_reported() {
        let text = "diskuse_warning : 90\ndiskuse_critical: 95\ncpu_critical: 90\n\ndiskuse_critical: 97\nnested:\n  a: 1\n  a: 2\n";
        let l = parse(text).expect("parses");
        assert_eq!(l.value["diskuse_critical"], Yaml::Number(97.into()));
        assert_eq!(l.value["nested"]["a"], Yaml::Number(2.into()));
        assert_eq!(l.repeated, vec!["diskuse_critical", "a"]);
        assert_eq!(last_line_of_key(text, "diskuse_critical"), Some(5));
        assert_eq!(last_line_of_key(text, "diskuse_warning"), Some(1));
    }

    #[test]
    fn values_of_every_shape_survive() {
        let text = "a: [1, 2.5, 'x', true, null]\nb: {c: ~}\nt: !Tag 3\n";
        let l = parse(text).expect("parses");
        let plain: Yaml = serde_yaml::from_str(text).expect("serde_yaml");
        assert_eq!(l.value, plain);
        assert!(l.repeated.is_empty());
        assert!(parse("a: [unclosed\n").is_err());
    }
}
