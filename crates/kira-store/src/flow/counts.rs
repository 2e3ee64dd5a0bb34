//! [`CountStore`], written once for every [`Db`]: a batch's per-second
//! counts and its totals each go in one statement (a JSON array of rows,
//! read with `json_each` on SQLite and `jsonb_array_elements` on
//! PostgreSQL, added to on conflict), then each provider's streak.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use kira_core::auth::AdminScope;
use kira_core::metrics::PROVIDER_BUCKETS;
use serde_json::{Value, json};

use crate::counts::{
    CountBatch, CountKey, CountKind, CountStore, CountTotals, Latency, ProviderTotal, Tally,
};
use crate::flow::store::Db;
use crate::sql::{Columns, Conn, q, q_each};
use crate::{Result, StoreError};

const ADD_COUNTS_SQLITE: &str = "INSERT INTO counts (kind, at, subject, detail, n, errors) \
     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5 \
     FROM json_each($1) WHERE true \
     ON CONFLICT (kind, at, subject, detail) DO UPDATE \
     SET n = counts.n + excluded.n, errors = counts.errors + excluded.errors";

const ADD_COUNTS_PG: &str = "INSERT INTO counts (kind, at, subject, detail, n, errors) \
     SELECT value ->> 0, (value ->> 1)::timestamptz, value ->> 2, value ->> 3, \
            (value ->> 4)::bigint, (value ->> 5)::bigint \
     FROM jsonb_array_elements($1) AS j(value) \
     ON CONFLICT (kind, at, subject, detail) DO UPDATE \
     SET n = counts.n + excluded.n, errors = counts.errors + excluded.errors";

fn bucket_columns() -> Vec<String> {
    (0..PROVIDER_BUCKETS).map(|i| format!("b{i}")).collect()
}

/// The totals' upsert: rows of kind, subject, detail, n, errors,
/// seconds and the buckets.
fn add_totals_sql(pg: bool) -> String {
    let buckets = bucket_columns();
    let mut select = vec![
        "value ->> 0".to_owned(),
        "value ->> 1".to_owned(),
        "value ->> 2".to_owned(),
    ];
    for (i, ty) in [(3, "bigint"), (4, "bigint"), (5, "float8")] {
        select.push(if pg {
            format!("(value ->> {i})::{ty}")
        } else {
            format!("value ->> {i}")
        });
    }
    for i in 0..buckets.len() {
        let n = i + 6;
        select.push(if pg {
            format!("(value ->> {n})::bigint")
        } else {
            format!("value ->> {n}")
        });
    }
    let from = if pg {
        "jsonb_array_elements($1) AS j(value)"
    } else {
        "json_each($1) WHERE true"
    };
    let set: Vec<String> = ["n", "errors", "seconds"]
        .iter()
        .map(|c| (*c).to_owned())
        .chain(buckets.iter().cloned())
        .map(|c| format!("{c} = count_totals.{c} + excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO count_totals (kind, subject, detail, n, errors, seconds, {}) \
         SELECT {} FROM {from} ON CONFLICT (kind, subject, detail) DO UPDATE SET {}",
        buckets.join(", "),
        select.join(", "),
        set.join(", ")
    )
}

static ADD_TOTALS_SQLITE: LazyLock<String> = LazyLock::new(|| add_totals_sql(false));
static ADD_TOTALS_PG: LazyLock<String> = LazyLock::new(|| add_totals_sql(true));

static SELECT_TOTALS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT kind, subject, detail, n, errors, seconds, {} FROM count_totals \
         ORDER BY kind, subject, detail",
        bucket_columns().join(", ")
    )
});

