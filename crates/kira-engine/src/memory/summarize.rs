//! Summarisers: the trait compaction and the primary agent's session call
//! (`Memories` holds the one in use). The extractive one here is the
//! default (and needs no model): it keeps the group's most informative
//! sentences (rare terms, dates, amounts, names, decisions), as many as
//! the group's size calls for, in the order they happened. The other implementation is the LLM summariser,
//! `agent::summarize::LlmSummarizer`, chosen by `[summarizer] kind = "llm"`.

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
    /// Sentences kept at most, whatever the group's size. A group keeps
    /// four, plus one for every two of its memories, up to this.
    pub max_sentences: usize,
    /// Characters of summary text at most. A group keeps at most half of
    /// its text, up to this.
    pub max_chars: usize,
}

impl Default for Extractive {
    /// Room for a month of daily notes: a fixed eight sentences reduced a
    /// month of 65 conversation turns to eight thank-yous.
    fn default() -> Self {
        Self {
            max_sentences: 64,
            max_chars: 8_000,
        }
    }
}

/// Words that mark a decision or commitment, which a summary keeps.
const DECISIONS: &[&str] = &[
    "decided", "decision", "agreed", "approved", "signed", "chose", "plan", "planning", "will",
    "going", "deadline", "due", "hired", "launched", "started", "finished", "moved", "bought",
];

/// Sentences with fewer content words than this say little on their own:
/// a summary keeps one only when it has nothing else.
const MIN_CONTENT_WORDS: usize = 4;

const STOP: &[&str] = &[
    "the", "a", "an", "and", "or", "of", "to", "in", "on", "for", "with", "is", "was", "are",
    "were", "be", "been", "it", "this", "that", "we", "our", "at", "by", "as", "from", "will",
    "has", "have", "had", "not", "but", "they", "their", "i", "you", "he", "she", "his", "her",
    // Conversation's filler, which says nothing a summary needs.
    "s", "t", "so", "just", "really", "very", "wow", "oh", "me", "my", "your", "too", "also", "lot",
    "what", "how", "do", "did", "thanks", "thank", "yes", "yeah", "great", "awesome", "cool",
    "nice", "means", "sounds", "good",
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
    if has_digits
        && kira_core::memory::when::MONTHS
            .iter()
            .any(|m| lower.contains(m))
        || lower.contains("deadline")
    {
        w += 1.0;
    } else if has_digits {
        w += 0.5;
    }
    if names.iter().any(|n| lower.contains(n.as_str())) {
        w += 1.0;
    }
    w
}

