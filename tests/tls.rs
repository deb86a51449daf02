//! A broker that demands TLS and a password: the daemon connects with the CA file from its config
//! and the password from an environment variable, and refuses a wrong password without a hot loop.
//! A broker that demands a client certificate (mutual TLS): the daemon connects with the one in
//! its config, over MQTT 3.1.1 and 5, and is refused without one or with one from another CA.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use fieldwatch::config::{MqttProtocol, SecretRef, TlsConfig};
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

/// A CA (certificate and key), written to `dir/<name>.pem`.
fn ca(dir: &Path, name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("fieldwatch test {name}"));
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    (cert, key)
}

/// A client certificate for `common_name` signed by `ca`, written to `dir/<name>.pem` and
/// `dir/<name>.key`.
fn client_cert(dir: &Path, name: &str, common_name: &str, ca: &(rcgen::Certificate, rcgen::KeyPair)) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &ca.0, &ca.1).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

/// A listener that requires a client certificate signed by its CA and takes the certificate's
/// common name as the user name (no password); writes the daemon's and the publisher's
/// certificates, and one from an unrelated CA.
fn mutual_tls_listener(dir: &Path) -> String {
    let authority = ca(dir, "ca");
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &authority.0, &authority.1).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    client_cert(dir, "gateway", "gateway", &authority);
    client_cert(dir, "publisher", "publisher", &authority);
    let stranger = ca(dir, "other-ca");
    client_cert(dir, "stranger", "gateway", &stranger);
    format!(
        "cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\nrequire_certificate true\n\
         use_identity_as_username true\nallow_anonymous false",
        d = dir.display()
    )
}

fn mutual_tls_config(
    broker: &Mosquitto,
    data: &Path,
    cert: Option<&str>,
    protocol: MqttProtocol,
) -> fieldwatch::Config {
    let mut config = test_config(broker.port, data, vec![]);
    config.mqtt.protocol = protocol;
    let dir = broker.dir.path();
    config.mqtt.tls = Some(TlsConfig {
        ca_file: dir.join("ca.pem"),
        client_cert_file: cert.map(|c| dir.join(format!("{c}.pem"))),
        client_key_file: cert.map(|c| dir.join(format!("{c}.key"))),
    });
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_reads_telemetry_over_mutual_tls_with_its_client_certificate() {
    let broker = Mosquitto::start_with(mutual_tls_listener);
    let d = broker.dir.path();
    let mut o = MqttOptions::new("pub-mtls", "127.0.0.1", broker.port);
    let ca = std::fs::read(d.join("ca.pem")).unwrap();
    let client_auth =
        Some((std::fs::read(d.join("publisher.pem")).unwrap(), std::fs::read(d.join("publisher.key")).unwrap()));
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple { ca, alpn: None, client_auth }));
    let (client, mut eventloop) = AsyncClient::new(o, 10);
    let poll = tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    for (i, protocol) in [MqttProtocol::V311, MqttProtocol::V5].into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let config = mutual_tls_config(&broker, dir.path(), Some("gateway"), protocol);
        let id = config.mqtt.client_id.clone();
        let daemon = Daemon::start(config).await.unwrap();
        let m = daemon.metrics().clone();
        wait_until("connected over mutual TLS", || m.mqtt_connected.get() == 1).await;
        let payload = serde_json::json!({ "ts": base_ts(), "discharge_temp": 70.5 }).to_string();
        client
            .publish(format!("plant/site-1/comp-mtls-{i}/telemetry"), QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        wait_until("reading stored", || m.readings.get() == 1).await;
        daemon.shutdown().await;
        // mosquitto names the protocol: p2 is 3.1.1, p5 is MQTT 5.
        let p = if protocol == MqttProtocol::V5 { 5 } else { 2 };
        assert!(broker.log().contains(&format!("as {id} (p{p},")), "{}", broker.log());
    }
    poll.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_certificate_or_with_a_foreign_one_the_broker_refuses_the_daemon() {
    let broker = Mosquitto::start_with(mutual_tls_listener);
    for (cert, protocol) in [(None, MqttProtocol::V311), (Some("stranger"), MqttProtocol::V5)] {
        let dir = tempfile::tempdir().unwrap();
        let daemon = Daemon::start(mutual_tls_config(&broker, dir.path(), cert, protocol)).await.unwrap();
        let m = daemon.metrics().clone();
        // Refused, tried again after the backoff, refused again: never connected in between.
        wait_until("refused twice", || m.mqtt_connection_errors.get() >= 2).await;
        assert_eq!(m.mqtt_connected.get(), 0, "{cert:?} over {protocol:?} was let in");
        assert_eq!(daemon.link().up_since(), None);
        daemon.shutdown().await;
    }
    let log = broker.log();
    assert!(!log.contains("as fieldwatch-test-"), "no daemon got an MQTT session: {log}");
    assert!(log.contains("peer did not return a certificate"), "{log}");
    assert!(log.contains("certificate verify failed"), "{log}");
}
