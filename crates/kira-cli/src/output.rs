//! Human output: tables of companies, keys and audit entries. No colours,
//! so NO_COLOR and pipes need no special case; scripts use `--json`.

use chrono::{DateTime, Utc};
use comfy_table::{ContentArrangement, Table};
use kira_core::audit::AuditEntry;
use kira_core::auth::ApiKey;
use kira_core::company::{Company, Contact};
use serde_json::Value;

/// The server's JSON, pretty, for `--json`.
pub fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Columns and a line under the header, nothing else: easy to read and to
/// copy an id from.
const PLAIN: &str = "    ────           ";

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(PLAIN)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    t
}

pub fn time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

fn opt_time(t: &Option<DateTime<Utc>>) -> String {
    t.as_ref().map(time).unwrap_or_default()
}

pub fn companies(list: &[Company]) -> String {
    if list.is_empty() {
        return "no companies".to_owned();
    }
    let mut t = table(&[
        "ID",
        "NAME",
        "INDUSTRY",
        "JURISDICTION",
        "PRIORITY",
        "SLA (s)",
        "STATUS",
    ]);
    for c in list {
        let p = &c.profile;
        t.add_row(vec![
            c.id.to_string(),
            p.name.clone(),
            p.industry.clone(),
            p.jurisdiction.clone(),
            format!("{}", p.priority_multiplier),
            p.sla_response_seconds.to_string(),
            if c.is_archived() {
                "archived"
            } else {
                "active"
            }
            .to_owned(),
        ]);
    }
    t.to_string()
}

fn contact(c: &Contact) -> String {
    let mut s = c.name.clone();
    if let Some(e) = &c.email {
        s.push_str(&format!(" <{e}>"));
    }
    if let Some(w) = &c.webhook {
        s.push_str(&format!(" webhook {w}"));
    }
    s
}

pub fn company(c: &Company) -> String {
    let p = &c.profile;
    let mut t = table(&["FIELD", "VALUE"]);
    let contacts: Vec<String> = p.contacts.iter().map(contact).collect();
    let consent: Vec<&str> = p.sharing_consent.iter().map(String::as_str).collect();
    let rows: [(&str, String); 14] = [
        ("id", c.id.to_string()),
        ("name", p.name.clone()),
        ("industry", p.industry.clone()),
        ("jurisdiction", p.jurisdiction.clone()),
        ("revenue (USD)", p.revenue_usd.to_string()),
        ("complexity", p.complexity_score.to_string()),
        ("activity", p.activity_score.to_string()),
        ("priority multiplier", p.priority_multiplier.to_string()),
        ("SLA response (s)", p.sla_response_seconds.to_string()),
        ("contacts", contacts.join("\n")),
        ("sharing consent", consent.join(", ")),
        ("created", time(&c.created_at)),
        ("updated", time(&c.updated_at)),
        ("archived", opt_time(&c.archived_at)),
    ];
    for (k, v) in rows {
        t.add_row(vec![k.to_owned(), v]);
    }
    t.to_string()
}

pub fn keys(list: &[ApiKey]) -> String {
    if list.is_empty() {
        return "no keys".to_owned();
    }
    let mut t = table(&["ID", "NAME", "ROLE", "COMPANY", "CREATED", "REVOKED"]);
    for k in list {
        t.add_row(vec![
            k.id.to_string(),
            k.name.clone(),
            k.role.to_string(),
            k.company_id
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            time(&k.created_at),
            opt_time(&k.revoked_at),
        ]);
    }
    t.to_string()
}

pub fn audit(list: &[AuditEntry]) -> String {
    if list.is_empty() {
        return "no audit entries".to_owned();
    }
    let mut t = table(&[
        "SEQ", "AT", "ACTOR", "COMPANY", "ACTION", "TARGET", "OUTCOME", "DETAIL",
    ]);
    for e in list {
        t.add_row(vec![
            e.seq.to_string(),
            time(&e.at),
            e.actor.clone(),
            e.company_id
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            e.action.clone(),
            e.target.clone(),
            e.outcome.as_str().to_owned(),
            e.detail.clone(),
        ]);
    }
    t.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_company() -> Company {
        serde_json::from_value(serde_json::json!({
            "id": "acme", "name": "Acme Corp", "industry": "fintech", "jurisdiction": "US-DE",
            "revenue_usd": 1000, "complexity_score": 0.5, "activity_score": 0.25,
            "priority_multiplier": 1.5, "sla_response_seconds": 30,
            "contacts": [{"name": "Jane Doe", "email": "jane@x.com"}],
            "sharing_consent": ["process_templates"],
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-02T00:00:00Z",
            "archived_at": null
        }))
        .expect("valid company")
    }

    #[test]
    fn company_tables_show_the_fields_an_operator_reads() {
        let c = sample_company();
        let list = companies(std::slice::from_ref(&c));
        for s in ["acme", "Acme Corp", "US-DE", "1.5", "active"] {
            assert!(list.contains(s), "{s} missing from\n{list}");
        }
        let one = company(&c);
        for s in [
            "Jane Doe <jane@x.com>",
            "process_templates",
            "2026-01-02 00:00:00Z",
        ] {
            assert!(one.contains(s), "{s} missing from\n{one}");
        }
        assert_eq!(companies(&[]), "no companies");
    }
}
