//! The HTTP sinks over real HTTP: each sink is built from its TOML config, sends Open, Update and
//! Resolve to a wiremock server standing in for the vendor API (or the webhook's receiver), and
//! the requests are checked against the shapes the vendor documents.

use std::path::Path;

use fieldwatch::config::Config;
use fieldwatch::detect::FaultKind;
use fieldwatch::incident::IncidentState;
use fieldwatch::ticket::{
    Action, AssetRef, Check, CustomerRef, Evidence, EvidenceReading, Priority, SinkError, Ticket, TicketCommand,
    TicketSink,
};
use serde_json::{json, Value};
use wiremock::matchers::{basic_auth, body_json, body_partial_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "9b1f0c3e5a7d4e2f8c6b0a1d3e5f7a9c";

/// Builds the one sink configured in `snippet` (the body of a `[[ticket.sinks]]` table), the way
/// the daemon does: parse and validate the whole config, then build.
fn build(snippet: &str) -> Box<dyn TicketSink> {
    let config = Config::parse(&format!("[[ticket.sinks]]\n{snippet}"), Path::new("test.toml")).unwrap();
    config.ticket.sinks[0].build().unwrap()
}

/// A compressor running hot at a tier-1 customer.
fn ticket(priority: Priority) -> Ticket {
    let what = "discharge_temp rose to 97.1 °C, 67.8σ above its baseline of 70 °C, for 2 min".to_string();
    Ticket {
        id: "FW-9b1f0c3e5a".into(),
        idempotency_key: KEY.into(),
        device: "comp-7".into(),
        site: Some("site-1".into()),
        metric: "discharge_temp".into(),
        fault: "discharge_temp.deviation".into(),
        fault_kind: FaultKind::Deviation,
        title: "comp-7: discharge_temp above normal".into(),
        summary: what.clone(),
        evidence: Evidence {
            value: 97.1,
            unit: Some("°C".into()),
            baseline: Some(70.0),
            spread: Some(0.4),
            z: Some(67.8),
            score: 0.99,
            detector: "baseline".into(),
            limit: None,
            anomalous_readings: 3,
            recent: vec![
                EvidenceReading { ts: "2025-03-04T10:15:00Z".into(), value: 70.3 },
                EvidenceReading { ts: "2025-03-04T10:16:00Z".into(), value: 97.1 },
            ],
        },
        first_seen: "2025-03-04T10:16:00Z".into(),
        opened_at: "2025-03-04T10:18:00Z".into(),
        state: IncidentState::Open,
        resolved_at: None,
        priority,
        respond_by: "2025-03-04T12:18:00Z".into(),
        origin: "proactive".into(),
        confidence: 0.99,
        customer: Some(CustomerRef { id: "C-1042".into(), name: "Nordkyl AB".into(), tier: "tier1".into() }),
        asset: Some(AssetRef {
            id: "comp-7".into(),
            model: Some("Bitzer 4FES-5Y".into()),
            criticality: "high".into(),
            location: Some("Cold store 2, roof".into()),
            safety_critical: false,
            contacts: vec!["Site lead +46 70 123 45 67".into()],
        }),
        what_happened: what,
        checks_done: vec![Check {
            check: "sensor alive".into(),
            result: "ok".into(),
            detail: "12 readings in the last minute".into(),
        }],
        next_steps: vec!["Check the condenser fan".into(), "Clean the condenser coil".into()],
        runbook_link: Some("https://runbooks.example.com/discharge-temp".into()),
        predicted_failure_at: None,
        flapping: false,
        needs_review: false,
        note: None,
        acknowledged: false,
    }
}

const UPDATE_NOTE: &str = "Escalated: the value is still rising (99.4 °C)";
const CLOSING_NOTE: &str = "discharge_temp has been normal for 10 min";

/// The command for `action`, with the note the incident policy writes for updates and closings.
fn command(action: Action, priority: Priority) -> TicketCommand {
    let mut t = ticket(priority);
    match action {
        Action::Open => {}
        Action::Update => t.note = Some(UPDATE_NOTE.into()),
        Action::Resolve => {
            t.state = IncidentState::Resolved;
            t.resolved_at = Some("2025-03-04T10:40:00Z".into());
            t.note = Some(CLOSING_NOTE.into());
        }
    }
    TicketCommand { action, idempotency_key: format!("{KEY}:{}", action.as_str()), ticket: t }
}

async fn body_of(server: &MockServer, http_method: &str, url_path: &str) -> Vec<Value> {
    let requests = server.received_requests().await.unwrap_or_default();
    requests
        .iter()
        .filter(|r| r.method.as_str() == http_method && r.url.path() == url_path)
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

// ServiceNow

fn servicenow(server: &MockServer, password_env: &str) -> Box<dyn TicketSink> {
    build(&format!(
        "type = \"servicenow\"\nname = \"snow\"\ninstance_url = \"{}\"\nusername = \"fieldwatch.integration\"\n\
         password = {{ env = \"{password_env}\" }}\nassignment_group = \"Field Service North\"\ntimeout = \"2s\"\n",
        server.uri()
    ))
}

const SN_TABLE: &str = "/api/now/table/incident";

fn sn_lookup() -> wiremock::MockBuilder {
    Mock::given(method("GET"))
        .and(path(SN_TABLE))
        .and(query_param("sysparm_query", format!("correlation_id={KEY}")))
        .and(query_param("sysparm_fields", "sys_id"))
        .and(query_param("sysparm_limit", "1"))
        .and(basic_auth("fieldwatch.integration", "sn-pa55"))
        .and(header("accept", "application/json"))
}

#[tokio::test]
async fn servicenow_opens_updates_and_resolves_one_incident_by_correlation_id() {
    std::env::set_var("FW_TEST_SN_PASSWORD_FLOW", "sn-pa55");
    let api = MockServer::start().await;
    sn_lookup()
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "result": [] })))
        .expect(1)
        .mount(&api)
        .await;
    Mock::given(method("POST"))
        .and(path(SN_TABLE))
        .and(basic_auth("fieldwatch.integration", "sn-pa55"))
        .and(header("content-type", "application/json"))
        .and(header("accept", "application/json"))
        .and(body_partial_json(json!({
            "short_description": "comp-7: discharge_temp above normal",
            "correlation_id": KEY,
            "urgency": "1",
            "impact": "2",
            "category": "hardware",
            "cmdb_ci": "comp-7",
            "assignment_group": "Field Service North",
        })))
        .respond_with(ResponseTemplate::new(201).set_body_json(
            json!({ "result": { "sys_id": "46d44a5fa9fe198101c4ef3ac7f2c8ed", "number": "INC0010042" } }),
        ))
        .expect(1)
        .mount(&api)
        .await;
    let record = format!("{SN_TABLE}/46d44a5fa9fe198101c4ef3ac7f2c8ed");
    Mock::given(method("PATCH"))
        .and(path(record.as_str()))
        .and(basic_auth("fieldwatch.integration", "sn-pa55"))
        .and(body_json(json!({ "work_notes": UPDATE_NOTE })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "result": {} })))
        .expect(1)
        .mount(&api)
        .await;
    Mock::given(method("PATCH"))
        .and(path(record.as_str()))
        .and(basic_auth("fieldwatch.integration", "sn-pa55"))
        .and(body_json(json!({ "state": "6", "close_code": "Solution provided", "close_notes": CLOSING_NOTE })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "result": {} })))
        .expect(1)
        .mount(&api)
        .await;

    let mut sink = servicenow(&api, "FW_TEST_SN_PASSWORD_FLOW");
    for action in [Action::Open, Action::Update, Action::Resolve] {
        sink.send(&command(action, Priority::P2)).await.unwrap_or_else(|e| panic!("{action:?}: {e}"));
    }
    api.verify().await;
    let created = body_of(&api, "POST", SN_TABLE).await;
    let description = created[0]["description"].as_str().unwrap();
    assert!(description.starts_with("What happened:\ndischarge_temp rose to 97.1 °C"), "{description}");
    assert!(description.contains("Checks done:\nsensor alive: ok (12 readings in the last minute)"), "{description}");
    assert!(
        description.contains("Next steps:\n1. Check the condenser fan\n2. Clean the condenser coil"),
        "{description}"
    );
}

