//! Context retention (SEED 6's KPI): what a compaction summary kept of
//! what it replaced. Each source memory's facts (names, numbers and dates,
//! and longer content words: what LoCoMo's questions ask for) are looked
//! for in the summary; the share found is the group's retention. The
//! compaction job checks every summary it writes this way and records the
//! counts, so the KPI is the job's own check, not an estimate made later.

use std::collections::BTreeSet;

use serde::Serialize;
use utoipa::ToSchema;

/// Facts of the sources and how many of them the summary kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct FactCheck {
    /// Facts of the sources, counted once per source.
    pub facts: i64,
    /// Those the summary still contains.
    pub kept: i64,
}

impl FactCheck {
    /// The share kept, in [0, 1]; None when the sources had no fact.
    pub fn share(&self) -> Option<f64> {
        (self.facts > 0).then(|| self.kept as f64 / self.facts as f64)
    }

    pub fn add(&mut self, other: FactCheck) {
        self.facts += other.facts;
        self.kept += other.kept;
    }
}

/// Words too common to be a fact, capitalised or not.
const STOP: [&str; 48] = [
    "a", "about", "after", "all", "also", "an", "and", "any", "are", "as", "at", "be", "been",
    "before", "but", "by", "for", "from", "had", "has", "have", "he", "her", "his", "i", "if",
    "in", "into", "is", "it", "its", "my", "not", "of", "on", "or", "our", "she", "that", "the",
    "their", "there", "they", "this", "to", "was", "we", "with",
];

/// Shorter lower-case words than this are not facts (numbers and
/// capitalised words are, at any length but one letter).
const CONTENT_WORD: usize = 6;

/// The facts of `text`, lower-cased: every token with a digit (amounts,
/// dates, ids), every capitalised word (names), and every word of at
/// least [`CONTENT_WORD`] letters, stop words left out.
pub fn facts(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .filter_map(|w| {
            let lower = w.to_lowercase();
            if STOP.contains(&lower.as_str()) {
                return None;
            }
            let digit = w.chars().any(|c| c.is_ascii_digit());
            let capital = w.chars().next().is_some_and(char::is_uppercase) && w.chars().count() > 1;
            let long = w.chars().count() >= CONTENT_WORD;
            (digit || capital || long).then_some(lower)
        })
        .collect()
}

/// What `summary` kept of `sources`' facts.
pub fn check<'a>(sources: impl IntoIterator<Item = &'a str>, summary: &str) -> FactCheck {
    let kept_in = facts(summary);
    let mut c = FactCheck::default();
    for source in sources {
        let f = facts(source);
        c.facts += f.len() as i64;
        c.kept += f.intersection(&kept_in).count() as i64;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_numbers_dates_and_long_words_are_facts() {
        let f = facts("The Initech contract renews on 1 March 2027 for $40,000.");
        let f: Vec<&str> = f.iter().map(String::as_str).collect();
        assert_eq!(
            f,
            [
                "000", "1", "2027", "40", "contract", "initech", "march", "renews"
            ]
        );
        assert!(facts("it is in the box").is_empty(), "short common words");
    }

    #[test]
    fn a_summary_keeps_what_it_repeats() {
        let sources = [
            "Caroline went to the LGBTQ support group on 7 May 2023.",
            "Melanie painted a sunrise over the lake.",
        ];
        let c = check(
            sources,
            "Caroline went to the LGBTQ support group on 7 May 2023.",
        );
        // The first source's six facts are kept (caroline, lgbtq, support,
        // 7, may, 2023); the second's three (melanie, painted, sunrise) not.
        assert_eq!(c, FactCheck { facts: 9, kept: 6 });
        assert_eq!(c.share(), Some(6.0 / 9.0));
        let all = check(sources, &sources.join(" "));
        assert_eq!(all.share(), Some(1.0));
        assert_eq!(check(sources, "").kept, 0);
        assert_eq!(check(["a b c"], "").share(), None, "no fact to keep");
    }

    proptest! {
        /// A check never keeps more than there was, and a summary that is
        /// the sources' own text keeps everything.
        #[test]
        fn kept_is_at_most_the_facts(
            sources in proptest::collection::vec("[A-Za-z0-9 ]{0,40}", 0..5),
            summary in "[A-Za-z0-9 ]{0,80}",
        ) {
            let c = check(sources.iter().map(String::as_str), &summary);
            prop_assert!(0 <= c.kept && c.kept <= c.facts);
            let whole = check(sources.iter().map(String::as_str), &sources.join(" "));
            prop_assert_eq!(whole.kept, whole.facts);
        }
    }
}
