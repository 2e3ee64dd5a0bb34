//! Cross-company sharing as the engine applies it: the explainer (which
//! rule decides for two companies and a scope, and why), conflict
//! detection, the anonymised items a context pack takes from other
//! companies, and the count of denied cross-company reads, a security
//! signal.
//!
//! Every cross-company read here goes through the other company's own
//! scope, made on the system principal's admin path, and is audited under
//! that company's id; nothing but an anonymised copy leaves this module.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::future::try_join_all;
use kira_core::anonymise::{Redactions, anonymise};
use kira_core::audit::{AuditRecord, Outcome};
use kira_core::auth::{Access, AdminScope, CompanyScope, Principal, sha256};
use kira_core::company::Company;
use kira_core::conflict::{
    Conflict, NameKind, is_contract_event, listed_names, text_name_candidates,
};
use kira_core::memory::{Memory, new_memory_id};
use kira_core::sharing::{Facts, Verdict, decide};
use kira_core::{CompanyId, ValidationError};
use kira_store::conflicts::{MENTION_SCAN_MAX_KEYS, SCAN_MAX_KEYS};
use kira_store::memory::{MemoryFilter, TextHit};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::memory::pack;
use crate::{Engine, EngineError};

/// The most people and counterparties of one company the anonymiser is
/// given for a copy of its memories.
const MAX_REDACTED_NAMES: u32 = 5_000;

/// The explainer's answer.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SharingCheck {
    pub a: CompanyId,
    pub b: CompanyId,
    pub scope: String,
    /// Whether an open conflict flag stands between the two.
    pub conflict_open: bool,
    pub verdict: Verdict,
}

/// A scope name as the rules spell them.
fn check_scope(scope: &str) -> Result<(), ValidationError> {
    let ok = !scope.is_empty()
        && scope.len() <= 64
        && scope
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "scope",
            "must be 1 to 64 lowercase letters, digits or '_'",
        ))
    }
}

impl Engine {
    /// Which rule decides whether `a` and `b` may share items of `scope`,
    /// from both profiles and the open conflict flags. NotFound when either
    /// company does not exist; Invalid for one company with itself.
    pub async fn check_sharing(
        &self,
        admin: &AdminScope,
        a: &CompanyId,
        b: &CompanyId,
        scope: &str,
    ) -> Result<SharingCheck, EngineError> {
        check_scope(scope)?;
        if a == b {
            return Err(ValidationError::new("b", "must be another company than a").into());
        }
        let store = self.store();
        let pa = store.get_company(&admin.company(a, Access::Read)).await?;
        let pb = store.get_company(&admin.company(b, Access::Read)).await?;
        let conflict_open = store.conflict_open(admin, a, b).await?;
        let facts = Facts {
            a: &pa.profile,
            b: &pb.profile,
            conflict_open,
        };
        Ok(SharingCheck {
            a: a.clone(),
            b: b.clone(),
            scope: scope.to_owned(),
            conflict_open,
            verdict: decide(&self.config().sharing, &facts, scope),
        })
    }

