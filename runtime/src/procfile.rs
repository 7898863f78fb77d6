//! Procfiles: `type: command` per line, as Heroku reads them.

use std::collections::BTreeMap;

/// Parse a Procfile; blank lines and `#` comments are skipped, later duplicates win.
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, command)) = line.split_once(':') else {
            return Err(format!("Procfile line {}: expected `type: command`", n + 1));
        };
        let name = name.trim();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "Procfile line {}: bad process type {name:?}",
                n + 1
            ));
        }
        out.insert(name.to_owned(), command.trim().to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_types() {
        let p =
            super::parse("web: python3 app.py --port $PORT\n# c\n\nworker:  sleep 10\n").unwrap();
        assert_eq!(p["web"], "python3 app.py --port $PORT");
        assert_eq!(p["worker"], "sleep 10");
        assert!(super::parse("nonsense").is_err());
    }
}