#[tokio::test]
async fn servicenow_open_reuses_an_existing_incident_and_a_restarted_sink_finds_it_again() {
    std::env::set_var("FW_TEST_SN_PASSWORD_DEDUP", "sn-pa55");
    let api = MockServer::start().await;
    sn_lookup()
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "result": [{ "sys_id": "existing0001" }] })))
        .expect(2)
        .mount(&api)
        .await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(201)).expect(0).mount(&api).await;
    Mock::given(method("PATCH"))
        .and(path(format!("{SN_TABLE}/existing0001")))
        .and(body_partial_json(json!({ "work_notes": UPDATE_NOTE })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "result": {} })))
        .expect(1)
        .mount(&api)
        .await;

    // A retried Open whose first attempt created the record (response lost): no second incident.
    let mut sink = servicenow(&api, "FW_TEST_SN_PASSWORD_DEDUP");
    sink.send(&command(Action::Open, Priority::P3)).await.unwrap();
    // After a restart the in-memory map is empty: the lookup finds the record.
    let mut restarted = servicenow(&api, "FW_TEST_SN_PASSWORD_DEDUP");
    restarted.send(&command(Action::Update, Priority::P3)).await.unwrap();
    api.verify().await;
}

#[tokio::test]
async fn servicenow_503_is_retried_and_400_is_refused_for_good() {
    std::env::set_var("FW_TEST_SN_PASSWORD_ERRORS", "sn-pa55");
    let down = MockServer::start().await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(503)).mount(&down).await;
    let err = servicenow(&down, "FW_TEST_SN_PASSWORD_ERRORS").send(&command(Action::Open, Priority::P1)).await;
    assert!(matches!(err, Err(SinkError::Retry(_))), "{err:?}");

    let strict = MockServer::start().await;
    sn_lookup().respond_with(ResponseTemplate::new(200).set_body_json(json!({ "result": [] }))).mount(&strict).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({ "error": { "message": "Invalid category" } })))
        .mount(&strict)
        .await;
    let err = servicenow(&strict, "FW_TEST_SN_PASSWORD_ERRORS").send(&command(Action::Open, Priority::P1)).await;
    match err {
        Err(SinkError::Permanent(msg)) => assert!(msg.contains("400") && msg.contains("Invalid category"), "{msg}"),
        other => panic!("expected a permanent error, got {other:?}"),
    }

    // Update for an incident that has no record: nothing to retry for.
    let err = servicenow(&strict, "FW_TEST_SN_PASSWORD_ERRORS").send(&command(Action::Update, Priority::P1)).await;
    assert!(matches!(err, Err(SinkError::Permanent(_))), "{err:?}");
}