    /// Opens a conflict flag for each counterparty that `memories` (just
    /// stored for the scope's company) share with another company: named
    /// in `content.counterparties`, or, for contract and deal events,
    /// anywhere in the text. Idempotent: a flag already open for the pair
    /// and counterparty only gains the new memory ids. Returns the flags
    /// made or grown.
    ///
    /// Other companies' counterparties are found by one scan of the name
    /// index per [`SCAN_MAX_KEYS`] candidate names (whatever the number of
    /// companies), audited under each company matched. The other direction
    /// too: each counterparty listed is looked for in other companies'
    /// contract and deal texts (full text, confirmed on the text), so a
    /// text written before the name was listed anywhere is still matched.
    pub async fn detect_conflicts(
        &self,
        scope: &CompanyScope,
        memories: &[Memory],
    ) -> Result<Vec<Conflict>, EngineError> {
        // Candidate key -> the new memories that name it.
        let mut named: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
        // The counterparties they list, looked for in others' contract texts.
        let mut listed: BTreeSet<String> = BTreeSet::new();
        for m in memories {
            let mut add = |key: String| {
                let ids = named.entry(key).or_default();
                if ids.last() != Some(&m.id) {
                    ids.push(m.id);
                }
            };
            for n in listed_names(&m.content) {
                if n.kind == NameKind::Counterparty {
                    listed.insert(n.key.clone());
                    add(n.key);
                }
            }
            if is_contract_event(m) {
                text_name_candidates(m.text(), &mut add);
            }
        }
        if named.is_empty() {
            return Ok(Vec::new());
        }
        let admin = system_admin()?;
        let store = self.store();
        let now = self.clock().now();
        let company = scope.company();
        let keys: Vec<String> = named.keys().cloned().collect();
        let listed: Vec<String> = listed.into_iter().collect();
        let scan = || {
            system_record(
                now,
                "memory.conflict_scan",
                None,
                format!("company:{company}"),
                String::new(),
            )
        };
        let mut found = Vec::new();
        for chunk in keys.chunks(SCAN_MAX_KEYS) {
            found.extend(
                store
                    .scan_counterparties(&admin, company, chunk, scan())
                    .await?,
            );
        }
        // The other direction: others' contract texts that name what these
        // memories list, written before it was listed here.
        for chunk in listed.chunks(MENTION_SCAN_MAX_KEYS) {
            found.extend(
                store
                    .scan_contract_mentions(&admin, company, chunk, scan())
                    .await?,
            );
        }
        let mut flags = Vec::new();
        for m in found {
            let mut ids = named.get(&m.key).cloned().unwrap_or_default();
            ids.extend(m.memory_ids);
            let audit = system_record(
                now,
                "conflict.flag",
                None,
                "conflicts".into(),
                format!("{company} and {} both name {}", m.company, m.key),
            );
            let flag = store
                .flag_conflict(
                    &admin,
                    new_memory_id(now),
                    company,
                    &m.company,
                    &m.key,
                    &ids,
                    now,
                    audit,
                )
                .await?;
            flags.extend(flag);
        }
        Ok(flags)
    }

    /// Items for a context pack's shared section: the best full-text hits
    /// for `query` among the memories of every other active company whose
    /// pair with the scope's company the rules allow `task_scope` for (open
    /// conflicts included), at most `k` in all, each an anonymised copy
    /// (the company's name and id, its contacts, the people and
    /// counterparties its memories list, emails, phones, amounts and exact
    /// dates replaced) whose id, `shared:<hash>`, names no company.
    ///
    /// Items rank by score (each partner's best hit scores 1), ties going
    /// to the partner listed first; partners are searched, a few at once,
    /// only until no later one could change the answer, at most
    /// `shared_companies` of them.
    ///
    /// A pair the rules would allow but an open conflict blocks is a
    /// denied cross-company read: counted and audited.
    pub async fn shared_candidates(
        &self,
        scope: &CompanyScope,
        task_scope: &str,
        query: &str,
        k: usize,
    ) -> Result<Vec<pack::Candidate>, EngineError> {
        if k == 0 || query.trim().is_empty() {
            return Ok(Vec::new());
        }
        let store = self.store();
        let rules = &self.config().sharing;
        let admin = system_admin()?;
        let me = scope.company();
        // The company itself from the kept directory (one small read when
        // nothing changed); an archived one is not listed there.
        let companies = self.directory(&admin).await?;
        let own = match companies.iter().find(|c| &c.id == me) {
            Some(c) => c.clone(),
            None => store.get_company(scope).await?,
        };
        // Conditions have no negation, so they are monotone in their atoms,
        // and no partner makes more atoms true than the company itself does
        // (same jurisdiction and industry; consent needs both sides). If
        // the company could not share the scope with itself, it shares it
        // with nobody: no cross-company read at all.
        let best = Facts {
            a: &own.profile,
            b: &own.profile,
            conflict_open: false,
        };
        if !decide(rules, &best, task_scope).allowed {
            return Ok(Vec::new());
        }
        let now = self.clock().now();
        // What this pack reads across companies, audited in one batch
        // (with other packs' batches) whatever the outcome.
        let mut audits = vec![system_record(
            now,
            "sharing.partners",
            Some(me.clone()),
            format!("company:{me}"),
            format!("scope {task_scope}"),
        )];
        let found = self
            .shared_search(
                scope,
                &own,
                &companies,
                task_scope,
                query,
                k,
                now,
                &mut audits,
            )
            .await;
        let written = self.audit_reads(audits).await;
        let found = found?;
        written?;
        Ok(found)
    }

