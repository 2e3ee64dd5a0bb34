//! The anonymiser's passes for what no list names: proper nouns (people,
//! organisations, places, code names) found by their shape, and account
//! numbers (IBANs, numbers after an account word, long digit runs).
//!
//! The proper-noun pass reads the text as words. A run of capitalised
//! words is a name, with these exceptions, each because ordinary text is
//! written that way: a lone capitalised word that starts a sentence, and
//! words of a short list (function words, months, weekdays, defined terms
//! such as "Agreement") that are capitalised for grammar, not because they
//! name someone. All-capital words alone are acronyms ("NDA", "GDPR") and
//! stay; inside a run of capitalised words they go with it. A name found
//! anywhere is learned, so the same word alone at a sentence start goes
//! too. Like the other scanners it leans towards replacing too much.

use std::collections::HashSet;

use super::{Buf, Kind, boundary_at, boundary_before};

/// Legal forms that make the capitalised words before them an organisation.
const ORG_SUFFIXES: &[&str] = &[
    "inc",
    "incorporated",
    "ltd",
    "limited",
    "llc",
    "llp",
    "lp",
    "plc",
    "corp",
    "corporation",
    "co",
    "gmbh",
    "ag",
    "sa",
    "sas",
    "se",
    "bv",
    "nv",
    "pty",
    "holdings",
    "group",
    "kg",
    "oy",
    "ab",
    "asa",
    "spa",
    "srl",
    "kk",
];

/// Words before a person's name that are not part of it.
const TITLES: &[&str] = &[
    "mr",
    "mrs",
    "ms",
    "mx",
    "miss",
    "dr",
    "prof",
    "sir",
    "dame",
    "lord",
    "lady",
    "judge",
    "justice",
    "madam",
    "mister",
    "doctor",
    "professor",
];

/// Abbreviations whose full stop does not end a sentence.
const NO_STOP: &[&str] = &[
    "mr", "mrs", "ms", "mx", "dr", "prof", "st", "no", "vs", "approx", "ca", "cf", "e.g", "i.e",
    "eg", "ie", "fig", "jr", "sr",
];

/// Words after which the next word is a code name whatever its case:
/// "codenamed bluebird", "code name heron".
const CODE_CUES: &[&str] = &[
    "codename",
    "codenamed",
    "code-name",
    "code-named",
    "dubbed",
    "nicknamed",
];

/// Capitalised words that name nobody: function words that start
/// sentences, months and weekdays (the date scanner handles real dates),
/// and the defined terms contracts capitalise. Lower case.
const COMMON: &[&str] = &[
    // function words, pronouns, common sentence openers
    "a",
    "an",
    "the",
    "this",
    "that",
    "these",
    "those",
    "there",
    "here",
    "it",
    "its",
    "i",
    "we",
    "our",
    "ours",
    "us",
    "you",
    "your",
    "he",
    "she",
    "his",
    "her",
    "him",
    "they",
    "their",
    "them",
    "who",
    "whom",
    "whose",
    "which",
    "what",
    "when",
    "where",
    "why",
    "how",
    "if",
    "then",
    "than",
    "and",
    "or",
    "but",
    "nor",
    "so",
    "yet",
    "as",
    "at",
    "by",
    "for",
    "from",
    "in",
    "into",
    "of",
    "off",
    "on",
    "onto",
    "out",
    "over",
    "per",
    "to",
    "up",
    "via",
    "with",
    "within",
    "without",
    "after",
    "before",
    "during",
    "since",
    "until",
    "while",
    "about",
    "above",
    "across",
    "against",
    "along",
    "among",
    "around",
    "behind",
    "below",
    "beneath",
    "beside",
    "between",
    "beyond",
    "despite",
    "except",
    "inside",
    "near",
    "outside",
    "through",
    "throughout",
    "toward",
    "towards",
    "under",
    "unlike",
    "upon",
    "all",
    "any",
    "both",
    "each",
    "either",
    "every",
    "few",
    "many",
    "more",
    "most",
    "much",
    "neither",
    "no",
    "none",
    "not",
    "one",
    "other",
    "others",
    "same",
    "several",
    "some",
    "such",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "being",
    "has",
    "have",
    "had",
    "do",
    "does",
    "did",
    "will",
    "would",
    "shall",
    "should",
    "can",
    "could",
    "may",
    "might",
    "must",
    "also",
    "again",
    "already",
    "always",
    "never",
    "now",
    "only",
    "still",
    "just",
    "even",
    "however",
    "therefore",
    "thus",
    "otherwise",
    "meanwhile",
    "later",
    "earlier",
    "today",
    "tomorrow",
    "yesterday",
    "tonight",
    "finally",
    "currently",
    "recently",
    "previously",
    "unfortunately",
    "please",
    "note",
    "yes",
    "ok",
    "okay",
    "re",
    "fyi",
    "cc",
    "attn",
    "subject",
    "next",
    "first",
    "second",
    "third",
    "last",
    "new",
    "old",
    "total",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    // months and weekdays
    "january",
    "february",
    "march",
    "april",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
    "jan",
    "feb",
    "mar",
    "apr",
    "jun",
    "jul",
    "aug",
    "sep",
    "sept",
    "oct",
    "nov",
    "dec",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
    // defined terms and roles
    "agreement",
    "agreements",
    "company",
    "companies",
    "board",
    "party",
    "parties",
    "effective",
    "date",
    "term",
    "terms",
    "section",
    "clause",
    "schedule",
    "annex",
    "exhibit",
    "appendix",
    "article",
    "articles",
    "recital",
    "recitals",
    "definitions",
    "services",
    "service",
    "customer",
    "supplier",
    "vendor",
    "buyer",
    "seller",
    "purchaser",
    "licensor",
    "licensee",
    "lender",
    "lenders",
    "borrower",
    "landlord",
    "tenant",
    "employee",
    "employer",
    "contractor",
    "client",
    "order",
    "statement",
    "work",
    "confidential",
    "information",
    "director",
    "directors",
    "officer",
    "chair",
    "chairman",
    "chairwoman",
    "ceo",
    "cfo",
    "coo",
    "cto",
    "general",
    "counsel",
    "legal",
    "finance",
    "sales",
    "marketing",
    "engineering",
    "operations",
    "product",
    "team",
    "committee",
    "shareholders",
    "series",
    "preferred",
    "common",
    "stock",
    "shares",
    "class",
    "fund",
    "q1",
    "q2",
    "q3",
    "q4",
    "fy",
    "ltd",
    "inc",
    // after a name, not part of it
    "jr",
    "sr",
    "esq",
    "phd",
];

