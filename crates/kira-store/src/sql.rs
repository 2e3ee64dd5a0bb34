//! The small per-backend interface the store's shared flows are written
//! against: a statement (its text with `$1..$n` placeholders, which both
//! sqlx drivers accept, and its arguments), row access by column name, and
//! the few things that differ for real between SQLite and PostgreSQL (row
//! locks, the audit chain's append).
//!
//! A flow written once (see `flow/`) takes `&mut dyn Conn`; each backend
//! opens its transaction (SQLite's writer turn, PostgreSQL's company scope
//! under row-level security), passes the connection, and commits.

use std::borrow::Cow;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kira_core::CompanyId;
use kira_core::audit::{AuditEntry, AuditRecord};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::types::Json;
use sqlx::{PgConnection, Row as _, SqliteConnection};
use uuid::Uuid;

use crate::{Result, StoreError};

/// One argument of a statement.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Int(i64),
    OptInt(Option<i64>),
    Real(f64),
    Text(&'a str),
    OptText(Option<&'a str>),
    Time(DateTime<Utc>),
    OptTime(Option<DateTime<Utc>>),
    Bool(bool),
    Bytes(&'a [u8]),
    OptReal(Option<f64>),
    /// UUID on PostgreSQL, its hyphenated text on SQLite.
    Uuid(Uuid),
    OptUuid(Option<Uuid>),
    /// UUID[] on PostgreSQL, a JSON array of texts on SQLite.
    Uuids(&'a [Uuid]),
    /// TEXT[] on PostgreSQL, a JSON array on SQLite.
    Texts(&'a [String]),
    /// JSONB on PostgreSQL, its text on SQLite.
    Json(&'a serde_json::Value),
    OptJson(Option<&'a serde_json::Value>),
    /// A JSON array (JSONB on PostgreSQL, its text on SQLite).
    JsonArray(&'a [serde_json::Value]),
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}

impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Arg::OptInt(v)
    }
}

impl From<Option<f64>> for Arg<'_> {
    fn from(v: Option<f64>) -> Self {
        Arg::OptReal(v)
    }
}

impl From<f64> for Arg<'_> {
    fn from(v: f64) -> Self {
        Arg::Real(v)
    }
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Arg::OptText(v)
    }
}

impl From<Option<DateTime<Utc>>> for Arg<'_> {
    fn from(v: Option<DateTime<Utc>>) -> Self {
        Arg::OptTime(v)
    }
}

impl<'a> From<&'a [u8]> for Arg<'a> {
    fn from(v: &'a [u8]) -> Self {
        Arg::Bytes(v)
    }
}

impl From<bool> for Arg<'_> {
    fn from(v: bool) -> Self {
        Arg::Bool(v)
    }
}

impl From<Uuid> for Arg<'_> {
    fn from(v: Uuid) -> Self {
        Arg::Uuid(v)
    }
}

impl From<Option<Uuid>> for Arg<'_> {
    fn from(v: Option<Uuid>) -> Self {
        Arg::OptUuid(v)
    }
}

impl<'a> From<&'a [Uuid]> for Arg<'a> {
    fn from(v: &'a [Uuid]) -> Self {
        Arg::Uuids(v)
    }
}

impl<'a> From<&'a [String]> for Arg<'a> {
    fn from(v: &'a [String]) -> Self {
        Arg::Texts(v)
    }
}

impl<'a> From<&'a serde_json::Value> for Arg<'a> {
    fn from(v: &'a serde_json::Value) -> Self {
        Arg::Json(v)
    }
}

impl<'a> From<Option<&'a serde_json::Value>> for Arg<'a> {
    fn from(v: Option<&'a serde_json::Value>) -> Self {
        Arg::OptJson(v)
    }
}

impl<'a> From<&'a [serde_json::Value]> for Arg<'a> {
    fn from(v: &'a [serde_json::Value]) -> Self {
        Arg::JsonArray(v)
    }
}

