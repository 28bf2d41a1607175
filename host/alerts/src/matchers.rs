//! Label matchers in Alertmanager's syntax: `name="value"`, `name!="value"`,
//! `name=~"regex"`, `name!~"regex"`. Values may be double-quoted (with `\"`,
//! `\\` and `\n` escapes) or bare; regexes are fully anchored as
//! Alertmanager does (`^(?:re)$`), so `severity=~"crit"` does not match
//! `critical`. A missing label matches as the empty string.

use std::fmt;

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::Labels;

/// The comparison of a matcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `=~`
    Regex,
    /// `!~`
    NotRegex,
}

impl Op {
    fn text(self) -> &'static str {
        match self {
            Op::Equal => "=",
            Op::NotEqual => "!=",
            Op::Regex => "=~",
            Op::NotRegex => "!~",
        }
    }
}

/// One matcher.
#[derive(Debug, Clone)]
pub struct Matcher {
    /// Label name.
    pub name: String,
    /// Comparison.
    pub op: Op,
    /// The value or the regex as written.
    pub value: String,
    re: Option<Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

impl Matcher {
    /// Parses `name op value`.
    pub fn parse(text: &str) -> Result<Matcher, String> {
        let t = text.trim();
        let name_end = t
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .ok_or_else(|| format!("`{text}`: no operator (=, !=, =~, !~)"))?;
        let name = &t[..name_end];
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!(
                "`{text}`: a label name must start with a letter or `_`"
            ));
        }
        let rest = t[name_end..].trim_start();
        let (op, rest) = if let Some(r) = rest.strip_prefix("=~") {
            (Op::Regex, r)
        } else if let Some(r) = rest.strip_prefix("!~") {
            (Op::NotRegex, r)
        } else if let Some(r) = rest.strip_prefix("!=") {
            (Op::NotEqual, r)
        } else if let Some(r) = rest.strip_prefix('=') {
            (Op::Equal, r)
        } else {
            return Err(format!("`{text}`: expected =, !=, =~ or !~ after `{name}`"));
        };
        let value = unquote(rest.trim()).map_err(|e| format!("`{text}`: {e}"))?;
        Matcher::new(name, op, &value).map_err(|e| format!("`{text}`: {e}"))
    }

    /// A matcher from its parts; regexes are compiled anchored.
    pub fn new(name: &str, op: Op, value: &str) -> Result<Matcher, String> {
        let re = match op {
            Op::Regex | Op::NotRegex => Some(
                Regex::new(&format!("^(?:{value})$"))
                    .map_err(|e| format!("invalid regex `{value}`: {e}"))?,
            ),
            _ => None,
        };
        Ok(Matcher {
            name: name.to_string(),
            op,
            value: value.to_string(),
            re,
        })
    }

    /// Whether the label set matches.
    pub fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.name).map_or("", String::as_str);
        match (self.op, &self.re) {
            (Op::Equal, _) => v == self.value,
            (Op::NotEqual, _) => v != self.value,
            (Op::Regex, Some(re)) => re.is_match(v),
            (Op::NotRegex, Some(re)) => !re.is_match(v),
            _ => false,
        }
    }
}

fn unquote(s: &str) -> Result<String, String> {
    let Some(inner) = s.strip_prefix('"') else {
        if s.contains(['"', ',', '{', '}']) {
            return Err("a bare value may not contain `\"`, `,`, `{` or `}`".into());
        }
        return Ok(s.to_string());
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some(c @ ('"' | '\\')) => out.push(c),
                Some(c) => {
                    out.push('\\');
                    out.push(c);
                }
                None => return Err("unterminated escape".into()),
            },
            '"' => {
                return if chars.as_str().trim().is_empty() {
                    Ok(out)
                } else {
                    Err(format!(
                        "text after the closing quote: `{}`",
                        chars.as_str()
                    ))
                };
            }
            c => out.push(c),
        }
    }
    Err("missing closing quote".into())
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.value.replace('\\', "\\\\").replace('"', "\\\"");
        write!(f, "{}{}\"{}\"", self.name, self.op.text(), v)
    }
}

impl Serialize for Matcher {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Matcher {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Matcher::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Whether every matcher matches (an empty list matches everything).
pub fn all_match(matchers: &[Matcher], labels: &Labels) -> bool {
    matchers.iter().all(|m| m.matches(labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_the_four_operators_and_anchors_regexes() {
        let l = labels(&[("severity", "critical"), ("team", "db")]);
        assert!(
            Matcher::parse(r#"severity=~"critical|page""#)
                .unwrap()
                .matches(&l)
        );
        assert!(!Matcher::parse(r#"severity=~"crit""#).unwrap().matches(&l));
        assert!(Matcher::parse(r#"severity=~"crit.*""#).unwrap().matches(&l));
        assert!(Matcher::parse("team=db").unwrap().matches(&l));
        assert!(Matcher::parse(r#"team != "web""#).unwrap().matches(&l));
        assert!(!Matcher::parse(r#"team!~"d.""#).unwrap().matches(&l));
        // A missing label is the empty string.
        assert!(Matcher::parse(r#"env="""#).unwrap().matches(&l));
        assert!(Matcher::parse(r#"env!~".+""#).unwrap().matches(&l));
        let q = Matcher::parse(r#"msg="say \"hi\"""#).unwrap();
        assert_eq!(q.value, "say \"hi\"");
        assert_eq!(Matcher::parse(&q.to_string()).unwrap(), q);
    }

    #[test]
    fn refuses_malformed_matchers() {
        for bad in [
            "severity",
            "=x",
            "1a=b",
            r#"a=~"(""#,
            r#"a="x"y"#,
            r#"a="open"#,
            "a>b",
        ] {
            assert!(Matcher::parse(bad).is_err(), "{bad} parsed");
        }
    }
}
