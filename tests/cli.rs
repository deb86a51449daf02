//! The command line as an operator uses it.

mod common;

use common::fieldwatch;

#[test]
fn config_with_unknown_key_fails_check_config_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[mqtt]\nhost = \"broker\"\n\n[incident]\nquiet_perod = \"5m\"\n").unwrap();
    let out = fieldwatch().arg("check-config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:5", file.display())), "{err}");
    assert!(err.contains("incident.quiet_perod"), "{err}");
    assert!(err.contains("unknown field"), "{err}");
}

#[test]
fn invalid_value_fails_check_config_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[mqtt]\ntopics = [\"plant/#/x\"]\n").unwrap();
    let out = fieldwatch().arg("check-config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mqtt.topics[0]") && err.contains("not a valid MQTT topic filter"), "{err}");
}

#[test]
fn shipped_configs_pass_check_config() {
    for name in ["config/fieldwatch.toml", "config/demo.toml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
        let out = fieldwatch().arg("check-config").arg(&path).output().unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let out = fieldwatch().arg("check-config").arg("/nonexistent/fw.toml").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/fw.toml: cannot read"));
}

#[test]
fn asset_registry_in_a_separate_file_is_loaded_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fieldwatch.toml");
    std::fs::write(&config, "[assets]\nfile = \"assets.toml\"\n").unwrap();
    let assets = dir.path().join("assets.toml");
    std::fs::write(
        &assets,
        "[[customers]]\nid = \"acme\"\nname = \"ACME\"\ntier = \"tier1\"\n\n[[devices]]\nid = \"comp-1\"\ncustomer = \"acme\"\n",
    )
    .unwrap();
    let out = fieldwatch().arg("check-config").arg(&config).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let loaded = fieldwatch::Config::load(&config).unwrap();
    assert_eq!(loaded.assets.devices[0].id, "comp-1");

    std::fs::write(&assets, "[[devices]]\nid = \"comp-1\"\ncustomer = \"ghost\"\n").unwrap();
    let out = fieldwatch().arg("check-config").arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("assets.toml") && err.contains("assets.devices[0].customer") && err.contains("ghost"),
        "{err}"
    );

    std::fs::write(&assets, "[[devices]]\nid = \"comp-1\"\ncriticality = \"extreme\"\n").unwrap();
    let out = fieldwatch().arg("check-config").arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("assets.toml:3") && err.contains("devices[0].criticality"), "{err}");
}

#[test]
fn check_config_refuses_an_open_admin_listen_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("open.toml");
    std::fs::write(&file, "[admin]\nlisten = \"0.0.0.0:9797\"\n").unwrap();
    let out = fieldwatch().arg("check-config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin.listen") && err.contains("admin.token"), "{err}");

    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let text = format!("[admin]\nlisten = \"0.0.0.0:9797\"\ntoken = {{ file = \"{}\" }}\n", token.display());
    std::fs::write(&file, text).unwrap();
    let out = fieldwatch().arg("check-config").arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn check_config_names_missing_files_and_warns_about_what_cannot_work() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("files.toml");
    let text =
        "[mqtt]\ntopics = [\"factory/#\"]\nusername = \"fw\"\npassword = { file = \"/nonexistent/mqtt-password\" }\n";
    std::fs::write(&file, text).unwrap();
    let out = fieldwatch().arg("check-config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a secret file that cannot be read is an error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mqtt.password.file") && err.contains("/nonexistent/mqtt-password"), "{err}");
    assert!(err.contains("warning: ticket.sinks"), "no sink: {err}");
    assert!(err.contains("warning: mqtt.topics[0]") && err.contains("can never match"), "{err}");
}

