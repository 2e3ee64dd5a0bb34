//! Cross-company sharing as the engine applies it: publishing (a company
//! marks one of its memories shareable for a scope; the anonymised text is
//! made then and stored), consents (an admin records that a company
//! exchanges a scope with a partner or with `*`), the explainer (which rule
//! and which consents decide for two companies and a scope, and why),
//! conflict detection, the published items a context pack takes from other
//! companies, and the count of denied cross-company reads, a security
//! signal.
//!
//! Every cross-company read here goes through the other company's own
//! scope, made on the system principal's admin path, and is audited under
//! that company's id; it reads only the other company's published items,
//! never its memories.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use futures_util::future::try_join_all;
use kira_core::anonymise::{Redactions, anonymise};
use kira_core::audit::{AuditRecord, Outcome};
use kira_core::auth::{Access, AdminScope, CompanyScope, Principal, sha256};
use kira_core::company::Company;
use kira_core::conflict::{
    Conflict, ConflictStatus, NameKind, is_contract_event, listed_names, text_name_candidates,
};
use kira_core::memory::{Memory, new_memory_id};
use kira_core::sharing::{Consent, Partner, Party, check_scope_name};
use kira_core::sharing::{Facts, Verdict, decide};
use kira_core::{CompanyId, ValidationError};
use kira_store::conflicts::{MENTION_SCAN_MAX_KEYS, SCAN_MAX_KEYS};
use kira_store::sharing::{ConsentRecord, MAX_LIVE_ITEMS, SharedFilter, SharedItem};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::group::Group;
use crate::memory::pack;
use crate::{Ctx, EngineError};

/// The longest note a conflict is resolved with, in characters.
pub const MAX_RESOLVE_NOTE_CHARS: usize = 2_000;

/// The most people and counterparties of one company the anonymiser is
/// given when one of its memories is published.
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
    check_scope_name(scope, "scope")
}

/// The companies and every company's consents, as of a directory version.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    companies: Vec<Company>,
    consents: BTreeMap<CompanyId, Vec<Consent>>,
}

impl Directory {
    /// Every active company.
    pub(crate) fn iter(&self) -> std::slice::Iter<'_, Company> {
        self.companies.iter()
    }

    fn consents(&self, company: &CompanyId) -> &[Consent] {
        self.consents.get(company).map_or(&[], Vec::as_slice)
    }

    fn party<'a>(&'a self, c: &'a Company) -> Party<'a> {
        Party {
            id: &c.id,
            profile: &c.profile,
            consents: self.consents(&c.id),
        }
    }
}

/// Cross-company sharing. Owns what makes a context pack's shared section
/// cheap and audited: the company directory kept as of a directory version,
/// the group commit of the audit entries of cross-company reads, and the
/// count of denied reads.
pub struct Sharing {
    ctx: Arc<Ctx>,
    /// The company directory as of a directory version.
    directory: std::sync::Mutex<Option<(i64, Arc<Directory>)>>,
    /// Held while the directory is read again, so runs that find it stale
    /// at the same moment (the first wave after a start) read it once.
    directory_reload: tokio::sync::Mutex<()>,
    /// Audit entries of reads waiting to be written together.
    audits: Group<Vec<AuditRecord>, Result<(), String>>,
}

impl Sharing {
    pub(crate) fn new(ctx: Arc<Ctx>) -> Self {
        Self {
            ctx,
            directory: std::sync::Mutex::new(None),
            directory_reload: tokio::sync::Mutex::new(()),
            audits: Group::default(),
        }
    }

