//! Episodic memory on SQLite: events in `memories`, full text in the FTS5
//! table `memories_fts` (kept in step by the migration's triggers), vectors
//! and the embedding queue beside them. A search asks FTS5 which of the
//! company's rows hold each word and ranks them by BM25 here, with the
//! company's own counts: FTS5's `bm25()` would read every company's rows
//! of each word, so its cost would grow with the whole table. Lists of ids
//! travel as one JSON array (`json_each`), so each statement's text stays
//! fixed whatever the number of ids. The store, rows, filters and flows
//! are `flow::memory`'s; what SQLite does its own way ([`MemorySql`]: the
//! batch insert as one command, the search, the vectors' write) is here.

use async_trait::async_trait;
use kira_core::CompanyId;
use kira_core::memory::Memory;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::json_row::JsonRow;
use super::work::corrupt;
use super::{to_json, ts};
use crate::flow::memory::{self as flow, MEMORY_COLUMNS, MemorySql, memory_from_row};
use crate::memory::*;
use crate::sql::Columns;
use crate::{Result, StoreError};

/// What a failed memory insert means: its id was taken, or its company
/// is missing.
pub(super) fn insert_error(e: StoreError) -> StoreError {
    match e {
        StoreError::Database(sqlx::Error::Database(d)) if d.is_unique_violation() => {
            StoreError::Conflict("a memory with this id already exists".into())
        }
        StoreError::Database(sqlx::Error::Database(d)) if d.is_foreign_key_violation() => {
            StoreError::NotFound
        }
        e => e,
    }
}

/// Adds to `script` the statements a batch insert runs: the rows (each
/// of the company it is paired with), their places in the embedding queue
/// and their names, one statement each whatever their number.
pub(super) fn push_rows(
    script: &mut super::Script,
    memories: &[(&CompanyId, &Memory)],
) -> Result<()> {
    if memories.is_empty() {
        return Ok(());
    }
    let mut rows = Vec::with_capacity(memories.len());
    for (company, m) in memories {
        rows.push(serde_json::json!([
            m.id.to_string(),
            company.as_str(),
            ts(m.occurred_at),
            m.event_type.as_str(),
            m.workstream.as_str(),
            m.category,
            to_json(&m.content)?,
            m.importance,
            to_json(&m.indexed_terms)?,
            m.source,
            ts(m.created_at),
            m.archived_at.map(ts),
            to_json(&m.compacted_from)?,
            m.supersedes.map(|s| s.to_string()),
        ]));
    }
    let rows = to_json(&rows)?;
    script.push(
        "INSERT INTO memories (id, company_id, occurred_at, event_type, workstream, category, \
         content, importance, indexed_terms, source, created_at, archived_at, compacted_from, supersedes) \
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, \
           value ->> 6, value ->> 7, value ->> 8, value ->> 9, value ->> 10, value ->> 11, \
           value ->> 12, value ->> 13 FROM jsonb_each(?) ORDER BY key;",
        [rows.clone()],
        Some((memories.len() as u64, "memories were not all inserted")),
    );
    script.push(
        "INSERT INTO memory_embed_queue (memory_id, company_id, queued_at) \
         SELECT id, company_id, created_at FROM memories \
         WHERE id IN (SELECT value ->> 0 FROM jsonb_each(?));",
        [rows],
        Some((
            memories.len() as u64,
            "memories were not all queued for embedding",
        )),
    );
    let mut names: Vec<(String, &str, String, String, &str)> = Vec::new();
    for (company, m) in memories {
        for (id, kind, name, key) in name_rows(std::slice::from_ref(*m)) {
            names.push((id.to_string(), kind.as_str(), name, key, company.as_str()));
        }
    }
    if !names.is_empty() {
        script.push(
            "INSERT OR IGNORE INTO memory_names (kind, key, company_id, memory_id, name) \
             SELECT value ->> '$[1]', value ->> '$[3]', value ->> '$[4]', value ->> '$[0]', value ->> '$[2]' \
             FROM jsonb_each(?);",
            [to_json(&names)?],
            None,
        );
    }
    Ok(())
}

