//! Jira Cloud sink: one issue per fieldwatch incident, through the REST API v3.
//!
//! Each issue carries the label `fw-<incident key>`; every command first searches for it, so a
//! retried Open finds the issue an earlier attempt created and Update and Resolve find their
//! issue after a restart. Jira's search index is eventually consistent: an issue created a
//! moment ago may not be found yet, which is why issues created or found since start are also
//! remembered in memory ([`super::records`]).
//!
//! Requests (basic auth with the account's email and an API token, JSON, ADF for rich text):
//! - find: `GET /rest/api/3/search/jql?jql=labels = "fw-KEY"&fields=key&maxResults=1`
//! - Open: `POST /rest/api/3/issue` with project, issuetype, summary, description, labels, priority
//! - Update: `POST /rest/api/3/issue/{key}/comment`
//! - Resolve: the closing comment, then `GET /rest/api/3/issue/{key}/transitions` and
//!   `POST /rest/api/3/issue/{key}/transitions` with the id of the transition named `done_transition`

use std::collections::HashSet;
use std::time::Duration;

use reqwest::{Method, Url};
use serde::Deserialize;
use serde_json::{json, Value};

use super::config::Fields;
use super::http::{self, BasicAuthClient, ClientError};
use super::records::RemoteRecords;
use super::render::{self, Section};
use super::{Action, Priority, SendFuture, SinkError, Ticket, TicketCommand, TicketSink};
use crate::settings::{Invalid, SecretRef};

/// `type = "jira"`: open, comment on and close Jira Cloud issues.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct JiraConfig {
    pub name: String,
    /// The site, e.g. `https://acme.atlassian.net`.
    pub base_url: String,
    /// The Atlassian account the API token belongs to.
    pub email: String,
    pub api_token: SecretRef,
    /// Project the issues are created in, e.g. `FS`.
    pub project_key: String,
    #[serde(default = "default_issue_type")]
    pub issue_type: String,
    /// Name of the workflow transition that closes an issue (matched case-insensitively).
    #[serde(default = "default_done_transition")]
    pub done_transition: String,
    /// Jira priority names for P1..P4.
    #[serde(default)]
    pub priorities: JiraPriorities,
    #[serde(with = "humantime_serde", default = "super::config::default_http_timeout")]
    pub timeout: Duration,
}

impl JiraConfig {
    /// Checks what types alone cannot; errors name the field under the sink's key.
    pub(super) fn validate(&self, f: &Fields) -> Result<(), Invalid> {
        f.http_url("base_url", &self.base_url)?;
        f.filled("email", &self.email)?;
        f.secret("api_token", &self.api_token)?;
        f.filled("project_key", &self.project_key)?;
        f.filled("issue_type", &self.issue_type)?;
        f.filled("done_transition", &self.done_transition)?;
        let p = &self.priorities;
        [("priorities.p1", &p.p1), ("priorities.p2", &p.p2), ("priorities.p3", &p.p3), ("priorities.p4", &p.p4)]
            .into_iter()
            .try_for_each(|(field, name)| f.filled(field, name))
    }
}

/// Jira priority names for fieldwatch priorities; the defaults are Jira's own scheme.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct JiraPriorities {
    pub p1: String,
    pub p2: String,
    pub p3: String,
    pub p4: String,
}

impl Default for JiraPriorities {
    fn default() -> Self {
        Self { p1: "Highest".into(), p2: "High".into(), p3: "Medium".into(), p4: "Low".into() }
    }
}

impl JiraPriorities {
    pub fn name(&self, p: Priority) -> &str {
        match p {
            Priority::P1 => &self.p1,
            Priority::P2 => &self.p2,
            Priority::P3 => &self.p3,
            Priority::P4 => &self.p4,
        }
    }
}

fn default_issue_type() -> String {
    "Task".into()
}

fn default_done_transition() -> String {
    "Done".into()
}

/// Delivers ticket commands to one Jira Cloud site.
pub struct JiraSink {
    name: String,
    site: JiraSite,
    /// Incident key → issue key of issues created or found since start.
    records: RemoteRecords,
    /// Commands whose comment is posted but whose later step failed: a retry must not post the
    /// comment again.
    commented: HashSet<String>,
}

/// The site's REST API, and what the issues we create carry.
struct JiraSite {
    /// Authenticated with the account's email and API token.
    client: BasicAuthClient,
    /// `{base_url}/rest/api/3`.
    api: Url,
    project_key: String,
    issue_type: String,
    done_transition: String,
    priorities: JiraPriorities,
}

#[derive(Deserialize)]
struct SearchResults {
    #[serde(default)]
    issues: Vec<IssueRef>,
}

