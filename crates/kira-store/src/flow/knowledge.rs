//! The shared knowledge base and the conflict flags, written once for both
//! backends: [`KnowledgeStore`] and [`ConflictStore`] for every [`Db`],
//! with the filters built once onto either driver's query builder. What
//! differs stays with each dialect: the match of a knowledge search
//! ([`KnowledgeSql`]: FTS5's `bm25` over `knowledge_fts`; a weighted
//! tsvector). PostgreSQL's `admin_read` and its advisory lock on a flag's
//! subject are statements that run there only.

use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use kira_core::CompanyId;
use kira_core::ValidationError;
use kira_core::audit::AuditRecord;
use kira_core::auth::AdminScope;
use kira_core::conflict::{Conflict, ConflictStatus, canonical_pair, normalise_counterparty};
use kira_core::knowledge::KnowledgeEntry;
use uuid::Uuid;

use crate::conflicts::{
    ConflictStore, CounterpartyMatch, MENTION_ROWS_PER_KEY, SCAN_IDS_PER_MATCH, check_scan_keys,
    flag_records, group_matches, mention_keys, merged_ids, scan_records, text_names,
};
use sqlx::QueryBuilder;

use crate::flow::store::{Db, admin_read};
use crate::knowledge::{
    KnowledgeCursor, KnowledgeFilter, KnowledgeHit, KnowledgeStore, KnowledgeVector, check_batch,
};
use crate::memory::{decode_vector, encode_vector, query_words};
use crate::sql::{Arg, Columns, Conn, Dialect, q, q_each};
use crate::{Result, StoreError};

/// What each dialect writes its own way for knowledge.
pub(crate) trait KnowledgeSql: Dialect {
    /// A knowledge search's statement up to its match of any of `words`
    /// (not empty), selecting [`COLUMNS`] and `relevance` (higher is
    /// better; title and tags weigh twice the body) of `knowledge k`, its
    /// WHERE begun; [`finish_search`] ends it.
    fn search_match(words: &[String]) -> QueryBuilder<Self>;
}

fn company_id(s: &str) -> Result<CompanyId> {
    CompanyId::parse(s).map_err(|e| StoreError::Corrupt(format!("company id {s:?}: {e}")))
}

/// The columns [`entry_from_row`] reads, of `knowledge k`.
pub(crate) const COLUMNS: &str = "k.id, k.domain, k.key, k.title, k.body, k.tags, k.jurisdiction, \
     k.industry, k.created_at, k.updated_at";

