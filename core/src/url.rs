//! Small URL helpers shared by backends: the user info, redaction and query parameters.
//!
//! A broker URL is `scheme://[user[:password]@]host[:port][/path][?name=value&...]`. As in RFC
//! 3986, the user info ends at the *last* `@` of the authority, so an unencoded `@` in a password
//! is kept, and a `+` in it is a `+` (only query values read `+` as a space). A `/`, `?` or `#`
//! ends the authority, so one of them inside a password cannot be told from the start of a path
//! or query: such a URL (an `@` after a `/`, `?` or `#` that is not inside a parameter value)
//! is a `Config` error asking for the percent-encoded form (`%2F`, `%3F`, `%23`; `%40` for an `@`
//! in a path), and neither the error nor [`redact`] ever shows the text before that `@`.

use crate::error::{Error, Result};

/// Where the user info of the part of a URL after `scheme://` ends: the index of its `@`, and
/// whether the text before it holds an unencoded `/`, `?` or `#` (the URL is then refused).
fn user_info_end(rest: &str) -> Option<(usize, bool)> {
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if let Some(at) = rest[..authority_end].rfind('@') {
        return Some((at, false));
    }
    // No `@` in the authority proper. One further on is either data (an `@` in a parameter
    // value such as `sasl.username=a@b`) or the end of a user info that held a `/`, `?` or `#`.
    // Text before the first `/`/`?` that is not a host list (`user:pa` of `user:pa/ss@host`)
    // settles it; otherwise an `@` before the query's first `=` cannot be a parameter value.
    let search_end = if is_host_list(&rest[..authority_end]) {
        match rest.find('?') {
            Some(q) => rest[q..].find('=').map_or(rest.len(), |eq| q + eq),
            None => rest.len(),
        }
    } else {
        rest.len()
    };
    rest[..search_end].rfind('@').map(|at| (at, true))
}

/// Whether `text` reads as `host[:port][,host[:port]...]` (an empty text too).
fn is_host_list(text: &str) -> bool {
    text.split(',').all(|host| {
        let port = match host.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((_, "")) => return true,
                Some((_, after)) => after.strip_prefix(':'),
                None => return false,
            },
            None => host.split_once(':').map(|(_, port)| port),
        };
        port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Split the part of a URL after `scheme://` into its user info (if any) and what follows the
/// `@` (host, port, path, query). `url` is the whole URL, for the error: a user info holding an
/// unencoded `/`, `?` or `#` is a `Config` error that names the fix but not the text.
pub fn split_user_info<'a>(url: &str, rest: &'a str) -> Result<(Option<&'a str>, &'a str)> {
    match user_info_end(rest) {
        None => Ok((None, rest)),
        Some((at, false)) => Ok((Some(&rest[..at]), &rest[at + 1..])),
        Some((_, true)) => Err(Error::config(format!(
            "{} has an '@' after a '/', '?' or '#': a user name or password holding '/', '?' \
             or '#' must be percent-encoded (%2F, %3F, %23), and an '@' in a path as %40",
            redact(url)
        ))),
    }
}

/// Whether a URL query parameter (or a client property) of this name holds a secret, so that
/// its value is never shown.
pub fn is_secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "jaas",
        "token",
        "ssl.key.pem",
        "credential",
    ]
    .iter()
    .any(|s| name.contains(s))
}

/// The URL with its password, and the values of query parameters that hold secrets (see
/// [`is_secret_parameter`]), replaced by `***`: safe for errors, logs and output.
///
/// A user info that holds an unencoded `/`, `?` or `#` is hidden whole.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (shown_user, after) = match user_info_end(rest) {
        None => (String::new(), rest),
        Some((at, true)) => ("***@".to_owned(), &rest[at + 1..]),
        Some((at, false)) => match rest[..at].split_once(':') {
            Some((user, _)) => (format!("{user}:***@"), &rest[at + 1..]),
            None => (format!("{}@", &rest[..at]), &rest[at + 1..]),
        },
    };
    let after = match after.split_once('?') {
        Some((before, query)) => {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if is_secret_parameter(name) => format!("{name}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{before}?{}", pairs.join("&"))
        }
        None => after.to_owned(),
    };
    format!("{scheme}://{shown_user}{after}")
}

/// `key=value` pairs of a URL's query, percent-decoded; a malformed pair is a `Config` error.
pub fn query_pairs(url: &str) -> Result<Vec<(String, String)>> {
    let Some((_, query)) = url.split_once('?') else {
        return Ok(Vec::new());
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                Error::config(format!(
                    "malformed query parameter {pair:?} in {}: expected key=value",
                    redact(url)
                ))
            })?;
            Ok((percent_decode(k, url)?, percent_decode(v, url)?))
        })
        .collect()
}