// Jira

fn jira(server: &MockServer, token_file: &Path) -> Box<dyn TicketSink> {
    build(&format!(
        "type = \"jira\"\nname = \"jira\"\nbase_url = \"{}\"\nemail = \"fieldwatch@acme.example\"\n\
         api_token = {{ file = \"{}\" }}\nproject_key = \"FS\"\ntimeout = \"2s\"\n",
        server.uri(),
        token_file.display()
    ))
}

fn token_file() -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), "atl-t0ken\n").unwrap();
    f
}

fn jira_search() -> wiremock::MockBuilder {
    Mock::given(method("GET"))
        .and(path("/rest/api/3/search/jql"))
        .and(query_param("jql", format!("labels = \"fw-{KEY}\"")))
        .and(basic_auth("fieldwatch@acme.example", "atl-t0ken"))
}

#[tokio::test]
async fn jira_opens_an_issue_comments_on_it_and_closes_it_by_transition_name() {
    let token = token_file();
    let api = MockServer::start().await;
    jira_search()
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "issues": [] })))
        .expect(1)
        .mount(&api)
        .await;
    Mock::given(method("POST"))
        .and(path("/rest/api/3/issue"))
        .and(basic_auth("fieldwatch@acme.example", "atl-t0ken"))
        .and(header("content-type", "application/json"))
        .and(body_partial_json(json!({ "fields": {
            "project": { "key": "FS" },
            "issuetype": { "name": "Task" },
            "summary": "comp-7: discharge_temp above normal",
            "labels": ["fieldwatch", format!("fw-{KEY}")],
            "priority": { "name": "Highest" },
            "description": { "type": "doc", "version": 1 },
        }})))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "id": "10042", "key": "FS-42", "self": "https://acme.atlassian.net/rest/api/3/issue/10042"
        })))
        .expect(1)
        .mount(&api)
        .await;
    Mock::given(method("POST"))
        .and(path("/rest/api/3/issue/FS-42/comment"))
        .and(basic_auth("fieldwatch@acme.example", "atl-t0ken"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({ "id": "10100" })))
        .expect(2)
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/rest/api/3/issue/FS-42/transitions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "transitions": [
            { "id": "11", "name": "To Do", "to": { "name": "To Do" } },
            { "id": "21", "name": "In Progress", "to": { "name": "In Progress" } },
            { "id": "31", "name": "DONE", "to": { "name": "Done" } },
        ]})))
        .expect(1)
        .mount(&api)
        .await;
    Mock::given(method("POST"))
        .and(path("/rest/api/3/issue/FS-42/transitions"))
        .and(basic_auth("fieldwatch@acme.example", "atl-t0ken"))
        .and(body_json(json!({ "transition": { "id": "31" } })))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&api)
        .await;

    let mut sink = jira(&api, token.path());
    for action in [Action::Open, Action::Update, Action::Resolve] {
        sink.send(&command(action, Priority::P1)).await.unwrap_or_else(|e| panic!("{action:?}: {e}"));
    }
    api.verify().await;

    let description = &body_of(&api, "POST", "/rest/api/3/issue").await[0]["fields"]["description"];
    let content = description["content"].as_array().unwrap();
    assert_eq!(
        content[0],
        json!({ "type": "heading", "attrs": { "level": 3 }, "content": [{ "type": "text", "text": "What happened" }] })
    );
    assert_eq!(content[1]["type"], "paragraph");
    assert!(content[1]["content"][0]["text"].as_str().unwrap().starts_with("discharge_temp rose to 97.1 °C"));
    assert!(content.iter().all(|node| node["content"].as_array().is_some_and(|c| !c.is_empty())));
    let step = json!({ "type": "paragraph", "content": [{ "type": "text", "text": "1. Check the condenser fan" }] });
    assert!(content.contains(&step), "{description}");

    let comments = body_of(&api, "POST", "/rest/api/3/issue/FS-42/comment").await;
    let paragraph = |text: &str| json!({ "type": "doc", "version": 1, "content": [{ "type": "paragraph", "content": [{ "type": "text", "text": text }] }] });
    assert_eq!(comments[0]["body"], paragraph(UPDATE_NOTE));
    assert_eq!(comments[1]["body"], paragraph(CLOSING_NOTE));
}

