//! Bindings as SNS filter policies (`MessageAttributes` scope), and back.
//!
//! A queue has at most one subscription per topic, so every binding of one queue to one exchange
//! is a group of the subscription's policy: one group is the policy itself, several are the
//! alternatives of a top-level `$or`. A binding that SNS cannot express exactly is refused with
//! `Unsupported` naming it; nothing is filtered in the client.

use mailroom_core::{Error, HeaderMatch, Result, Route};
use serde_json::{json, Map, Value};

use crate::codec::{attribute_name_ok, text_safe};

/// String attribute carrying the routing key of a message published to an exchange (absent for
/// the empty key: SNS and SQS refuse empty attribute values).
pub const ROUTING_KEY_ATTR: &str = "mailroom.routing-key";
/// Number attribute carrying how many words the routing key has (`0` for the empty key), so that
/// `*` can be matched: a filter policy has prefix and suffix matches but nothing for "one word".
pub const ROUTING_WORDS_ATTR: &str = "mailroom.routing-key.words";

/// Most attribute names one filter policy may use (AWS).
pub const MAX_POLICY_KEYS: usize = 5;
/// Most value combinations one filter policy may hold (AWS): the sum over the `$or` groups of the
/// product of each name's number of values.
pub const MAX_POLICY_COMBINATIONS: usize = 150;

/// One alternative of a filter policy: attribute name → the values (or operators) it may match.
pub(crate) type Group = Map<String, Value>;

/// The alternatives a binding adds to its queue's policy; `None` for a fanout binding (a
/// subscription without a filter policy receives everything).
pub(crate) fn groups(route: &Route) -> Result<Option<Vec<Group>>> {
    match route {
        Route::All => Ok(None),
        Route::Key(key) => Ok(Some(vec![exact_key(key)])),
        Route::Pattern(p) => pattern_group(p.as_str()).map(|g| Some(vec![g])),
        Route::Headers { mode, headers } => headers_groups(*mode, headers).map(Some),
    }
}

fn one(name: &str, conditions: Value) -> Group {
    let mut g = Group::new();
    g.insert(name.to_owned(), conditions);
    g
}

fn words(op: &str, n: usize) -> Value {
    json!([{ "numeric": [op, n] }])
}

fn exact_key(key: &str) -> Group {
    if key.is_empty() {
        one(ROUTING_WORDS_ATTR, words("=", 0))
    } else {
        one(ROUTING_KEY_ATTR, json!([key]))
    }
}

/// The words of a routing key or pattern as `mailroom_core::TopicPattern` counts them: the empty
/// text has none, `a..b` has an empty middle one.
fn split(text: &str) -> Vec<&str> {
    if text.is_empty() {
        Vec::new()
    } else {
        text.split('.').collect()
    }
}

/// How many words the routing key has, as [`ROUTING_WORDS_ATTR`] carries it.
pub(crate) fn word_count(routing_key: &str) -> usize {
    split(routing_key).len()
}

fn inexpressible(pattern: &str, why: &str) -> Error {
    Error::unsupported(format!(
        "topic pattern {pattern:?} cannot be expressed as an SNS filter policy: {why}; SNS \
         matches an attribute exactly, by prefix or by suffix, and mailroom adds the key's word \
         count, so patterns whose literal words are all before or all after the wildcards work \
         (a.b.#, order.*, #.eu, *.*.eu)"
    ))
}

/// A topic pattern as one group over the routing key and its word count.
///
/// With `n` literal words, `s` `*` and any `#` between them: literal words only at the front are
/// a prefix match, only at the back a suffix match; the word count is exactly `n + s` without
/// `#` and at least `n + s` with it. `a.b.#` also matches `a.b` itself, hence its exact
/// alternative. Literal words on both sides of a wildcard (`a.*.c`) need a prefix and a suffix
/// match of the same attribute together, which a policy cannot say.
fn pattern_group(pattern: &str) -> Result<Group> {
    let mut w: Vec<&str> = Vec::new();
    for word in split(pattern) {
        // Consecutive `#` match what one does (as in TopicPattern).
        if word == "#" && w.last() == Some(&"#") {
            continue;
        }
        w.push(word);
    }
    let wild = |x: &&str| *x == "*" || *x == "#";
    let (Some(first), Some(last)) = (w.iter().position(wild), w.iter().rposition(wild)) else {
        return Ok(exact_key(pattern));
    };
    if w[first..=last].iter().any(|x| !wild(x)) {
        return Err(inexpressible(
            pattern,
            "a literal word stands between wildcards",
        ));
    }
    let head = w[..first].join(".");
    let tail = w[last + 1..].join(".");
    let literals = first + (w.len() - 1 - last);
    let stars = w[first..=last].iter().filter(|x| **x == "*").count();
    let many = w[first..=last].contains(&"#");
    let mut g = Group::new();
    let key_conditions =
        match (first > 0, last + 1 < w.len()) {
            (true, true) => return Err(inexpressible(
                pattern,
                "literal words on both sides of the wildcards need a prefix and a suffix match \
                 of the same attribute together",
            )),
            (true, false) => Some((head.clone(), json!({ "prefix": format!("{head}.") }))),
            (false, true) => Some((tail.clone(), json!({ "suffix": format!(".{tail}") }))),
            (false, false) => None,
        };
    if let Some((literal, partial)) = key_conditions {
        // `a.#` matches `a` too; an empty literal is the empty key, which has no words.
        let with_exact = stars == 0 && many && !literal.is_empty();
        let list = if with_exact {
            json!([literal, partial])
        } else {
            json!([partial])
        };
        g.insert(ROUTING_KEY_ATTR.to_owned(), list);
    }
    let count = literals + stars;
    if !many {
        g.insert(ROUTING_WORDS_ATTR.to_owned(), words("=", count));
    } else if stars > 0 || g.is_empty() {
        // `#` alone still names a condition, so that the group can be told apart and removed by
        // unbind: every message published to an exchange carries the word count.
        g.insert(ROUTING_WORDS_ATTR.to_owned(), words(">=", count));
    }
    Ok(g)
}