pub(crate) fn entry_from_row<R: Columns + ?Sized>(r: &R) -> Result<KnowledgeEntry> {
    Ok(KnowledgeEntry {
        id: r.uuid("id")?,
        domain: r.text("domain")?,
        key: r.text("key")?,
        title: r.text("title")?,
        body: r.text("body")?,
        tags: r.texts("tags")?,
        jurisdiction: r.opt_text("jurisdiction")?,
        industry: r.opt_text("industry")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

/// A knowledge vector of a row with `entry_id` and `vector`.
pub(crate) fn vector_from_row<R: Columns + ?Sized>(r: &R) -> Result<KnowledgeVector> {
    Ok(KnowledgeVector {
        entry_id: r.uuid("entry_id")?,
        vector: decode_vector(&r.bytes("vector")?)
            .ok_or_else(|| StoreError::Corrupt("vector length".into()))?,
    })
}

/// A search's match, of a row with the entry's columns and `relevance`.
pub(crate) fn hit_from_row<R: Columns + ?Sized>(r: &R) -> Result<KnowledgeHit> {
    Ok(KnowledgeHit {
        entry: entry_from_row(r)?,
        relevance: r.real("relevance")?,
    })
}

/// Appends `sql` and binds `a` after it.
fn push<'a, DB: Dialect>(qb: &mut QueryBuilder<DB>, sql: &str, a: impl Into<Arg<'a>>) {
    qb.push(sql);
    DB::push_arg(qb, a.into());
}

/// The narrowing of a [`KnowledgeFilter`], appended to a query over
/// `knowledge k` whose WHERE has begun.
fn push_filter<DB: Dialect>(qb: &mut QueryBuilder<DB>, f: &KnowledgeFilter) {
    if let Some(d) = &f.domain {
        push(qb, " AND k.domain = ", d);
    }
    if let Some(t) = &f.tag {
        let (before, after) = DB::each(
            (
                " AND EXISTS (SELECT 1 FROM json_each(k.tags) WHERE json_each.value = ",
                ")",
            ),
            (" AND ", " = ANY (k.tags)"),
        );
        push(qb, before, t.to_lowercase().as_str());
        qb.push(after);
    }
    if let Some(j) = &f.jurisdiction {
        push(qb, " AND k.jurisdiction = ", j);
    }
    if let Some(i) = &f.industry {
        push(qb, " AND k.industry = ", i.trim().to_lowercase().as_str());
    }
}

/// The entries that pass `filter`, by (domain, key), after `after`.
pub(crate) fn list_query<DB: Dialect>(
    filter: &KnowledgeFilter,
    after: Option<&KnowledgeCursor>,
    limit: u32,
) -> QueryBuilder<DB> {
    static SQL: LazyLock<String> =
        LazyLock::new(|| format!("SELECT {COLUMNS} FROM knowledge k WHERE 1 = 1"));
    let mut qb = QueryBuilder::new(SQL.as_str());
    push_filter(&mut qb, filter);
    if let Some(c) = after {
        push(&mut qb, " AND (k.domain, k.key) > (", &c.domain);
        push(&mut qb, ", ", &c.key);
        qb.push(")");
    }
    push(
        &mut qb,
        " ORDER BY k.domain, k.key LIMIT ",
        i64::from(limit),
    );
    qb
}

/// Ends a search whose match (each dialect's own) `qb` holds: the
/// filter, the order and the limit.
pub(crate) fn finish_search<DB: Dialect>(
    qb: &mut QueryBuilder<DB>,
    filter: &KnowledgeFilter,
    limit: u32,
) {
    push_filter(qb, filter);
    push(
        qb,
        " ORDER BY relevance DESC, k.id LIMIT ",
        i64::from(limit),
    );
}

/// The vectors of `model`, of the entries that pass `filter`.
pub(crate) fn vectors_query<DB: Dialect>(
    model: &str,
    filter: &KnowledgeFilter,
) -> QueryBuilder<DB> {
    let mut qb = QueryBuilder::new(
        "SELECT v.entry_id, v.vector FROM knowledge_vectors v \
         JOIN knowledge k ON k.id = v.entry_id WHERE v.model = ",
    );
    DB::push_arg(&mut qb, model.into());
    push_filter(&mut qb, filter);
    qb.push(" ORDER BY v.entry_id");
    qb
}

/// Inserts or updates each entry by (domain, key), then appends `audit`;
/// the entries as stored. `on_taken` says what an insert meeting a unique
/// key means on this backend. On PostgreSQL the existing row is locked,
/// which holds off a concurrent upsert of the same pair until this
/// transaction ends; a concurrent insert of a new pair meets the unique
/// key instead.
pub(crate) async fn upsert(
    c: &mut dyn Conn,
    entries: &[KnowledgeEntry],
    on_taken: fn(&KnowledgeEntry) -> StoreError,
    audit: AuditRecord,
) -> Result<Vec<KnowledgeEntry>> {
    let mut stored = Vec::with_capacity(entries.len());
    for e in entries {
        stored.push(upsert_one(c, e, on_taken).await?);
    }
    c.audit(audit).await?;
    Ok(stored)
}

async fn upsert_one(
    c: &mut dyn Conn,
    e: &KnowledgeEntry,
    on_taken: fn(&KnowledgeEntry) -> StoreError,
) -> Result<KnowledgeEntry> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!("SELECT {COLUMNS} FROM knowledge k WHERE k.domain = $1 AND k.key = $2")
    });
    let now = e.updated_at.trunc_subsecs(6);
    let existing = c
        .opt(
            q(SQL.as_str())
                .arg(e.domain.as_str())
                .arg(e.key.as_str())
                .for_update(),
        )
        .await?
        .as_ref()
        .map(entry_from_row)
        .transpose()?;
    // SQLite keeps the tags as words too (`tags_text`, $8), for FTS5.
    let tags_text = e.tags.join(" ");
    match existing {
        Some(old) => {
            c.exec(
                q_each(
                    "UPDATE knowledge SET title = $1, body = $2, tags = $3, jurisdiction = $4, \
                     industry = $5, updated_at = $6, tags_text = $8 WHERE id = $7",
                    "UPDATE knowledge SET title = $1, body = $2, tags = $3, jurisdiction = $4, \
                     industry = $5, updated_at = $6 WHERE id = $7",
                )
                .arg(e.title.as_str())
                .arg(e.body.as_str())
                .arg(e.tags.as_slice())
                .arg(e.jurisdiction.as_deref())
                .arg(e.industry.as_deref())
                .arg(now)
                .arg(old.id)
                .arg(tags_text.as_str()),
            )
            .await?;
            if (&old.title, &old.body, &old.tags) != (&e.title, &e.body, &e.tags) {
                c.exec(q("DELETE FROM knowledge_vectors WHERE entry_id = $1").arg(old.id))
                    .await?;
            }
            Ok(KnowledgeEntry {
                id: old.id,
                created_at: old.created_at,
                updated_at: now,
                ..e.clone()
            })
        }
        None => {
            let inserted = c
                .exec(
                    q_each(
                        "INSERT INTO knowledge (id, domain, key, title, body, tags, jurisdiction, \
                         industry, created_at, updated_at, tags_text) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10)",
                        "INSERT INTO knowledge (id, domain, key, title, body, tags, jurisdiction, \
                         industry, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
                    )
                    .arg(e.id)
                    .arg(e.domain.as_str())
                    .arg(e.key.as_str())
                    .arg(e.title.as_str())
                    .arg(e.body.as_str())
                    .arg(e.tags.as_slice())
                    .arg(e.jurisdiction.as_deref())
                    .arg(e.industry.as_deref())
                    .arg(now)
                    .arg(tags_text.as_str()),
                )
                .await;
            match inserted {
                Ok(_) => {}
                Err(StoreError::Database(sqlx::Error::Database(d))) if d.is_unique_violation() => {
                    return Err(on_taken(e));
                }
                Err(err) => return Err(err),
            }
            Ok(KnowledgeEntry {
                created_at: now,
                updated_at: now,
                ..e.clone()
            })
        }
    }
}