#[tokio::test]
async fn jira_open_finds_the_labelled_issue_instead_of_creating_a_second_one() {
    let token = token_file();
    let api = MockServer::start().await;
    jira_search()
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "issues": [{ "id": "10007", "key": "FS-7" }] })))
        .expect(2)
        .mount(&api)
        .await;
    Mock::given(method("POST"))
        .and(path("/rest/api/3/issue"))
        .respond_with(ResponseTemplate::new(201))
        .expect(0)
        .mount(&api)
        .await;
    Mock::given(method("POST"))
        .and(path("/rest/api/3/issue/FS-7/comment"))
        .respond_with(ResponseTemplate::new(201))
        .expect(1)
        .mount(&api)
        .await;

    jira(&api, token.path()).send(&command(Action::Open, Priority::P2)).await.unwrap();
    jira(&api, token.path()).send(&command(Action::Update, Priority::P2)).await.unwrap();
    api.verify().await;
}

#[tokio::test]
async fn jira_retried_resolve_does_not_repeat_its_comment() {
    let token = token_file();
    let api = MockServer::start().await;
    jira_search()
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "issues": [{ "key": "FS-9" }] })))
        .mount(&api)
        .await;
    Mock::given(method("POST"))
        .and(path("/rest/api/3/issue/FS-9/comment"))
        .respond_with(ResponseTemplate::new(201))
        .expect(1)
        .mount(&api)
        .await;
    // The transitions endpoint fails once, then answers.
    Mock::given(method("GET"))
        .and(path("/rest/api/3/issue/FS-9/transitions"))
        .respond_with(ResponseTemplate::new(502))
        .up_to_n_times(1)
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/rest/api/3/issue/FS-9/transitions"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({ "transitions": [{ "id": "41", "name": "Done" }] })),
        )
        .mount(&api)
        .await;
    Mock::given(method("POST"))
        .and(path("/rest/api/3/issue/FS-9/transitions"))
        .and(body_json(json!({ "transition": { "id": "41" } })))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&api)
        .await;

    let mut sink = jira(&api, token.path());
    let resolve = command(Action::Resolve, Priority::P4);
    assert!(matches!(sink.send(&resolve).await, Err(SinkError::Retry(_))));
    sink.send(&resolve).await.unwrap();
    api.verify().await;
}