    /// The search behind [`Engine::shared_candidates`]; pushes what it
    /// reads (and is refused) to `audits`.
    #[allow(clippy::too_many_arguments)]
    async fn shared_search(
        &self,
        scope: &CompanyScope,
        own: &Company,
        companies: &[Company],
        task_scope: &str,
        query: &str,
        k: usize,
        now: chrono::DateTime<chrono::Utc>,
        audits: &mut Vec<AuditRecord>,
    ) -> Result<Vec<pack::Candidate>, EngineError> {
        let store = self.store();
        let rules = &self.config().sharing;
        let admin = system_admin()?;
        let me = scope.company();
        let blocked: HashSet<CompanyId> = store
            .conflict_partners(&admin, me)
            .await?
            .into_iter()
            .collect();
        let limit = u32::try_from(k).unwrap_or(u32::MAX);
        let max_companies = self.config().memory.context.shared_companies as usize;
        // (partner's place in the listing, the candidate), in the partner's
        // own best-first order.
        let mut found: Vec<(usize, pack::Candidate)> = Vec::new();
        let mut searched = 0usize;
        // Collected, not a lazy filter: the future must stay Send.
        let partners: Vec<&Company> = companies.iter().filter(|c| &c.id != me).collect();
        let mut next = 0usize;
        loop {
            // Each partner's best hit scores 1 and ties go to the earlier
            // partner, so once `k` items score 1 no later partner can change
            // the answer: a wave searches only as many partners as could
            // still add one. Usually one wave of `k` partners, searched
            // together, settles it.
            let top = found.iter().filter(|(_, c)| c.score >= 1.0).count();
            if top >= k || searched == max_companies || next == partners.len() {
                break;
            }
            let want = (k - top).min(max_companies - searched);
            let mut wave = Vec::with_capacity(want);
            while wave.len() < want {
                let Some(&other) = partners.get(next) else {
                    break;
                };
                let place = next;
                next += 1;
                let facts = Facts {
                    a: &own.profile,
                    b: &other.profile,
                    conflict_open: blocked.contains(&other.id),
                };
                let verdict = decide(rules, &facts, task_scope);
                if !verdict.allowed {
                    let unblocked = Facts {
                        conflict_open: false,
                        ..facts
                    };
                    if facts.conflict_open && decide(rules, &unblocked, task_scope).allowed {
                        audits.push(
                            self.deny_cross_company_read(now, me, &other.id, task_scope, &verdict),
                        );
                    }
                    continue;
                }
                wave.push((place, other, verdict));
            }
            if wave.is_empty() {
                break;
            }
            searched += wave.len();
            let results: Vec<Vec<TextHit>> = try_join_all(wave.iter().map(|(_, other, _)| {
                let theirs = admin.company(&other.id, Access::Read);
                async move {
                    store
                        .search_memories(&theirs, query, &MemoryFilter::default(), limit)
                        .await
                }
            }))
            .await?;
            // The names to redact, for each partner with hits, read together.
            let names: Vec<Vec<(NameKind, String)>> =
                try_join_all(wave.iter().zip(&results).map(|((_, other, _), hits)| {
                    let theirs = admin.company(&other.id, Access::Read);
                    let any = !hits.is_empty();
                    async move {
                        if any {
                            store.listed_names(&theirs, MAX_REDACTED_NAMES).await
                        } else {
                            Ok(Vec::new())
                        }
                    }
                }))
                .await?;
            for (((place, other, verdict), hits), names) in wave.into_iter().zip(results).zip(names)
            {
                audits.push(system_record(
                    now,
                    "memory.shared_read",
                    Some(other.id.clone()),
                    format!("company:{me}"),
                    format!(
                        "{} anonymised item(s) of scope {task_scope} for {me}, rule {}",
                        hits.len(),
                        verdict.rule.as_deref().unwrap_or("-")
                    ),
                ));
                if hits.is_empty() {
                    continue;
                }
                let mut redact = Redactions::of_company(&other.id, &other.profile);
                for (kind, name) in names {
                    match kind {
                        NameKind::Person => redact.people.push(name),
                        NameKind::Counterparty => redact.counterparties.push(name),
                    }
                }
                let best = hits
                    .iter()
                    .map(|h| h.relevance)
                    .fold(f64::MIN_POSITIVE, f64::max);
                for h in hits {
                    found.push((
                        place,
                        pack::Candidate {
                            id: shared_id(&other.id, h.memory.id),
                            layer: None,
                            score: (h.relevance / best).clamp(f64::MIN_POSITIVE, 1.0),
                            text: anonymise(&render_shared(&h.memory), &redact),
                        },
                    ));
                }
            }
        }
        // Stable: within a partner, its own order stays.
        found.sort_by(|(pa, a), (pb, b)| b.score.total_cmp(&a.score).then(pa.cmp(pb)));
        Ok(found.into_iter().take(k).map(|(_, c)| c).collect())
    }