#[test]
fn print_default_config_prints_the_shipped_reference_and_it_checks() {
    let out = fieldwatch().arg("print-default-config").output().unwrap();
    assert!(out.status.success());
    let reference =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/fieldwatch.toml"))
            .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), reference);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fieldwatch.toml");
    std::fs::write(&file, &out.stdout).unwrap();
    let out = fieldwatch().args(["check-config", "--config"]).arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn every_command_that_reads_a_config_takes_dash_dash_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[store]\nretention = \"1m\"\n").unwrap();
    for command in ["check-config", "run", "train", "models", "replay", "evaluate", "incidents", "silence"] {
        let mut cmd = fieldwatch();
        cmd.arg(command).arg("--config").arg(&file);
        if command == "replay" {
            cmd.args(["--input", "in.csv", "--output", "out.csv"]);
        }
        if command == "silence" {
            cmd.arg("--list");
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command} accepted a bad config");
        assert!(err.contains(&format!("{}:2", file.display())) && err.contains("store.retention"), "{command}: {err}");
    }
}

/// Runs the daemon (broker unreachable: it logs and retries) with stderr in a file, until it
/// has logged a few lines; returns them.
fn daemon_log_lines(format: &str, journal: bool) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let config = common::DaemonConfig::shipped(common::free_port(), dir.path())
        .extra(&format!("[daemon]\nlog_format = \"{format}\"\n[admin]\nlisten = \"\"\n"));
    let mut cmd = config.command(&[]);
    cmd.env_remove("RUST_LOG").env_remove("JOURNAL_STREAM");
    if journal {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(config.log_path()).unwrap();
        cmd.env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()));
    }
    let daemon = common::DaemonProcess::spawn(cmd, &config);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut lines = Vec::new();
    while std::time::Instant::now() < deadline {
        lines = daemon.log().lines().map(str::to_string).collect();
        if lines.len() >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(daemon);
    assert!(lines.len() >= 2, "the daemon logged: {lines:?}");
    lines
}

#[test]
fn logs_have_no_colour_codes_off_a_terminal_and_come_as_json_or_for_the_journal() {
    for line in daemon_log_lines("auto", false) {
        assert!(!line.contains('\u{1b}'), "ANSI in a log file: {line:?}");
        assert!(!line.starts_with('<'), "not the journal: {line:?}");
    }
    for line in daemon_log_lines("json", false) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    // Under systemd, stderr connected to the journal: syslog priority prefixes, no timestamps.
    for line in daemon_log_lines("auto", true) {
        assert!(!line.contains('\u{1b}'), "{line:?}");
        assert!(["<3>", "<4>", "<6>", "<7>"].iter().any(|p| line.starts_with(p)), "{line:?}");
        assert!(!line.contains(&chrono::Utc::now().format("%Y-%m-%dT").to_string()), "no timestamp: {line:?}");
    }
}

/// Every kind of error `check-config` finds names `FILE:LINE:` and the key: a file the config
/// names that cannot be read, a secret file, a duplicate key and a broken value (TOML syntax).
#[test]
fn check_config_names_file_line_and_key_for_every_kind_of_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    let cases = [
        (
            "[mqtt]\nhost = \"b\"\n\n[mqtt.tls]\nca_file = \"/nonexistent/ca.pem\"\n",
            ":5: error: mqtt.tls.ca_file: cannot read",
        ),
        (
            "[mqtt]\nusername = \"fw\"\npassword = { file = \"/nonexistent/pw\" }\n",
            ":3: error: mqtt.password.file: cannot read",
        ),
        ("[mqtt]\nport = 1883\nport = 1884\n", ":3: key `mqtt.port`: duplicate key"),
        ("[store]\ncache_mb = 16\n\n[mqtt]\nhost = \"open\n", ":5: key `mqtt.host`"),
        ("[mqtt\nhost = \"b\"\n", ":1: key `mqtt`"),
    ];
    for (text, expected) in cases {
        std::fs::write(&file, text).unwrap();
        let out = fieldwatch().arg("check-config").arg(&file).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("{}{expected}", file.display())), "for\n{text}\nexpected `{expected}` in: {err}");
    }
}