// PagerDuty

fn pagerduty(server: &MockServer, key_env: &str) -> Box<dyn TicketSink> {
    build(&format!(
        "type = \"pagerduty\"\nname = \"oncall\"\nrouting_key = {{ env = \"{key_env}\" }}\nurl = \"{}/v2/enqueue\"\ntimeout = \"2s\"\n",
        server.uri()
    ))
}

fn accepted() -> ResponseTemplate {
    ResponseTemplate::new(202)
        .set_body_json(json!({ "status": "success", "message": "Event processed", "dedup_key": KEY }))
}

#[tokio::test]
async fn pagerduty_triggers_and_resolves_one_alert_keyed_by_the_incident() {
    std::env::set_var("FW_TEST_PD_KEY_FLOW", "R0UT1NGKEY0000000000000000000001");
    let api = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v2/enqueue"))
        .and(header("content-type", "application/json"))
        .and(body_partial_json(json!({
            "routing_key": "R0UT1NGKEY0000000000000000000001",
            "event_action": "trigger",
            "dedup_key": KEY,
            "payload": {
                "source": "comp-7",
                "severity": "critical",
                "component": "discharge_temp",
                "group": "site-1",
                "class": "discharge_temp.deviation",
                "custom_details": {
                    "respond_by": "2025-03-04T12:18:00Z",
                    "next_steps": ["Check the condenser fan", "Clean the condenser coil"],
                    "customer": { "name": "Nordkyl AB" },
                    "asset": { "id": "comp-7" },
                    "evidence": { "value": 97.1, "baseline": 70.0 },
                    "checks_done": [{ "check": "sensor alive", "result": "ok" }],
                },
            },
            "links": [{ "href": "https://runbooks.example.com/discharge-temp" }],
        })))
        .respond_with(accepted())
        .expect(2)
        .mount(&api)
        .await;
    Mock::given(method("POST"))
        .and(path("/v2/enqueue"))
        .and(body_json(json!({
            "routing_key": "R0UT1NGKEY0000000000000000000001", "event_action": "resolve", "dedup_key": KEY
        })))
        .respond_with(accepted())
        .expect(1)
        .mount(&api)
        .await;
    Mock::given(method("POST"))
        .and(path("/v2/enqueue"))
        .and(body_json(json!({
            "routing_key": "R0UT1NGKEY0000000000000000000001", "event_action": "acknowledge", "dedup_key": KEY
        })))
        .respond_with(accepted())
        .expect(1)
        .mount(&api)
        .await;

    let mut sink = pagerduty(&api, "FW_TEST_PD_KEY_FLOW");
    sink.send(&command(Action::Open, Priority::P1)).await.unwrap();
    sink.send(&command(Action::Update, Priority::P1)).await.unwrap();
    // A technician's confirmation reaches PagerDuty as an acknowledge, not another trigger.
    let mut ack = command(Action::Update, Priority::P1);
    ack.ticket.acknowledged = true;
    sink.send(&ack).await.unwrap();
    sink.send(&command(Action::Resolve, Priority::P1)).await.unwrap();
    api.verify().await;

    let triggers = body_of(&api, "POST", "/v2/enqueue").await;
    assert_eq!(triggers[0]["payload"]["timestamp"], "2025-03-04T10:18:00Z");
    let summary = triggers[0]["payload"]["summary"].as_str().unwrap();
    assert!(summary.starts_with("P1: comp-7: discharge_temp above normal"), "{summary}");
}

