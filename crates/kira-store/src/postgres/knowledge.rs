//! The shared knowledge base's search on PostgreSQL: its match against
//! the generated, weighted tsvector of `knowledge` (under a GIN index).
//! The stores and their flows are `flow::knowledge`'s.

use sqlx::{Postgres, QueryBuilder};

use super::memory::{TSQUERY_AFTER, TSQUERY_BEFORE};
use crate::flow::knowledge::{COLUMNS, KnowledgeSql};

impl KnowledgeSql for Postgres {
    /// Ranked by `ts_rank_cd` over the weighted tsvector; any query word
    /// matches.
    fn search_match(words: &[String]) -> QueryBuilder<Postgres> {
        let mut qb = QueryBuilder::<Postgres>::new("WITH q AS (SELECT ");
        qb.push(TSQUERY_BEFORE)
            .push_bind(words.join(" "))
            .push(TSQUERY_AFTER)
            .push(format!(
                " AS q) SELECT {COLUMNS}, ts_rank_cd(k.search, q.q)::float8 AS relevance \
                 FROM knowledge k, q WHERE k.search @@ q.q"
            ));
        qb
    }
}
