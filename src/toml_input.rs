//! Reading TOML the owner wrote (the config, tool definitions, policies), with errors that
//! name the file, the key and the reason. A leaf: it knows no other tollgate module, so every
//! module that reads a file can use it without depending on `config`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// One thing wrong with a file tollgate reads at start: which file, which key, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// Dotted path of the key, e.g. `tool[2].url` or `upstream.timeout_ms`; empty for the
    /// file as a whole.
    pub key: String,
    pub reason: String,
}

impl Problem {
    pub fn new(file: &Path, key: impl Into<String>, reason: impl Into<String>) -> Self {
        Problem {
            file: file.to_owned(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.reason)
        }
    }
}

/// Everything wrong with the configuration, each problem on its own line.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError(pub Vec<Problem>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl From<Problem> for ConfigError {
    fn from(problem: Problem) -> Self {
        ConfigError(vec![problem])
    }
}

/// Reads `path` as TOML into `T`, refusing unknown keys (`T` uses `deny_unknown_fields`).
/// The error names the key by its dotted path.
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, Problem> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Problem::new(path, "", format!("cannot read the file: {e}")))?;
    parse_toml(path, &text)
}

/// Parses TOML text that came from `path` (used for messages only).
pub fn parse_toml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, Problem> {
    // Fast path (basic-toml allocates a third of what `toml` does); on error, parse again
    // with `toml` and serde_path_to_error to name the line or the key.
    if let Ok(value) = basic_toml::from_str(text) {
        return Ok(value);
    }
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|span| {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}")
            })
            .unwrap_or_default();
        Problem::new(path, at, format!("not valid TOML: {}", e.message()))
    })?;
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        Problem::new(path, key, e.into_inner().message().to_owned())
    })
}