pub(crate) async fn get(c: &mut dyn Conn, id: Uuid) -> Result<KnowledgeEntry> {
    static SQL: LazyLock<String> =
        LazyLock::new(|| format!("SELECT {COLUMNS} FROM knowledge k WHERE k.id = $1"));
    entry_from_row(&c.one(q(SQL.as_str()).arg(id)).await?)
}

/// Deletes the entry (its vectors go by cascade), then appends `audit`.
pub(crate) async fn delete(c: &mut dyn Conn, id: Uuid, audit: AuditRecord) -> Result<()> {
    let n = c
        .exec(q("DELETE FROM knowledge WHERE id = $1").arg(id))
        .await?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    c.audit(audit).await?;
    Ok(())
}

/// The entries with no vector of `model`, oldest first.
pub(crate) async fn without_vectors(
    c: &mut dyn Conn,
    model: &str,
    limit: u32,
) -> Result<Vec<KnowledgeEntry>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {COLUMNS} FROM knowledge k WHERE NOT EXISTS \
             (SELECT 1 FROM knowledge_vectors v WHERE v.entry_id = k.id AND v.model = $1) \
             ORDER BY k.created_at, k.id LIMIT $2"
        )
    });
    let rows = c
        .all(q(SQL.as_str()).arg(model).arg(i64::from(limit)))
        .await?;
    rows.iter().map(entry_from_row).collect()
}