/// One word: where it is and what it looks like.
struct Word {
    start: usize,
    /// Past the word, without a possessive `'s`.
    end: usize,
    text: String,
    capitalised: bool,
    all_caps: bool,
    sentence_start: bool,
}

fn is_letter(c: char) -> bool {
    c.is_alphanumeric()
}

/// The words of the unprotected text. A word is letters and digits, with
/// single apostrophes and hyphens inside; a placeholder is not a word.
fn words(buf: &Buf) -> Vec<Word> {
    let chars = &buf.chars;
    let free = |i: usize| !buf.protected[i];
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !(free(i) && is_letter(chars[i])) {
            i += 1;
            continue;
        }
        let start = i;
        let mut end = i;
        while end < chars.len() && free(end) {
            let c = chars[end];
            let joiner = matches!(c, '\'' | '\u{2019}' | '-')
                && end > start
                && chars.get(end + 1).is_some_and(|&n| is_letter(n))
                && free(end + 1);
            if is_letter(c) || joiner {
                end += 1;
            } else {
                break;
            }
        }
        let mut word_end = end;
        // "Globex's": the name without its possessive.
        if end - start > 2
            && matches!(chars[end - 2], '\'' | '\u{2019}')
            && matches!(chars[end - 1], 's' | 'S')
        {
            word_end = end - 2;
        }
        let text: String = chars[start..word_end].iter().collect();
        let letters: Vec<char> = text.chars().filter(|c| c.is_alphabetic()).collect();
        let first_upper = text.chars().next().is_some_and(char::is_uppercase);
        let capitalised = first_upper && letters.iter().any(|c| c.is_lowercase());
        let all_caps = letters.len() >= 2 && letters.iter().all(|c| c.is_uppercase());
        out.push(Word {
            start,
            end: word_end,
            sentence_start: sentence_start(buf, start),
            text,
            capitalised,
            all_caps,
        });
        i = end;
    }
    out
}

