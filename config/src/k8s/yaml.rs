//! A YAML document as a tree of located nodes, so that every field can be type-checked by hand.
//!
//! Kubernetes manifests carry many fields ringlb does not read. Deserializing straight into
//! typed structs would stop at the first wrongly typed field; reading a generic tree first lets
//! the parser ignore unknown fields, check the fields it uses, and report every problem at once.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use crate::error::Problem;

/// A 1-based line and column in a source text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Loc {
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One YAML node with where it starts.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub(crate) value: Value,
    pub(crate) loc: Loc,
}

/// The value of a [`Node`].
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in document order; keys are nodes too (YAML allows non-string keys).
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// What the value is, for messages such as "expected a string, got a list".
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<Value>::deserialize(d)?;
        Ok(Node {
            value: s.value,
            loc: Loc {
                line: s.referenced.line(),
                column: s.referenced.column(),
            },
        })
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(i128::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(n) = seq.next_element::<Node>()? {
            out.push(n);
        }
        Ok(Value::Seq(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some((k, v)) = map.next_entry::<Node, Node>()? {
            out.push((k, v));
        }
        Ok(Value::Map(out))
    }
}

/// The fields of a mapping node, looked up by string key.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fields<'a> {
    entries: &'a [(Node, Node)],
    /// Where the mapping starts.
    pub(crate) loc: Loc,
}

impl<'a> Fields<'a> {
    /// The value of `key`; `None` when it is absent or explicitly null (as Kubernetes reads it).
    pub(crate) fn get(&self, key: &str) -> Option<&'a Node> {
        self.entries
            .iter()
            .find(|(k, _)| matches!(&k.value, Value::Str(s) if s == key))
            .map(|(_, v)| v)
            .filter(|v| v.value != Value::Null)
    }
}

/// Collects located problems while reading nodes; every reader reports a wrongly typed value
/// and returns `None`, so the caller goes on and finds the next problem.
#[derive(Debug, Default)]
pub(crate) struct Checker {
    /// Names the object being read, e.g. `Service default/web`; prefixes every field path.
    pub(crate) object: String,
    /// Everything found so far.
    pub(crate) problems: Vec<Problem>,
}

impl Checker {
    /// Records a problem at `loc` on `field` (relative to the current object).
    pub(crate) fn at(&mut self, loc: Loc, field: &str, reason: impl Into<String>) {
        let path = match (self.object.is_empty(), field.is_empty()) {
            (true, _) => field.to_owned(),
            (false, true) => self.object.clone(),
            (false, false) => format!("{}: {field}", self.object),
        };
        self.problems.push(Problem {
            line: Some(loc.line),
            column: Some(loc.column),
            path,
            reason: reason.into(),
        });
    }

    fn wrong_type(&mut self, n: &Node, field: &str, expected: &str) {
        self.at(
            n.loc,
            field,
            format!("expected {expected}, got {}", n.value.kind()),
        );
    }

