//! Small URL helpers shared by backends: redaction and query parameters.

use crate::error::{Error, Result};

/// The URL with any password replaced by `***`, safe for errors and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://{user}@{host}{tail}")
            }
        }
        None => url.to_owned(),
    }
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

/// Percent-decode one URL component.
pub fn percent_decode(text: &str, url: &str) -> Result<String> {
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
            b'+' => {
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
