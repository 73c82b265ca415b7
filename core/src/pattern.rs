//! AMQP 0-9-1 topic patterns: `*` matches exactly one word, `#` zero or more words.

use std::fmt;

use crate::error::{Error, Result};

/// A validated topic pattern.
///
/// Words are separated by `.`. A wildcard must be a whole word: `a.*.c` and `a.#` are patterns,
/// `a*.c` is rejected rather than silently treated as a literal. The empty routing key has zero
/// words, so `#` matches it and `*` does not.
#[derive(Clone, PartialEq, Eq)]
pub struct TopicPattern {
    text: String,
    words: Vec<Word>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Word {
    Literal(String),
    One,
    Many,
}

impl TopicPattern {
    /// Parse and validate a pattern.
    pub fn parse(text: &str) -> Result<Self> {
        if text.len() > crate::topology::MAX_NAME_BYTES {
            return Err(Error::invalid_input(format!(
                "topic pattern is {} bytes; at most {} are allowed",
                text.len(),
                crate::topology::MAX_NAME_BYTES
            )));
        }
        let mut words = Vec::new();
        for word in split_words(text) {
            words.push(match word {
                "*" => Word::One,
                "#" => {
                    // Consecutive `#` match the same as one; collapsing keeps matching linear.
                    if words.last() == Some(&Word::Many) {
                        continue;
                    }
                    Word::Many
                }
                w if w.contains(['*', '#']) => {
                    return Err(Error::invalid_input(format!(
                        "invalid topic pattern {text:?}: the word {w:?} mixes a wildcard with \
                         other characters; '*' and '#' must stand alone between dots"
                    )))
                }
                w => Word::Literal(w.to_owned()),
            });
        }
        Ok(TopicPattern {
            text: text.to_owned(),
            words,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether a routing key matches.
    pub fn matches(&self, routing_key: &str) -> bool {
        let key: Vec<&str> = split_words(routing_key).collect();
        // reachable[i]: the pattern prefix processed so far can consume exactly key[..i].
        let mut reachable = vec![false; key.len() + 1];
        reachable[0] = true;
        for word in &self.words {
            let mut next = vec![false; key.len() + 1];
            match word {
                Word::Many => {
                    let mut any = false;
                    for (slot, &was) in next.iter_mut().zip(&reachable) {
                        any |= was;
                        *slot = any;
                    }
                }
                Word::One => {
                    next[1..].copy_from_slice(&reachable[..key.len()]);
                }
                Word::Literal(lit) => {
                    for i in 0..key.len() {
                        next[i + 1] = reachable[i] && key[i] == lit;
                    }
                }
            }
            reachable = next;
        }
        reachable[key.len()]
    }
}

fn split_words(text: &str) -> impl Iterator<Item = &str> {
    // The empty key has no words; "a..b" has an empty middle word, as in RabbitMQ.
    let mut split = Some(text.split('.'));
    if text.is_empty() {
        split = None;
    }
    split.into_iter().flatten()
}

impl fmt::Debug for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicPattern({:?})", self.text)
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for TopicPattern {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table_of_cases() {
        let cases: &[(&str, &str, bool)] = &[
            ("a.b.c", "a.b.c", true),
            ("a.b.c", "a.b", false),
            ("a.b", "a.b.c", false),
            ("*", "a", true),
            ("*", "", false),
            ("*", "a.b", false),
            ("#", "", true),
            ("#", "a", true),
            ("#", "a.b.c", true),
            ("a.*", "a.b", true),
            ("a.*", "a", false),
            ("a.*", "a.b.c", false),
            ("a.#", "a", true),
            ("a.#", "a.b", true),
            ("a.#", "a.b.c", true),
            ("a.#", "b.a", false),
            ("#.c", "c", true),
            ("#.c", "a.b.c", true),
            ("#.c", "a.b.c.d", false),
            ("a.#.c", "a.c", true),
            ("a.#.c", "a.b.c", true),
            ("a.#.c", "a.b.b.c", true),
            ("a.#.c", "a.b.b", false),
            ("*.b.*", "a.b.c", true),
            ("*.b.*", "b.c", false),
            ("#.#", "", true),
            ("#.#", "a.b", true),
            ("*.#", "", false),
            ("*.#", "a", true),
            ("#.*", "a.b", true),
            ("order.created", "order.created", true),
            ("order.*", "order.created", true),
            ("order.*", "order.created.eu", false),
            ("order.#", "order.created.eu", true),
            ("a..b", "a..b", true),
            ("a.*.b", "a..b", true),
            ("", "", true),
            ("", "a", false),
            ("stock.usd.*", "stock.usd.nyse", true),
            ("*.*.rabbit", "quick.orange.rabbit", true),
            ("lazy.#", "lazy.orange.male.rabbit", true),
            ("*.orange.*", "quick.orange.male.rabbit", false),
        ];
        for (pattern, key, expect) in cases {
            let p = TopicPattern::parse(pattern).unwrap();
            assert_eq!(
                p.matches(key),
                *expect,
                "pattern {pattern:?} against key {key:?}"
            );
        }
    }

    #[test]
    fn wildcards_must_be_whole_words() {
        for bad in ["a*", "a.b#", "*a.b", "a.#x", "**"] {
            let err = TopicPattern::parse(bad).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
            assert!(err.message().contains("invalid topic pattern"), "{err}");
        }
        assert!(TopicPattern::parse(&"a".repeat(256)).is_err());
    }

    /// A direct reading of the AMQP rule, exponential but obviously right, to check against.
    fn reference(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|i| reference(rest, &key[i..])),
            Some((&"*", rest)) => !key.is_empty() && reference(rest, &key[1..]),
            Some((lit, rest)) => key.first() == Some(lit) && reference(rest, &key[1..]),
        }
    }

    fn words(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    proptest! {
        #[test]
        fn agrees_with_the_reference_rule(
            pattern in prop::collection::vec(prop_oneof![
                Just("*".to_string()), Just("#".to_string()),
                Just("a".to_string()), Just("b".to_string())], 0..6),
            key in prop::collection::vec(prop_oneof![
                Just("a".to_string()), Just("b".to_string()), Just("c".to_string())], 0..7),
        ) {
            let p = TopicPattern::parse(&pattern.join(".")).unwrap();
            prop_assert_eq!(p.matches(&key.join(".")), reference(&words(&pattern), &words(&key)));
        }

        #[test]
        fn hash_alone_matches_everything(key in "[a-z]{0,3}(\\.[a-z]{0,3}){0,4}") {
            prop_assert!(TopicPattern::parse("#").unwrap().matches(&key));
        }

        #[test]
        fn a_literal_key_matches_itself(key in "[a-z]{1,3}(\\.[a-z]{1,3}){0,4}") {
            prop_assert!(TopicPattern::parse(&key).unwrap().matches(&key));
        }
    }
}