/// Stores the vectors of the entries still there.
pub(crate) async fn put_vectors(
    c: &mut dyn Conn,
    model: &str,
    vectors: &[KnowledgeVector],
) -> Result<()> {
    for v in vectors {
        let blob = encode_vector(&v.vector);
        c.exec(
            q("INSERT INTO knowledge_vectors (entry_id, model, vector) \
               SELECT id, $1, $2 FROM knowledge WHERE id = $3 \
               ON CONFLICT (entry_id, model) DO UPDATE SET vector = excluded.vector")
            .arg(model)
            .arg(blob.as_slice())
            .arg(v.entry_id),
        )
        .await?;
    }
    Ok(())
}

/// The columns [`conflict_from_row`] reads.
const CONFLICT_COLUMNS: &str = "id, company_a, company_b, counterparty, memory_ids, detected_at, \
     status, resolved_at, resolved_by, note";

fn conflict_from_row<R: Columns + ?Sized>(r: &R) -> Result<Conflict> {
    let status = r.text("status")?;
    Ok(Conflict {
        id: r.uuid("id")?,
        company_a: company_id(&r.text("company_a")?)?,
        company_b: company_id(&r.text("company_b")?)?,
        counterparty: r.text("counterparty")?,
        memory_ids: r.uuids("memory_ids")?,
        detected_at: r.time("detected_at")?,
        status: ConflictStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("conflict status {status:?}")))?,
        resolved_at: r.opt_time("resolved_at")?,
        resolved_by: r.opt_text("resolved_by")?,
        note: r.opt_text("note")?,
    })
}

/// The flag; on PostgreSQL `lock` takes its row.
async fn load_conflict(c: &mut dyn Conn, id: Uuid, lock: bool) -> Result<Conflict> {
    static SQL: LazyLock<String> =
        LazyLock::new(|| format!("SELECT {CONFLICT_COLUMNS} FROM conflicts WHERE id = $1"));
    let s = q(SQL.as_str()).arg(id);
    let s = if lock { s.for_update() } else { s };
    conflict_from_row(&c.one(s).await?)
}

/// The canonical pair and the normalised counterparty a flag is kept
/// under; invalid when the two companies are one.
pub(crate) fn flag_subject(
    a: &CompanyId,
    b: &CompanyId,
    counterparty: &str,
) -> Result<(CompanyId, CompanyId, String)> {
    let (a, b) = canonical_pair(a, b).ok_or_else(|| {
        ValidationError::new("company_b", "a company is not in conflict with itself")
    })?;
    Ok((a, b, normalise_counterparty(counterparty)))
}

