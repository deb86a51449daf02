//! File sink: appends each ticket command as one JSON line (the demo's `tickets.jsonl`).

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{SendFuture, SinkError, TicketCommand, TicketSink};

/// `type = "file"`: append each ticket command as a JSON line.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub name: String,
    pub path: PathBuf,
}

/// Appends ticket commands to a JSON-lines file.
pub struct FileSink {
    name: String,
    path: PathBuf,
    /// Command keys already in the file: a crash between appending a line and removing the
    /// command from the outbox must not write the line twice.
    written: HashSet<String>,
}

impl FileSink {
    /// Opens (creating if needed) the file and learns which commands it already holds.
    pub fn open(cfg: &FileConfig) -> std::io::Result<FileSink> {
        let path = &cfg.path;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut written = HashSet::new();
        if let Ok(f) = std::fs::File::open(path) {
            for line in std::io::BufReader::new(f).lines() {
                let line = line?;
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if let Some(k) = v.get("idempotency_key").and_then(|k| k.as_str()) {
                        written.insert(k.to_string());
                    }
                }
            }
        }
        Ok(FileSink { name: cfg.name.clone(), path: path.clone(), written })
    }

    async fn append(&mut self, cmd: &TicketCommand) -> Result<(), SinkError> {
        if self.written.contains(&cmd.idempotency_key) {
            return Ok(());
        }
        let mut line = serde_json::to_vec(cmd).map_err(|e| SinkError::Permanent(e.to_string()))?;
        line.push(b'\n');
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
            f.write_all(&line)?;
            f.sync_data()
        })
        .await
        .map_err(|e| SinkError::Retry(e.to_string()))?
        .map_err(|e| SinkError::Retry(format!("{}: {e}", self.path.display())))?;
        self.written.insert(cmd.idempotency_key.clone());
        Ok(())
    }
}

impl TicketSink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a mut self, cmd: &'a TicketCommand) -> SendFuture<'a> {
        Box::pin(self.append(cmd))
    }
}
