//! Building blocks of every component's settings: where a secret comes from, and what a
//! component's `validate` says is wrong with its part of the configuration.

use std::path::PathBuf;

use serde::Deserialize;

/// A value that does not make sense: the key path (`mqtt.keep_alive`, `ticket.sinks[1].url`)
/// and why. The configuration loader (`config`) adds the file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Invalid {
        Invalid { key: key.into(), reason: reason.into() }
    }
}

/// `Err` of [`Invalid::new`], for validation code that returns early.
pub fn bad<T>(key: impl Into<String>, reason: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid::new(key, reason))
}

/// Where a secret comes from. Secrets never sit in the config text itself, so the config can be
/// versioned and shared without leaking credentials.
#[derive(Debug, Clone, Deserialize, serde::Serialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Read the secret from this file (trailing newline trimmed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Read the secret from this environment variable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

/// Why a secret could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read secret file {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("environment variable {0} is not set")]
    Env(String),
    #[error("neither `file` nor `env` is set")]
    Missing,
    #[error("the secret is empty")]
    Empty,
}

impl SecretRef {
    /// Reads the secret now. The value is never logged.
    pub fn resolve(&self) -> Result<String, SecretError> {
        if let Some(path) = &self.file {
            let text =
                std::fs::read_to_string(path).map_err(|source| SecretError::File { path: path.clone(), source })?;
            return Ok(text.trim_end_matches(['\r', '\n']).to_string());
        }
        if let Some(var) = &self.env {
            return std::env::var(var).map_err(|_| SecretError::Env(var.clone()));
        }
        Err(SecretError::Missing)
    }
}