/// Percent-decode one URL component of a path or query (a `+` is a space, as in forms).
pub fn percent_decode(text: &str, url: &str) -> Result<String> {
    decode(text, url, true)
}

/// Percent-decode a user name or password: a `+` stays a `+` (RFC 3986; AWS secret keys hold
/// them).
pub fn percent_decode_user_info(text: &str, url: &str) -> Result<String> {
    decode(text, url, false)
}

fn decode(text: &str, url: &str, plus_is_space: bool) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        Error::config(format!("malformed percent-escape in {}", redact(url)))
                    })?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| Error::config(format!("URL {} is not valid UTF-8", redact(url))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact("amqp://guest:s3cret@host:5672/vh?x=1"),
            "amqp://guest:***@host:5672/vh?x=1"
        );
        assert_eq!(redact("amqp://host:5672"), "amqp://host:5672");
        assert_eq!(redact("amqp://user@host"), "amqp://user@host");
        assert!(!redact("sqs://AKIA:p%40ss@h").contains("p%40ss"));
    }

    #[test]
    fn the_user_info_ends_at_the_last_at_of_the_authority() {
        let split = |url: &'static str| {
            let rest = url.split_once("://").unwrap().1;
            split_user_info(url, rest)
        };
        assert_eq!(
            split("amqp://u:p@ss@h:1/v").unwrap(),
            (Some("u:p@ss"), "h:1/v")
        );
        assert_eq!(split("amqp://h:1/v").unwrap(), (None, "h:1/v"));
        // An `@` inside a parameter value is data, not the end of a user info.
        assert_eq!(
            split("kafka://h:9092?sasl.username=a@b.example").unwrap(),
            (None, "h:9092?sasl.username=a@b.example")
        );
        assert_eq!(split("kafka://a:1,b:2").unwrap(), (None, "a:1,b:2"));
        assert_eq!(split("amqp://[::1]:5672").unwrap(), (None, "[::1]:5672"));
    }

    #[test]
    fn a_password_with_an_unencoded_slash_or_question_mark_is_refused_unshown() {
        for (url, secret) in [
            ("amqp://u:pa/ss@h:5672/vh", "pa/ss"),
            ("amqp://u:pa?ss@h:5672", "pa?ss"),
            ("amqp://u:pa#ss@h:5672", "pa#ss"),
            ("amqp://u:12/34@h:5672", "12/34"),
            ("amqp://u:12?34@h:5672", "12?34"),
            (
                "sqs://AKID:wJalr/K7MDENG+bPxRfiCY=@127.0.0.1:4566?region=us-east-1",
                "K7MDENG",
            ),
            ("kafka://u:a/b@h:9092?sasl.username=x@y", "a/b"),
        ] {
            let rest = url.split_once("://").unwrap().1;
            let e = split_user_info(url, rest).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Config, "{url}");
            assert!(e.message().contains("%2F"), "{e}");
            let shown = redact(url);
            let half = &secret[secret.len() / 2..];
            for text in [e.to_string(), shown.clone()] {
                assert!(
                    !text.contains(secret) && !text.contains(half),
                    "{url}: {text}"
                );
            }
            assert!(shown.contains("***@"), "{shown}");
        }
    }

    #[test]
    fn redaction_hides_secret_parameters_and_keeps_the_rest() {
        assert_eq!(
            redact(
                "kafka://h:9092?sasl.password=hunter2&linger.ms=5&sasl.oauthbearer.client.secret=x"
            ),
            "kafka://h:9092?sasl.password=***&linger.ms=5&sasl.oauthbearer.client.secret=***"
        );
        assert_eq!(
            redact("kafka://h:9092?sasl.username=a@b"),
            "kafka://h:9092?sasl.username=a@b"
        );
        assert_eq!(redact("sqs://?region=x"), "sqs://?region=x");
        assert_eq!(redact("memory://"), "memory://");
    }

    #[test]
    fn a_plus_in_user_info_is_a_plus() {
        assert_eq!(percent_decode_user_info("a+b%2Fc", "x").unwrap(), "a+b/c");
        assert_eq!(percent_decode("a+b", "x").unwrap(), "a b");
    }

    #[test]
    fn query_pairs_decode_and_reject_malformed() {
        assert_eq!(
            query_pairs("sqs://h:1?region=eu-west-1&x=a%20b").unwrap(),
            vec![
                ("region".into(), "eu-west-1".into()),
                ("x".into(), "a b".into())
            ]
        );
        assert!(query_pairs("sqs://h?region").is_err());
        assert!(query_pairs("sqs://h?a=%zz").is_err());
    }
}