impl From<DateTime<Utc>> for Arg<'_> {
    fn from(v: DateTime<Utc>) -> Self {
        Arg::Time(v)
    }
}

/// A row lock a statement takes where the backend has row locks
/// (PostgreSQL); SQLite's single writer already runs writing
/// transactions one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lock {
    Update,
    /// `FOR NO KEY UPDATE`: leaves the share locks of inserts referring to
    /// the row alone.
    NoKeyUpdate,
    /// `FOR UPDATE SKIP LOCKED`: a row another transaction holds is not
    /// waited for but left out.
    UpdateSkipLocked,
    /// `FOR SHARE`.
    Share,
    /// `FOR KEY SHARE`: holds the row against a delete only.
    KeyShare,
}

/// A statement for either backend.
#[derive(Debug)]
pub(crate) struct Stmt<'a> {
    sql: Cow<'static, str>,
    /// PostgreSQL's own text, where the dialects differ (see [`q_each`]).
    pg_sql: Option<&'static str>,
    args: Vec<Arg<'a>>,
    lock: Option<Lock>,
    /// Runs on PostgreSQL only (row-level security settings, notifications,
    /// statements that are there for their lock); on SQLite it changes
    /// nothing and finds no row.
    pg_only: bool,
}

/// A statement with `$1..$n` placeholders.
pub(crate) fn q<'a>(sql: &'static str) -> Stmt<'a> {
    Stmt {
        sql: Cow::Borrowed(sql),
        pg_sql: None,
        args: Vec::new(),
        lock: None,
        pg_only: false,
    }
}

/// A statement whose text differs by dialect (a list argument is a JSON
/// array read with `json_each` on SQLite and an array on PostgreSQL; a
/// column only one schema has), with the same arguments for both; either
/// text may leave an argument unread.
pub(crate) fn q_each<'a>(sqlite: &'static str, pg: &'static str) -> Stmt<'a> {
    Stmt {
        pg_sql: Some(pg),
        ..q(sqlite)
    }
}

impl<'a> Stmt<'a> {
    pub(crate) fn arg(mut self, a: impl Into<Arg<'a>>) -> Self {
        self.args.push(a.into());
        self
    }

    /// `FOR UPDATE` on PostgreSQL: the rows read stay locked until commit.
    pub(crate) fn for_update(mut self) -> Self {
        self.lock = Some(Lock::Update);
        self
    }

    /// `FOR NO KEY UPDATE` on PostgreSQL, when `lock`.
    pub(crate) fn for_no_key_update(mut self, lock: bool) -> Self {
        if lock {
            self.lock = Some(Lock::NoKeyUpdate);
        }
        self
    }

    /// `lock` on PostgreSQL.
    pub(crate) fn locked(mut self, lock: Lock) -> Self {
        self.lock = Some(lock);
        self
    }

    /// Runs on PostgreSQL only.
    pub(crate) fn pg_only(mut self) -> Self {
        self.pg_only = true;
        self
    }

    fn pg_text(&self) -> String {
        let sql = self.pg_sql.unwrap_or(&self.sql);
        let lock = match self.lock {
            None => return sql.to_string(),
            Some(Lock::Update) => "FOR UPDATE",
            Some(Lock::NoKeyUpdate) => "FOR NO KEY UPDATE",
            Some(Lock::UpdateSkipLocked) => "FOR UPDATE SKIP LOCKED",
            Some(Lock::Share) => "FOR SHARE",
            Some(Lock::KeyShare) => "FOR KEY SHARE",
        };
        format!("{sql} {lock}")
    }