fn int(v: u64) -> Value {
    json!(i64::try_from(v).unwrap_or(i64::MAX))
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The batch's totals as the upsert's rows: authentication failures and
/// denied reads added up per kind, provider calls per provider and model
/// with their latency.
fn totals_rows(batch: &CountBatch) -> Vec<Value> {
    let mut sums: BTreeMap<(CountKind, &str, &str), Tally> = BTreeMap::new();
    for (k, t) in &batch.counts {
        let key = match k.kind {
            CountKind::ProviderCall => (k.kind, k.subject.as_str(), k.detail.as_str()),
            kind => (kind, "", ""),
        };
        sums.entry(key).or_default().add(*t);
    }
    let none = Latency::default();
    sums.into_iter()
        .map(|((kind, subject, detail), t)| {
            let latency = batch
                .latency
                .get(&(subject.to_owned(), detail.to_owned()))
                .unwrap_or(&none);
            let mut row = vec![
                json!(kind.as_str()),
                json!(subject),
                json!(detail),
                int(t.n),
                int(t.errors),
                json!(latency.seconds),
            ];
            row.extend(latency.buckets.iter().map(|b| int(*b)));
            Value::Array(row)
        })
        .collect()
}

async fn add_tx(c: &mut dyn Conn, batch: &CountBatch) -> Result<()> {
    if !batch.counts.is_empty() {
        let rows: Vec<Value> = batch
            .counts
            .iter()
            .map(|(k, t)| {
                json!([
                    k.kind.as_str(),
                    crate::sqlite::ts(k.at.trunc_subsecs(0)),
                    k.subject,
                    k.detail,
                    int(t.n),
                    int(t.errors)
                ])
            })
            .collect();
        c.exec(q_each(ADD_COUNTS_SQLITE, ADD_COUNTS_PG).arg(&rows[..]))
            .await?;
        let totals = totals_rows(batch);
        c.exec(q_each(ADD_TOTALS_SQLITE.as_str(), ADD_TOTALS_PG.as_str()).arg(&totals[..]))
            .await?;
    }
    // In the providers' order, as every process writes them.
    for (provider, (streak, at)) in &batch.streaks {
        let sql = if streak.answered {
            "INSERT INTO provider_streaks (provider, errors_in_a_row, at) VALUES ($1, $2, $3) \
             ON CONFLICT (provider) DO UPDATE \
             SET errors_in_a_row = excluded.errors_in_a_row, at = excluded.at"
        } else {
            "INSERT INTO provider_streaks (provider, errors_in_a_row, at) VALUES ($1, $2, $3) \
             ON CONFLICT (provider) DO UPDATE \
             SET errors_in_a_row = provider_streaks.errors_in_a_row + excluded.errors_in_a_row, \
                 at = excluded.at"
        };
        c.exec(
            q(sql)
                .arg(provider.as_str())
                .arg(i64::try_from(streak.errors_after).unwrap_or(i64::MAX))
                .arg(at.trunc_subsecs(6)),
        )
        .await?;
    }
    Ok(())
}

fn kind_of(s: &str) -> Result<CountKind> {
    CountKind::parse(s).ok_or_else(|| StoreError::Corrupt(format!("count kind {s:?}")))
}

async fn totals_of(c: &mut dyn Conn) -> Result<CountTotals> {
    let mut t = CountTotals::default();
    for r in c.all(q(SELECT_TOTALS.as_str())).await? {
        let (n, errors) = (uint(r.int("n")?), uint(r.int("errors")?));
        match kind_of(&r.text("kind")?)? {
            CountKind::AuthFailure => t.auth_failures += n,
            CountKind::DeniedRead => t.denied_reads += n,
            CountKind::ProviderCall => {
                let mut latency = Latency {
                    seconds: r.real("seconds")?,
                    ..Latency::default()
                };
                for (i, b) in latency.buckets.iter_mut().enumerate() {
                    *b = uint(r.int(&format!("b{i}"))?);
                }
                t.providers.push(ProviderTotal {
                    provider: r.text("subject")?,
                    model: r.text("detail")?,
                    ok: n,
                    errors,
                    latency,
                });
            }
        }
    }
    for r in c
        .all(q(
            "SELECT provider, errors_in_a_row FROM provider_streaks ORDER BY provider",
        ))
        .await?
    {
        t.errors_in_a_row
            .push((r.text("provider")?, uint(r.int("errors_in_a_row")?)));
    }
    Ok(t)
}

#[async_trait]
impl<D: Db> CountStore for D {
    async fn add_counts(&self, batch: &CountBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_system().await?;
        match add_tx(&mut tx, batch).await {
            Ok(()) => D::commit(tx).await,
            Err(e) => {
                let _ = D::rollback(tx).await;
                Err(e)
            }
        }
    }

    async fn counts_since(
        &self,
        _admin: &AdminScope,
        since: DateTime<Utc>,
    ) -> Result<Vec<(CountKey, Tally)>> {
        let mut r = self.read_all(false).await?;
        let rows = r
            .all(
                q(
                    "SELECT kind, at, subject, detail, n, errors FROM counts WHERE at > $1 \
                   ORDER BY at, kind, subject, detail",
                )
                .arg(since),
            )
            .await;
        D::end_read(r).await?;
        rows?
            .iter()
            .map(|r| {
                Ok((
                    CountKey {
                        kind: kind_of(&r.text("kind")?)?,
                        at: r.time("at")?,
                        subject: r.text("subject")?,
                        detail: r.text("detail")?,
                    },
                    Tally {
                        n: uint(r.int("n")?),
                        errors: uint(r.int("errors")?),
                    },
                ))
            })
            .collect()
    }

    async fn count_totals(&self, _admin: &AdminScope) -> Result<CountTotals> {
        let mut r = self.read_all(false).await?;
        let found = totals_of(&mut r).await;
        D::end_read(r).await?;
        found
    }

    async fn prune_counts(&self, before: DateTime<Utc>) -> Result<u64> {
        let mut tx = self.write_system().await?;
        let n = tx
            .exec(q("DELETE FROM counts WHERE at < $1").arg(before))
            .await;
        match n {
            Ok(n) => {
                D::commit(tx).await?;
                Ok(n)
            }
            Err(e) => {
                let _ = D::rollback(tx).await;
                Err(e)
            }
        }
    }
}
