//! `fieldwatch train` and `fieldwatch models`. sled allows one process per database: with the
//! daemon stopped these open the store directly; while it runs, `models` asks its admin API and
//! `train` says how to ask the daemon instead.

use std::fmt::Write as _;

use crate::admin::ModelSummary;
use crate::client::{AdminClient, ClientError};
use crate::config::Config;
use crate::reading::format_ts;
use crate::store::{Store, StoreError};

use crate::model::trainer::{self, TrainError};
use crate::model::DeviceModel;

/// Why a model command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("the daemon holds the database in {0}; stop it or use POST /api/models/train on its admin address")]
    DatabaseBusy(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Train(#[from] TrainError),
    #[error("{0}")]
    Client(#[from] ClientError),
}

fn open(config: &Config) -> Result<Store, CommandError> {
    let dir = &config.daemon.data_dir;
    match Store::open(dir, config.store.cache_mb, config.store.rejected_max) {
        Ok(s) => Ok(s),
        Err(StoreError::Sled(e)) if crate::store::lock_held(&e) => {
            Err(CommandError::DatabaseBusy(dir.display().to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Fits the configured kinds now for one device (or every device), stores them and returns
/// what was fitted. A device without enough history is reported, not fatal, when fitting all.
pub fn train(config: &Config, device: Option<&str>) -> Result<Vec<ModelSummary>, CommandError> {
    let store = open(config)?;
    let devices: Vec<String> = match device {
        Some(d) => vec![d.to_string()],
        None => trainer::devices(&store)?.into_keys().collect(),
    };
    let mut out = Vec::new();
    for d in &devices {
        match trainer::fit_device(&store, d, &config.detect.models, crate::reading::now_ms()) {
            Ok(models) => out.extend(models.iter().map(ModelSummary::of)),
            Err(e) if device.is_none() => eprintln!("{d}: {e}"),
            Err(e) => return Err(e.into()),
        }
    }
    store.flush_blocking()?;
    Ok(out)
}

/// The fitted models: from the store when the daemon is stopped, else from its admin API.
pub async fn list(config: &Config) -> Result<Vec<ModelSummary>, CommandError> {
    match open(config) {
        Ok(store) => Ok(store.models::<DeviceModel>()?.iter().map(ModelSummary::of).collect()),
        Err(CommandError::DatabaseBusy(_)) if !config.admin.listen.is_empty() => {
            Ok(AdminClient::new(&config.admin.listen)?.models().await?)
        }
        Err(e) => Err(e),
    }
}

/// The devices and where each is in its life: from the store when the daemon is stopped, else
/// from its admin API.
pub async fn devices(config: &Config) -> Result<Vec<crate::admin::DeviceSummary>, CommandError> {
    let commissions = config.detect.context.enabled;
    match open(config) {
        Ok(store) => Ok(crate::admin::device_summaries(&store, commissions)?),
        Err(CommandError::DatabaseBusy(_)) if !config.admin.listen.is_empty() => {
            Ok(AdminClient::new(&config.admin.listen)?.devices().await?)
        }
        Err(e) => Err(e),
    }
}

/// One line per device: its state and since when.
pub fn render_devices(list: &[crate::admin::DeviceSummary]) -> String {
    let mut s = String::new();
    if list.is_empty() {
        s.push_str("no devices\n");
    }
    for d in list {
        let state = match (d.state, d.commissioned_at, d.commissioning_since) {
            (crate::detect::ContextPhase::Watching, Some(at), _) => {
                format!("watching (commissioned {})", format_ts(at))
            }
            (crate::detect::ContextPhase::Watching, None, _) => "watching".to_string(),
            (_, _, Some(since)) => format!("commissioning since {}", format_ts(since)),
            _ => "commissioning".to_string(),
        };
        let _ = writeln!(
            s,
            "{:<24} {state:<48} first heard {}  {}",
            d.device,
            format_ts(d.first_heard),
            d.metrics.join(", ")
        );
    }
    s
}

/// One line per model: what, on what, how well.
pub fn render(list: &[ModelSummary]) -> String {
    let mut s = String::new();
    if list.is_empty() {
        s.push_str("no fitted models\n");
    }
    for m in list {
        let _ = writeln!(
            s,
            "{:<12} {:<4} fitted {}  {} vectors {} .. {}  held-out alarm rate {:.4}  score q50 {:.3} q99.5 {:.3} max {:.3}  metrics: {}",
            m.device,
            m.kind.as_str(),
            format_ts(m.fitted_at),
            m.samples,
            format_ts(m.window_from),
            format_ts(m.window_to),
            m.validation.held_out_alarm_rate,
            m.validation.q50,
            m.validation.q995,
            m.validation.max,
            m.metrics.join(", ")
        );
        if let Some(why) = &m.untrusted {
            let _ = writeln!(s, "{:<12} NOT USED FOR INCIDENTS: {why}", "");
        }
    }
    s
}
