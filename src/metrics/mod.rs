//! Metrics: every event worth counting, in one place, exposed in Prometheus text format 0.0.4
//! or OpenMetrics ([`Format`]), with the standard `process_*` metrics and `fieldwatch_build_info`.
//!
//! Each stage logs and counts an event at the same spot, so `/metrics` and the logs never
//! disagree. Names follow Prometheus conventions (`_total` counters, base units).

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

mod exposition;
mod process;

pub use exposition::{text_from_openmetrics, Format};
pub use process::ProcessCollector;

/// A label value from the configuration (a sink's name, an asset model), escaped as the
/// exposition needs it: prometheus-client writes label values as they are.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Escaped(pub String);

impl EncodeLabelValue for Escaped {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Label for counters split by a short fixed reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// Label of anomalies: the fault kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultLabel {
    pub fault: String,
}

/// Label of opened incidents: the priority of their ticket.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PriorityLabel {
    pub priority: String,
}

/// Label of SLA breaches: the customer's tier.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabel {
    pub tier: String,
}

/// Label of technician verdicts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabel {
    pub verdict: String,
}

/// Label of lead times: predicted (to a forecast crossing) or actual (to the crossing).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// Labels of a false alarm: which detector and which kind of asset. Not the device: that would
/// be one series per device for good; the incidents API has each verdict with its device.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FalseAlarmLabel {
    pub detector: String,
    pub asset_model: Escaped,
}

/// Label for per-sink counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: Escaped,
}

impl SinkLabel {
    pub fn new(sink: &str) -> SinkLabel {
        SinkLabel { sink: Escaped(sink.to_string()) }
    }
}

/// Labels of the device models in use: their kind, and whether they may raise incidents.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    pub kind: String,
    pub trust: String,
}

/// Label of background model fits: how the fit ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

/// Label of `fieldwatch_devices`: where a device is in its life.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

/// The values of [`StateLabel`]: learning its normal operation, or judged by every detector.
pub const DEVICE_STATES: [&str; 2] = ["commissioning", "watching"];

/// Label of the build information.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabel {
    pub version: String,
}

/// The `trust` values of [`ModelLabel`].
pub const MODEL_TRUST: [&str; 2] = ["trusted", "untrusted"];

/// The asset model of a device the registry has no model for.
pub const UNKNOWN_ASSET_MODEL: &str = "unknown";

/// The values of every label whose set is fixed, given by the components that own them (the
/// core gathers them: `core::metric_labels`). Each of their series is created at zero.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels {
    /// `reason` of `fieldwatch_rejected_messages_total`.
    pub reject_reasons: Vec<&'static str>,
    /// `reason` of `fieldwatch_fields_ignored_total`.
    pub ignored_field_reasons: Vec<&'static str>,
    /// `fault` of `fieldwatch_anomalies_total`.
    pub faults: Vec<&'static str>,
    /// `priority` of `fieldwatch_incidents_opened_total`.
    pub priorities: Vec<&'static str>,
    /// `tier` of `fieldwatch_sla_breaches_total`.
    pub tiers: Vec<&'static str>,
    /// `reason` of `fieldwatch_tickets_suppressed_total`.
    pub suppression_reasons: Vec<&'static str>,
    /// `verdict` of `fieldwatch_verdicts_total`.
    pub verdicts: Vec<&'static str>,
    /// `kind` of `fieldwatch_lead_time_seconds`.
    pub lead_time_kinds: Vec<&'static str>,
    /// `kind` of `fieldwatch_models`.
    pub model_kinds: Vec<&'static str>,
    /// `result` of `fieldwatch_model_fits_total`.
    pub fit_results: Vec<&'static str>,
    /// `detector` of `fieldwatch_false_alarms_total`.
    pub detectors: Vec<&'static str>,
}