/// Whether the word at `i` starts a sentence: nothing before it, or a
/// sentence's end (`.`, `!`, `?` not after an abbreviation such as "Dr."),
/// or a line that starts with a bullet. Quotes and brackets opening the
/// sentence are skipped.
fn sentence_start(buf: &Buf, i: usize) -> bool {
    let chars = &buf.chars;
    let mut j = i;
    let mut newline = false;
    while j > 0 {
        let c = chars[j - 1];
        if buf.protected[j - 1] {
            return false;
        }
        if c == '\n' {
            newline = true;
        }
        if c.is_whitespace() || matches!(c, '"' | '\u{201c}' | '\u{2018}' | '(' | '[') {
            j -= 1;
        } else {
            break;
        }
    }
    if j == 0 {
        return true;
    }
    let c = chars[j - 1];
    if matches!(c, '!' | '?') {
        return true;
    }
    if matches!(c, '-' | '*' | '\u{2022}') && newline {
        return true;
    }
    if newline && (j < 2 || chars[j - 2] == '\n') {
        // A line after a blank line, or a bullet's text.
        return true;
    }
    if c == '.' {
        // The word before the full stop.
        let mut k = j - 1;
        while k > 0
            && (chars[k - 1].is_alphanumeric() || chars[k - 1] == '.')
            && !buf.protected[k - 1]
        {
            k -= 1;
        }
        let before: String = chars[k..j - 1].iter().collect::<String>().to_lowercase();
        return !NO_STOP.contains(&before.as_str());
    }
    newline && matches!(c, ':' | ';')
}

fn lower(s: &str) -> String {
    s.to_lowercase()
}

fn is_common(w: &Word) -> bool {
    COMMON.contains(&lower(&w.text).as_str())
}

/// Capitalised, and not a word of [`COMMON`] or a title.
fn name_like(w: &Word) -> bool {
    w.capitalised && !is_common(w) && !TITLES.contains(&lower(&w.text).as_str())
}

fn is_suffix(w: &Word) -> bool {
    ORG_SUFFIXES.contains(&lower(&w.text).as_str())
}

/// Only spaces (no line break, no punctuation) between two words, or a
/// connector such as "of", "&", "de" between two capitalised ones.
fn joined(buf: &Buf, a: &Word, b: &Word) -> bool {
    let between = &buf.chars[a.end..b.start];
    if a.end < b.start && buf.protected[a.end..b.start].contains(&true) {
        return false;
    }
    // A possessive was cut off the first word: "Globex's Legal" is two names.
    if between
        .first()
        .is_some_and(|c| matches!(c, '\'' | '\u{2019}'))
    {
        return false;
    }
    !between.is_empty()
        && between
            .iter()
            .all(|&c| c == ' ' || c == '\u{a0}' || c == '\t')
}

const CONNECTORS: &[&str] = &[
    "of", "de", "del", "da", "di", "du", "van", "von", "der", "den", "la", "le", "bin", "al",
];

fn is_ampersand_between(buf: &Buf, a: &Word, b: &Word) -> bool {
    let between: String = buf.chars[a.end..b.start].iter().collect();
    between.trim() == "&" && !buf.protected[a.end..b.start].contains(&true)
}

/// The proper-noun pass: the spans to replace, in order, not overlapping.
pub(super) fn entity_spans(buf: &Buf) -> Vec<(usize, usize, Kind)> {
    let words = words(buf);
    let mut spans: Vec<(usize, usize, Kind)> = Vec::new();
    let mut learned: HashSet<String> = HashSet::new();
    let mut taken = vec![false; words.len()];
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        // A code name after its cue, whatever its case.
        if i > 0 && CODE_CUES.contains(&lower(&words[i - 1].text).as_str()) && !is_common(w) {
            spans.push((w.start, w.end, Kind::Name));
            taken[i] = true;
            if w.capitalised {
                learned.insert(w.text.clone());
            }
            i += 1;
            continue;
        }
        if !(w.capitalised || w.all_caps) {
            i += 1;
            continue;
        }
        // The run of capitalised (or all-capital) words from here.
        let mut j = i + 1;
        while j < words.len() {
            let (prev, next) = (&words[j - 1], &words[j]);
            if (next.capitalised || next.all_caps || is_suffix(next))
                && (joined(buf, prev, next) || is_ampersand_between(buf, prev, next))
            {
                j += 1;
                continue;
            }
            // "Bank of America", "Ludwig van Beethoven".
            if CONNECTORS.contains(&next.text.as_str())
                && joined(buf, prev, next)
                && words
                    .get(j + 1)
                    .is_some_and(|n| n.capitalised && joined(buf, next, n))
            {
                j += 2;
                continue;
            }
            break;
        }
        let run = i..j;
        i = j;
        // Leading words that are ordinary ("The", "After", or a sentence's
        // first word followed by anything but a capitalised word) are kept.
        let mut first = run.start;
        while first < run.end {
            let w = &words[first];
            let next_capitalised = words
                .get(first + 1)
                .is_some_and(|n| first + 1 < run.end && name_like(n));
            let ordinary = is_common(w)
                || TITLES.contains(&lower(&w.text).as_str())
                || (w.sentence_start && !next_capitalised);
            if ordinary {
                first += 1;
            } else {
                break;
            }
        }
        // Trailing ordinary words ("Acme Board") go with the name only
        // when they are a legal form.
        let mut last = run.end;
        while last > first && is_common(&words[last - 1]) && !is_suffix(&words[last - 1]) {
            last -= 1;
        }
        // Acronyms alone ("NDA", "GDPR") are not names.
        if first >= last || !(first..last).any(|k| name_like(&words[k])) {
            continue;
        }
        let org = (first..last).any(|k| is_suffix(&words[k]) && k > first);
        let titled = first > 0 && TITLES.contains(&lower(&words[first - 1].text).as_str()) && {
            // Only a full stop or spaces between the title and the name.
            let between = &buf.chars[words[first - 1].end..words[first].start];
            between.iter().all(|&c| c == '.' || c == ' ')
        };
        let kind = if org {
            Kind::Organisation
        } else if titled {
            Kind::Person
        } else {
            Kind::Name
        };
        for k in first..last {
            taken[k] = true;
            let w = &words[k];
            if w.capitalised && !is_common(w) && !is_suffix(w) {
                learned.insert(w.text.clone());
            }
        }
        spans.push((words[first].start, words[last - 1].end, kind));
    }
    // A learned name alone elsewhere, at a sentence start too.
    for (k, w) in words.iter().enumerate() {
        if !taken[k] && learned.contains(&w.text) {
            spans.push((w.start, w.end, Kind::Name));
        }
    }
    spans.sort_by_key(|s| s.0);
    spans
}