    fn pg(&self) -> sqlx::query::Query<'_, sqlx::Postgres, PgArguments> {
        let mut query = match (self.pg_sql, &self.sql, self.lock) {
            // A static text goes as it is, not copied per call.
            (Some(text), _, None) => sqlx::query(text),
            (None, Cow::Borrowed(text), None) => sqlx::query(*text),
            _ => sqlx::query(sqlx::AssertSqlSafe(self.pg_text())),
        };
        for a in &self.args {
            query = match *a {
                Arg::Int(v) => query.bind(v),
                Arg::OptInt(v) => query.bind(v),
                Arg::Real(v) => query.bind(v),
                Arg::Text(v) => query.bind(v),
                Arg::OptText(v) => query.bind(v),
                Arg::Time(v) => query.bind(v),
                Arg::OptTime(v) => query.bind(v),
                Arg::Bool(v) => query.bind(v),
                Arg::Bytes(v) => query.bind(v),
                Arg::OptReal(v) => query.bind(v),
                Arg::Uuid(v) => query.bind(v),
                Arg::OptUuid(v) => query.bind(v),
                Arg::Uuids(v) => query.bind(v),
                Arg::Texts(v) => query.bind(v),
                Arg::Json(v) => query.bind(Json(v)),
                Arg::OptJson(v) => query.bind(v.map(Json)),
                Arg::JsonArray(v) => query.bind(Json(v)),
            };
        }
        query
    }

    fn sqlite(&self) -> sqlx::query::Query<'_, sqlx::Sqlite, SqliteArguments> {
        let mut query = match &self.sql {
            Cow::Borrowed(text) => sqlx::query(*text),
            Cow::Owned(text) => sqlx::query(sqlx::AssertSqlSafe(text.clone())),
        };
        for a in &self.args {
            query = match *a {
                Arg::Int(v) => query.bind(v),
                Arg::OptInt(v) => query.bind(v),
                Arg::Real(v) => query.bind(v),
                Arg::Text(v) => query.bind(v),
                Arg::OptText(v) => query.bind(v),
                Arg::Time(v) => query.bind(crate::sqlite::ts(v)),
                Arg::OptTime(v) => query.bind(v.map(crate::sqlite::ts)),
                Arg::Bool(v) => query.bind(v),
                Arg::Bytes(v) => query.bind(v),
                Arg::OptReal(v) => query.bind(v),
                Arg::Uuid(v) => query.bind(v.hyphenated()),
                Arg::OptUuid(v) => query.bind(v.map(|v| v.hyphenated())),
                Arg::Uuids(v) => query.bind(Json(v)),
                Arg::Texts(v) => query.bind(Json(v)),
                Arg::Json(v) => query.bind(Json(v)),
                Arg::OptJson(v) => query.bind(v.map(Json)),
                Arg::JsonArray(v) => query.bind(Json(v)),
            };
        }
        query
    }
}

/// Column access by name on a row of either backend, with sqlx's own
/// decoding; where the backends store a type differently (timestamps and
/// JSON are text on SQLite) the impl says how to read it.
pub(crate) trait Columns {
    /// An integer column (PostgreSQL's INT4 and INT8 alike).
    fn int(&self, col: &str) -> Result<i64>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>>;
    fn text(&self, col: &str) -> Result<String>;
    fn opt_text(&self, col: &str) -> Result<Option<String>>;
    fn real(&self, col: &str) -> Result<f64>;
    fn opt_real(&self, col: &str) -> Result<Option<f64>>;
    fn bool(&self, col: &str) -> Result<bool>;
    fn bytes(&self, col: &str) -> Result<Vec<u8>>;
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>>;
    /// A JSON column: JSONB on PostgreSQL, its text on SQLite.
    fn opt_json(&self, col: &str) -> Result<Option<serde_json::Value>>;
    /// A UUID column: UUID on PostgreSQL, its text on SQLite.
    fn opt_uuid(&self, col: &str) -> Result<Option<Uuid>>;
    /// A list of texts: TEXT[] on PostgreSQL, a JSON array on SQLite.
    fn texts(&self, col: &str) -> Result<Vec<String>>;
    /// A list of UUIDs: UUID[] on PostgreSQL, a JSON array on SQLite.
    fn uuids(&self, col: &str) -> Result<Vec<Uuid>>;

    fn uuid(&self, col: &str) -> Result<Uuid> {
        self.opt_uuid(col)?
            .ok_or_else(|| StoreError::Corrupt(format!("{col} is null")))
    }

