//! Summarisers for compaction. The trait is what compaction calls; the
//! extractive one here is the default (and needs no model): it keeps the
//! group's highest-weight sentences, favouring those that carry dates,
//! amounts and names, in the order they happened. The agents issue adds an
//! LLM summariser behind the same trait.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use kira_core::memory::Memory;

#[async_trait]
pub trait Summarizer: Send + Sync {
    fn name(&self) -> &str;

    /// One text that stands for `memories` (one compaction group, oldest
    /// first). Never empty for a non-empty group.
    async fn summarize(&self, memories: &[Memory]) -> Result<String, String>;
}

/// Highest-weight sentences, chosen extractively.
#[derive(Debug, Clone)]
pub struct Extractive {
    /// Sentences kept at most.
    pub max_sentences: usize,
    /// Characters of summary text at most.
    pub max_chars: usize,
}

impl Default for Extractive {
    fn default() -> Self {
        Self {
            max_sentences: 8,
            max_chars: 2_000,
        }
    }
}

const STOP: &[&str] = &[
    "the", "a", "an", "and", "or", "of", "to", "in", "on", "for", "with", "is", "was", "are",
    "were", "be", "been", "it", "this", "that", "we", "our", "at", "by", "as", "from", "will",
    "has", "have", "had", "not", "but", "they", "their", "i", "you", "he", "she", "his", "her",
];

fn words(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// Splits on sentence ends (. ! ? and newlines) followed by space.
fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c == '\n' {
            if !cur.trim().is_empty() {
                out.push(cur.trim().to_owned());
            }
            cur.clear();
            continue;
        }
        cur.push(c);
        let next_is_space = chars.get(i + 1).is_none_or(|n| n.is_whitespace());
        if matches!(c, '.' | '!' | '?') && next_is_space {
            out.push(cur.trim().to_owned());
            cur.clear();
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_owned());
    }
    out
}

/// Dates, money and percentages, and names the memory lists: the facts a
/// summary must not lose.
fn fact_weight(sentence: &str, names: &BTreeSet<String>) -> f64 {
    let lower = sentence.to_lowercase();
    let mut w = 0.0;
    if sentence.chars().any(|c| matches!(c, '$' | '€' | '£' | '%')) {
        w += 1.0;
    }
    let has_digits = sentence.chars().any(|c| c.is_ascii_digit());
    const MONTHS: [&str; 12] = [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ];
    if has_digits && MONTHS.iter().any(|m| lower.contains(m)) || lower.contains("deadline") {
        w += 1.0;
    } else if has_digits {
        w += 0.5;
    }
    if names.iter().any(|n| lower.contains(n.as_str())) {
        w += 1.0;
    }
    w
}

fn listed_names(m: &Memory) -> impl Iterator<Item = String> + '_ {
    ["people", "counterparties"].into_iter().flat_map(move |k| {
        m.content
            .get(k)
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_str)
            .map(str::to_lowercase)
    })
}

impl Extractive {
    /// The summary text, synchronously.
    pub fn summarize_now(&self, memories: &[Memory]) -> String {
        let names: BTreeSet<String> = memories.iter().flat_map(listed_names).collect();
        // Term frequencies over the group (Luhn): a sentence made of the
        // group's recurring words says what the group is about.
        let mut tf: HashMap<String, f64> = HashMap::new();
        for m in memories {
            for w in words(m.text()).filter(|w| !STOP.contains(&w.as_str())) {
                *tf.entry(w).or_default() += 1.0;
            }
        }
        // (memory index, sentence index, sentence, weight)
        let mut all: Vec<(usize, usize, String, f64)> = Vec::new();
        for (mi, m) in memories.iter().enumerate() {
            for (si, s) in sentences(m.text()).into_iter().enumerate() {
                let ws: Vec<String> = words(&s).filter(|w| !STOP.contains(&w.as_str())).collect();
                if ws.is_empty() {
                    continue;
                }
                let salience = ws
                    .iter()
                    .map(|w| tf.get(w).copied().unwrap_or(0.0))
                    .sum::<f64>()
                    / (ws.len() as f64).sqrt();
                all.push((mi, si, s, salience));
            }
        }
        // Salience relative to the group's most salient sentence, so that a
        // fact (a date, an amount, a name) outweighs mere repetition.
        let top = all.iter().map(|x| x.3).fold(0.0_f64, f64::max);
        for (mi, _, s, w) in &mut all {
            let rel = if top > 0.0 { *w / top } else { 0.0 };
            *w = rel + fact_weight(s, &names) + f64::from(memories[*mi].importance) / 10.0;
        }
        let mut best: Vec<usize> = (0..all.len()).collect();
        best.sort_by(|&a, &b| all[b].3.total_cmp(&all[a].3).then(a.cmp(&b)));
        // A summary says less than what it replaces: at most half the
        // group's text, but always room for its best sentence.
        let total: usize = memories.iter().map(|m| m.text().chars().count()).sum();
        let best_len = best.first().map_or(0, |&i| all[i].2.chars().count() + 14);
        let max_chars = self.max_chars.min((total / 2).max(best_len));
        let mut chosen: Vec<usize> = Vec::new();
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut chars = 0usize;
        for i in best {
            if chosen.len() >= self.max_sentences {
                break;
            }
            let s = &all[i].2;
            let key = s.to_lowercase();
            let line_len = s.chars().count() + 14;
            if seen.contains(&key) || (chars + line_len > max_chars && !chosen.is_empty()) {
                continue;
            }
            seen.insert(key);
            chars += line_len;
            chosen.push(i);
        }
        // In the order things happened.
        chosen.sort_by_key(|&i| (all[i].0, all[i].1));
        let mut out = String::new();
        let mut last_memory = usize::MAX;
        for i in chosen {
            let (mi, _, s, _) = &all[i];
            if *mi != last_memory {
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(&format!(
                    "[{}] ",
                    memories[*mi].occurred_at.format("%Y-%m-%d")
                ));
                last_memory = *mi;
            } else {
                out.push(' ');
            }
            out.push_str(s);
        }
        let out: String = out.chars().take(self.max_chars).collect();
        if out.trim().is_empty() {
            // Nothing sentence-like: keep the start of the first text.
            memories
                .first()
                .map(|m| m.text().chars().take(self.max_chars).collect())
                .unwrap_or_default()
        } else {
            out
        }
    }
}

