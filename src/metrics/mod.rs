//! Metrics: every event worth counting, in one place, exposed in Prometheus text format 0.0.4
//! or OpenMetrics ([`Format`]), with the standard `process_*` metrics and `fieldwatch_build_info`.
//!
//! Each stage logs and counts an event at the same spot, so `/metrics` and the logs never
//! disagree. Names follow Prometheus conventions (`_total` counters, base units).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

mod exposition;
mod process;

pub use exposition::{text_from_openmetrics, Format};
pub use process::ProcessCollector;

/// Label for counters split by a short fixed reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// Labels of a false alarm: which detector and which kind of asset.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FalseAlarmLabel {
    pub device: String,
    pub detector: String,
    pub asset_model: String,
}

/// Label for per-sink counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: String,
}

/// Label of the build information.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabel {
    pub version: String,
}

/// All of the daemon's counters and gauges.
pub struct Metrics {
    registry: Registry,
    /// Wall-clock ms of the current broker connection's start; 0 while disconnected. The
    /// staleness check waits a grace period after a (re)connect before it blames a device.
    pub connected_since_ms: std::sync::atomic::AtomicI64,
    pub messages: Counter,
    pub readings: Counter,
    pub readings_duplicate: Counter,
    /// Devices recognised as running at a new operating point (references re-learnt).
    pub operating_point_changes: Counter,
    pub rejected: Family<ReasonLabel, Counter>,
    /// Fields of accepted messages meant as readings but not numbers.
    pub fields_ignored: Family<ReasonLabel, Counter>,
    pub anomalies: Family<ReasonLabel, Counter>,
    pub incidents_opened: Counter,
    pub incidents_resolved: Counter,
    pub incidents_updated: Counter,
    pub incidents_escalated: Family<ReasonLabel, Counter>,
    pub tickets_suppressed: Family<ReasonLabel, Counter>,
    pub verdicts: Family<ReasonLabel, Counter>,
    pub false_alarms: Family<FalseAlarmLabel, Counter>,
    pub time_to_detect_seconds: Histogram,
    pub time_to_acknowledge_seconds: Histogram,
    pub lead_time_seconds: Family<ReasonLabel, Histogram, fn() -> Histogram>,
    pub tickets_delivered: Family<SinkLabel, Counter>,
    pub ticket_attempts_failed: Family<SinkLabel, Counter>,
    pub tickets_dead: Family<SinkLabel, Counter>,
    pub outbox_depth: Family<SinkLabel, Gauge>,
    pub mqtt_connected: Gauge,
    /// Devices and series the core tracks now (bounded by decode.max_devices / max_series).
    pub devices_tracked: Gauge,
    pub series_tracked: Gauge,
    pub mqtt_connection_errors: Counter,
    /// Reconnects where the broker had lost our persistent session.
    pub mqtt_sessions_lost: Counter,
    /// Store writes or flushes that failed (a full disk, an I/O error).
    pub store_errors: Counter,
    pub retention_removed: Counter,
    pub batch_commit_seconds: Histogram,
    /// 1, labelled with the version: which build runs where.
    pub build_info: Family<BuildLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            messages: Counter::default(),
            readings: Counter::default(),
            readings_duplicate: Counter::default(),
            operating_point_changes: Counter::default(),
            rejected: Family::default(),
            fields_ignored: Family::default(),
            anomalies: Family::default(),
            incidents_opened: Counter::default(),
            incidents_resolved: Counter::default(),
            incidents_updated: Counter::default(),
            incidents_escalated: Family::default(),
            tickets_suppressed: Family::default(),
            verdicts: Family::default(),
            false_alarms: Family::default(),
            time_to_detect_seconds: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            time_to_acknowledge_seconds: Histogram::new(exponential_buckets(60.0, 2.0, 14)),
            lead_time_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(60.0, 2.0, 14))),
            tickets_delivered: Family::default(),
            ticket_attempts_failed: Family::default(),
            tickets_dead: Family::default(),
            outbox_depth: Family::default(),
            mqtt_connected: Gauge::default(),
            devices_tracked: Gauge::default(),
            series_tracked: Gauge::default(),
            mqtt_connection_errors: Counter::default(),
            mqtt_sessions_lost: Counter::default(),
            store_errors: Counter::default(),
            retention_removed: Counter::default(),
            batch_commit_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            build_info: Family::default(),
            registry: Registry::default(),
            connected_since_ms: std::sync::atomic::AtomicI64::new(0),
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector::new()));
        let r = registry.sub_registry_with_prefix("fieldwatch");
        r.register("build_info", "1, labelled with the version of the running build", m.build_info.clone());
        m.build_info.get_or_create(&BuildLabel { version: env!("CARGO_PKG_VERSION").into() }).set(1);
        r.register("messages", "MQTT messages received", m.messages.clone());
        r.register("readings", "Readings stored (new, not redelivered)", m.readings.clone());
        r.register("readings_duplicate", "Redelivered readings that were already stored", m.readings_duplicate.clone());
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
            "Incidents opened (counted once durable in the store)",
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
            "Tickets not opened, by reason: maintenance, silence, observe, shadow, needs_review; dedup and flapping (a recurrence updated the open ticket instead)",
            m.tickets_suppressed.clone(),
        );
        r.register("verdicts", "Technician verdicts on incidents, by verdict", m.verdicts.clone());
        r.register("false_alarms", "Incidents a technician marked as false alarms", m.false_alarms.clone());
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
        r.register("outbox_depth", "Ticket commands waiting for delivery", m.outbox_depth.clone());
        r.register("mqtt_connected", "1 while connected to the broker", m.mqtt_connected.clone());
        r.register(
            "devices_tracked",
            "Devices the daemon keeps state for (decode.max_devices)",
            m.devices_tracked.clone(),
        );
        r.register("series_tracked", "Series the daemon keeps state for (decode.max_series)", m.series_tracked.clone());
        r.register("mqtt_connection_errors", "Broker connection errors", m.mqtt_connection_errors.clone());
        r.register(
            "mqtt_sessions_lost",
            "Reconnects where the broker had lost our persistent session (what it queued meanwhile is gone)",
            m.mqtt_sessions_lost.clone(),
        );
        r.register(
            "store_errors",
            "Store writes or flushes that failed (full disk, I/O error)",
            m.store_errors.clone(),
        );
        r.register("retention_removed_readings", "Readings deleted by retention", m.retention_removed.clone());
        r.register("batch_commit_seconds", "Time to store, detect and flush one batch", m.batch_commit_seconds.clone());
        Metrics { registry, ..m }
    }

    /// Counts a rejected message under its reason label.
    pub fn count_rejected(&self, reason: &str) {
        self.rejected.get_or_create(&ReasonLabel { reason: reason.to_string() }).inc();
    }

    /// Rejected messages so far, all reasons.
    pub fn rejected_total(&self) -> u64 {
        // Family has no sum; encode-free way: the labels we use are a fixed small set.
        crate::decode::ALL_REJECT_LABELS
            .iter()
            .filter_map(|r| self.rejected.get(&ReasonLabel { reason: r.to_string() }).map(|c| c.get()))
            .sum()
    }

    /// Suppressed tickets for one reason.
    pub fn suppressed(&self, reason: &str) -> u64 {
        self.tickets_suppressed.get(&ReasonLabel { reason: reason.into() }).map(|c| c.get()).unwrap_or(0)
    }

    /// Per-sink counter value.
    pub fn delivered(&self, sink: &str) -> u64 {
        self.tickets_delivered.get(&SinkLabel { sink: sink.into() }).map(|c| c.get()).unwrap_or(0)
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

    #[test]
    fn build_info_is_one_for_this_version() {
        let text = Metrics::new().render(Format::Text);
        let build = format!("fieldwatch_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        assert!(text.lines().any(|l| l == build), "{text}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_metrics_are_exported_without_the_prefix() {
        let text = Metrics::new().render(Format::Text);
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
}