    fn time(&self, col: &str) -> Result<DateTime<Utc>> {
        self.opt_time(col)?
            .ok_or_else(|| StoreError::Corrupt(format!("{col} is null")))
    }

    fn json(&self, col: &str) -> Result<serde_json::Value> {
        self.opt_json(col)?
            .ok_or_else(|| StoreError::Corrupt(format!("{col} is null")))
    }

    /// An INT4 column as the i32 it is on both backends.
    fn int32(&self, col: &str) -> Result<i32> {
        let v = self.int(col)?;
        i32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{col}: {v} is out of range")))
    }
}

/// The columns both drivers decode alike.
macro_rules! same_on_both {
    () => {
        fn text(&self, col: &str) -> Result<String> {
            Ok(self.try_get(col)?)
        }
        fn opt_text(&self, col: &str) -> Result<Option<String>> {
            Ok(self.try_get(col)?)
        }
        fn real(&self, col: &str) -> Result<f64> {
            Ok(self.try_get(col)?)
        }
        fn opt_real(&self, col: &str) -> Result<Option<f64>> {
            Ok(self.try_get(col)?)
        }
        fn bool(&self, col: &str) -> Result<bool> {
            Ok(self.try_get(col)?)
        }
        fn bytes(&self, col: &str) -> Result<Vec<u8>> {
            Ok(self.try_get(col)?)
        }
    };
}

