//! How benchmarks report: latency percentiles, pretty JSON for `--json`,
//! and plain tables for people.

use comfy_table::{ContentArrangement, Table};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The p50 and p99 of `v` (milliseconds); zeros when empty.
pub fn percentiles(mut v: Vec<f64>) -> Percentiles {
    if v.is_empty() {
        return Percentiles {
            p50_ms: 0.0,
            p99_ms: 0.0,
        };
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[i]
    };
    Percentiles {
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    }
}

/// The p50 and p99 of latencies in microseconds, in milliseconds.
pub fn ms(micros: &[u64]) -> Percentiles {
    percentiles(micros.iter().map(|&u| u as f64 / 1000.0).collect())
}

/// Microseconds of `d`, saturating.
pub fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// `v`, pretty, as `--json` prints it.
pub fn print_json(v: &serde_json::Value) -> Result<(), serde_json::Error> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Columns and a line under the header, the look of every `kira` table.
const PLAIN: &str = "    ────           ";

pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(PLAIN)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranks() {
        let p = percentiles((1..=100).map(f64::from).collect());
        assert_eq!((p.p50_ms, p.p99_ms), (51.0, 99.0));
    }
}