/// An IBAN: two capital letters, two digits, then 11 to 30 capital
/// letters and digits, written together or in groups of up to four.
pub(super) fn iban_at(chars: &[char], i: usize) -> Option<usize> {
    if !boundary_before(chars, i) {
        return None;
    }
    let upper = |k: usize| chars.get(k).is_some_and(char::is_ascii_uppercase);
    let digit = |k: usize| chars.get(k).is_some_and(char::is_ascii_digit);
    let alnum = |k: usize| upper(k) || digit(k);
    if !(upper(i) && upper(i + 1) && digit(i + 2) && digit(i + 3)) {
        return None;
    }
    let mut t = i + 4;
    let mut count = 0;
    let mut end = None;
    loop {
        // Either joined on, or after one space, a group of up to four.
        let spaced = chars.get(t) == Some(&' ') && alnum(t + 1);
        let s = if spaced { t + 1 } else { t };
        let mut e = s;
        while alnum(e) {
            e += 1;
        }
        if e == s || (spaced && (e - s > 4 || !boundary_at(chars, e))) {
            break;
        }
        if count + (e - s) > 30 {
            break;
        }
        count += e - s;
        t = e;
        if count >= 11 && boundary_at(chars, t) {
            end = Some(t);
        }
    }
    end
}

/// Words after which a token holding digits is an account's number.
const ACCOUNT_CUES: &[&str] = &[
    "account",
    "acct",
    "a/c",
    "iban",
    "bic",
    "swift",
    "routing",
    "aba",
    "sort",
    "card",
    "wallet",
    "ref",
    "reference",
];