#[derive(Deserialize)]
struct IssueRef {
    key: String,
}

#[derive(Deserialize)]
struct Transitions {
    #[serde(default)]
    transitions: Vec<Transition>,
}

#[derive(Deserialize)]
struct Transition {
    id: String,
    name: String,
}

impl JiraSink {
    pub fn new(cfg: &JiraConfig, api_token: String) -> Result<JiraSink, ClientError> {
        let base = http::base_url(&cfg.base_url)?;
        let site = JiraSite {
            client: BasicAuthClient::new(cfg.timeout, &cfg.email, api_token)?,
            api: http::endpoint(&base, &["rest", "api", "3"]),
            project_key: cfg.project_key.clone(),
            issue_type: cfg.issue_type.clone(),
            done_transition: cfg.done_transition.clone(),
            priorities: cfg.priorities.clone(),
        };
        Ok(JiraSink { name: cfg.name.clone(), site, records: RemoteRecords::default(), commented: HashSet::new() })
    }

    async fn apply(&mut self, cmd: &TicketCommand) -> Result<(), SinkError> {
        let t = &cmd.ticket;
        let key = &t.idempotency_key;
        match cmd.action {
            Action::Open => self.records.open(key, self.site.find(key), self.site.create(t)).await,
            Action::Update => {
                let issue = self.existing(t).await?;
                self.site.comment(&issue, render::note_or_summary(t)).await
            }
            Action::Resolve => {
                let issue = self.existing(t).await?;
                if !self.commented.contains(&cmd.idempotency_key) {
                    self.site.comment(&issue, render::note_or_summary(t)).await?;
                    self.commented.insert(cmd.idempotency_key.clone());
                }
                let closed = self.site.close(&issue).await;
                if !matches!(closed, Err(SinkError::Retry(_))) {
                    self.commented.remove(&cmd.idempotency_key);
                    self.records.forget(key);
                }
                closed
            }
        }
    }

    /// The issue an Update or Resolve applies to. Commands of one sink are delivered in order,
    /// so a missing issue means the Open was refused for good (or the issue was deleted).
    async fn existing(&mut self, t: &Ticket) -> Result<String, SinkError> {
        let key = &t.idempotency_key;
        self.records
            .find(key, self.site.find(key))
            .await?
            .ok_or_else(|| SinkError::Permanent(format!("no issue labelled {} for {}", label(key), t.id)))
    }
}

impl TicketSink for JiraSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a mut self, cmd: &'a TicketCommand) -> SendFuture<'a> {
        Box::pin(self.apply(cmd))
    }
}

impl JiraSite {
    /// The key of the issue labelled for `incident_key`, if there is one.
    async fn find(&self, incident_key: &str) -> Result<Option<String>, SinkError> {
        let mut url = http::endpoint(&self.api, &["search", "jql"]);
        url.query_pairs_mut()
            .append_pair("jql", &format!("labels = {}", jql_string(&label(incident_key))))
            .append_pair("fields", "key")
            .append_pair("maxResults", "1");
        let resp = http::send(self.client.request(Method::GET, url)).await?;
        let found: SearchResults = http::json(resp, "issue search").await?;
        Ok(found.issues.into_iter().next().map(|issue| issue.key))
    }

    async fn create(&self, t: &Ticket) -> Result<Option<String>, SinkError> {
        let url = http::endpoint(&self.api, &["issue"]);
        let resp = http::send(self.client.request(Method::POST, url).json(&self.issue(t))).await?;
        // The issue exists now; a body we cannot read only costs a search later.
        Ok(http::json::<IssueRef>(resp, "issue create").await.ok().map(|i| i.key))
    }

    async fn comment(&self, issue: &str, text: &str) -> Result<(), SinkError> {
        let url = http::endpoint(&self.api, &["issue", issue, "comment"]);
        let body = json!({ "body": adf(&[Section { heading: "", lines: vec![text.to_string()] }]) });
        http::send(self.client.request(Method::POST, url).json(&body)).await.map(|_| ())
    }

    /// Moves the issue through the transition named `done_transition`. Transition ids differ
    /// between workflows, so the id is looked up by name each time.
    async fn close(&self, issue: &str) -> Result<(), SinkError> {
        let url = http::endpoint(&self.api, &["issue", issue, "transitions"]);
        let resp = http::send(self.client.request(Method::GET, url.clone())).await?;
        let available: Transitions = http::json(resp, "transitions").await?;
        let wanted = &self.done_transition;
        match available.transitions.iter().find(|tr| tr.name.eq_ignore_ascii_case(wanted)) {
            Some(tr) => {
                let body = json!({ "transition": { "id": tr.id } });
                http::send(self.client.request(Method::POST, url).json(&body)).await.map(|_| ())
            }
            None if self.is_done(issue).await? => Ok(()),
            None => {
                let names: Vec<&str> = available.transitions.iter().map(|tr| tr.name.as_str()).collect();
                Err(SinkError::Permanent(format!(
                    "issue {issue} has no transition named `{wanted}` (available: {})",
                    names.join(", ")
                )))
            }
        }
    }