/// Flags the canonical pair `a`, `b` as in conflict over `counterparty`
/// (normalised), or adds `memory_ids` to its open flag; `None` when
/// nothing changed (the memories are all on a flag already). The caller
/// serialises flagging per (pair, counterparty): SQLite's writer turn,
/// PostgreSQL's advisory lock.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn flag(
    c: &mut dyn Conn,
    id: Uuid,
    a: &CompanyId,
    b: &CompanyId,
    counterparty: &str,
    memory_ids: &[Uuid],
    at: DateTime<Utc>,
    audit: AuditRecord,
) -> Result<Option<Conflict>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {CONFLICT_COLUMNS} FROM conflicts WHERE company_a = $1 AND company_b = $2 \
             AND counterparty = $3 ORDER BY status = 'open' DESC, detected_at DESC"
        )
    });
    let rows = c
        .all(
            q(SQL.as_str())
                .arg(a.as_str())
                .arg(b.as_str())
                .arg(counterparty),
        )
        .await?;
    let flags = rows
        .iter()
        .map(conflict_from_row)
        .collect::<Result<Vec<_>>>()?;
    let changed =
        match flags.first() {
            Some(open) if open.status == ConflictStatus::Open => {
                match merged_ids(&open.memory_ids, memory_ids) {
                    Some(ids) => {
                        c.exec(
                            q("UPDATE conflicts SET memory_ids = $1 WHERE id = $2")
                                .arg(ids.as_slice())
                                .arg(open.id),
                        )
                        .await?;
                        Some(open.id)
                    }
                    None => None,
                }
            }
            _ if flags
                .iter()
                .any(|f| merged_ids(&f.memory_ids, memory_ids).is_none()) =>
            {
                None
            }
            _ => {
                let ids = merged_ids(&[], memory_ids).unwrap_or_default();
                c.exec(
                q("INSERT INTO conflicts (id, company_a, company_b, counterparty, memory_ids, \
                   detected_at, status) VALUES ($1, $2, $3, $4, $5, $6, 'open')")
                .arg(id)
                .arg(a.as_str())
                .arg(b.as_str())
                .arg(counterparty)
                .arg(ids.as_slice())
                .arg(at.trunc_subsecs(6)),
            )
            .await?;
                Some(id)
            }
        };
    let Some(changed) = changed else {
        return Ok(None);
    };
    let flag = load_conflict(c, changed, false).await?;
    for record in flag_records(audit, &flag, changed == id) {
        c.audit(record).await?;
    }
    Ok(Some(flag))
}

/// The flags, newest first, of `status` if given; then appends `audit`.
pub(crate) async fn list_conflicts(
    c: &mut dyn Conn,
    status: Option<ConflictStatus>,
    audit: AuditRecord,
) -> Result<Vec<Conflict>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {CONFLICT_COLUMNS} FROM conflicts WHERE ($1 IS NULL OR status = $1) \
             ORDER BY detected_at DESC, id DESC"
        )
    });
    let rows = c
        .all(q(SQL.as_str()).arg(status.map(ConflictStatus::as_str)))
        .await?;
    let flags = rows
        .iter()
        .map(conflict_from_row)
        .collect::<Result<Vec<_>>>()?;
    c.audit(audit).await?;
    Ok(flags)
}

/// Resolves the open flag; a conflict when it is resolved already.
pub(crate) async fn resolve(
    c: &mut dyn Conn,
    id: Uuid,
    note: &str,
    at: DateTime<Utc>,
    audit: AuditRecord,
) -> Result<Conflict> {
    let flag = load_conflict(c, id, true).await?;
    if flag.status == ConflictStatus::Resolved {
        return Err(StoreError::Conflict(format!(
            "conflict {id} is already resolved"
        )));
    }
    c.exec(
        q(
            "UPDATE conflicts SET status = 'resolved', resolved_at = $1, resolved_by = $2, \
           note = $3 WHERE id = $4",
        )
        .arg(at.trunc_subsecs(6))
        .arg(audit.actor.as_str())
        .arg(note)
        .arg(id),
    )
    .await?;
    let flag = load_conflict(c, id, false).await?;
    c.audit(audit).await?;
    Ok(flag)
}

/// Whether the two companies have an open flag.
pub(crate) async fn open(c: &mut dyn Conn, a: &CompanyId, b: &CompanyId) -> Result<bool> {
    let Some((a, b)) = canonical_pair(a, b) else {
        return Ok(false);
    };
    let found = c
        .opt(
            q(
                "SELECT 1 FROM conflicts WHERE company_a = $1 AND company_b = $2 \
               AND status = 'open' LIMIT 1",
            )
            .arg(a.as_str())
            .arg(b.as_str()),
        )
        .await?;
    Ok(found.is_some())
}

/// The companies with an open flag against `company`.
pub(crate) async fn partners(c: &mut dyn Conn, company: &CompanyId) -> Result<Vec<CompanyId>> {
    let rows = c
        .all(
            q("SELECT company_b AS partner FROM conflicts WHERE company_a = $1 AND status = 'open' \
               UNION SELECT company_a FROM conflicts WHERE company_b = $1 AND status = 'open'")
            .arg(company.as_str()),
        )
        .await?;
    rows.iter()
        .map(|r| company_id(&r.text("partner")?))
        .collect()
}