/// A token with at least four digits (or, after BIC/SWIFT, an 8- or
/// 11-character code) right after an account word, an optional "no.",
/// "number", "#" or ":" between.
pub(super) fn account_at(chars: &[char], i: usize) -> Option<usize> {
    if !boundary_before(chars, i) || !chars.get(i).is_some_and(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    let mut end = i;
    while chars.get(end).is_some_and(|&c| {
        c.is_ascii_alphanumeric()
            || (c == '-' && chars.get(end + 1).is_some_and(char::is_ascii_alphanumeric))
    }) {
        end += 1;
    }
    let token: String = chars[i..end].iter().collect();
    let digits = token.chars().filter(char::is_ascii_digit).count();
    // The words before, back over "no.", "number", "#", ":" and spaces.
    let mut k = i;
    let mut cue = None;
    for _ in 0..4 {
        while k > 0 && matches!(chars[k - 1], ' ' | ':' | '#' | '.' | '\u{a0}') {
            k -= 1;
        }
        let stop = k;
        while k > 0 && (chars[k - 1].is_alphanumeric() || chars[k - 1] == '/') {
            k -= 1;
        }
        if k == stop {
            break;
        }
        let word: String = chars[k..stop].iter().collect::<String>().to_lowercase();
        if ACCOUNT_CUES.contains(&word.as_str()) {
            cue = Some(word);
            break;
        }
        if !matches!(word.as_str(), "no" | "nr" | "number" | "num" | "code") {
            break;
        }
    }
    let cue = cue?;
    let code = matches!(cue.as_str(), "bic" | "swift")
        && matches!(token.len(), 8 | 11)
        && token
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    (digits >= 4 || code).then_some(end)
}

/// Six or more digits in a row: an account, a customer or a card number.
pub(super) fn long_number_at(chars: &[char], i: usize) -> Option<usize> {
    if i > 0 && chars.get(i - 1).is_some_and(char::is_ascii_digit) {
        return None;
    }
    let mut end = i;
    while chars.get(end).is_some_and(char::is_ascii_digit) {
        end += 1;
    }
    (end - i >= 6).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::super::{Redactions, anonymise};
    use super::*;
    use proptest::prelude::*;

    fn clean(text: &str) -> String {
        anonymise(text, &Redactions::default())
    }

    #[test]
    fn unlisted_people_organisations_and_code_names() {
        let cases = [
            (
                "We met John Smith and Globex Inc. yesterday.",
                "We met [NAME] and [ORGANISATION]. yesterday.",
            ),
            (
                "Smith called. Later John Smith agreed.",
                "[NAME] called. Later [NAME] agreed.",
            ),
            ("Ask Dr. Kowalski about it.", "Ask Dr. [PERSON] about it."),
            (
                "The backup is codenamed bluebird; Project Heron is late.",
                "The backup is codenamed [NAME]; [NAME] is late.",
            ),
            (
                "Payment to Bank of Lagos and Smith & Wesson Corp.",
                "Payment to [NAME] and [ORGANISATION].",
            ),
            // Acronyms, sentence openers and defined terms stay.
            (
                "Mutual NDA under GDPR. The Agreement binds the Parties.",
                "Mutual NDA under GDPR. The Agreement binds the Parties.",
            ),
            ("ask Globex's lawyer", "ask [NAME]'s lawyer"),
        ];
        for (input, expected) in cases {
            assert_eq!(clean(input), expected, "{input}");
        }
    }

    #[test]
    fn account_numbers() {
        let cases = [
            ("pay DE89 3704 0044 0532 0130 00 now", "pay [ACCOUNT] now"),
            ("pay GB29NWBK60161331926819.", "pay [ACCOUNT]."),
            (
                "Account no. 4402-7781-9923 is ours",
                "Account no. [ACCOUNT] is ours",
            ),
            (
                "BIC DEUTDEFF500 and SWIFT: NWBKGB2L",
                "BIC [ACCOUNT] and SWIFT: [ACCOUNT]",
            ),
            ("customer 123456 called", "customer [NUMBER] called"),
            // Short numbers and codes that are not accounts stay.
            (
                "invoice #88213, ISO 27001, DE12 only",
                "invoice #88213, ISO 27001, DE12 only",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(clean(input), expected, "{input}");
        }
    }

    fn name_part() -> impl Strategy<Value = String> {
        "[A-Z][a-z]{3,9}".prop_filter("an ordinary capitalised word", |w| {
            let l = w.to_lowercase();
            !COMMON.contains(&l.as_str())
                && !TITLES.contains(&l.as_str())
                && !ORG_SUFFIXES.contains(&l.as_str())
                && !CODE_CUES.contains(&l.as_str())
        })
    }

    fn iban() -> impl Strategy<Value = String> {
        (
            "[A-Z]{2}",
            "[0-9]{2}",
            prop::collection::vec("[A-Z0-9]{4}", 3..7),
            any::<bool>(),
        )
            .prop_map(|(cc, check, groups, spaced)| {
                let sep = if spaced { " " } else { "" };
                format!("{cc}{check}{sep}{}", groups.join(sep))
            })
    }

    const OPENERS: &[&str] = &[
        "We met",
        "Yesterday we called",
        "The invoice came from",
        "Notes: a call with",
        "The board asked",
        "Counsel for the seller is",
    ];

    proptest! {
        #[test]
        fn unlisted_names_and_ibans_never_survive(
            first in name_part(),
            last in name_part(),
            org in name_part(),
            suffix in prop::sample::select(vec!["Inc", "Ltd", "GmbH", "LLC", "Corp", "AG", "SA", "plc"]),
            opener in prop::sample::select(OPENERS.to_vec()),
            account in iban(),
        ) {
            let text = format!(
                "{opener} {first} {last} of {org} {suffix}. {last} will pay into {account} \
                 soon. Then {org} {suffix} confirmed."
            );
            let out = clean(&text);
            for gone in [&first, &last, &org, &account] {
                prop_assert!(!out.contains(gone.as_str()), "{gone} in {out}");
            }
            for group in account.split(' ').filter(|g| g.len() >= 4) {
                prop_assert!(!out.contains(group), "{group} in {out}");
            }
        }
    }
}
