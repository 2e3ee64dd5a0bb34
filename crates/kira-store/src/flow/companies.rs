//! Company and audit rows, written once for both backends.

use kira_core::CompanyId;
use kira_core::audit::{AuditEntry, Outcome};
use kira_core::company::{Company, CompanyProfile};

use crate::sql::{Columns, Conn, q};
use crate::{Result, StoreError};

fn company_id(s: &str) -> Result<CompanyId> {
    CompanyId::parse(s).map_err(|e| StoreError::Corrupt(format!("company id {s:?}: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(col: &str, v: serde_json::Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

/// The columns [`company_from_row`] reads.
pub(crate) const COMPANY_COLUMNS: &str = "company_id, name, industry, jurisdiction, revenue_usd, complexity_score, \
     activity_score, priority_multiplier, sla_response_seconds, contacts, sharing_consent, \
     created_at, updated_at, archived_at";

pub(crate) fn company_from_row<R: Columns + ?Sized>(r: &R) -> Result<Company> {
    Ok(Company {
        id: company_id(&r.text("company_id")?)?,
        profile: CompanyProfile {
            name: r.text("name")?,
            industry: r.text("industry")?,
            jurisdiction: r.text("jurisdiction")?,
            revenue_usd: r.int("revenue_usd")?,
            complexity_score: r.real("complexity_score")?,
            activity_score: r.real("activity_score")?,
            priority_multiplier: r.real("priority_multiplier")?,
            sla_response_seconds: r.int32("sla_response_seconds")?,
            contacts: from_json("contacts", r.json("contacts")?)?,
            sharing_consent: from_json("sharing_consent", r.json("sharing_consent")?)?,
        },
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
        archived_at: r.opt_time("archived_at")?,
    })
}

/// The company; on PostgreSQL `lock` takes its row.
pub(crate) async fn load_company(c: &mut dyn Conn, id: &CompanyId, lock: bool) -> Result<Company> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!("SELECT {COMPANY_COLUMNS} FROM companies WHERE company_id = $1")
    });
    let s = q(SQL.as_str()).arg(id.as_str());
    let s = if lock { s.for_update() } else { s };
    company_from_row(&c.one(s).await?)
}

/// The columns [`audit_from_row`] reads.
pub(crate) const AUDIT_COLUMNS: &str =
    "seq, at, request_id, actor, company_id, action, target, outcome, detail, prev_hash, hash";

pub(crate) fn audit_from_row<R: Columns + ?Sized>(r: &R) -> Result<AuditEntry> {
    let outcome = r.text("outcome")?;
    Ok(AuditEntry {
        seq: r.int("seq")?,
        at: r.time("at")?,
        request_id: r.text("request_id")?,
        actor: r.text("actor")?,
        company_id: r
            .opt_text("company_id")?
            .as_deref()
            .map(company_id)
            .transpose()?,
        action: r.text("action")?,
        target: r.text("target")?,
        outcome: Outcome::parse(&outcome)
            .ok_or_else(|| StoreError::Corrupt(format!("outcome {outcome:?}")))?,
        detail: r.text("detail")?,
        prev_hash: r.text("prev_hash")?,
        hash: r.text("hash")?,
    })
}