    /// A mapping.
    pub(crate) fn map<'a>(&mut self, n: &'a Node, field: &str) -> Option<Fields<'a>> {
        match &n.value {
            Value::Map(entries) => Some(Fields {
                entries,
                loc: n.loc,
            }),
            _ => {
                self.wrong_type(n, field, "a mapping");
                None
            }
        }
    }

    /// A list.
    pub(crate) fn seq<'a>(&mut self, n: &'a Node, field: &str) -> Option<&'a [Node]> {
        match &n.value {
            Value::Seq(items) => Some(items),
            _ => {
                self.wrong_type(n, field, "a list");
                None
            }
        }
    }

    /// A string.
    pub(crate) fn string(&mut self, n: &Node, field: &str) -> Option<String> {
        match &n.value {
            Value::Str(s) => Some(s.clone()),
            _ => {
                self.wrong_type(n, field, "a string");
                None
            }
        }
    }

    /// A boolean.
    pub(crate) fn bool(&mut self, n: &Node, field: &str) -> Option<bool> {
        match &n.value {
            Value::Bool(b) => Some(*b),
            _ => {
                self.wrong_type(n, field, "true or false");
                None
            }
        }
    }

    /// An integer in `range` (inclusive), for messages `must be between lo and hi`.
    pub(crate) fn int_in(&mut self, n: &Node, field: &str, lo: i64, hi: i64) -> Option<i64> {
        match &n.value {
            Value::Int(v) if (i128::from(lo)..=i128::from(hi)).contains(v) => {
                i64::try_from(*v).ok()
            }
            Value::Int(v) => {
                self.at(
                    n.loc,
                    field,
                    format!("must be between {lo} and {hi}, got {v}"),
                );
                None
            }
            _ => {
                self.wrong_type(n, field, "an integer");
                None
            }
        }
    }

    /// A port number, 1 to 65535.
    pub(crate) fn port(&mut self, n: &Node, field: &str) -> Option<u16> {
        self.int_in(n, field, 1, 65_535)
            .and_then(|v| u16::try_from(v).ok())
    }

    /// An IPv4 or IPv6 address (no port, no host name).
    pub(crate) fn ip(&mut self, n: &Node, field: &str) -> Option<IpAddr> {
        let s = self.string(n, field)?;
        match s.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.at(n.loc, field, format!("{s:?} is not an IP address"));
                None
            }
        }
    }

    /// A mapping of strings to strings (labels, annotations), with where each value is.
    pub(crate) fn string_map(&mut self, n: &Node, field: &str) -> BTreeMap<String, (String, Loc)> {
        let mut out = BTreeMap::new();
        let Value::Map(entries) = &n.value else {
            self.wrong_type(n, field, "a mapping");
            return out;
        };
        for (k, v) in entries {
            let Value::Str(key) = &k.value else {
                self.wrong_type(k, field, "string keys");
                continue;
            };
            let path = format!("{field}.{key:?}");
            if let Some(value) = self.string(v, &path) {
                out.insert(key.clone(), (value, v.loc));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<Node> {
        serde_saphyr::from_multiple(text).unwrap()
    }

    #[test]
    fn scalars_keep_their_yaml_types_and_locations() {
        let docs = parse("a: None\nb: 80\nc: \"80\"\nd: true\ne: ~\n---\nf: [x]\n");
        assert_eq!(docs.len(), 2);
        let mut ck = Checker::default();
        let m = ck.map(&docs[0], "").unwrap();
        assert_eq!(m.get("a").unwrap().value, Value::Str("None".into()));
        assert_eq!(m.get("b").unwrap().value, Value::Int(80));
        assert_eq!(m.get("c").unwrap().value, Value::Str("80".into()));
        assert_eq!(m.get("d").unwrap().value, Value::Bool(true));
        assert!(m.get("e").is_none(), "null reads as absent");
        assert_eq!(m.get("b").unwrap().loc, Loc { line: 2, column: 4 });
        assert_eq!(docs[1].loc.line, 7);
    }

    #[test]
    fn readers_report_wrong_types_and_ranges() {
        let docs = parse("p: \"80\"\nq: 70000\nr: 10.0.0.300\n");
        let mut ck = Checker {
            object: "Service default/web".into(),
            ..Checker::default()
        };
        let m = ck.map(&docs[0], "").unwrap();
        assert_eq!(ck.port(m.get("p").unwrap(), "p"), None);
        assert_eq!(ck.port(m.get("q").unwrap(), "q"), None);
        assert_eq!(ck.ip(m.get("r").unwrap(), "r"), None);
        let text: Vec<String> = ck.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "1:4: Service default/web: p: expected an integer, got a string",
                "2:4: Service default/web: q: must be between 1 and 65535, got 70000",
                "3:4: Service default/web: r: \"10.0.0.300\" is not an IP address",
            ]
        );
    }
}
