//! A broker that demands TLS and a password: the daemon connects with the CA file from its config
//! and the password from an environment variable, and refuses a wrong password without a hot loop.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use fieldwatch::config::{SecretRef, TlsConfig};
use fieldwatch::Daemon;
use rumqttc::{AsyncClient, MqttOptions, QoS, TlsConfiguration, Transport};

/// Writes a CA, a server certificate for 127.0.0.1 signed by it, and a password file; returns
/// the listener lines for mosquitto.
fn secure_listener(dir: &Path) -> String {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "fieldwatch test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    let passwd = dir.join("passwd");
    let status = std::process::Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&passwd)
        .args(["gateway", "correct horse"])
        .status()
        .unwrap();
    assert!(status.success());
    format!(
        "cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\nallow_anonymous false\npassword_file {}",
        passwd.display(),
        d = dir.display()
    )
}

fn secure_config(broker: &Mosquitto, data: &Path, password_env: &str) -> fieldwatch::Config {
    let mut config = test_config(broker.port, data, vec![]);
    config.mqtt.username = Some("gateway".into());
    config.mqtt.password = Some(SecretRef { file: None, env: Some(password_env.into()) });
    config.mqtt.tls =
        Some(TlsConfig { ca_file: broker.dir.path().join("ca.pem"), client_cert_file: None, client_key_file: None });
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_reads_telemetry_over_tls_with_a_password() {
    let broker = Mosquitto::start_with(secure_listener);
    std::env::set_var("FW_TLS_TEST_GOOD", "correct horse");
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(secure_config(&broker, dir.path(), "FW_TLS_TEST_GOOD")).await.unwrap();
    let m = daemon.metrics().clone();
    wait_until("connected over TLS", || m.mqtt_connected.get() == 1).await;

    let mut o = MqttOptions::new("pub-tls", "127.0.0.1", broker.port);
    o.set_credentials("gateway", "correct horse");
    let ca = std::fs::read(broker.dir.path().join("ca.pem")).unwrap();
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple { ca, alpn: None, client_auth: None }));
    let (client, mut eventloop) = AsyncClient::new(o, 10);
    let poll = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let payload = serde_json::json!({ "ts": base_ts(), "discharge_temp": 70.5 }).to_string();
    client.publish("plant/site-1/comp-tls/telemetry", QoS::AtLeastOnce, false, payload).await.unwrap();
    wait_until("reading stored", || m.readings.get() == 1).await;
    poll.abort();
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_and_retried_with_backoff() {
    let broker = Mosquitto::start_with(secure_listener);
    std::env::set_var("FW_TLS_TEST_BAD", "wrong");
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(secure_config(&broker, dir.path(), "FW_TLS_TEST_BAD")).await.unwrap();
    let m = daemon.metrics().clone();
    wait_until("refused", || m.mqtt_connection_errors.get() >= 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(m.mqtt_connected.get(), 0);
    // Backoff from 100 ms doubling to 1 s: a handful of attempts in 1.5 s, not thousands.
    let attempts = m.mqtt_connection_errors.get();
    assert!((1..=10).contains(&attempts), "{attempts} attempts");
    daemon.shutdown().await;
}