fn headers_groups(mode: HeaderMatch, headers: &[(String, String)]) -> Result<Vec<Group>> {
    for (name, value) in headers {
        if !attribute_name_ok(name) {
            return Err(Error::unsupported(format!(
                "a headers binding on SQS matches message attributes, and header {name:?} \
                 cannot be one (1 to 256 of A-Z a-z 0-9 - _ ., no leading, trailing or double \
                 dot, not starting with AWS., Amazon. or mailroom.)"
            )));
        }
        if value.is_empty() || !text_safe(value) {
            return Err(Error::unsupported(format!(
                "a headers binding on SQS matches message attributes, and the value of header \
                 {name:?} cannot be one (empty, or characters SQS does not carry in text)"
            )));
        }
    }
    Ok(match mode {
        HeaderMatch::All => {
            let mut g = Group::new();
            for (name, value) in headers {
                match g.get_mut(name).and_then(Value::as_array_mut) {
                    // One attribute equal to two values at once: no message matches, and a
                    // policy has no AND within one name to say so.
                    Some(list) if !list.contains(&json!(value)) => {
                        return Err(Error::unsupported(format!(
                            "headers binding wants {name:?} to equal two values at once; no \
                             message matches it, and SNS cannot say it"
                        )))
                    }
                    Some(_) => {}
                    None => {
                        g.insert(name.clone(), json!([value]));
                    }
                }
            }
            vec![g]
        }
        HeaderMatch::Any => {
            let mut out: Vec<Group> = Vec::new();
            for (name, value) in headers {
                let g = one(name, json!([value]));
                if !out.contains(&g) {
                    out.push(g);
                }
            }
            out
        }
    })
}