/// The columns of a search's [`JsonRow`], `json_array(m.seq, MEMORY_COLUMNS...)`.
const JSON_ROW_COLUMNS: [&str; 15] = [
    "seq",
    "id",
    "company_id",
    "occurred_at",
    "event_type",
    "workstream",
    "category",
    "content",
    "importance",
    "indexed_terms",
    "source",
    "created_at",
    "archived_at",
    "compacted_from",
    "supersedes",
];

/// A `json_array(m.seq, MEMORY_COLUMNS...)` of a search's read.
fn seq_and_memory(v: serde_json::Value) -> Result<(i64, Memory)> {
    let serde_json::Value::Array(parts) = v else {
        return Err(corrupt("search rows", "not an array"));
    };
    let row = JsonRow::new(&JSON_ROW_COLUMNS, parts);
    Ok((row.int("seq")?, memory_from_row(&row)?))
}

/// The search's one statement: each word's matches (one JSON array each:
/// a row through the driver costs more than SQLite's work for it), the
/// company's document count, and the matches the filter passes with their
/// lengths. Each word is matched once (materialised).
fn search_statement(
    company: &CompanyId,
    words: &[String],
    filter: &MemoryFilter,
    limit: u32,
) -> QueryBuilder<Sqlite> {
    let mut qb = QueryBuilder::<Sqlite>::new("WITH ");
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            qb.push(", ");
        }
        qb.push(format!(
            "w{i} AS MATERIALIZED (SELECT rowid AS seq FROM memories_fts WHERE memories_fts MATCH "
        ))
        .push_bind(fts_word_query(company, w))
        .push(")");
    }
    // The matches the filter passes, with their lengths.
    qb.push(
        ", passing AS MATERIALIZED (SELECT m.seq, length(coalesce(m.content ->> '$.text', '')) \
         + length(m.category) + length(m.indexed_terms) AS len, m.occurred_at, m.id FROM memories m \
         WHERE m.company_id = ",
    )
    .push_bind(company.as_str().to_owned())
    .push(" AND m.seq IN (");
    for i in 0..words.len() {
        if i > 0 {
            qb.push(" UNION ");
        }
        qb.push(format!("SELECT seq FROM w{i}"));
    }
    qb.push(")");
    flow::push_filter(&mut qb, filter);
    qb.push(")");
    qb.push(" SELECT -1 AS w, json_array(count(*)) AS seqs FROM memories WHERE company_id = ")
        .push_bind(company.as_str().to_owned());
    for i in 0..words.len() {
        qb.push(format!(
            " UNION ALL SELECT {i}, (SELECT json_group_array(seq) FROM w{i})"
        ));
    }
    qb.push(
        " UNION ALL SELECT -2, (SELECT json_group_array(json_array(seq, len, occurred_at, id)) \
         FROM passing)",
    );
    // When every match will be a hit, the memories too: no second read.
    qb.push(format!(
        " UNION ALL SELECT -3, (SELECT json_group_array(json_array(m.seq, {MEMORY_COLUMNS})) \
         FROM memories m WHERE m.company_id = "
    ))
    .push_bind(company.as_str().to_owned())
    .push(" AND m.seq IN (SELECT seq FROM passing)) WHERE (SELECT count(*) FROM passing) <= ")
    .push_bind(i64::from(limit));
    qb
}

/// The FTS5 query for the company's documents holding `word` in their
/// text, category or indexed terms: the word is a quoted string, so
/// nothing in it is syntax. Words are letters and digits only and the
/// company is its hex token; quotes are doubled anyway, as FTS5 escapes
/// them.
fn fts_word_query(company: &CompanyId, word: &str) -> String {
    let quote = |w: &str| format!("\"{}\"", w.replace('"', "\"\""));
    format!(
        "company : {} AND {{text category terms}} : {}",
        quote(&company_token(company)),
        quote(word)
    )
}

/// The index's `company` value: the id in hex (as the triggers of
/// `0011_fts_company_token.sql` write it), one token that matches this
/// company alone. Tokenised as text, `delta-bank` would also be `delta`.
fn company_token(company: &CompanyId) -> String {
    company
        .as_str()
        .bytes()
        .map(|b| format!("{b:02X}"))
        .collect()
}

/// BM25's term-frequency saturation and length normalisation.
const BM25_K1: f64 = 1.2;
const BM25_B: f64 = 0.75;

