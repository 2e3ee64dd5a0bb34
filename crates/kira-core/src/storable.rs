//! Text every backend stores alike. PostgreSQL refuses NUL (U+0000) in
//! `text` and `jsonb` and keeps years 4713 BC to AD 294276 only, where
//! SQLite keeps anything: input holding either would be a 400 on one
//! database and a 500 on the other. These rules refuse it first, the same
//! way, naming where it is.

use chrono::{DateTime, Datelike, Utc};
use serde_json::Value;

/// Why NUL is refused, for error messages.
pub const NUL: &str = "must not contain NUL (\\u0000)";
/// Why a date is refused, for error messages.
pub const FAR_DATE: &str = "dates must be between the years 0001 and 9999";

/// The years a date may have: what RFC 3339 writes with four digits, and
/// what both databases store and sort alike.
pub const YEARS: std::ops::RangeInclusive<i32> = 1..=9999;

/// Whether `at` is within [`YEARS`].
pub fn date_in_range(at: &DateTime<Utc>) -> bool {
    YEARS.contains(&at.year())
}

/// Why `s` cannot be stored as given: it holds NUL, or it is a date (as
/// chrono reads one) outside [`YEARS`].
pub fn unstorable_text(s: &str) -> Option<&'static str> {
    if s.contains('\0') {
        return Some(NUL);
    }
    let maybe_date = s.len() <= 64
        && s.as_bytes()
            .first()
            .is_some_and(|b| b.is_ascii_digit() || *b == b'-' || *b == b'+')
        && s.contains(':');
    if maybe_date && s.parse::<DateTime<Utc>>().is_ok_and(|d| !date_in_range(&d)) {
        return Some(FAR_DATE);
    }
    None
}

/// The first string or key of `v` that cannot be stored, by its dotted path
/// under `path` (`content.text`, `parameters.items.2`; a key names its
/// object), and why.
pub fn unstorable_json(v: &Value, path: &str) -> Option<(String, &'static str)> {
    match v {
        Value::String(s) => unstorable_text(s).map(|m| (path.to_owned(), m)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| unstorable_json(item, &join(path, &i.to_string()))),
        Value::Object(map) => map.iter().find_map(|(k, item)| {
            if k.contains('\0') {
                return Some((path.to_owned(), NUL));
            }
            unstorable_json(item, &join(path, k))
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
}

/// `path.field`, or `field` at the root.
pub fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// [`unstorable_json`] as a validation error naming the field.
pub fn check_json(v: &Value, path: &str) -> Result<(), crate::ValidationError> {
    match unstorable_json(v, path) {
        Some((field, why)) => Err(crate::ValidationError::new(field, why)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_anywhere_is_found_by_its_path() {
        let v = json!({"a": {"b": ["ok", "x\u{0}y"]}, "c": 1});
        assert_eq!(unstorable_json(&v, ""), Some(("a.b.1".into(), NUL)));
        assert_eq!(
            unstorable_json(&json!({"k\u{0}": 1}), "parameters"),
            Some(("parameters".into(), NUL))
        );
        assert_eq!(
            unstorable_json(&json!({"t": "fine \\u0000 text"}), ""),
            None
        );
        assert!(check_json(&json!({"x": [null, true, 2.5]}), "p").is_ok());
    }

    #[test]
    fn dates_outside_four_digit_years_are_refused() {
        for far in [
            "-262143-01-01T00:00:00Z",
            "+262142-12-31T23:59:59Z",
            "0000-01-01T00:00:00Z",
        ] {
            assert_eq!(unstorable_text(far), Some(FAR_DATE), "{far}");
        }
        for ok in [
            "0001-01-01T00:00:00Z",
            "2026-06-01T12:00:00+02:00",
            "9999-12-31T23:59:59Z",
            "12:30",
            "-5",
            "call at 10:00",
        ] {
            assert_eq!(unstorable_text(ok), None, "{ok}");
        }
    }
}