#[async_trait]
impl Summarizer for Extractive {
    fn name(&self) -> &str {
        "extractive"
    }

    async fn summarize(&self, memories: &[Memory]) -> Result<String, String> {
        Ok(self.summarize_now(memories))
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use kira_core::CompanyId;
    use kira_core::memory::{EventType, NewMemory, Workstream};
    use serde_json::json;

    use super::*;

    fn mem(day: u32, text: &str, content_extra: serde_json::Value) -> Memory {
        let at = Utc
            .with_ymd_and_hms(2026, 9, day, 10, 0, 0)
            .single()
            .expect("time");
        let mut content = json!({ "text": text });
        if let (Some(c), Some(extra)) = (content.as_object_mut(), content_extra.as_object()) {
            for (k, v) in extra {
                c.insert(k.clone(), v.clone());
            }
        }
        NewMemory {
            occurred_at: at,
            event_type: EventType::Meeting,
            workstream: Workstream::Legal,
            category: "routine_reviews".into(),
            content,
            importance: 5,
            indexed_terms: vec![],
            source: None,
        }
        .validate(at)
        .expect("valid")
        .into_memory(uuid::Uuid::nil(), CompanyId::parse("acme").expect("id"), at)
    }

    #[test]
    fn keeps_dates_amounts_and_names_in_order() {
        let ms = vec![
            mem(
                1,
                "Weekly review of the vendor contract. Nothing else came up. The weather was nice. \
                 The meeting started late because of traffic.",
                json!({}),
            ),
            mem(
                8,
                "Review with Dana Whitfield of the vendor contract. Agreed a fee of $12,500 due by 30 September 2026. Coffee was served.",
                json!({"people": ["Dana Whitfield"]}),
            ),
            mem(
                15,
                "Vendor contract review again. The renewal deadline is 1 October 2026. \
                 Everyone agreed the coffee was better than last week.",
                json!({}),
            ),
        ];
        let s = Extractive {
            max_sentences: 4,
            max_chars: 2_000,
        }
        .summarize_now(&ms);
        assert!(s.contains("$12,500"), "{s}");
        assert!(s.contains("Dana Whitfield"), "{s}");
        assert!(s.contains("1 October 2026"), "{s}");
        assert!(!s.contains("weather"), "{s}");
        // Chronological: the 8th before the 15th.
        let (a, b) = (
            s.find("2026-09-08").expect("8th"),
            s.find("2026-09-15").expect("15th"),
        );
        assert!(a < b);
    }

    #[test]
    fn respects_its_limits_and_never_returns_nothing() {
        let long: Vec<Memory> = (1..=20)
            .map(|d| {
                mem(
                    d,
                    &format!("Sentence number {d} about the audit. Another one {d}."),
                    json!({}),
                )
            })
            .collect();
        let e = Extractive {
            max_sentences: 3,
            max_chars: 200,
        };
        let s = e.summarize_now(&long);
        assert!(s.chars().count() <= 200);
        assert!(s.matches('.').count() <= 3, "{s}");
        let odd = vec![mem(2, "---", json!({}))];
        assert_eq!(e.summarize_now(&odd), "---");
    }
}
