//! Conflict flags: the storage trait. Every method is on the admin path
//! (an [`AdminScope`]): a flag names two companies and a counterparty of
//! each, so no company scope may read it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kira_core::CompanyId;
use kira_core::audit::AuditRecord;
use kira_core::auth::AdminScope;
use kira_core::conflict::{Conflict, ConflictStatus};
use uuid::Uuid;

use crate::Result;

#[async_trait]
pub trait ConflictStore: Send + Sync {
    /// Flags `counterparty` (normalised) between the two companies, named
    /// by `memory_ids`, idempotently: an open flag for the pair and
    /// counterparty gains the ids it lacked; a resolved one that already
    /// names every id is left alone (a human looked at exactly this);
    /// otherwise a new open flag `id` is made. Returns the flag when it was
    /// made or grew (and then appends `audit`, with no company, and for each
    /// company a notice naming the flag alone: see [`flag_records`]), None
    /// when nothing changed. Invalid for a company and itself.
    #[allow(clippy::too_many_arguments)]
    async fn flag_conflict(
        &self,
        admin: &AdminScope,
        id: Uuid,
        a: &CompanyId,
        b: &CompanyId,
        counterparty: &str,
        memory_ids: &[Uuid],
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Option<Conflict>>;

    /// Flags, newest first; every status when `status` is None.
    async fn list_conflicts(
        &self,
        admin: &AdminScope,
        status: Option<ConflictStatus>,
        audit: AuditRecord,
    ) -> Result<Vec<Conflict>>;

    /// NotFound for an unknown id; Conflict when already resolved.
    async fn resolve_conflict(
        &self,
        admin: &AdminScope,
        id: Uuid,
        note: &str,
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Conflict>;

    /// Whether an open flag exists between the two (either order).
    async fn conflict_open(&self, admin: &AdminScope, a: &CompanyId, b: &CompanyId)
    -> Result<bool>;

    /// The companies with an open flag against `company`, each once.
    async fn conflict_partners(
        &self,
        admin: &AdminScope,
        company: &CompanyId,
    ) -> Result<Vec<CompanyId>>;

    /// The conflict scan: which companies other than `company` list one of
    /// `keys` (normalised counterparty names) in a memory's
    /// `content.counterparties`, with up to [`SCAN_IDS_PER_MATCH`] of those
    /// memories' ids each, ordered by key, company and id. Reads the
    /// name index only, never another company's memories. For every company
    /// matched, appends `audit` naming it and which of its counterparties
    /// matched, with no company (the admin's view only; see
    /// [`scan_records`]), in the same transaction; a scan that matches
    /// nothing writes nothing.
    async fn scan_counterparties(
        &self,
        admin: &AdminScope,
        company: &CompanyId,
        keys: &[String],
        audit: AuditRecord,
    ) -> Result<Vec<CounterpartyMatch>>;

    /// The other direction of the scan: which companies other than
    /// `company` have a contract or deal memory (event type `contract`, or
    /// a category naming a contract or deal) whose text names one of
    /// `keys`, listed or not, with up to [`SCAN_IDS_PER_MATCH`] ids each.
    /// Found with the full-text index (a phrase per key), then confirmed
    /// on the text by the core rule ([`kira_core::conflict::text_name_candidates`]),
    /// so a stemmed near-miss never counts. Audited per company matched, as
    /// [`ConflictStore::scan_counterparties`] is. At most
    /// [`MENTION_SCAN_MAX_KEYS`] keys per call.
    async fn scan_contract_mentions(
        &self,
        admin: &AdminScope,
        company: &CompanyId,
        keys: &[String],
        audit: AuditRecord,
    ) -> Result<Vec<CounterpartyMatch>>;
}

/// The most keys one mention scan takes (one full-text query each).
pub const MENTION_SCAN_MAX_KEYS: usize = 100;

/// Texts one key's phrase query reads at most.
pub(crate) const MENTION_ROWS_PER_KEY: i64 = 500;

/// The keys of a mention scan, checked, blank ones dropped, each once, in
/// order.
pub(crate) fn mention_keys(keys: &[String]) -> Result<Vec<&String>> {
    check_keys(keys, MENTION_SCAN_MAX_KEYS, "mention scan")?;
    let mut keys: Vec<&String> = keys.iter().filter(|k| !k.trim().is_empty()).collect();
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// Whether `text` names `key` (a normalised name), by the core rule.
pub(crate) fn text_names(text: &str, key: &str) -> bool {
    let mut found = false;
    kira_core::conflict::text_name_candidates(text, |k| found |= k == key);
    found
}

/// The most memory ids of one company a scan returns per counterparty: a
/// flag names examples for its reviewer, not every mention.
pub const SCAN_IDS_PER_MATCH: usize = 20;

/// The most keys one scan takes; callers send more in several scans.
pub const SCAN_MAX_KEYS: usize = 5_000;

/// Another company that lists a counterparty the scanning company names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterpartyMatch {
    /// The normalised name.
    pub key: String,
    pub company: CompanyId,
    pub memory_ids: Vec<Uuid>,
}

/// The audit records of a scan's matches, from the template: one per
/// company matched, naming it and its counterparties that matched. They
/// name two companies, so they are written with no company: the admin's
/// view alone shows them (issue 17: a company's own audit log never names
/// another company or what matched there). Each company hears of a match
/// through [`flag_records`] instead.
pub(crate) fn scan_records(audit: &AuditRecord, matches: &[CounterpartyMatch]) -> Vec<AuditRecord> {
    let mut by_company: std::collections::BTreeMap<&CompanyId, Vec<&str>> = Default::default();
    for m in matches {
        by_company.entry(&m.company).or_default().push(&m.key);
    }
    by_company
        .into_iter()
        .map(|(company, keys)| AuditRecord {
            company_id: None,
            detail: format!(
                "company:{company}: counterparties matched: {}",
                keys.join(", ")
            ),
            ..audit.clone()
        })
        .collect()
}

/// The audit records of a flag made (`new`) or grown: `audit` as the
/// caller wrote it (the admin's, naming both companies, written with no
/// company), and for each of the two companies an entry under it that
/// names the flag alone: not the other company, the counterparty or any
/// memory id.
pub(crate) fn flag_records(audit: AuditRecord, flag: &Conflict, new: bool) -> Vec<AuditRecord> {
    let detail = if new {
        "conflict flag raised"
    } else {
        "conflict flag updated"
    };
    let notice = |company: &CompanyId| AuditRecord {
        company_id: Some(company.clone()),
        target: format!("conflict:{}", flag.id),
        detail: detail.to_owned(),
        ..audit.clone()
    };
    let notices = [notice(&flag.company_a), notice(&flag.company_b)];
    std::iter::once(AuditRecord {
        company_id: None,
        ..audit
    })
    .chain(notices)
    .collect()
}

pub(crate) fn check_scan_keys(keys: &[String]) -> Result<()> {
    check_keys(keys, SCAN_MAX_KEYS, "scan")
}

fn check_keys(keys: &[String], max: usize, what: &str) -> Result<()> {
    if keys.len() > max {
        return Err(
            kira_core::ValidationError::new("keys", format!("at most {max} per {what}")).into(),
        );
    }
    Ok(())
}

/// Rows of (key, company, memory id) in key, company, id order, grouped
/// into matches of at most [`SCAN_IDS_PER_MATCH`] ids.
pub(crate) fn group_matches(rows: Vec<(String, CompanyId, Uuid)>) -> Vec<CounterpartyMatch> {
    let mut out: Vec<CounterpartyMatch> = Vec::new();
    for (key, company, id) in rows {
        match out.last_mut() {
            Some(m) if m.key == key && m.company == company => {
                if m.memory_ids.len() < SCAN_IDS_PER_MATCH {
                    m.memory_ids.push(id);
                }
            }
            _ => out.push(CounterpartyMatch {
                key,
                company,
                memory_ids: vec![id],
            }),
        }
    }
    out
}

/// The ids a flag should hold after adding `new` to `old`: `old` in its
/// order, then each new id it lacked. None when nothing is new.
pub(crate) fn merged_ids(old: &[Uuid], new: &[Uuid]) -> Option<Vec<Uuid>> {
    let mut out = old.to_vec();
    for id in new {
        if !out.contains(id) {
            out.push(*id);
        }
    }
    (out.len() > old.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use kira_core::audit::Outcome;

    use super::*;

    fn cid(s: &str) -> CompanyId {
        CompanyId::parse(s).expect("id")
    }

    fn template(detail: &str) -> AuditRecord {
        AuditRecord {
            at: Utc
                .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
                .single()
                .expect("time"),
            request_id: "r".into(),
            actor: "system".into(),
            company_id: Some(cid("acme")),
            action: "conflict.flag".into(),
            target: "conflicts".into(),
            outcome: Outcome::Ok,
            detail: detail.into(),
        }
    }

    /// What a company reads of a flag names neither the other company, nor
    /// the counterparty, nor a memory id; the admin's entry keeps them.
    #[test]
    fn each_company_reads_only_that_a_flag_was_raised() {
        let memory = Uuid::from_u128(7);
        let flag = Conflict {
            id: Uuid::from_u128(1),
            company_a: cid("acme"),
            company_b: cid("beta"),
            counterparty: "initech".into(),
            memory_ids: vec![memory],
            detected_at: template("").at,
            status: ConflictStatus::Open,
            resolved_at: None,
            resolved_by: None,
            note: None,
        };
        let records = flag_records(template("acme and beta both name initech"), &flag, true);
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].company_id, None);
        assert!(records[0].detail.contains("beta"));
        for (r, own, other) in [(&records[1], "acme", "beta"), (&records[2], "beta", "acme")] {
            assert_eq!(r.company_id, Some(cid(own)));
            let text = format!("{} {} {}", r.target, r.detail, r.request_id);
            for hidden in [other, "initech", &memory.to_string()] {
                assert!(!text.contains(hidden), "{own} reads {hidden}: {r:?}");
            }
            assert_eq!(r.detail, "conflict flag raised");
            assert_eq!(r.target, format!("conflict:{}", flag.id));
        }
        assert_eq!(
            flag_records(template(""), &flag, false)[1].detail,
            "conflict flag updated"
        );
        let matched = scan_records(
            &template(""),
            &[CounterpartyMatch {
                key: "initech".into(),
                company: cid("beta"),
                memory_ids: vec![memory],
            }],
        );
        assert_eq!(matched.len(), 1);
        assert_eq!(matched[0].company_id, None, "the admin's view only");
        assert!(
            matched[0].detail.contains("company:beta") && matched[0].detail.contains("initech")
        );
    }
}