impl Columns for SqliteRow {
    fn int(&self, col: &str) -> Result<i64> {
        Ok(self.try_get(col)?)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>> {
        Ok(self.try_get(col)?)
    }
    same_on_both!();
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>> {
        let text: Option<&str> = self.try_get(col)?;
        text.map(crate::sqlite::parse_ts).transpose()
    }
    fn opt_json(&self, col: &str) -> Result<Option<serde_json::Value>> {
        let text: Option<&str> = self.try_get(col)?;
        text.map(crate::sqlite::json).transpose()
    }
    fn opt_uuid(&self, col: &str) -> Result<Option<Uuid>> {
        let text: Option<&str> = self.try_get(col)?;
        text.map(|s| {
            Uuid::parse_str(s).map_err(|e| StoreError::Corrupt(format!("{col} {s:?}: {e}")))
        })
        .transpose()
    }
    fn texts(&self, col: &str) -> Result<Vec<String>> {
        crate::sqlite::json(self.try_get(col)?)
    }
    fn uuids(&self, col: &str) -> Result<Vec<Uuid>> {
        crate::sqlite::json(self.try_get(col)?)
    }
}

impl Columns for PgRow {
    fn int(&self, col: &str) -> Result<i64> {
        self.opt_int(col)?
            .ok_or_else(|| StoreError::Corrupt(format!("{col} is null")))
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>> {
        use sqlx::{Column as _, TypeInfo as _};
        // As wide as the column is: INT2, INT4 or INT8.
        Ok(match self.try_column(col)?.type_info().name() {
            "INT2" => self.try_get::<Option<i16>, _>(col)?.map(i64::from),
            "INT4" => self.try_get::<Option<i32>, _>(col)?.map(i64::from),
            _ => self.try_get(col)?,
        })
    }
    same_on_both!();
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>> {
        Ok(self.try_get(col)?)
    }
    fn opt_json(&self, col: &str) -> Result<Option<serde_json::Value>> {
        let v: Option<sqlx::types::Json<serde_json::Value>> = self.try_get(col)?;
        Ok(v.map(|j| j.0))
    }
    fn opt_uuid(&self, col: &str) -> Result<Option<Uuid>> {
        Ok(self.try_get(col)?)
    }
    fn texts(&self, col: &str) -> Result<Vec<String>> {
        Ok(self.try_get(col)?)
    }
    fn uuids(&self, col: &str) -> Result<Vec<Uuid>> {
        Ok(self.try_get(col)?)
    }
}

/// A row of either backend.
pub(crate) enum Row {
    Sqlite(SqliteRow),
    Pg(PgRow),
}

impl Row {
    fn cols(&self) -> &dyn Columns {
        match self {
            Row::Sqlite(r) => r,
            Row::Pg(r) => r,
        }
    }
}

impl Columns for Row {
    fn int(&self, col: &str) -> Result<i64> {
        self.cols().int(col)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>> {
        self.cols().opt_int(col)
    }
    fn text(&self, col: &str) -> Result<String> {
        self.cols().text(col)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        self.cols().opt_text(col)
    }
    fn real(&self, col: &str) -> Result<f64> {
        self.cols().real(col)
    }
    fn opt_real(&self, col: &str) -> Result<Option<f64>> {
        self.cols().opt_real(col)
    }
    fn bool(&self, col: &str) -> Result<bool> {
        self.cols().bool(col)
    }
    fn bytes(&self, col: &str) -> Result<Vec<u8>> {
        self.cols().bytes(col)
    }
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>> {
        self.cols().opt_time(col)
    }
    fn opt_json(&self, col: &str) -> Result<Option<serde_json::Value>> {
        self.cols().opt_json(col)
    }
    fn opt_uuid(&self, col: &str) -> Result<Option<Uuid>> {
        self.cols().opt_uuid(col)
    }
    fn texts(&self, col: &str) -> Result<Vec<String>> {
        self.cols().texts(col)
    }
    fn uuids(&self, col: &str) -> Result<Vec<Uuid>> {
        self.cols().uuids(col)
    }
}

/// A connection inside a transaction, of either backend.
#[async_trait]
pub(crate) trait Conn: Send {
    /// Runs `s`; the number of rows it changed.
    async fn exec(&mut self, s: Stmt<'_>) -> Result<u64>;

    async fn all(&mut self, s: Stmt<'_>) -> Result<Vec<Row>>;

    async fn opt(&mut self, s: Stmt<'_>) -> Result<Option<Row>>;

    /// Appends to the audit chain (each backend keeps its chain its own way).
    async fn audit(&mut self, record: AuditRecord) -> Result<AuditEntry>;

    /// Appends `records` in order.
    async fn audit_many(&mut self, records: Vec<AuditRecord>) -> Result<Vec<AuditEntry>> {
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            out.push(self.audit(r).await?);
        }
        Ok(out)
    }

    /// True on PostgreSQL, where row locks and row-level security exist.
    fn is_pg(&self) -> bool;

    /// Recomputes every company's base allocation in `period`; on
    /// PostgreSQL the transaction names `company` (or none) again after.
    async fn refresh_allocations(
        &mut self,
        period: &str,
        now: DateTime<Utc>,
        company: Option<&CompanyId>,
    ) -> Result<()>;

    /// The first column of the first row, if any, as an integer.
    async fn int(&mut self, s: Stmt<'_>) -> Result<Option<i64>> {
        match self.opt(s).await? {
            Some(Row::Sqlite(r)) => Ok(r.try_get(0)?),
            Some(Row::Pg(r)) => match r.try_get::<Option<i64>, _>(0) {
                Ok(v) => Ok(v),
                Err(sqlx::Error::ColumnDecode { .. }) => {
                    Ok(r.try_get::<Option<i32>, _>(0)?.map(i64::from))
                }
                Err(e) => Err(e.into()),
            },
            None => Ok(None),
        }
    }

    /// The one row `s` must find; `NotFound` otherwise.
    async fn one(&mut self, s: Stmt<'_>) -> Result<Row> {
        self.opt(s).await?.ok_or(StoreError::NotFound)
    }
}

#[async_trait]
impl Conn for SqliteConnection {
    async fn exec(&mut self, s: Stmt<'_>) -> Result<u64> {
        if s.pg_only {
            return Ok(0);
        }
        Ok(s.sqlite().execute(&mut *self).await?.rows_affected())
    }

    async fn all(&mut self, s: Stmt<'_>) -> Result<Vec<Row>> {
        if s.pg_only {
            return Ok(Vec::new());
        }
        let rows = s.sqlite().fetch_all(&mut *self).await?;
        Ok(rows.into_iter().map(Row::Sqlite).collect())
    }

    async fn opt(&mut self, s: Stmt<'_>) -> Result<Option<Row>> {
        if s.pg_only {
            return Ok(None);
        }
        Ok(s.sqlite()
            .fetch_optional(&mut *self)
            .await?
            .map(Row::Sqlite))
    }

    async fn audit(&mut self, record: AuditRecord) -> Result<AuditEntry> {
        crate::sqlite::append(self, record).await
    }

    /// One read of the chain's head and one command for them all.
    async fn audit_many(&mut self, records: Vec<AuditRecord>) -> Result<Vec<AuditEntry>> {
        crate::sqlite::append_many(self, records).await
    }

    fn is_pg(&self) -> bool {
        false
    }

    async fn refresh_allocations(
        &mut self,
        period: &str,
        now: DateTime<Utc>,
        _company: Option<&CompanyId>,
    ) -> Result<()> {
        crate::sqlite::work::refresh_tx(self, period, now).await
    }
}

#[async_trait]
impl Conn for PgConnection {
    async fn exec(&mut self, s: Stmt<'_>) -> Result<u64> {
        Ok(s.pg().execute(&mut *self).await?.rows_affected())
    }

    async fn all(&mut self, s: Stmt<'_>) -> Result<Vec<Row>> {
        let rows = s.pg().fetch_all(&mut *self).await?;
        Ok(rows.into_iter().map(Row::Pg).collect())
    }

    async fn opt(&mut self, s: Stmt<'_>) -> Result<Option<Row>> {
        Ok(s.pg().fetch_optional(&mut *self).await?.map(Row::Pg))
    }

    async fn audit(&mut self, record: AuditRecord) -> Result<AuditEntry> {
        crate::postgres::append(self, record).await
    }

    fn is_pg(&self) -> bool {
        true
    }

    async fn refresh_allocations(
        &mut self,
        period: &str,
        now: DateTime<Utc>,
        company: Option<&CompanyId>,
    ) -> Result<()> {
        crate::postgres::work::refresh_tx(self, period, now, company).await
    }
}

/// A transaction is its connection.
macro_rules! conn_through_deref {
    ($t:ty) => {
        #[async_trait]
        impl Conn for $t {
            async fn exec(&mut self, s: Stmt<'_>) -> Result<u64> {
                (**self).exec(s).await
            }

            async fn all(&mut self, s: Stmt<'_>) -> Result<Vec<Row>> {
                (**self).all(s).await
            }

            async fn opt(&mut self, s: Stmt<'_>) -> Result<Option<Row>> {
                (**self).opt(s).await
            }

            async fn audit(&mut self, record: AuditRecord) -> Result<AuditEntry> {
                (**self).audit(record).await
            }

            async fn audit_many(&mut self, records: Vec<AuditRecord>) -> Result<Vec<AuditEntry>> {
                (**self).audit_many(records).await
            }

            fn is_pg(&self) -> bool {
                (**self).is_pg()
            }

            async fn refresh_allocations(
                &mut self,
                period: &str,
                now: DateTime<Utc>,
                company: Option<&CompanyId>,
            ) -> Result<()> {
                (**self).refresh_allocations(period, now, company).await
            }
        }
    };
}

conn_through_deref!(crate::sqlite::Tx);
conn_through_deref!(sqlx::Transaction<'static, sqlx::Postgres>);
conn_through_deref!(sqlx::pool::PoolConnection<sqlx::Sqlite>);
conn_through_deref!(sqlx::pool::PoolConnection<sqlx::Postgres>);

/// A driver's own query builder, for the statements built from filters,
/// whose text a [`Stmt`] cannot hold: arguments bound as [`Stmt`] binds
/// them, a dialect's text picked as [`q_each`] picks it, and what is built
/// run on the dialect's own connection.
#[async_trait]
pub(crate) trait Dialect: sqlx::Database {
    fn push_arg(qb: &mut sqlx::QueryBuilder<Self>, a: Arg<'_>);

    /// `sqlite` on SQLite, `pg` on PostgreSQL.
    fn each<T>(sqlite: T, pg: T) -> T;

    /// Runs the statement `qb` built, on `c`; its rows.
    async fn fetch(c: &mut Self::Connection, qb: sqlx::QueryBuilder<Self>) -> Result<Vec<Row>>;
}

#[async_trait]
impl Dialect for sqlx::Sqlite {
    fn push_arg(qb: &mut sqlx::QueryBuilder<Self>, a: Arg<'_>) {
        match a {
            Arg::Int(v) => qb.push_bind(v),
            Arg::OptInt(v) => qb.push_bind(v),
            Arg::Real(v) => qb.push_bind(v),
            Arg::OptReal(v) => qb.push_bind(v),
            Arg::Text(v) => qb.push_bind(v),
            Arg::OptText(v) => qb.push_bind(v),
            Arg::Time(v) => qb.push_bind(crate::sqlite::ts(v)),
            Arg::OptTime(v) => qb.push_bind(v.map(crate::sqlite::ts)),
            Arg::Bool(v) => qb.push_bind(v),
            Arg::Bytes(v) => qb.push_bind(v),
            Arg::Uuid(v) => qb.push_bind(v.hyphenated()),
            Arg::OptUuid(v) => qb.push_bind(v.map(|v| v.hyphenated())),
            Arg::Uuids(v) => qb.push_bind(Json(v)),
            Arg::Texts(v) => qb.push_bind(Json(v)),
            Arg::Json(v) => qb.push_bind(Json(v)),
            Arg::OptJson(v) => qb.push_bind(v.map(Json)),
            Arg::JsonArray(v) => qb.push_bind(Json(v)),
        };
    }

    fn each<T>(sqlite: T, _pg: T) -> T {
        sqlite
    }

    async fn fetch(c: &mut SqliteConnection, mut qb: sqlx::QueryBuilder<Self>) -> Result<Vec<Row>> {
        let rows = qb.build().fetch_all(&mut *c).await?;
        Ok(rows.into_iter().map(Row::Sqlite).collect())
    }
}

#[async_trait]
impl Dialect for sqlx::Postgres {
    fn push_arg(qb: &mut sqlx::QueryBuilder<Self>, a: Arg<'_>) {
        match a {
            Arg::Int(v) => qb.push_bind(v),
            Arg::OptInt(v) => qb.push_bind(v),
            Arg::Real(v) => qb.push_bind(v),
            Arg::OptReal(v) => qb.push_bind(v),
            Arg::Text(v) => qb.push_bind(v),
            Arg::OptText(v) => qb.push_bind(v),
            Arg::Time(v) => qb.push_bind(v),
            Arg::OptTime(v) => qb.push_bind(v),
            Arg::Bool(v) => qb.push_bind(v),
            Arg::Bytes(v) => qb.push_bind(v),
            Arg::Uuid(v) => qb.push_bind(v),
            Arg::OptUuid(v) => qb.push_bind(v),
            Arg::Uuids(v) => qb.push_bind(v),
            Arg::Texts(v) => qb.push_bind(v),
            Arg::Json(v) => qb.push_bind(Json(v)),
            Arg::OptJson(v) => qb.push_bind(v.map(Json)),
            Arg::JsonArray(v) => qb.push_bind(Json(v)),
        };
    }

    fn each<T>(_sqlite: T, pg: T) -> T {
        pg
    }

    async fn fetch(c: &mut PgConnection, mut qb: sqlx::QueryBuilder<Self>) -> Result<Vec<Row>> {
        let rows = qb.build().fetch_all(&mut *c).await?;
        Ok(rows.into_iter().map(Row::Pg).collect())
    }
}