/// All of the daemon's counters and gauges.
pub struct Metrics {
    registry: Registry,
    /// The fixed label values it was created with.
    labels: Labels,
    pub messages: Counter,
    pub readings: Counter,
    pub readings_duplicate: Counter,
    /// How far behind real time the data is: now minus the newest event time of the last
    /// committed batch. It grows when the broker holds a backlog (backpressure keeps the queue
    /// there, not here) and reflects the devices' clocks.
    pub ingest_lag_seconds: Gauge<f64, AtomicU64>,
    /// Devices recognised as running at a new operating point (references re-learnt).
    pub operating_point_changes: Counter,
    pub rejected: Family<ReasonLabel, Counter>,
    /// Fields of accepted messages meant as readings but not numbers.
    pub fields_ignored: Family<ReasonLabel, Counter>,
    pub anomalies: Family<FaultLabel, Counter>,
    pub incidents_opened: Family<PriorityLabel, Counter>,
    pub incidents_resolved: Counter,
    pub incidents_updated: Counter,
    pub incidents_escalated: Family<TierLabel, Counter>,
    pub tickets_suppressed: Family<ReasonLabel, Counter>,
    /// Changes of a whole site's operating context (devices deviating together), noticed once each.
    pub site_wide_changes: Counter,
    pub verdicts: Family<VerdictLabel, Counter>,
    pub false_alarms: Family<FalseAlarmLabel, Counter>,
    pub time_to_detect_seconds: Histogram,
    pub time_to_acknowledge_seconds: Histogram,
    pub lead_time_seconds: Family<KindLabel, Histogram, fn() -> Histogram>,
    pub tickets_delivered: Family<SinkLabel, Counter>,
    pub ticket_attempts_failed: Family<SinkLabel, Counter>,
    pub tickets_dead: Family<SinkLabel, Counter>,
    pub outbox_depth: Family<SinkLabel, Gauge>,
    /// Device models the core scores with, by kind and trust.
    pub models: Family<ModelLabel, Gauge>,
    /// Background fits of a device's models, by result.
    pub model_fits: Family<ResultLabel, Counter>,
    pub mqtt_connected: Gauge,
    /// Devices and series the core tracks now (bounded by decode.max_devices / max_series).
    pub devices_tracked: Gauge,
    /// Devices by state (`commissioning`, `watching`).
    pub devices: Family<StateLabel, Gauge>,
    /// Devices dropped from a full table (one message, never came back) to admit a new one.
    pub devices_evicted: Counter,
    pub series_tracked: Gauge,
    pub mqtt_connection_errors: Counter,
    /// Reconnects where the broker had lost our persistent session.
    pub mqtt_sessions_lost: Counter,
    /// Sparkplug rebirth requests published (`decode.sparkplug.request_rebirth`).
    pub sparkplug_rebirths_requested: Counter,
    /// Sparkplug edge nodes found out of step, by why (a seq gap, data before birth, ...).
    pub sparkplug_out_of_step: Family<ReasonLabel, Counter>,
    /// Store writes or flushes that failed (a full disk, an I/O error).
    pub store_errors: Counter,
    /// Bytes the store's files take on disk (see `Store::size_on_disk`).
    pub store_disk_bytes: Gauge,
    pub retention_removed: Counter,
    pub batch_commit_seconds: Histogram,
    /// 1, labelled with the version: which build runs where.
    pub build_info: Family<BuildLabel, Gauge>,
}