/// BM25 of one document from the query words it holds, each counted once:
/// `idf` per word, `len` its length over `avg_len`.
fn bm25(words: &[usize], idf: &[f64], len: f64, avg_len: f64) -> f64 {
    let norm = 1.0 - BM25_B + BM25_B * len / avg_len.max(1.0);
    let per_word = (BM25_K1 + 1.0) / (1.0 + BM25_K1 * norm);
    words.iter().map(|&w| idf[w] * per_word).sum()
}

/// Inverse document frequency of a word in `df` of `n` documents; always
/// above 0, so a word every document holds still counts a little.
fn idf(n: f64, df: f64) -> f64 {
    (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
}

#[async_trait]
impl MemorySql for Sqlite {
    /// One command: the rows, their places in the embedding queue and
    /// their names ([`push_rows`]).
    async fn insert_memories(
        c: &mut SqliteConnection,
        company: &CompanyId,
        memories: &[Memory],
    ) -> Result<()> {
        let rows: Vec<(&CompanyId, &Memory)> = memories.iter().map(|m| (company, m)).collect();
        let mut script = super::Script::default();
        push_rows(&mut script, &rows)?;
        script.run(c).await.map_err(insert_error)?;
        Ok(())
    }

    async fn search_memories(
        c: &mut SqliteConnection,
        company: &CompanyId,
        words: &[String],
        filter: &MemoryFilter,
        limit: u32,
    ) -> Result<Vec<TextHit>> {
        // Ranked with the company's own statistics. FTS5's bm25() would
        // count every word's documents across all companies (an IDF read
        // of whole doclists: 40 ms per search at 1M memories); each
        // word's match within one company is a seek instead.
        let mut qb = search_statement(company, words, filter, limit);
        let mut documents = 0f64;
        let mut df = vec![0f64; words.len()];
        // seq -> the words the row holds.
        let mut holds: std::collections::HashMap<i64, Vec<usize>> = Default::default();
        // (seq, length, occurred_at, id) of the matches the filter passes.
        let mut passing: Vec<(i64, i64, String, String)> = Vec::new();
        // The memories themselves, when they all fit the limit.
        let mut rows: Option<Vec<(i64, Memory)>> = None;
        for r in qb.build().fetch_all(&mut *c).await? {
            let w: i64 = r.try_get("w")?;
            let seqs: &str = r.try_get("seqs")?;
            match usize::try_from(w) {
                Ok(w) if w < words.len() => {
                    let seqs: Vec<i64> =
                        serde_json::from_str(seqs).map_err(|e| corrupt("search rows", e))?;
                    df[w] = seqs.len() as f64;
                    for seq in seqs {
                        holds.entry(seq).or_default().push(w);
                    }
                }
                _ if w == -2 => {
                    passing = serde_json::from_str(seqs).map_err(|e| corrupt("search rows", e))?;
                }
                _ if w == -3 => {
                    let stored: Vec<serde_json::Value> =
                        serde_json::from_str(seqs).map_err(|e| corrupt("search rows", e))?;
                    let mut got = Vec::with_capacity(stored.len());
                    for v in stored {
                        let (seq, m) = seq_and_memory(v)?;
                        got.push((seq, m));
                    }
                    rows = Some(got);
                }
                _ => {
                    let n: Vec<i64> =
                        serde_json::from_str(seqs).map_err(|e| corrupt("search rows", e))?;
                    documents = n.first().copied().unwrap_or(0) as f64;
                }
            }
        }
        if passing.is_empty() {
            return Ok(Vec::new());
        }
        let documents = documents.max(df.iter().copied().fold(0.0, f64::max));
        let idf: Vec<f64> = df.iter().map(|&d| idf(documents, d)).collect();
        let total_len: f64 = passing.iter().map(|p| p.1 as f64).sum();
        let mut ranked: Vec<(i64, f64, String, String, f64)> = passing
            .into_iter()
            .map(|(seq, len, at, id)| (seq, len as f64, at, id, 0.0))
            .collect();
        let avg_len = total_len / ranked.len() as f64;
        for (seq, len, _, _, score) in &mut ranked {
            *score = holds.get(seq).map_or(0.0, |w| bm25(w, &idf, *len, avg_len));
        }
        // Best first; ties: newer, then larger id (the list order).
        ranked.sort_by(|a, b| {
            b.4.total_cmp(&a.4)
                .then_with(|| b.2.cmp(&a.2))
                .then_with(|| b.3.cmp(&a.3))
        });
        ranked.truncate(limit as usize);
        let mut by_seq: std::collections::HashMap<i64, Memory> = Default::default();
        if let Some(rows) = rows {
            by_seq.extend(rows);
        } else {
            let top: Vec<i64> = ranked.iter().map(|r| r.0).collect();
            let sql = format!(
                "SELECT m.seq, {MEMORY_COLUMNS} FROM memories m WHERE m.company_id = ? \
                 AND m.seq IN (SELECT value FROM json_each(?))"
            );
            for r in sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(company.as_str())
                .bind(to_json(&top)?)
                .fetch_all(&mut *c)
                .await?
            {
                by_seq.insert(r.try_get("seq")?, memory_from_row(&r)?);
            }
        }
        Ok(ranked
            .into_iter()
            .filter_map(|(seq, _, _, _, relevance)| {
                by_seq
                    .remove(&seq)
                    .map(|memory| TextHit { memory, relevance })
            })
            .collect())
    }

    /// A statement per vector.
    async fn put_vectors(
        c: &mut SqliteConnection,
        company: &CompanyId,
        model: &str,
        vectors: &[MemoryVector],
    ) -> Result<()> {
        let company = company.as_str();
        for v in dedup_vectors(vectors) {
            let id = v.memory_id.to_string();
            let stored = sqlx::query(
                "INSERT INTO memory_vectors (memory_id, company_id, model, vector) \
                 SELECT id, company_id, ?, ? FROM memories WHERE company_id = ? AND id = ? \
                 ON CONFLICT (memory_id) DO UPDATE SET model = excluded.model, vector = excluded.vector",
            )
            .bind(model)
            .bind(encode_vector(&v.vector))
            .bind(company)
            .bind(&id)
            .execute(&mut *c)
            .await?
            .rows_affected();
            if stored > 0 {
                sqlx::query(
                    "DELETE FROM memory_embed_queue WHERE company_id = ? AND memory_id = ?",
                )
                .bind(company)
                .bind(&id)
                .execute(&mut *c)
                .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_row_has_the_memory_columns_in_order() {
        let columns: Vec<&str> = MEMORY_COLUMNS
            .split(',')
            .map(|c| c.trim().trim_start_matches("m."))
            .collect();
        assert_eq!(JSON_ROW_COLUMNS[0], "seq");
        assert_eq!(JSON_ROW_COLUMNS[1..], columns[..]);
    }

    #[test]
    fn rare_words_weigh_more_and_short_memories_win_ties() {
        // 100 memories: word 0 in 90 of them, word 1 in 2.
        // A word every memory holds still counts, a little.
        assert!(idf(100.0, 100.0) > 0.0);
        let weights = [idf(100.0, 90.0), idf(100.0, 2.0)];
        assert!(weights[1] > 5.0 * weights[0], "{weights:?}");
        let rare = bm25(&[1], &weights, 50.0, 50.0);
        let common = bm25(&[0], &weights, 50.0, 50.0);
        let both = bm25(&[0, 1], &weights, 50.0, 50.0);
        assert!(both > rare && rare > common);
        // The same words in a shorter memory score higher.
        assert!(bm25(&[1], &weights, 20.0, 50.0) > bm25(&[1], &weights, 200.0, 50.0));
        assert_eq!(bm25(&[], &weights, 20.0, 50.0), 0.0);
    }

    #[test]
    fn a_word_query_is_one_quoted_string_within_the_company() {
        let acme = CompanyId::parse("acme").expect("id");
        assert_eq!(
            fts_word_query(&acme, "board"),
            r#"company : "61636D65" AND {text category terms} : "board""#
        );
        assert_eq!(
            fts_word_query(&acme, r#"a"b"#),
            r#"company : "61636D65" AND {text category terms} : "a""b""#
        );
        // One token per id: `delta` is not a word of `delta-bank`'s.
        let delta = CompanyId::parse("delta").expect("id");
        let bank = CompanyId::parse("delta-bank").expect("id");
        let token = company_token(&bank);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
        assert_ne!(token, company_token(&delta));
    }
}
