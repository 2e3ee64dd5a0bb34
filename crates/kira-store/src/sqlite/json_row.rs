//! A row read as one JSON array (`json_array(col, ...)`), for statements
//! that hand many rows over as one: through sqlx every row is a message
//! between the connection's thread and the caller, which costs more than
//! SQLite's work for a small row. A [`JsonRow`] is read by the same
//! `*_from_row` functions as a driver row.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::work::corrupt;
use super::{json, parse_ts};
use crate::Result;
use crate::sql::Columns;

/// One row's values by column, in the order `columns` names them. Text
/// columns (JSON ones included, as SQLite stores them) are JSON strings,
/// integers and booleans JSON integers, reals JSON numbers.
pub(crate) struct JsonRow<'c> {
    columns: &'c [&'c str],
    values: Vec<serde_json::Value>,
}

/// `column` as a [`JsonRow`] holds it when it is a REAL: its text to 17
/// significant digits, or null. SQLite's JSON writes a real to 15 digits,
/// which does not read back to the same double; 17 digits do wherever
/// [`real_is_exact`] holds (this module's test reads 200,000 doubles of
/// magnitudes 2^-200 to 2^200 back bit for bit), but not at the extremes
/// (SQLite writes 1e300 as 9.9999999999999996e+299).
pub(crate) fn real(column: &str) -> String {
    format!("CASE WHEN {column} IS NULL THEN NULL ELSE printf('%!.17g', {column}) END")
}

/// An SQL condition: `column`, a REAL, reads back from its [`real`] text
/// to the same double. Where it does not, read the row itself.
pub(crate) fn real_is_exact(column: &str) -> String {
    format!("({column} IS NULL OR {column} = 0 OR abs({column}) BETWEEN 1e-60 AND 1e60)")
}

impl<'c> JsonRow<'c> {
    /// The row of `values`, the values of `columns` in order.
    pub(crate) fn new(columns: &'c [&'c str], values: Vec<serde_json::Value>) -> Self {
        Self { columns, values }
    }

    /// Each of `text`'s rows, a JSON array of arrays as
    /// `json_group_array(json_array(columns...))` gives.
    pub(crate) fn all(columns: &'c [&'c str], text: &str) -> Result<Vec<Self>> {
        let rows: Vec<Vec<serde_json::Value>> = json(text)?;
        Ok(rows
            .into_iter()
            .map(|values| Self::new(columns, values))
            .collect())
    }

    fn value(&self, col: &str) -> Result<&serde_json::Value> {
        self.columns
            .iter()
            .position(|c| *c == col)
            .and_then(|i| self.values.get(i))
            .ok_or_else(|| corrupt("a JSON row", format!("no {col}")))
    }

    fn opt_str(&self, col: &str) -> Result<Option<&str>> {
        match self.value(col)? {
            serde_json::Value::Null => Ok(None),
            serde_json::Value::String(s) => Ok(Some(s)),
            v => Err(corrupt(col, format!("{v} is not text"))),
        }
    }

    fn str(&self, col: &str) -> Result<&str> {
        self.opt_str(col)?.ok_or_else(|| corrupt(col, "is null"))
    }
}

impl Columns for JsonRow<'_> {
    fn int(&self, col: &str) -> Result<i64> {
        self.opt_int(col)?.ok_or_else(|| corrupt(col, "is null"))
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>> {
        match self.value(col)? {
            serde_json::Value::Null => Ok(None),
            v => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| corrupt(col, format!("{v} is not an integer"))),
        }
    }
    fn text(&self, col: &str) -> Result<String> {
        Ok(self.str(col)?.to_owned())
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        Ok(self.opt_str(col)?.map(str::to_owned))
    }
    fn real(&self, col: &str) -> Result<f64> {
        self.opt_real(col)?.ok_or_else(|| corrupt(col, "is null"))
    }
    fn opt_real(&self, col: &str) -> Result<Option<f64>> {
        match self.value(col)? {
            serde_json::Value::Null => Ok(None),
            // Text: as [`real`] writes it, 17 digits. A number: as
            // SQLite's JSON writes a real, 15.
            serde_json::Value::String(s) => s
                .parse()
                .map(Some)
                .map_err(|e| corrupt(col, format!("{s:?}: {e}"))),
            v => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| corrupt(col, format!("{v} is not a number"))),
        }
    }
    fn bool(&self, col: &str) -> Result<bool> {
        Ok(self.int(col)? != 0)
    }
    fn bytes(&self, col: &str) -> Result<Vec<u8>> {
        Err(corrupt(col, "a JSON row holds no bytes"))
    }
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>> {
        self.opt_str(col)?.map(parse_ts).transpose()
    }
    fn opt_json(&self, col: &str) -> Result<Option<serde_json::Value>> {
        self.opt_str(col)?.map(json).transpose()
    }
    fn opt_uuid(&self, col: &str) -> Result<Option<Uuid>> {
        self.opt_str(col)?
            .map(|s| Uuid::parse_str(s).map_err(|e| corrupt(col, e)))
            .transpose()
    }
    fn texts(&self, col: &str) -> Result<Vec<String>> {
        json(self.str(col)?)
    }
    fn uuids(&self, col: &str) -> Result<Vec<Uuid>> {
        json(self.str(col)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite's JSON keeps every value a task or memory row holds as the
    /// row itself would: reals to the last bit, text with quotes and
    /// newlines, integers at their extremes, nulls.
    #[tokio::test]
    async fn a_json_row_reads_what_the_row_holds() {
        let store = crate::sqlite::SqliteStore::open("sqlite::memory:")
            .await
            .expect("open");
        let reals = [
            0.1 + 0.2,
            1.0 / 3.0,
            0.000_012_345_678_901_234_567,
            123_456_789.123_456_78,
            f64::MIN_POSITIVE,
            0.0,
            -2.5e-7,
        ];
        // And 200,000 doubles of magnitudes 2^-200 to 2^200, from their bits.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let drawn = (0..200_000).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // sign, exponent within 2^-200..2^200, any mantissa
            let bits = (x & 0x800f_ffff_ffff_ffff) | ((1023 - 200 + (x >> 52) % 401) << 52);
            f64::from_bits(bits)
        });
        for r in reals.into_iter().chain(drawn) {
            let text: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT json_group_array(json_array({}, ?, ?, NULL)) FROM (SELECT ? AS r)",
                real("r")
            )))
            .bind("a \"quoted\"\nline")
            .bind(i64::MIN)
            .bind(r)
            .fetch_one(store.pool())
            .await
            .expect("query");
            let cols = ["r", "t", "i", "n"];
            let rows = JsonRow::all(&cols, &text).expect("rows");
            assert_eq!(rows.len(), 1);
            let row = &rows[0];
            assert_eq!(
                row.real("r").expect("r").to_bits(),
                r.to_bits(),
                "{r} from {text}"
            );
            assert_eq!(row.text("t").expect("t"), "a \"quoted\"\nline");
            assert_eq!(row.int("i").expect("i"), i64::MIN);
            assert_eq!(row.opt_text("n").expect("n"), None);
            assert!(row.text("missing").is_err());
        }
        let null: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT json_array({}) FROM (SELECT NULL AS r)",
            real("r")
        )))
        .fetch_one(store.pool())
        .await
        .expect("query");
        let row = JsonRow::new(&["r"], json(&null).expect("json"));
        assert_eq!(row.opt_real("r").expect("r"), None);
    }
}
