//! The shared knowledge base's search on SQLite: its match over the
//! external-content FTS5 table `knowledge_fts` (kept in step with
//! `knowledge` by the migration's triggers). The stores and their flows
//! are `flow::knowledge`'s.

use sqlx::{QueryBuilder, Sqlite};

use crate::flow::knowledge::{COLUMNS, KnowledgeSql};

/// The FTS5 query for `words`: each a quoted string, OR-ed, so nothing in
/// it is syntax.
fn fts_query(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" OR ")
}

impl KnowledgeSql for Sqlite {
    /// Ranked by FTS5's `bm25`, title and tags weighing twice the body, as
    /// on PostgreSQL.
    fn search_match(words: &[String]) -> QueryBuilder<Sqlite> {
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {COLUMNS}, -bm25(knowledge_fts, 2.0, 1.0, 2.0) AS relevance \
             FROM knowledge_fts CROSS JOIN knowledge k ON k.seq = knowledge_fts.rowid \
             WHERE knowledge_fts MATCH "
        ));
        qb.push_bind(fts_query(words));
        qb
    }
}