    /// Whether the issue already is in a done status (closed by a person, or by an earlier
    /// attempt whose response was lost).
    async fn is_done(&self, issue: &str) -> Result<bool, SinkError> {
        let mut url = http::endpoint(&self.api, &["issue", issue]);
        url.query_pairs_mut().append_pair("fields", "status");
        let resp = http::send(self.client.request(Method::GET, url)).await?;
        let v: Value = http::json(resp, "issue status").await?;
        Ok(v["fields"]["status"]["statusCategory"]["key"] == "done")
    }

    /// The new issue.
    fn issue(&self, t: &Ticket) -> Value {
        json!({
            "fields": {
                "project": { "key": self.project_key },
                "issuetype": { "name": self.issue_type },
                "summary": summary_line(&t.title),
                "description": adf(&render::sections(t)),
                "labels": ["fieldwatch", label(&t.idempotency_key)],
                "priority": { "name": self.priorities.name(t.priority) },
            }
        })
    }
}

/// The label that ties an issue to its incident. Labels cannot contain spaces; the key is hex.
pub fn label(incident_key: &str) -> String {
    format!("fw-{incident_key}")
}

/// A JQL string literal.
fn jql_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Jira's summary field holds one line of at most 255 characters.
fn summary_line(title: &str) -> String {
    title.lines().next().unwrap_or_default().chars().take(255).collect()
}

/// Sections as an Atlassian Document Format document: a heading per titled section, a
/// paragraph per line. ADF rejects empty text nodes, and sections have no empty lines.
pub fn adf(sections: &[Section]) -> Value {
    let text = |s: &str| json!({ "type": "text", "text": s });
    let mut content = Vec::new();
    for s in sections {
        if !s.heading.is_empty() {
            content.push(json!({ "type": "heading", "attrs": { "level": 3 }, "content": [text(s.heading)] }));
        }
        for line in s.lines.iter().filter(|l| !l.is_empty()) {
            content.push(json!({ "type": "paragraph", "content": [text(line)] }));
        }
    }
    json!({ "type": "doc", "version": 1, "content": content })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ticket::tests::sample_ticket;

    #[test]
    fn issue_has_labels_priority_and_adf_description() {
        let cfg: JiraConfig = toml::from_str(
            "name = \"j\"\nbase_url = \"https://acme.atlassian.net\"\nemail = \"fw@acme.example\"\n\
             api_token = { env = \"X\" }\nproject_key = \"FS\"\npriorities = { p1 = \"Blocker\" }\n",
        )
        .unwrap();
        let sink = JiraSink::new(&cfg, "t".into()).unwrap();
        assert_eq!(sink.site.api.as_str(), "https://acme.atlassian.net/rest/api/3");
        let mut t = sample_ticket();
        t.priority = Priority::P1;
        let f = &sink.site.issue(&t)["fields"];
        assert_eq!(f["project"]["key"], "FS");
        assert_eq!(f["issuetype"]["name"], "Task");
        assert_eq!(f["priority"]["name"], "Blocker");
        assert_eq!(f["labels"], json!(["fieldwatch", format!("fw-{}", t.idempotency_key)]));
        let d = &f["description"];
        assert_eq!((d["type"].as_str(), d["version"].as_i64()), (Some("doc"), Some(1)));
        assert_eq!(d["content"][0]["type"], "heading");
        assert_eq!(d["content"][0]["content"][0]["text"], "What happened");
        assert_eq!(d["content"][1]["type"], "paragraph");
        assert_eq!(d["content"][1]["content"][0]["text"], t.what_happened);
    }

    #[test]
    fn jql_strings_are_quoted() {
        assert_eq!(jql_string("fw-ab12"), "\"fw-ab12\"");
        assert_eq!(jql_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }

    #[test]
    fn default_priorities_follow_jira() {
        let p = JiraPriorities::default();
        let names: Vec<_> = [Priority::P1, Priority::P2, Priority::P3, Priority::P4].map(|x| p.name(x)).to_vec();
        assert_eq!(names, ["Highest", "High", "Medium", "Low"]);
    }
}