/// The groups of a subscription's `FilterPolicy` attribute (none if it has no policy).
pub(crate) fn parse(policy: Option<&str>) -> Result<Vec<Group>> {
    let Some(text) = policy.filter(|t| !t.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    let value: Value = serde_json::from_str(text).map_err(|e| {
        Error::new(
            mailroom_core::ErrorKind::Broker,
            format!("the subscription's filter policy is not JSON: {e}"),
        )
    })?;
    let Value::Object(mut map) = value else {
        return Err(Error::new(
            mailroom_core::ErrorKind::Broker,
            "the subscription's filter policy is not a JSON object",
        ));
    };
    if map.len() == 1 {
        if let Some(Value::Array(alternatives)) = map.remove("$or") {
            return Ok(alternatives
                .into_iter()
                .filter_map(|a| match a {
                    Value::Object(g) => Some(g),
                    _ => None,
                })
                .collect());
        }
    }
    Ok(vec![map])
}

/// The `FilterPolicy` for `groups`, after checking AWS's limits on it.
pub(crate) fn render(groups: &[Group]) -> Result<String> {
    let mut names: Vec<&String> = groups.iter().flat_map(|g| g.keys()).collect();
    names.sort();
    names.dedup();
    if names.len() > MAX_POLICY_KEYS {
        return Err(Error::unsupported(format!(
            "the queue's bindings to this exchange would make a filter policy over {} attribute \
             names ({}); SNS allows {MAX_POLICY_KEYS}",
            names.len(),
            names
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let combinations: usize = groups
        .iter()
        .map(|g| {
            g.values()
                .map(|v| v.as_array().map_or(1, Vec::len))
                .product::<usize>()
        })
        .sum();
    if combinations > MAX_POLICY_COMBINATIONS {
        return Err(Error::unsupported(format!(
            "the queue's bindings to this exchange would make a filter policy of {combinations} \
             value combinations; SNS allows {MAX_POLICY_COMBINATIONS} (bind fewer keys, or use \
             more queues)"
        )));
    }
    let value = match groups {
        [g] => Value::Object(g.clone()),
        _ => json!({ "$or": groups }),
    };
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailroom_core::TopicPattern;

    /// Evaluate a group the way SNS does, over the two routing attributes a publish carries.
    fn group_matches(g: &Group, key: &str) -> bool {
        let count = word_count(key) as f64;
        g.iter().all(|(name, conditions)| {
            let list = conditions.as_array().expect("conditions are a list");
            list.iter().any(|c| match (name.as_str(), c) {
                (ROUTING_KEY_ATTR, _) if key.is_empty() => false,
                (ROUTING_KEY_ATTR, Value::String(s)) => key == s,
                (ROUTING_KEY_ATTR, Value::Object(o)) => {
                    if let Some(p) = o.get("prefix").and_then(Value::as_str) {
                        key.starts_with(p)
                    } else if let Some(s) = o.get("suffix").and_then(Value::as_str) {
                        key.ends_with(s)
                    } else {
                        panic!("unexpected operator {o:?}")
                    }
                }
                (ROUTING_WORDS_ATTR, Value::Object(o)) => {
                    let n = o["numeric"].as_array().expect("numeric pair");
                    let want = n[1].as_f64().expect("a number");
                    match n[0].as_str() {
                        Some("=") => count == want,
                        Some(">=") => count >= want,
                        op => panic!("unexpected numeric operator {op:?}"),
                    }
                }
                other => panic!("unexpected condition {other:?}"),
            })
        })
    }

    #[test]
    fn expressible_patterns_match_exactly_what_amqp_matches() {
        let keys = [
            "",
            "a",
            "b",
            "a.b",
            "a.c",
            "b.a",
            "a.b.c",
            "a.b.b.c",
            "a..b",
            ".",
            "a.",
            ".a",
            "order",
            "order.created",
            "order.created.eu",
            "invoice.eu",
            "eu",
            "x.y.eu",
        ];
        let patterns = [
            "#",
            "#.#",
            "*",
            "*.*",
            "a",
            "a.b",
            "",
            "a.*",
            "a.#",
            "a.b.#",
            "a.*.#",
            "a.#.*",
            "#.c",
            "*.c",
            "#.*.c",
            "*.*.c",
            "order.*",
            "order.#",
            "#.eu",
            "a..b",
            "a.",
            ".#",
            "*.#",
            "#.*",
            "order.created",
        ];
        for pattern in patterns {
            let g = pattern_group(pattern).unwrap_or_else(|e| panic!("{pattern:?}: {e}"));
            let amqp = TopicPattern::parse(pattern).unwrap();
            for key in keys {
                assert_eq!(
                    group_matches(&g, key),
                    amqp.matches(key),
                    "pattern {pattern:?} key {key:?} policy {g:?}"
                );
            }
        }
    }

    #[test]
    fn patterns_a_policy_cannot_say_are_unsupported_by_name() {
        for pattern in ["a.*.c", "a.#.c", "#.a.#", "*.a.*", "a.#.b.#"] {
            let err = pattern_group(pattern).unwrap_err();
            assert_eq!(err.kind(), mailroom_core::ErrorKind::Unsupported);
            assert!(err.message().contains(&format!("{pattern:?}")), "{err}");
        }
    }

    #[test]
    fn the_microservices_patterns_are_exact() {
        assert_eq!(
            Value::Object(pattern_group("order.*").unwrap()),
            json!({
                ROUTING_KEY_ATTR: [{"prefix": "order."}],
                ROUTING_WORDS_ATTR: [{"numeric": ["=", 2]}],
            })
        );
        assert_eq!(
            Value::Object(pattern_group("#").unwrap()),
            json!({ ROUTING_WORDS_ATTR: [{"numeric": [">=", 0]}] })
        );
        assert_eq!(
            Value::Object(pattern_group("order.created").unwrap()),
            json!({ ROUTING_KEY_ATTR: ["order.created"] })
        );
    }

    #[test]
    fn policies_round_trip_and_limits_are_checked() {
        let a = exact_key("a");
        let b = exact_key("b");
        assert_eq!(
            parse(Some(&render(std::slice::from_ref(&a)).unwrap())).unwrap(),
            std::slice::from_ref(&a)
        );
        let both = render(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(parse(Some(&both)).unwrap(), [a, b]);
        assert!(parse(None).unwrap().is_empty());
        let many: Vec<Group> = (0..151).map(|i| exact_key(&format!("k{i}"))).collect();
        assert!(render(&many).unwrap_err().message().contains("151"));
        let names: Vec<(String, String)> =
            (0..6).map(|i| (format!("h{i}"), "v".to_owned())).collect();
        let g = headers_groups(HeaderMatch::All, &names).unwrap();
        assert!(render(&g)
            .unwrap_err()
            .message()
            .contains("6 attribute names"));
    }

    #[test]
    fn headers_all_is_one_group_and_any_is_one_group_per_pair() {
        let h = vec![
            ("type".to_owned(), "order".to_owned()),
            ("region".to_owned(), "eu".to_owned()),
        ];
        assert_eq!(
            headers_groups(HeaderMatch::All, &h).unwrap(),
            [json!({"type": ["order"], "region": ["eu"]})
                .as_object()
                .unwrap()
                .clone()]
        );
        assert_eq!(headers_groups(HeaderMatch::Any, &h).unwrap().len(), 2);
        let bad = vec![("has space".to_owned(), "x".to_owned())];
        assert_eq!(
            headers_groups(HeaderMatch::All, &bad).unwrap_err().kind(),
            mailroom_core::ErrorKind::Unsupported
        );
    }
}