    /// Which rule decides whether `a` and `b` may share items of `scope`,
    /// from both profiles and the open conflict flags. NotFound when either
    /// company does not exist; Invalid for one company with itself.
    pub async fn check(
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
        let store = &self.ctx.store;
        let (sa, sb) = (
            admin.company(a, Access::Read),
            admin.company(b, Access::Read),
        );
        let pa = store.get_company(&sa).await?;
        let pb = store.get_company(&sb).await?;
        let ca: Vec<Consent> = store
            .list_consents(&sa)
            .await?
            .iter()
            .map(ConsentRecord::consent)
            .collect();
        let cb: Vec<Consent> = store
            .list_consents(&sb)
            .await?
            .iter()
            .map(ConsentRecord::consent)
            .collect();
        let conflict_open = store.conflict_open(admin, a, b).await?;
        let facts = Facts {
            a: Party {
                id: a,
                profile: &pa.profile,
                consents: &ca,
            },
            b: Party {
                id: b,
                profile: &pb.profile,
                consents: &cb,
            },
            conflict_open,
        };
        Ok(SharingCheck {
            a: a.clone(),
            b: b.clone(),
            scope: scope.to_owned(),
            conflict_open,
            verdict: decide(&self.ctx.config.sharing, &facts, scope),
        })
    }

    /// Publishes memory `memory_id` of the scope's company for `task_scope`:
    /// its anonymised text (the company's name, id and contacts, every
    /// person and counterparty its memories list, and whatever the
    /// anonymiser's scanners find, replaced) is stored, and is all another
    /// company will ever receive of it. `by` names who published. NotFound
    /// for a memory the company does not have; Conflict when it is already
    /// published for the scope.
    pub async fn publish(
        &self,
        scope: &CompanyScope,
        memory_id: Uuid,
        task_scope: &str,
        by: &str,
        audit: AuditRecord,
    ) -> Result<SharedItem, EngineError> {
        check_scope(task_scope)?;
        let store = &self.ctx.store;
        let memory = store.get_memory(scope, memory_id).await?;
        let company = store.get_company(scope).await?;
        let mut redact = Redactions::of_company(&company.id, &company.profile);
        for (kind, name) in store.listed_names(scope, MAX_REDACTED_NAMES).await? {
            match kind {
                NameKind::Person => redact.people.push(name),
                NameKind::Counterparty => redact.counterparties.push(name),
            }
        }
        let now = self.ctx.clock.now();
        let item = SharedItem {
            id: new_memory_id(now),
            scope: task_scope.to_owned(),
            memory_id,
            text: anonymise(&render_shared(&memory), &redact),
            published_by: by.to_owned(),
            published_at: now,
            withdrawn_by: None,
            withdrawn_at: None,
        };
        let audit = AuditRecord {
            detail: format!(
                "item {} of memory {memory_id} published for scope {task_scope}",
                item.id
            ),
            ..audit
        };
        Ok(store.publish_item(scope, &item, audit).await?)
    }

    /// The scope's company's published items, newest first; `task_scope`
    /// limits them to one scope.
    pub async fn published(
        &self,
        scope: &CompanyScope,
        task_scope: Option<&str>,
        include_withdrawn: bool,
    ) -> Result<Vec<SharedItem>, EngineError> {
        if let Some(s) = task_scope {
            check_scope(s)?;
        }
        let filter = SharedFilter {
            scope: task_scope.map(str::to_owned),
            include_withdrawn,
            limit: MAX_LIVE_ITEMS,
        };
        Ok(self.ctx.store.list_shared_items(scope, &filter).await?)
    }

    /// Withdraws a published item: the next context pack of any company no
    /// longer holds it.
    pub async fn withdraw(
        &self,
        scope: &CompanyScope,
        item: Uuid,
        by: &str,
        audit: AuditRecord,
    ) -> Result<SharedItem, EngineError> {
        let audit = AuditRecord {
            detail: format!("item {item} withdrawn"),
            ..audit
        };
        Ok(self
            .ctx
            .store
            .withdraw_item(scope, item, by, self.ctx.clock.now(), audit)
            .await?)
    }

    /// A company's sharing consents (admin).
    pub async fn consents(
        &self,
        admin: &AdminScope,
        company: &CompanyId,
    ) -> Result<Vec<ConsentRecord>, EngineError> {
        let scope = admin.company(company, Access::Read);
        self.ctx.store.get_company(&scope).await?;
        Ok(self.ctx.store.list_consents(&scope).await?)
    }

