//! Sparkplug B from an implementation independent of ours: an edge node and a device built with
//! the PyPI package mqtt-spb-wrapper (`tests/python/sparkplug_edge_node.py`), through a real
//! mosquitto, into the real binary.
//!
//! `scripts/test` installs the package into a virtual environment (`target/tools/sparkplug-venv`)
//! and points `FIELDWATCH_SPARKPLUG_PYTHON` at its interpreter. Without it (no Python, no package
//! index) the test prints why and skips; nothing else is skipped.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// The interpreter that has mqtt-spb-wrapper, or why there is none.
fn python() -> Result<PathBuf, String> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/sparkplug-venv/bin/python");
    let python = std::env::var_os("FIELDWATCH_SPARKPLUG_PYTHON").map(PathBuf::from).unwrap_or(venv);
    let ok = Command::new(&python)
        .args(["-c", "import mqtt_spb_wrapper"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(python)
    } else {
        Err(format!("{} cannot import mqtt_spb_wrapper (scripts/test installs it)", python.display()))
    }
}

/// The Python edge node, its output lines arriving on a channel.
struct PythonNode {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl PythonNode {
    fn spawn(python: &PathBuf, port: u16, args: &[&str]) -> PythonNode {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/sparkplug_edge_node.py");
        let mut child = Command::new(python)
            .arg(script)
            .args(["--port", &port.to_string()])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        PythonNode { child, lines }
    }

    /// Waits (at most 60 s) for an output line starting with `prefix`.
    async fn expect(&self, prefix: &str) -> String {
        let end = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < end {
            match self.lines.try_recv() {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(line) => assert!(!line.starts_with("NO_") && !line.starts_with("CANNOT"), "edge node: {line}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        panic!("the Python edge node never printed {prefix}");
    }

    /// Lets a `--gap` node go on to its gap.
    fn go(&mut self) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").and_then(|()| stdin.flush()).unwrap();
    }

    /// SIGKILL: no DISCONNECT, so the broker publishes its wills.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PythonNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_edge_node_is_read_across_the_seq_wrap_asked_to_rebirth_and_its_death_seen() {
    let python = match python() {
        Ok(p) => p,
        Err(why) => {
            println!("SKIPPED: the Sparkplug interoperability test needs mqtt-spb-wrapper: {why}");
            return;
        }
    };
    let (broker, dir) = (Mosquitto::start(), tempfile::tempdir().unwrap());
    let daemon = DaemonConfig::new(broker.port, dir.path())
        .extra(
            r#"
            [mqtt]
            topics = ["spBv1.0/#"]
            [decode.sparkplug]
            request_rebirth = true
            legacy_bd_seq = true
            [detect.models]
            enabled = false
            "#,
        )
        .start()
        .await;

    // Births, then 300 DDATA by alias: seq runs 0..=255 and wraps to 0 without a rebirth request.
    let mut node = PythonNode::spawn(&python, broker.port, &["--readings", "300", "--gap"]);
    node.expect("BORN").await;
    node.expect("SENT 300").await;
    // DBIRTH: temperature, running; NBIRTH: uptime and the rebirth command (a Boolean); 300 x 2.
    daemon.wait_metric("fieldwatch_readings_total", 604).await;
    assert_eq!(daemon.metric("fieldwatch_sparkplug_rebirths_requested_total").await, Some(0), "{}", daemon.log());
    assert_eq!(daemon.metric("fieldwatch_sparkplug_out_of_step_total").await, Some(0));
    assert_eq!(daemon.metric("fieldwatch_rejected_messages_total").await, Some(0), "{}", daemon.log());
    let (_, devices) = daemon.get("/api/devices").await.unwrap();
    assert!(devices.contains("plantA/gw1/comp-1") && devices.contains("DATA/temperature"), "{devices}");

    // Three seq numbers skipped: the daemon asks for a rebirth, the node answers with births.
    node.go();
    node.expect("REBIRTH").await;
    node.expect("READY").await;
    daemon.wait_metric("fieldwatch_sparkplug_rebirths_requested_total", 1).await;
    daemon.wait_metric("fieldwatch_sparkplug_out_of_step_total{reason=\"seq_gap\"}", 1).await;
    // The DDATA after the gap, and 5 after the births (whose values repeat the last DDATA's).
    daemon.wait_metric("fieldwatch_readings_total", 604 + 2 + 10).await;
    assert_eq!(daemon.metric("fieldwatch_rejected_messages_total").await, Some(0), "{}", daemon.log());

    // Killed: the broker publishes the node's NDEATH and the device's DDEATH.
    node.kill();
    daemon.wait_metric("fieldwatch_incidents_opened_total", 2).await;
    let (_, list) = daemon.get("/api/incidents").await.unwrap();
    let list: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
    let mut offline: Vec<&str> = list
        .iter()
        .filter(|i| i["state"] == "open" && i["peak"]["detector"] == "death_certificate")
        .map(|i| i["device"].as_str().unwrap())
        .collect();
    offline.sort();
    assert_eq!(offline, ["plantA/gw1", "plantA/gw1/comp-1"], "{list:#?}");

    // Started again: its births resolve both.
    let again = PythonNode::spawn(&python, broker.port, &["--readings", "3"]);
    again.expect("READY").await;
    daemon.wait_metric("fieldwatch_incidents_resolved_total", 2).await;
    assert_eq!(daemon.metric("fieldwatch_incidents_opened_total").await, Some(2), "{}", daemon.log());
}