#[tokio::test]
async fn pagerduty_severity_follows_priority() {
    std::env::set_var("FW_TEST_PD_KEY_SEVERITY", "R0UT1NGKEY0000000000000000000002");
    let api = MockServer::start().await;
    Mock::given(method("POST")).and(path("/v2/enqueue")).respond_with(accepted()).mount(&api).await;
    let mut sink = pagerduty(&api, "FW_TEST_PD_KEY_SEVERITY");
    for p in [Priority::P1, Priority::P2, Priority::P3, Priority::P4] {
        sink.send(&command(Action::Open, p)).await.unwrap();
    }
    let severities: Vec<Value> =
        body_of(&api, "POST", "/v2/enqueue").await.iter().map(|b| b["payload"]["severity"].clone()).collect();
    assert_eq!(severities, [json!("critical"), json!("error"), json!("warning"), json!("info")]);
}

#[tokio::test]
async fn pagerduty_429_and_5xx_are_retried_and_400_is_refused_for_good() {
    std::env::set_var("FW_TEST_PD_KEY_ERRORS", "R0UT1NGKEY0000000000000000000003");
    for (status, retry) in [(429, true), (500, true), (503, true), (400, false)] {
        let api = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(status).set_body_json(json!({ "status": "invalid event" })))
            .mount(&api)
            .await;
        let result = pagerduty(&api, "FW_TEST_PD_KEY_ERRORS").send(&command(Action::Open, Priority::P2)).await;
        match (retry, result) {
            (true, Err(SinkError::Retry(_))) | (false, Err(SinkError::Permanent(_))) => {}
            (_, other) => panic!("HTTP {status}: {other:?}"),
        }
    }
}

// Webhook

#[tokio::test]
async fn webhook_takes_409_as_delivered_retries_5xx_and_refuses_400_for_good() {
    std::env::set_var("FW_TEST_WEBHOOK_TOKEN", "T0KEN");
    let cmd = command(Action::Open, Priority::P2);
    for (status, expected) in
        [(200, "ok"), (201, "ok"), (409, "ok"), (503, "retry"), (429, "retry"), (400, "permanent")]
    {
        let api = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/tickets"))
            .and(header("Idempotency-Key", cmd.idempotency_key.as_str()))
            .and(header("Authorization", "Bearer T0KEN"))
            .and(body_json(&cmd))
            .respond_with(ResponseTemplate::new(status))
            .expect(1)
            .mount(&api)
            .await;
        let mut sink = build(&format!(
            "type = \"webhook\"\nname = \"w\"\nurl = \"{}/tickets\"\ntoken = {{ env = \"FW_TEST_WEBHOOK_TOKEN\" }}\n",
            api.uri()
        ));
        match (expected, sink.send(&cmd).await) {
            ("ok", Ok(())) | ("retry", Err(SinkError::Retry(_))) | ("permanent", Err(SinkError::Permanent(_))) => {}
            (_, other) => panic!("HTTP {status}: {other:?}"),
        }
    }
}