    /// Records that `company` consents to exchange `consent.scope` with
    /// `consent.partner` (admin). The partner must exist. The audit entry,
    /// which the company's own keys can read, says whether the partner is
    /// `*` or one company, not which.
    pub async fn put_consent(
        &self,
        admin: &AdminScope,
        company: &CompanyId,
        consent: &Consent,
        by: &str,
        audit: AuditRecord,
    ) -> Result<ConsentRecord, EngineError> {
        consent.validate(company)?;
        let store = &self.ctx.store;
        let scope = admin.company(company, Access::Write);
        store.get_company(&scope).await?;
        if let Partner::Company(p) = &consent.partner {
            match store.get_company(&admin.company(p, Access::Read)).await {
                Ok(_) => {}
                Err(kira_store::StoreError::NotFound) => {
                    return Err(ValidationError::new("partner", "no such company").into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        let audit = AuditRecord {
            detail: consent_detail("given", consent),
            ..audit
        };
        Ok(store
            .put_consent(&scope, consent, by, self.ctx.clock.now(), audit)
            .await?)
    }

    /// Takes a consent back (admin): sharing it allowed stops with the
    /// next context pack. NotFound when there is no such consent.
    pub async fn delete_consent(
        &self,
        admin: &AdminScope,
        company: &CompanyId,
        consent: &Consent,
        audit: AuditRecord,
    ) -> Result<(), EngineError> {
        check_scope(&consent.scope)?;
        let scope = admin.company(company, Access::Write);
        let audit = AuditRecord {
            detail: consent_detail("withdrawn", consent),
            ..audit
        };
        Ok(self
            .ctx
            .store
            .delete_consent(&scope, consent, audit)
            .await?)
    }

    /// Conflict flags (admin), of one status or all; the read is audited.
    pub async fn conflicts(
        &self,
        admin: &AdminScope,
        status: Option<ConflictStatus>,
        audit: AuditRecord,
    ) -> Result<Vec<Conflict>, EngineError> {
        Ok(self.ctx.store.list_conflicts(admin, status, audit).await?)
    }

    /// Resolves a conflict flag with a note (admin), which its audit entry
    /// carries: sharing between the two companies follows the rules again.
    /// `Store(Conflict)` when it already was resolved.
    pub async fn resolve_conflict(
        &self,
        admin: &AdminScope,
        id: uuid::Uuid,
        note: &str,
        audit: AuditRecord,
    ) -> Result<Conflict, EngineError> {
        let note = note.trim();
        if note.is_empty() || note.chars().count() > MAX_RESOLVE_NOTE_CHARS {
            return Err(ValidationError::new("note", "must be 1 to 2000 characters").into());
        }
        let audit = AuditRecord {
            detail: note.to_owned(),
            ..audit
        };
        Ok(self
            .ctx
            .store
            .resolve_conflict(admin, id, note, self.ctx.clock.now(), audit)
            .await?)
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
        let store = &self.ctx.store;
        let now = self.ctx.clock.now();
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

    /// Items for a context pack's shared section: the published items of
    /// `task_scope` that best match `query`, of every other active company
    /// whose pair with the scope's company the rules allow `task_scope` for
    /// (open conflicts and both sides' consents included), at most `k` in
    /// all. An item's text is what its owner published, anonymised at
    /// publication; its id, `shared:<hash>`, names no company. No memory of
    /// another company is read.
    ///
    /// Items rank by score (each partner's best hit scores 1), ties going
    /// to the partner listed first; partners are searched, a few at once,
    /// only until no later one could change the answer, at most
    /// `shared_companies` of them.
    ///
    /// A pair the rules would allow but an open conflict blocks is a
    /// denied cross-company read: counted and audited.
    pub async fn candidates(
        &self,
        scope: &CompanyScope,
        task_scope: &str,
        query: &str,
        k: usize,
    ) -> Result<Vec<pack::Candidate>, EngineError> {
        if k == 0 || query.trim().is_empty() {
            return Ok(Vec::new());
        }
        let store = &self.ctx.store;
        let rules = &self.ctx.config.sharing;
        let admin = system_admin()?;
        let me = scope.company();
        // The company itself from the kept directory (one small read when
        // nothing changed); an archived one is not listed there.
        let directory = self.directory(&admin).await?;
        let own = match directory.companies.iter().find(|c| &c.id == me) {
            Some(c) => c.clone(),
            None => store.get_company(scope).await?,
        };
        // Without a consent of its own to the scope, a company receives
        // nothing: no cross-company read at all.
        if !directory.consents(me).iter().any(|c| c.scope == task_scope) {
            return Ok(Vec::new());
        }
        // Conditions have no negation, so they are monotone in their atoms,
        // and no partner makes more atoms true than the company itself does
        // with consent on both sides (same jurisdiction and industry). If
        // the company could not share the scope with itself, it shares it
        // with nobody.
        let any = [Consent {
            scope: task_scope.to_owned(),
            partner: Partner::Any,
        }];
        let itself = Party {
            id: me,
            profile: &own.profile,
            consents: &any,
        };
        let best = Facts {
            a: itself,
            b: itself,
            conflict_open: false,
        };
        if !decide(rules, &best, task_scope).allowed {
            return Ok(Vec::new());
        }
        let now = self.ctx.clock.now();
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
                &directory,
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

    /// The search behind [`Sharing::candidates`]; pushes what it
    /// reads (and is refused) to `audits`.
    #[allow(clippy::too_many_arguments)]
    async fn shared_search(
        &self,
        scope: &CompanyScope,
        own: &Company,
        directory: &Directory,
        task_scope: &str,
        query: &str,
        k: usize,
        now: chrono::DateTime<chrono::Utc>,
        audits: &mut Vec<AuditRecord>,
    ) -> Result<Vec<pack::Candidate>, EngineError> {
        let admin = system_admin()?;
        let me = scope.company();
        let blocked: HashSet<CompanyId> = self
            .ctx
            .store
            .conflict_partners(&admin, me)
            .await?
            .into_iter()
            .collect();
        let words = query_words(query);
        if words.is_empty() {
            return Ok(Vec::new());
        }
        let asking = Asking {
            own,
            directory,
            blocked,
            task_scope,
            words,
            k,
            now,
        };
        let max_companies = self.ctx.config.memory.context.shared_companies as usize;
        // (partner's place in the listing, the candidate), in the partner's
        // own best-first order.
        let mut found: Vec<(usize, pack::Candidate)> = Vec::new();
        let mut searched = 0usize;
        // Collected, not a lazy filter: the future must stay Send.
        let partners: Vec<&Company> = directory.companies.iter().filter(|c| &c.id != me).collect();
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
            let wave = self.next_wave(&asking, &partners, &mut next, want, audits);
            if wave.is_empty() {
                break;
            }
            searched += wave.len();
            found.extend(self.read_wave(&asking, wave, audits).await?);
        }
        // Stable: within a partner, its own order stays.
        found.sort_by(|(pa, a), (pb, b)| b.score.total_cmp(&a.score).then(pa.cmp(pb)));
        Ok(found.into_iter().take(k).map(|(_, c)| c).collect())
    }

    /// Up to `want` partners from `partners[*next..]` the rules allow, with
    /// their place in the listing and the verdict; `next` moves past every
    /// partner looked at. A partner an open conflict alone blocks is a
    /// denied cross-company read, pushed to `audits`.
    fn next_wave<'a>(
        &self,
        asking: &Asking<'_>,
        partners: &[&'a Company],
        next: &mut usize,
        want: usize,
        audits: &mut Vec<AuditRecord>,
    ) -> Vec<(usize, &'a Company, Verdict)> {
        let rules = &self.ctx.config.sharing;
        let me = &asking.own.id;
        let mut wave = Vec::with_capacity(want);
        while wave.len() < want {
            let Some(&other) = partners.get(*next) else {
                break;
            };
            let place = *next;
            *next += 1;
            let facts = Facts {
                a: asking.directory.party(asking.own),
                b: asking.directory.party(other),
                conflict_open: asking.blocked.contains(&other.id),
            };
            let verdict = decide(rules, &facts, asking.task_scope);
            if !verdict.allowed {
                let unblocked = Facts {
                    conflict_open: false,
                    ..facts
                };
                if facts.conflict_open && decide(rules, &unblocked, asking.task_scope).allowed {
                    audits.push(self.deny_cross_company_read(
                        asking.now,
                        me,
                        &other.id,
                        asking.task_scope,
                        &verdict,
                    ));
                }
                continue;
            }
            wave.push((place, other, verdict));
        }
        wave
    }

    /// Reads each partner of `wave`'s live items of the scope, through its
    /// own scope (what it published, never its memories), and keeps its
    /// best `k` matches, scored against its best; audits each read on the
    /// owner's log and the admin's.
    async fn read_wave(
        &self,
        asking: &Asking<'_>,
        wave: Vec<(usize, &Company, Verdict)>,
        audits: &mut Vec<AuditRecord>,
    ) -> Result<Vec<(usize, pack::Candidate)>, EngineError> {
        let store = &self.ctx.store;
        let admin = system_admin()?;
        let (me, task_scope, now, k) = (&asking.own.id, asking.task_scope, asking.now, asking.k);
        let filter = SharedFilter {
            scope: Some(task_scope.to_owned()),
            include_withdrawn: false,
            limit: MAX_LIVE_ITEMS,
        };
        let results: Vec<Vec<SharedItem>> = try_join_all(wave.iter().map(|(_, other, _)| {
            let theirs = admin.company(&other.id, Access::Read);
            let filter = &filter;
            async move { store.list_shared_items(&theirs, filter).await }
        }))
        .await?;
        let mut found = Vec::new();
        for ((place, other, verdict), items) in wave.into_iter().zip(results) {
            let mut hits: Vec<(f64, SharedItem)> = items
                .into_iter()
                .filter_map(|item| {
                    let score = match_score(&asking.words, &item.text);
                    (score > 0.0).then_some((score, item))
                })
                .collect();
            // Best first; at equal scores the newer item (as listed).
            hits.sort_by(|a, b| b.0.total_cmp(&a.0));
            hits.truncate(k);
            let rule = verdict.rule.as_deref().unwrap_or("-");
            // The owner's log says its items were read, not by whom:
            // no company sees another in its own records. The admin's
            // entry names both.
            audits.push(system_record(
                now,
                "sharing.read",
                Some(other.id.clone()),
                "shared_items".into(),
                format!(
                    "{} published item(s) of scope {task_scope} read by a partner, rule {rule}",
                    hits.len()
                ),
            ));
            audits.push(system_record(
                now,
                "sharing.read",
                None,
                format!("company:{}", other.id),
                format!(
                    "{} published item(s) of scope {task_scope} of {} for {me}, rule {rule}",
                    hits.len(),
                    other.id
                ),
            ));
            let best = hits.first().map_or(1.0, |(s, _)| *s);
            for (score, item) in hits {
                found.push((
                    place,
                    pack::Candidate {
                        id: shared_id(&other.id, item.id),
                        layer: None,
                        score: (score / best).clamp(f64::MIN_POSITIVE, 1.0),
                        text: item.text,
                        group: None,
                    },
                ));
            }
        }
        Ok(found)
    }

    /// Every active company, as [`kira_store::CompanyStore::company_directory`]
    /// has them, and every company's consents: kept, and read again only
    /// when the store's directory version moved (any company made, changed,
    /// archived or deleted, any consent given or taken back, by any
    /// process), so a pack pays one small read instead of the listings.
    pub(crate) async fn directory(
        &self,
        admin: &kira_core::auth::AdminScope,
    ) -> Result<Arc<Directory>, EngineError> {
        let store = &self.ctx.store;
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
        let _reload = self.directory_reload.lock().await;
        if let Some(companies) = kept(version) {
            return Ok(companies);
        }
        // Read after the version: a change in between is seen next time.
        let companies = store.company_directory(admin).await?;
        let mut consents: BTreeMap<CompanyId, Vec<Consent>> = BTreeMap::new();
        for (company, consent) in store.consent_directory(admin).await? {
            consents.entry(company).or_default().push(consent);
        }
        let directory = Arc::new(Directory {
            companies,
            consents,
        });
        *self.kept_directory() = Some((version, directory.clone()));
        Ok(directory)
    }

    fn kept_directory(&self) -> std::sync::MutexGuard<'_, Option<(i64, Arc<Directory>)>> {
        self.directory
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
        self.count_denied_read();
        // The admin's entry: it names both companies, so it is written
        // under none (no company sees another in its own records).
        AuditRecord {
            outcome: Outcome::Denied,
            ..system_record(
                now,
                "memory.shared_read",
                None,
                format!("company:{owner}"),
                format!(
                    "for company:{reader}, scope {task_scope}: {}",
                    verdict.reason
                ),
            )
        }
    }

    /// Writes audit entries of reads, grouped with other callers' into one
    /// transaction ([`crate::group`]).
    pub(crate) async fn audit_reads(&self, records: Vec<AuditRecord>) -> Result<(), EngineError> {
        if records.is_empty() {
            return Ok(());
        }
        self.audits
            .submit(
                records,
                |groups| async move {
                    let n = groups.len();
                    let all: Vec<AuditRecord> = groups.into_iter().flatten().collect();
                    let r = self
                        .ctx
                        .store
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
    pub fn count_denied_read(&self) {
        self.ctx.counts.denied_read();
    }

    /// Denied cross-company reads of every kira process on this database,
    /// all time (this process's written first): a security signal for
    /// monitoring.
    pub async fn denied_reads(&self, admin: &AdminScope) -> Result<u64, EngineError> {
        self.ctx.counts.flush().await?;
        Ok(self.ctx.store.count_totals(admin).await?.denied_reads)
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
fn shared_id(company: &CompanyId, item: Uuid) -> String {
    let digest = sha256(format!("shared\u{1f}{company}\u{1f}{item}").as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("shared:{hex}")
}

/// An audit detail for a consent that names no other company.
fn consent_detail(what: &str, c: &Consent) -> String {
    let partner = match c.partner {
        Partner::Any => "every partner the rules allow (*)",
        Partner::Company(_) => "one named partner",
    };
    format!(
        "consent to exchange scope {} with {partner} {what}",
        c.scope
    )
}

/// A shared search's question: who asks, for which scope and words, and
/// which partners an open conflict blocks.
struct Asking<'a> {
    own: &'a Company,
    directory: &'a Directory,
    blocked: HashSet<CompanyId>,
    task_scope: &'a str,
    words: Vec<String>,
    /// Items wanted.
    k: usize,
    now: chrono::DateTime<chrono::Utc>,
}

/// The words of a query or a published text, lower case, each once; the
/// anonymiser's placeholders (`[NAME]`, `[COMPANY]`) are not words.
fn query_words(text: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    let mut rest = text;
    let mut plain = String::with_capacity(text.len());
    // Placeholders out first: "[COMPANY]" must not match a query's "company".
    while let Some(open) = rest.find('[') {
        plain.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find(']') {
            Some(close) if after[..close].chars().all(|c| c.is_ascii_uppercase()) => {
                plain.push(' ');
                rest = &after[close + 1..];
            }
            _ => {
                plain.push('[');
                rest = after;
            }
        }
    }
    plain.push_str(rest);
    for w in plain.split(|c: char| !c.is_alphanumeric()) {
        let w = w.to_lowercase();
        if w.chars().count() >= 2 && !words.contains(&w) {
            words.push(w);
        }
    }
    words
}

/// How well a published text matches the query's words: the share of
/// query words it holds, a word matching the same word or, from four
/// letters on, one that starts with it or that it starts with ("playbook",
/// "playbooks"). Zero when nothing matches.
fn match_score(query: &[String], text: &str) -> f64 {
    let words = query_words(text);
    let hit = |q: &String| {
        words.iter().any(|w| {
            w == q
                || (q.chars().count() >= 4
                    && w.chars().count() >= 4
                    && (w.starts_with(q.as_str()) || q.starts_with(w.as_str())))
        })
    };
    let n = query.iter().filter(|q| hit(q)).count();
    if query.is_empty() {
        0.0
    } else {
        n as f64 / query.len() as f64
    }
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
