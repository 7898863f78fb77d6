//! Reading a snapshot from text: TOML (hand-written) or JSON (machines). Pure: the caller reads
//! the bytes.

use crate::model::Snapshot;

/// Which text format a snapshot is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

impl Format {
    /// Guess from a file name: `.json` is JSON, anything else TOML.
    pub fn from_file_name(name: &str) -> Format {
        if name.to_ascii_lowercase().ends_with(".json") {
            Format::Json
        } else {
            Format::Toml
        }
    }
}

/// The text is not a snapshot: bad syntax, a wrong type, an unknown field, a wrong version.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

/// Parse a snapshot. Unknown fields and other versions are errors.
pub fn parse(text: &str, format: Format) -> Result<Snapshot, ParseError> {
    Ok(match format {
        Format::Toml => toml::from_str(text)?,
        Format::Json => serde_json::from_str(text)?,
    })
}

/// Write a snapshot as pretty JSON.
pub fn to_json(snapshot: &Snapshot) -> String {
    serde_json::to_string_pretty(snapshot).expect("a snapshot always serialises")
}

/// Write a snapshot as TOML.
pub fn to_toml(snapshot: &Snapshot) -> Result<String, toml::ser::Error> {
    toml::to_string(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_errors() {
        let err = parse("version = 1\ndomian = \"x.example\"\n", Format::Toml).unwrap_err();
        assert!(err.to_string().contains("domian"), "{err}");
        let err = parse(
            "version = 1\n[[apps]]\nname = \"a\"\nspace = \"s\"\nreplicas = 2\n",
            Format::Toml,
        )
        .unwrap_err();
        assert!(err.to_string().contains("replicas"), "{err}");
        let err = parse(
            r#"{"version":1,"filters":[{"type":"cors","name":"c","allow_origin":[],"allow_origins":[]}]}"#,
            Format::Json,
        )
        .unwrap_err();
        assert!(err.to_string().contains("allow_origins"), "{err}");
    }

    #[test]
    fn version_is_checked() {
        let err = parse("version = 2\n", Format::Toml).unwrap_err();
        assert!(
            err.to_string().contains("unsupported config version 2"),
            "{err}"
        );
        assert!(parse("domain = \"a.b\"\n", Format::Toml).is_err());
        assert!(parse("version = 1\n", Format::Toml).is_ok());
    }

    #[test]
    fn json_round_trip() {
        let s = parse(
            "version = 1\n[[spaces]]\nname = \"prod\"\ncompliance = [\"prod\", \"socs\"]\n",
            Format::Toml,
        )
        .unwrap();
        let back = parse(&to_json(&s), Format::Json).unwrap();
        assert_eq!(s, back);
        let back = parse(&to_toml(&s).unwrap(), Format::Toml).unwrap();
        assert_eq!(s, back);
    }
}