/// Capitalised words past a sentence's first word (names, places,
/// products) that few of the group's sentences use.
fn rare_capitalised(sentence: &str, df: &HashMap<&str, f64>, n: f64) -> usize {
    let mut found: BTreeSet<String> = BTreeSet::new();
    for (i, w) in sentence
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .enumerate()
    {
        let capital = w.chars().next().is_some_and(char::is_uppercase);
        let lower = w.to_lowercase();
        if i == 0 || !capital || STOP.contains(&lower.as_str()) {
            continue;
        }
        if df.get(lower.as_str()).copied().unwrap_or(0.0) <= (n / 10.0).max(1.0) {
            found.insert(lower);
        }
    }
    found.len()
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
        // (memory index, sentence index, sentence, content words)
        let mut all: Vec<(usize, usize, String, f64)> = Vec::new();
        let mut content: Vec<BTreeSet<String>> = Vec::new();
        for (mi, m) in memories.iter().enumerate() {
            for (si, s) in sentences(m.text()).into_iter().enumerate() {
                let ws: BTreeSet<String> =
                    words(&s).filter(|w| !STOP.contains(&w.as_str())).collect();
                if ws.is_empty() {
                    continue;
                }
                all.push((mi, si, s, 0.0));
                content.push(ws);
            }
        }
        // Document frequency over the group's sentences: a term most of
        // them use (the speakers' names, the group's topic) tells one
        // sentence from another less than a rare one.
        let mut df: HashMap<&str, f64> = HashMap::new();
        for ws in &content {
            for w in ws {
                *df.entry(w.as_str()).or_default() += 1.0;
            }
        }
        let n = content.len().max(1) as f64;
        let idf = |w: &str| (n / df.get(w).copied().unwrap_or(1.0)).ln().max(0.0) + 0.1;
        let info: Vec<f64> = content
            .iter()
            .map(|ws| ws.iter().map(|w| idf(w)).sum::<f64>() / (ws.len() as f64).sqrt())
            .collect();
        // Information relative to the group's most informative sentence, so
        // that a fact (a date, an amount, a name, a decision) outweighs it.
        let top = info.iter().copied().fold(0.0_f64, f64::max);
        for (k, (mi, _, s, w)) in all.iter_mut().enumerate() {
            let ws = &content[k];
            let rel = if top > 0.0 { info[k] / top } else { 0.0 };
            let entities = rare_capitalised(s, &df, n);
            let decision = if ws.iter().any(|w| DECISIONS.contains(&w.as_str())) {
                0.5
            } else {
                0.0
            };
            *w = rel
                + fact_weight(s, &names)
                + 0.5 * entities.min(2) as f64
                + decision
                + f64::from(memories[*mi].importance) / 10.0;
        }
        let mut best: Vec<usize> = (0..all.len()).collect();
        best.sort_by(|&a, &b| all[b].3.total_cmp(&all[a].3).then(a.cmp(&b)));
        // A summary says less than what it replaces: at most half the
        // group's text, but always room for its best sentence.
        let total: usize = memories.iter().map(|m| m.text().chars().count()).sum();
        let best_len = best.first().map_or(0, |&i| all[i].2.chars().count() + 14);
        let max_chars = self.max_chars.min((total / 2).max(best_len));
        let max_sentences = self.max_sentences.min(4 + memories.len() / 2);
        let mut chosen: Vec<usize> = Vec::new();
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut chars = 0usize;
        for i in best {
            if chosen.len() >= max_sentences {
                break;
            }
            let s = &all[i].2;
            let key = s.to_lowercase();
            let line_len = s.chars().count() + 14;
            let says_little = content[i].len() < MIN_CONTENT_WORDS;
            if seen.contains(&key)
                || (!chosen.is_empty() && (says_little || chars + line_len > max_chars))
            {
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

    /// A month of conversation: the facts stay, the pleasantries go, and
    /// a larger group keeps more.
    #[test]
    fn keeps_information_not_pleasantries_and_scales_with_the_group() {
        let mut ms = Vec::new();
        let filler = [
            "Caroline: Thanks, Melanie!",
            "Melanie: That's awesome, Caroline!",
            "Caroline: Thanks, Melanie. That means a lot.",
            "Melanie: Wow, Caroline, that's so sweet!",
        ];
        let facts = [
            "Caroline: I went to the LGBTQ support group on 7 May and met a counsellor named Jordan.",
            "Melanie: We paid $1,200 for the pottery class in Portland, it starts in June.",
            "Caroline: I decided to apply to the adoption agency in Boston next month.",
        ];
        for d in 1..=24u32 {
            let text = if d % 8 == 0 {
                facts[(d / 8 - 1) as usize]
            } else {
                filler[d as usize % filler.len()]
            };
            ms.push(mem(d, text, json!({})));
        }
        let e = Extractive::default();
        let s = e.summarize_now(&ms);
        for key in ["7 May", "$1,200", "Boston"] {
            assert!(s.contains(key), "{key} missing: {s}");
        }
        assert!(!s.contains("Thanks, Melanie!"), "{s}");
        let small = e.summarize_now(&ms[..4]);
        let sentences_of = |t: &str| t.matches(['.', '!', '?']).count();
        assert!(sentences_of(&small) < sentences_of(&s), "{small} / {s}");
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