/// Other companies' memories naming a counterparty under `keys`, a few per
/// company and key; then the scan's audit entries. On PostgreSQL the
/// `conflict_scan` policy shows an `admin_read` transaction the
/// counterparty rows of `memory_names`, and nothing else.
pub(crate) async fn scan_counterparties(
    c: &mut dyn Conn,
    company: &CompanyId,
    keys: &[String],
    audit: AuditRecord,
) -> Result<Vec<CounterpartyMatch>> {
    let rows = c
        .all(
            q_each(
                "SELECT key, company_id, memory_id FROM ( \
                     SELECT key, company_id, memory_id, row_number() OVER \
                         (PARTITION BY key, company_id ORDER BY memory_id) AS n \
                     FROM memory_names \
                     WHERE kind = 'counterparty' AND company_id <> $1 \
                       AND key IN (SELECT value FROM json_each($2))) \
                 WHERE n <= $3 ORDER BY key, company_id, memory_id",
                "SELECT key, company_id, memory_id FROM ( \
                     SELECT key, company_id, memory_id, row_number() OVER \
                         (PARTITION BY key, company_id ORDER BY memory_id) AS n \
                     FROM memory_names \
                     WHERE kind = 'counterparty' AND company_id <> $1 AND key = ANY ($2)) AS r \
                 WHERE n <= $3 ORDER BY key, company_id, memory_id",
            )
            .arg(company.as_str())
            .arg(keys)
            .arg(SCAN_IDS_PER_MATCH as i64),
        )
        .await?;
    let rows = rows
        .iter()
        .map(|r| {
            Ok((
                r.text("key")?,
                company_id(&r.text("company_id")?)?,
                r.uuid("memory_id")?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let matches = group_matches(rows);
    for record in scan_records(&audit, &matches) {
        c.audit(record).await?;
    }
    Ok(matches)
}

/// Other companies' contract and deal memories whose text names one of
/// `keys` (normalised), then the scan's audit entries. On PostgreSQL the
/// `contract_mention_scan` policy shows an `admin_read` transaction those
/// memories, and no others.
pub(crate) async fn scan_contract_mentions(
    c: &mut dyn Conn,
    company: &CompanyId,
    keys: &[&String],
    audit: AuditRecord,
) -> Result<Vec<CounterpartyMatch>> {
    let mut rows: Vec<(String, CompanyId, Uuid)> = Vec::new();
    for key in keys {
        // A normalised key is words of letters and digits: quoted, it is
        // one FTS5 phrase ($1), never query syntax; PostgreSQL makes its
        // phrase query of the key itself ($4).
        let words: Vec<&str> = key
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        if words.is_empty() {
            continue;
        }
        let phrase = format!("text : \"{}\"", words.join(" "));
        let found = c
            .all(
                q_each(
                    "SELECT m.company_id, m.id, m.content ->> '$.text' AS text FROM memories_fts f \
                     JOIN memories m ON m.seq = f.rowid \
                     WHERE memories_fts MATCH $1 AND m.company_id <> $2 \
                       AND (m.event_type = 'contract' OR lower(m.category) LIKE '%contract%' \
                            OR lower(m.category) LIKE '%deal%') \
                     LIMIT $3",
                    "SELECT company_id, id, content ->> 'text' AS text FROM memories \
                     WHERE search @@ phraseto_tsquery('english'::regconfig, $4) \
                       AND company_id <> $2 \
                       AND (event_type = 'contract' OR lower(category) LIKE '%contract%' \
                            OR lower(category) LIKE '%deal%') \
                     LIMIT $3",
                )
                .arg(phrase.as_str())
                .arg(company.as_str())
                .arg(MENTION_ROWS_PER_KEY)
                .arg(key.as_str()),
            )
            .await?;
        for r in &found {
            let text = r.opt_text("text")?;
            if text.as_deref().is_some_and(|t| text_names(t, key)) {
                rows.push((
                    (*key).clone(),
                    company_id(&r.text("company_id")?)?,
                    r.uuid("id")?,
                ));
            }
        }
    }
    rows.sort();
    let matches = group_matches(rows);
    for record in scan_records(&audit, &matches) {
        c.audit(record).await?;
    }
    Ok(matches)
}

/// Within SQLite's writer turn, an entry's insert meets a unique key only
/// when its id is taken.
fn id_taken(e: &KnowledgeEntry) -> StoreError {
    StoreError::Conflict(format!("knowledge entry {} already exists", e.id))
}

/// On PostgreSQL an entry's insert meets a unique key when a concurrent
/// upsert inserted the same (domain, key) first.
fn written_concurrently(e: &KnowledgeEntry) -> StoreError {
    StoreError::Conflict(format!(
        "knowledge entry {}/{} was written concurrently; try again",
        e.domain, e.key
    ))
}

/// Serialises flagging per (pair, counterparty) across processes
/// (PostgreSQL; SQLite's writer turn already does), so two detections of
/// one conflict make one flag.
async fn lock_flag(c: &mut dyn Conn, a: &CompanyId, b: &CompanyId, cp: &str) -> Result<()> {
    let subject = format!("conflict\u{1f}{a}\u{1f}{b}\u{1f}{cp}");
    let s = q("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))").arg(subject.as_str());
    c.exec(s.pg_only()).await?;
    Ok(())
}

#[async_trait]
impl<D: Db> KnowledgeStore for D {
    async fn upsert_knowledge(
        &self,
        _admin: &AdminScope,
        entries: &[KnowledgeEntry],
        audit: AuditRecord,
    ) -> Result<Vec<KnowledgeEntry>> {
        check_batch(entries)?;
        let mut tx = self.write_system().await?;
        let on_taken = if tx.is_pg() {
            written_concurrently
        } else {
            id_taken
        };
        let stored = upsert(&mut tx, entries, on_taken, audit).await?;
        D::commit(tx).await?;
        Ok(stored)
    }

    async fn get_knowledge(&self, id: Uuid) -> Result<KnowledgeEntry> {
        get(&mut self.plain().await?, id).await
    }

    async fn list_knowledge(
        &self,
        filter: &KnowledgeFilter,
        after: Option<&KnowledgeCursor>,
        limit: u32,
    ) -> Result<Vec<KnowledgeEntry>> {
        let qb = list_query::<D::Sql>(filter, after, limit);
        let mut c = self.plain().await?;
        let rows = D::Sql::fetch(&mut c, qb).await?;
        rows.iter().map(entry_from_row).collect()
    }

    async fn search_knowledge(
        &self,
        query: &str,
        filter: &KnowledgeFilter,
        limit: u32,
    ) -> Result<Vec<KnowledgeHit>> {
        let words = query_words(query);
        if words.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let mut qb = D::Sql::search_match(&words);
        finish_search(&mut qb, filter, limit);
        let mut c = self.plain().await?;
        let rows = D::Sql::fetch(&mut c, qb).await?;
        rows.iter().map(hit_from_row).collect()
    }

    async fn delete_knowledge(
        &self,
        _admin: &AdminScope,
        id: Uuid,
        audit: AuditRecord,
    ) -> Result<()> {
        let mut tx = self.write_system().await?;
        delete(&mut tx, id, audit).await?;
        D::commit(tx).await
    }

    async fn knowledge_without_vectors(
        &self,
        model: &str,
        limit: u32,
    ) -> Result<Vec<KnowledgeEntry>> {
        without_vectors(&mut self.plain().await?, model, limit).await
    }

    async fn put_knowledge_vectors(
        &self,
        _admin: &AdminScope,
        model: &str,
        vectors: &[KnowledgeVector],
    ) -> Result<()> {
        let mut tx = self.write_system().await?;
        put_vectors(&mut tx, model, vectors).await?;
        D::commit(tx).await
    }

    async fn knowledge_vectors(
        &self,
        model: &str,
        filter: &KnowledgeFilter,
    ) -> Result<Vec<KnowledgeVector>> {
        let qb = vectors_query::<D::Sql>(model, filter);
        let mut c = self.plain().await?;
        let rows = D::Sql::fetch(&mut c, qb).await?;
        rows.iter().map(vector_from_row).collect()
    }
}

/// The flags are read and written on the admin path only: a writing
/// transaction of the system's that PostgreSQL's policies let read every
/// company's rows (`admin_read`), or a read across companies.
#[async_trait]
impl<D: Db> ConflictStore for D {
    async fn flag_conflict(
        &self,
        _admin: &AdminScope,
        id: Uuid,
        a: &CompanyId,
        b: &CompanyId,
        counterparty: &str,
        memory_ids: &[Uuid],
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Option<Conflict>> {
        let (a, b, counterparty) = flag_subject(a, b, counterparty)?;
        let mut tx = self.write_system().await?;
        admin_read(&mut tx, true).await?;
        lock_flag(&mut tx, &a, &b, &counterparty).await?;
        let flag = flag(&mut tx, id, &a, &b, &counterparty, memory_ids, at, audit).await?;
        D::commit(tx).await?;
        Ok(flag)
    }

    async fn list_conflicts(
        &self,
        _admin: &AdminScope,
        status: Option<ConflictStatus>,
        audit: AuditRecord,
    ) -> Result<Vec<Conflict>> {
        let mut tx = self.write_system().await?;
        admin_read(&mut tx, true).await?;
        let flags = list_conflicts(&mut tx, status, audit).await?;
        D::commit(tx).await?;
        Ok(flags)
    }

    async fn resolve_conflict(
        &self,
        _admin: &AdminScope,
        id: Uuid,
        note: &str,
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Conflict> {
        let mut tx = self.write_system().await?;
        admin_read(&mut tx, true).await?;
        let flag = resolve(&mut tx, id, note, at, audit).await?;
        D::commit(tx).await?;
        Ok(flag)
    }

    async fn conflict_open(
        &self,
        _admin: &AdminScope,
        a: &CompanyId,
        b: &CompanyId,
    ) -> Result<bool> {
        let mut r = self.read_all(false).await?;
        let found = open(&mut r, a, b).await?;
        D::end_read(r).await?;
        Ok(found)
    }

    async fn conflict_partners(
        &self,
        _admin: &AdminScope,
        company: &CompanyId,
    ) -> Result<Vec<CompanyId>> {
        let mut r = self.read_all(false).await?;
        let found = partners(&mut r, company).await?;
        D::end_read(r).await?;
        Ok(found)
    }

    async fn scan_counterparties(
        &self,
        _admin: &AdminScope,
        company: &CompanyId,
        keys: &[String],
        audit: AuditRecord,
    ) -> Result<Vec<CounterpartyMatch>> {
        check_scan_keys(keys)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // One transaction for the read and its audit. On PostgreSQL
        // memory_names' conflict_scan policy shows counterparty rows, and
        // nothing else, to an admin_read transaction.
        let mut tx = self.write_system().await?;
        admin_read(&mut tx, true).await?;
        let matches = scan_counterparties(&mut tx, company, keys, audit).await?;
        D::commit(tx).await?;
        Ok(matches)
    }

    async fn scan_contract_mentions(
        &self,
        _admin: &AdminScope,
        company: &CompanyId,
        keys: &[String],
        audit: AuditRecord,
    ) -> Result<Vec<CounterpartyMatch>> {
        let keys = mention_keys(keys)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.write_system().await?;
        admin_read(&mut tx, true).await?;
        let matches = scan_contract_mentions(&mut tx, company, &keys, audit).await?;
        D::commit(tx).await?;
        Ok(matches)
    }
}