#[test]
fn sink_configs_name_the_offending_key() {
    let parse = |snippet: &str| {
        Config::parse(&format!("[[ticket.sinks]]\n{snippet}"), Path::new("test.toml")).unwrap_err().to_string()
    };
    let msg = parse(
        "type = \"servicenow\"\nname = \"s\"\ninstance_url = \"acme\"\nusername = \"u\"\npassword = { env = \"P\" }\n",
    );
    assert!(msg.contains("ticket.sinks[0].instance_url"), "{msg}");
    let msg = parse("type = \"servicenow\"\nname = \"s\"\ninstance_url = \"https://a.service-now.com\"\nusername = \"u\"\npassword = {}\n");
    assert!(msg.contains("ticket.sinks[0].password"), "{msg}");
    let msg = parse(
        "type = \"jira\"\nname = \"j\"\nbase_url = \"https://a.atlassian.net\"\nemail = \"e\"\napi_token = { env = \"T\" }\n\
         project_key = \"FS\"\npriorities = { p2 = \"\" }\n",
    );
    assert!(msg.contains("ticket.sinks[0].priorities.p2"), "{msg}");
    let msg = parse("type = \"jira\"\nname = \"j\"\nbase_url = \"https://a.atlassian.net\"\nemail = \"e\"\napi_token = { env = \"T\" }\n");
    assert!(msg.contains("project_key"), "{msg}");
    let msg = parse("type = \"pagerduty\"\nname = \"p\"\nrouting_key = { env = \"K\" }\nseverity = \"high\"\n");
    assert!(msg.contains("unknown field") && msg.contains("severity"), "{msg}");
}

#[test]
fn a_missing_secret_fails_the_build_and_names_the_key() {
    let config = Config::parse(
        "[[ticket.sinks]]\ntype = \"pagerduty\"\nname = \"p\"\nrouting_key = { env = \"FW_TEST_PD_KEY_NEVER_SET\" }\n",
        Path::new("test.toml"),
    )
    .unwrap();
    let err = config.ticket.sinks[0].build().err().expect("build fails").to_string();
    assert!(err.contains("sink `p`: routing_key") && err.contains("FW_TEST_PD_KEY_NEVER_SET"), "{err}");
}

#[test]
fn commented_sink_examples_in_the_shipped_config_are_valid() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/fieldwatch.toml")).unwrap();
    // An example is the run of non-empty `# ` lines that starts at `# [[ticket.sinks]]`.
    let mut examples: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line == "# [[ticket.sinks]]" {
            examples.extend(current.take());
            current = Some("[[ticket.sinks]]\n".into());
            continue;
        }
        if let Some(example) = current.as_mut() {
            match line.strip_prefix("# ") {
                Some(l) if !l.trim().is_empty() => {
                    example.push_str(l);
                    example.push('\n');
                }
                _ => examples.extend(current.take()),
            }
        }
    }
    let mut types = Vec::new();
    for example in &examples {
        let config = Config::parse(example, Path::new("fieldwatch.toml")).unwrap_or_else(|e| panic!("{e}\n{example}"));
        types.push(example.lines().find_map(|l| l.strip_prefix("type = ")).unwrap_or_default().to_string());
        assert_eq!(config.ticket.sinks.len(), 1);
    }
    assert_eq!(types, ["\"webhook\"", "\"servicenow\"", "\"jira\"", "\"pagerduty\""]);
}