    /// Every active company, as [`kira_store::CompanyStore::company_directory`]
    /// has them: kept, and read again only when the store's directory
    /// version moved (any company made, changed, archived or deleted, by
    /// any process), so a pack pays one small read instead of the listing.
    async fn directory(
        &self,
        admin: &kira_core::auth::AdminScope,
    ) -> Result<Arc<Vec<Company>>, EngineError> {
        let store = self.store();
        let version = store.directory_version().await?;
        let kept = |version| {
            self.kept_directory()
                .as_ref()
                .filter(|(v, _)| *v == version)
                .map(|(_, c)| c.clone())
        };
        if let Some(companies) = kept(version) {
            return Ok(companies);
        }
        // One reader at a time: those who waited find it read.
        let _reload = self.inner.directory_reload.lock().await;
        if let Some(companies) = kept(version) {
            return Ok(companies);
        }
        // Read after the version: a change in between is seen next time.
        let companies = Arc::new(store.company_directory(admin).await?);
        *self.kept_directory() = Some((version, companies.clone()));
        Ok(companies)
    }

    fn kept_directory(&self) -> std::sync::MutexGuard<'_, Option<(i64, Arc<Vec<Company>>)>> {
        self.inner
            .directory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a cross-company read that was refused; returns its audit
    /// entry for the caller to write.
    fn deny_cross_company_read(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        reader: &CompanyId,
        owner: &CompanyId,
        task_scope: &str,
        verdict: &Verdict,
    ) -> AuditRecord {
        self.count_denied_cross_company_read();
        AuditRecord {
            outcome: Outcome::Denied,
            ..system_record(
                now,
                "memory.shared_read",
                Some(owner.clone()),
                format!("company:{reader}"),
                format!("scope {task_scope}: {}", verdict.reason),
            )
        }
    }

    /// Writes audit entries of reads, grouped with other callers' into one
    /// transaction ([`crate::group`]).
    pub(crate) async fn audit_reads(&self, records: Vec<AuditRecord>) -> Result<(), EngineError> {
        if records.is_empty() {
            return Ok(());
        }
        self.inner
            .audits
            .submit(
                records,
                |groups| async move {
                    let n = groups.len();
                    let all: Vec<AuditRecord> = groups.into_iter().flatten().collect();
                    let r = self
                        .store()
                        .append_audits(all)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string());
                    vec![r; n]
                },
                || Err("the audit entries were not written".into()),
            )
            .await
            .map_err(EngineError::Audit)
    }

    /// Counts one denied cross-company read (the caller audits it).
    pub fn count_denied_cross_company_read(&self) {
        self.inner
            .denied_cross_company_reads
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Denied cross-company reads since this process started: a security
    /// signal for monitoring.
    pub fn denied_cross_company_reads(&self) -> u64 {
        self.inner
            .denied_cross_company_reads
            .load(Ordering::Relaxed)
    }
}

/// The system principal's admin path, for the engine's own cross-company
/// work.
fn system_admin() -> Result<AdminScope, EngineError> {
    Principal::system().admin().map_err(|_| {
        EngineError::Invalid(ValidationError::new(
            "principal",
            "the system principal is not an admin",
        ))
    })
}

fn system_record(
    at: chrono::DateTime<chrono::Utc>,
    action: &str,
    company: Option<CompanyId>,
    target: String,
    detail: String,
) -> AuditRecord {
    AuditRecord {
        at,
        request_id: format!("{action}-{}", at.timestamp_millis()),
        actor: "system".into(),
        company_id: company,
        action: action.into(),
        target,
        outcome: Outcome::Ok,
        detail,
    }
}

/// A shared item's id: a hash of its origin, so a pack can tell items
/// apart without learning which company they came from.
fn shared_id(company: &CompanyId, memory: Uuid) -> String {
    let digest = sha256(format!("shared\u{1f}{company}\u{1f}{memory}").as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("shared:{hex}")
}

/// A memory as another company sees it, before anonymising: its kind and
/// text, without the date (an exact date is one of the things removed).
fn render_shared(m: &Memory) -> String {
    format!(
        "[{}/{}] {}",
        m.event_type,
        m.workstream,
        m.text().replace('\n', " ")
    )
}