impl Metrics {
    /// Every family registered, and every series of the fixed `labels` created at zero.
    pub fn new(labels: &Labels) -> Metrics {
        let m = Metrics {
            labels: labels.clone(),
            messages: Counter::default(),
            readings: Counter::default(),
            readings_duplicate: Counter::default(),
            ingest_lag_seconds: Gauge::default(),
            operating_point_changes: Counter::default(),
            rejected: Family::default(),
            fields_ignored: Family::default(),
            anomalies: Family::default(),
            incidents_opened: Family::default(),
            incidents_resolved: Counter::default(),
            incidents_updated: Counter::default(),
            incidents_escalated: Family::default(),
            tickets_suppressed: Family::default(),
            site_wide_changes: Counter::default(),
            verdicts: Family::default(),
            false_alarms: Family::default(),
            time_to_detect_seconds: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            time_to_acknowledge_seconds: Histogram::new(exponential_buckets(60.0, 2.0, 14)),
            lead_time_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(60.0, 2.0, 14))),
            tickets_delivered: Family::default(),
            ticket_attempts_failed: Family::default(),
            tickets_dead: Family::default(),
            outbox_depth: Family::default(),
            models: Family::default(),
            model_fits: Family::default(),
            mqtt_connected: Gauge::default(),
            devices_tracked: Gauge::default(),
            devices: Family::default(),
            devices_evicted: Counter::default(),
            series_tracked: Gauge::default(),
            mqtt_connection_errors: Counter::default(),
            mqtt_sessions_lost: Counter::default(),
            sparkplug_rebirths_requested: Counter::default(),
            sparkplug_out_of_step: Family::default(),
            store_errors: Counter::default(),
            store_disk_bytes: Gauge::default(),
            retention_removed: Counter::default(),
            batch_commit_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            build_info: Family::default(),
            registry: Registry::default(),
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector::new()));
        let r = registry.sub_registry_with_prefix("fieldwatch");
        r.register("build_info", "1, labelled with the version of the running build", m.build_info.clone());
        r.register("messages", "MQTT messages received", m.messages.clone());
        r.register("readings", "Readings stored (new, not redelivered)", m.readings.clone());
        r.register("readings_duplicate", "Redelivered readings that were already stored", m.readings_duplicate.clone());
        r.register(
            "ingest_lag_seconds",
            "How far behind real time the data is: now minus the newest event time of the last committed batch",
            m.ingest_lag_seconds.clone(),
        );
        r.register(
            "operating_point_changes",
            "Devices recognised as running at a new operating point, whose references were re-learnt",
            m.operating_point_changes.clone(),
        );
        r.register("rejected_messages", "Messages rejected by decode, by reason", m.rejected.clone());
        r.register(
            "fields_ignored",
            "Fields of accepted messages meant as readings but not numbers (numeric_text, not_a_number); the other readings were taken",
            m.fields_ignored.clone(),
        );
        r.register("anomalies", "Anomalous readings, by fault kind", m.anomalies.clone());
        r.register(
            "incidents_opened",
            "Incidents opened, by ticket priority (counted once durable in the store)",
            m.incidents_opened.clone(),
        );
        r.register("incidents_resolved", "Incidents resolved", m.incidents_resolved.clone());
        r.register(
            "incidents_updated",
            "Incident updates: recurrence, flapping, escalation",
            m.incidents_updated.clone(),
        );
        r.register(
            "sla_breaches",
            "Incidents escalated because nobody acknowledged them by respond-by, by customer tier",
            m.incidents_escalated.clone(),
        );
        r.register(
            "tickets_suppressed",
            "Tickets not opened, by reason: maintenance, silence, observe, shadow, needs_review, site_wide; dedup and flapping (a recurrence updated the open ticket instead)",
            m.tickets_suppressed.clone(),
        );
        r.register(
            "site_wide_changes",
            "Changes of a whole site's operating context: devices at a site that began to deviate together (their incidents open no tickets; one notice each)",
            m.site_wide_changes.clone(),
        );
        r.register("verdicts", "Technician verdicts on incidents, by verdict", m.verdicts.clone());
        r.register(
            "false_alarms",
            "Incidents a technician marked as false alarms, by detector and asset model",
            m.false_alarms.clone(),
        );
        r.register(
            "time_to_detect_seconds",
            "From the first anomalous reading to the incident opening (event time)",
            m.time_to_detect_seconds.clone(),
        );
        r.register(
            "time_to_acknowledge_seconds",
            "From the incident opening to a technician's first verdict",
            m.time_to_acknowledge_seconds.clone(),
        );
        r.register(
            "lead_time_seconds",
            "From a ticket opening to the failure it announced: predicted (trend to limit) or actual (limit crossed)",
            m.lead_time_seconds.clone(),
        );
        r.register("tickets_delivered", "Ticket commands a sink confirmed", m.tickets_delivered.clone());
        r.register(
            "ticket_attempts_failed",
            "Ticket delivery attempts that failed and will be retried",
            m.ticket_attempts_failed.clone(),
        );
        r.register("tickets_dead_lettered", "Ticket commands a sink refused for good", m.tickets_dead.clone());
        r.register("outbox_depth", "Ticket commands waiting for delivery, by sink", m.outbox_depth.clone());
        r.register(
            "models",
            "Device models in use, by kind and trust (untrusted: scored, but raising no incident)",
            m.models.clone(),
        );
        r.register(
            "model_fits",
            "Background fits of a device's models, by result: fitted, too_little_history, failed",
            m.model_fits.clone(),
        );
        r.register("mqtt_connected", "1 while connected to the broker", m.mqtt_connected.clone());
        r.register(
            "devices_tracked",
            "Devices the daemon keeps state for (decode.max_devices)",
            m.devices_tracked.clone(),
        );
        r.register(
            "devices",
            "Devices by state: commissioning (learning their normal operation: only limits, stuck sensors and silence raise incidents) or watching",
            m.devices.clone(),
        );
        r.register(
            "devices_evicted",
            "Devices dropped from a full table (decode.max_devices) to admit a new one: each had sent one message and never came back",
            m.devices_evicted.clone(),
        );
        r.register("series_tracked", "Series the daemon keeps state for (decode.max_series)", m.series_tracked.clone());
        r.register("mqtt_connection_errors", "Broker connection errors", m.mqtt_connection_errors.clone());
        r.register(
            "mqtt_sessions_lost",
            "Reconnects where the broker had lost our persistent session (what it queued meanwhile is gone)",
            m.mqtt_sessions_lost.clone(),
        );
        r.register(
            "sparkplug_rebirths_requested",
            "Sparkplug edge nodes asked to rebirth (a sequence gap, data before birth, an alias never born)",
            m.sparkplug_rebirths_requested.clone(),
        );
        r.register(
            "sparkplug_out_of_step",
            "Sparkplug messages that found their edge node out of step, by reason (seq_gap, not_born, unknown_alias, type_changed)",
            m.sparkplug_out_of_step.clone(),
        );
        r.register(
            "store_errors",
            "Store writes or flushes that failed (full disk, I/O error)",
            m.store_errors.clone(),
        );
        r.register(
            "store_disk_bytes",
            "Bytes the store's files take on disk: live data and the space sled has yet to reuse (updated every second)",
            m.store_disk_bytes.clone(),
        );
        r.register("retention_removed_readings", "Readings deleted by retention", m.retention_removed.clone());
        r.register(
            "batch_commit_seconds",
            "Time from the start of a batch until it is stored, scored and flushed",
            m.batch_commit_seconds.clone(),
        );
        m.start_at_zero();
        Metrics { registry, ..m }
    }

    /// Creates every series whose label values are known in advance, at zero: a family that
    /// appears only with its first event hides it from `rate()` and `increase()`, and from an
    /// alert on it. Sinks and asset models come from the configuration
    /// ([`Metrics::start_sinks_at_zero`], [`Metrics::start_false_alarms_at_zero`]).
    fn start_at_zero(&self) {
        let label = |s: &str| s.to_string();
        self.build_info.get_or_create(&BuildLabel { version: env!("CARGO_PKG_VERSION").into() }).set(1);
        let labels = &self.labels;
        for reason in &labels.reject_reasons {
            self.rejected.get_or_create_owned(&ReasonLabel { reason: label(reason) });
        }
        for reason in &labels.ignored_field_reasons {
            self.fields_ignored.get_or_create_owned(&ReasonLabel { reason: label(reason) });
        }
        for fault in &labels.faults {
            self.anomalies.get_or_create_owned(&FaultLabel { fault: label(fault) });
        }
        for p in &labels.priorities {
            self.incidents_opened.get_or_create_owned(&PriorityLabel { priority: label(p) });
        }
        for tier in &labels.tiers {
            self.incidents_escalated.get_or_create_owned(&TierLabel { tier: label(tier) });
        }
        for reason in &labels.suppression_reasons {
            self.tickets_suppressed.get_or_create_owned(&ReasonLabel { reason: label(reason) });
        }
        for v in &labels.verdicts {
            self.verdicts.get_or_create_owned(&VerdictLabel { verdict: label(v) });
        }
        for kind in &labels.lead_time_kinds {
            self.lead_time_seconds.get_or_create_owned(&KindLabel { kind: label(kind) });
        }
        for kind in &labels.model_kinds {
            for trust in MODEL_TRUST {
                self.models.get_or_create_owned(&ModelLabel { kind: label(kind), trust: label(trust) });
            }
        }
        for result in &labels.fit_results {
            self.model_fits.get_or_create_owned(&ResultLabel { result: label(result) });
        }
        for state in DEVICE_STATES {
            self.devices.get_or_create_owned(&StateLabel { state: label(state) });
        }
        self.start_false_alarms_at_zero(std::iter::empty());
    }

    /// Creates the per-sink series of the configured sinks at zero.
    pub fn start_sinks_at_zero<'a>(&self, sinks: impl IntoIterator<Item = &'a str>) {
        for sink in sinks {
            let label = SinkLabel::new(sink);
            self.tickets_delivered.get_or_create_owned(&label);
            self.ticket_attempts_failed.get_or_create_owned(&label);
            self.tickets_dead.get_or_create_owned(&label);
            self.outbox_depth.get_or_create_owned(&label);
        }
    }

    /// Creates the false-alarm series of every detector for the registry's asset models (and
    /// devices without one) at zero.
    pub fn start_false_alarms_at_zero<'a>(&self, asset_models: impl IntoIterator<Item = &'a str>) {
        let models: Vec<&str> = asset_models.into_iter().chain([UNKNOWN_ASSET_MODEL]).collect();
        for detector in &self.labels.detectors {
            for model in &models {
                self.false_alarms.get_or_create_owned(&FalseAlarmLabel {
                    detector: detector.to_string(),
                    asset_model: Escaped(model.to_string()),
                });
            }
        }
    }

    /// Counts a rejected message under its reason label.
    pub fn count_rejected(&self, reason: &str) {
        self.rejected.get_or_create(&ReasonLabel { reason: reason.to_string() }).inc();
    }

    /// Rejected messages so far, all reasons.
    pub fn rejected_total(&self) -> u64 {
        // Family has no sum; encode-free way: the labels we use are a fixed small set.
        self.labels
            .reject_reasons
            .iter()
            .filter_map(|r| self.rejected.get(&ReasonLabel { reason: r.to_string() }).map(|c| c.get()))
            .sum()
    }

    /// Counts an incident opened with a ticket of `priority` (once it is durable).
    pub fn count_opened(&self, priority: &str, n: u64) {
        self.incidents_opened.get_or_create(&PriorityLabel { priority: priority.into() }).inc_by(n);
    }

    /// Incidents opened so far, all priorities.
    pub fn incidents_opened_total(&self) -> u64 {
        self.labels
            .priorities
            .iter()
            .filter_map(|p| self.incidents_opened.get(&PriorityLabel { priority: p.to_string() }).map(|c| c.get()))
            .sum()
    }

    /// Suppressed tickets for one reason.
    pub fn suppressed(&self, reason: &str) -> u64 {
        self.tickets_suppressed.get(&ReasonLabel { reason: reason.into() }).map(|c| c.get()).unwrap_or(0)
    }

    /// Per-sink counter value.
    pub fn delivered(&self, sink: &str) -> u64 {
        self.tickets_delivered.get(&SinkLabel::new(sink)).map(|c| c.get()).unwrap_or(0)
    }

    /// The exposition in `format`.
    pub fn render(&self, format: Format) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        match format {
            Format::OpenMetrics => out,
            Format::Text => text_from_openmetrics(&out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon's metrics, with the label values its components give.
    fn metrics() -> Metrics {
        Metrics::new(&crate::core::metric_labels())
    }

    #[test]
    fn labelled_series_exist_at_zero_before_any_event() {
        let m = metrics();
        m.start_sinks_at_zero(["api"]);
        m.start_false_alarms_at_zero(["Bitzer 4FES-5Y"]);
        let text = m.render(Format::Text);
        for line in [
            "fieldwatch_rejected_messages_total{reason=\"not_json\"} 0",
            "fieldwatch_fields_ignored_total{reason=\"numeric_text\"} 0",
            "fieldwatch_anomalies_total{fault=\"multivariate\"} 0",
            "fieldwatch_incidents_opened_total{priority=\"P1\"} 0",
            "fieldwatch_sla_breaches_total{tier=\"tier3\"} 0",
            "fieldwatch_tickets_suppressed_total{reason=\"flapping\"} 0",
            "fieldwatch_verdicts_total{verdict=\"false_alarm\"} 0",
            "fieldwatch_false_alarms_total{detector=\"pca\",asset_model=\"Bitzer 4FES-5Y\"} 0",
            "fieldwatch_false_alarms_total{detector=\"baseline\",asset_model=\"unknown\"} 0",
            "fieldwatch_lead_time_seconds_count{kind=\"actual\"} 0",
            "fieldwatch_tickets_delivered_total{sink=\"api\"} 0",
            "fieldwatch_ticket_attempts_failed_total{sink=\"api\"} 0",
            "fieldwatch_tickets_dead_lettered_total{sink=\"api\"} 0",
            "fieldwatch_outbox_depth{sink=\"api\"} 0",
            "fieldwatch_models{kind=\"gmm\",trust=\"untrusted\"} 0",
            "fieldwatch_model_fits_total{result=\"too_little_history\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
        let build = format!("fieldwatch_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        assert!(text.lines().any(|l| l == build), "{text}");
    }

    #[test]
    fn every_counter_is_named_with_total_in_text_format() {
        let text = metrics().render(Format::Text);
        let counters: Vec<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
        assert!(counters.len() > 15, "{counters:?}");
        for name in counters {
            assert!(name.ends_with("_total"), "{name}");
            assert!(text.contains(&format!("# HELP {name} ")), "{name} has no help");
        }
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
        assert!(metrics().render(Format::OpenMetrics).ends_with("# EOF\n"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_metrics_are_exported_without_the_prefix() {
        let text = metrics().render(Format::Text);
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(&format!("\n{name} ")), "{name} missing from\n{text}");
        }
    }

    #[test]
    fn a_configured_label_value_is_escaped() {
        let m = metrics();
        m.start_sinks_at_zero(["a \"quoted\" \\ name"]);
        let text = m.render(Format::Text);
        assert!(text.contains(r#"fieldwatch_outbox_depth{sink="a \"quoted\" \\ name"} 0"#), "{text}");
    }
}
