//! Scale-out: two daemons share one broker by owning disjoint topic filters (one site each).
//! Every reading is handled by exactly one of them.

mod common;

use std::collections::HashSet;
use std::path::Path;

use common::*;

/// A daemon that owns one site's topics.
fn config(dir: &Path, broker: &Mosquitto, site: &str) -> DaemonConfig {
    let topics = format!("[mqtt]\ntopics = [\"plant/{site}/+/telemetry\"]\n[detect.models]\nenabled = false\n");
    DaemonConfig::new(broker.port, dir).extra(&topics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_with_disjoint_filters_handle_each_reading_once() {
    // A verbose broker log, to see both subscriptions acknowledged.
    let broker = Mosquitto::start_with(|_| "allow_anonymous true\nlog_type all".into());
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (north, south) = (config(a.path(), &broker, "north"), config(b.path(), &broker, "south"));
    let (mut da, mut db) = (north.spawn(), south.spawn());
    for c in [&north, &south] {
        let suback = format!("Sending SUBACK to {}", c.client_id());
        wait_until(&format!("{} subscribed", c.client_id()), || broker.log().contains(&suback)).await;
    }

    let p = Publisher::connect(broker.port, "pub-scaleout").await;
    let t0 = base_ts();
    let mut sent = HashSet::new();
    for i in 0..100 {
        for (site, device) in [("north", "n-1"), ("north", "n-2"), ("south", "s-1")] {
            let payload = serde_json::json!({ "ts": t0 + i * 1000, "temp": normal(i) }).to_string();
            p.raw(&format!("plant/{site}/{device}/telemetry"), payload.into_bytes()).await;
            sent.insert((format!("{device}/temp"), t0 + i * 1000));
        }
    }
    da.wait_metric("fieldwatch_readings_total", 200).await;
    db.wait_metric("fieldwatch_readings_total", 100).await;
    da.signal("TERM");
    db.signal("TERM");
    assert!(da.wait().success() && db.wait().success());

    let (north, south) = (stored_readings(&a.path().join("db")), stored_readings(&b.path().join("db")));
    assert!(north.iter().all(|(d, _)| d.starts_with("n-")), "north stored only its site");
    assert!(south.iter().all(|(d, _)| d.starts_with("s-")), "south stored only its site");
    assert!(north.is_disjoint(&south), "no reading handled twice");
    let all: HashSet<_> = north.union(&south).cloned().collect();
    assert_eq!(all, sent, "and none missed");
    println!("SCALEOUT: sent={} north={} south={} overlap=0", sent.len(), north.len(), south.len());
}
