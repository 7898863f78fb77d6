//! Secret redaction: which config var names look secret (a configurable word list, matched
//! case-insensitively within the name: `DATABASE_PASSWORD`, `stripe_secret_key`), and the
//! helpers that blank their values in API answers of `socs` apps, in audit entries and events
//! (always), and the passwords of URLs (`scheme://user:PASS@host`).

use std::collections::BTreeMap;

use serde_json::Value;

/// What a redacted value reads as.
pub const REDACTED: &str = "[REDACTED]";

/// The words that make a name secret-looking when none are configured.
pub const DEFAULT_SECRET_WORDS: &[&str] = &[
    "PASSWORD",
    "SECRET",
    "TOKEN",
    "KEY",
    "CREDENTIAL",
    "PRIVATE",
];

/// A matcher over a word list (upper-cased once).
#[derive(Debug, Clone)]
pub struct Secrets {
    words: Vec<String>,
}

impl Default for Secrets {
    fn default() -> Self {
        Secrets::new(DEFAULT_SECRET_WORDS.iter().copied())
    }
}

impl Secrets {
    pub fn new<S: AsRef<str>>(words: impl IntoIterator<Item = S>) -> Secrets {
        Secrets {
            words: words
                .into_iter()
                .map(|w| w.as_ref().trim().to_ascii_uppercase())
                .filter(|w| !w.is_empty())
                .collect(),
        }
    }

    /// Whether a config var (or JSON field) name looks like it holds a secret.
    pub fn is_secret_name(&self, name: &str) -> bool {
        let upper = name.to_ascii_uppercase();
        self.words.iter().any(|w| upper.contains(w.as_str()))
    }

    /// Config vars with secret-looking values replaced.
    pub fn vars(&self, vars: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        vars.iter()
            .map(|(k, v)| {
                let v = if self.is_secret_name(k) {
                    REDACTED.to_owned()
                } else {
                    redact_url_passwords(v)
                };
                (k.clone(), v)
            })
            .collect()
    }

    /// A JSON document with every string under a secret-looking key replaced, and URL
    /// passwords anywhere blanked.
    pub fn json(&self, v: &Value) -> Value {
        match v {
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, v)| {
                        let v = match v {
                            Value::String(_) | Value::Number(_) if self.is_secret_name(k) => {
                                Value::String(REDACTED.into())
                            }
                            other => self.json(other),
                        };
                        (k.clone(), v)
                    })
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.json(x)).collect()),
            Value::String(s) => Value::String(redact_url_passwords(s)),
            other => other.clone(),
        }
    }
}

/// `scheme://user:PASS@host/…` → `scheme://user:[REDACTED]@host/…`, every occurrence.
pub fn redact_url_passwords(s: &str) -> String {
    if !s.contains("://") {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find(['/', ' ', '"', '?', '#']).unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority
            .rfind('@')
            .and_then(|at| authority[..at].find(':').map(|colon| (colon, at)))
        {
            Some((colon, at)) => {
                out.push_str(&authority[..=colon]);
                out.push_str(REDACTED);
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_match_words_anywhere_case_insensitively() {
        let s = Secrets::default();
        for n in [
            "DATABASE_PASSWORD",
            "stripe_secret_key",
            "GITHUB_TOKEN",
            "AWS_ACCESS_KEY_ID",
            "GCP_CREDENTIALS",
            "PRIVATE_PEM",
        ] {
            assert!(s.is_secret_name(n), "{n}");
        }
        for n in ["PORT", "LOG_LEVEL", "WEB_CONCURRENCY"] {
            assert!(!s.is_secret_name(n), "{n}");
        }
        let custom = Secrets::new(["pin"]);
        assert!(custom.is_secret_name("CARD_PIN"));
        assert!(!custom.is_secret_name("DATABASE_PASSWORD"));
    }

    #[test]
    fn json_and_urls_are_redacted() {
        let s = Secrets::default();
        let v = json!({"API_TOKEN": "abc", "PORT": "80", "nested": [{"db_password": 5}],
            "DATABASE_URL": "postgres://u:hunter2@db:5432/x"});
        let r = s.json(&v);
        assert_eq!(r["API_TOKEN"], REDACTED);
        assert_eq!(r["PORT"], "80");
        assert_eq!(r["nested"][0]["db_password"], REDACTED);
        assert_eq!(r["DATABASE_URL"], "postgres://u:[REDACTED]@db:5432/x");
        assert_eq!(
            redact_url_passwords("https://host/a:b@c"),
            "https://host/a:b@c"
        );
        assert_eq!(
            redact_url_passwords("a redis://:pw@h:1 and amqp://x:y@z"),
            "a redis://:[REDACTED]@h:1 and amqp://x:[REDACTED]@z"
        );
    }
}
