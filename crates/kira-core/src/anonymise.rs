//! The anonymiser: what crosses from one company to another is a copy with
//! names, contact details, money and exact dates replaced by typed
//! placeholders (`[COMPANY]`, `[PERSON]`, `[EMAIL]`, ...).
//!
//! Known entities (the other company's name and id, its people, its
//! counterparties) come from [`Redactions`]; emails, phone numbers, amounts,
//! dates, IBANs and account numbers are found by small hand-written
//! scanners; names no list gives (people, organisations, places, code
//! names) by the proper-noun pass of [`entities`], which goes by the shape
//! of the words (`[NAME]`, `[ORGANISATION]`, a titled `[PERSON]`). The
//! scanners lean towards replacing too much: a lost detail in a shared
//! pattern costs little, a leaked name costs trust.
//!
//! [`anonymise`] is idempotent: it repeats its passes until nothing changes,
//! and text already inside a placeholder is never touched again.

use serde::{Deserialize, Serialize};

use crate::CompanyId;
use crate::company::CompanyProfile;

mod entities;

/// What to remove besides the patterns every text is scanned for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redactions {
    /// The other company's name and id (and any former or trading names).
    pub companies: Vec<String>,
    /// From its contacts and from `people` in its memories.
    pub people: Vec<String>,
    /// From `counterparties` in its memories.
    pub counterparties: Vec<String>,
}

impl Redactions {
    /// The company's name, id and contacts' names; the caller adds people
    /// and counterparties named in its memories.
    pub fn of_company(id: &CompanyId, profile: &CompanyProfile) -> Self {
        Self {
            companies: vec![profile.name.clone(), id.as_str().to_owned()],
            people: profile.contacts.iter().map(|c| c.name.clone()).collect(),
            counterparties: Vec::new(),
        }
    }
}

/// The kinds of placeholder, in the words the text shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Company,
    Counterparty,
    Person,
    Email,
    Phone,
    Amount,
    Date,
    /// A capitalised name no list gave: a person, place or code name.
    Name,
    /// Capitalised words before a legal form ("Initech LLC").
    Organisation,
    /// An IBAN or a number after an account word.
    Account,
    /// Six digits or more in a row.
    Number,
}

impl Kind {
    const ALL: [Kind; 11] = [
        Kind::Company,
        Kind::Counterparty,
        Kind::Person,
        Kind::Email,
        Kind::Phone,
        Kind::Amount,
        Kind::Date,
        Kind::Name,
        Kind::Organisation,
        Kind::Account,
        Kind::Number,
    ];

    fn placeholder(self) -> &'static str {
        match self {
            Kind::Company => "[COMPANY]",
            Kind::Counterparty => "[COUNTERPARTY]",
            Kind::Person => "[PERSON]",
            Kind::Email => "[EMAIL]",
            Kind::Phone => "[PHONE]",
            Kind::Amount => "[AMOUNT]",
            Kind::Date => "[DATE]",
            Kind::Name => "[NAME]",
            Kind::Organisation => "[ORGANISATION]",
            Kind::Account => "[ACCOUNT]",
            Kind::Number => "[NUMBER]",
        }
    }
}

/// `text` with every listed entity and every email, phone number, amount of
/// money and exact date replaced by its placeholder; the rest is kept as is.
pub fn anonymise(text: &str, r: &Redactions) -> String {
    let terms = Terms::new(r);
    let mut current = text.to_owned();
    // Each pass that changes anything turns at least one unprotected
    // character into a placeholder, and never unprotects one, so this ends;
    // stopping only at a fixed point is what makes anonymise idempotent.
    loop {
        let next = pass(&current, &terms);
        if next == current {
            return next;
        }
        current = next;
    }
}

/// The value with [`anonymise`] applied to every string in it. Object keys
/// are field names, not content, and are kept.
pub fn anonymise_json(v: &serde_json::Value, r: &Redactions) -> serde_json::Value {
    use serde_json::Value;
    let terms = Terms::new(r);
    fn walk(v: &Value, terms: &Terms) -> Value {
        match v {
            Value::String(s) => {
                let mut current = s.clone();
                loop {
                    let next = pass(&current, terms);
                    if next == current {
                        return Value::String(next);
                    }
                    current = next;
                }
            }
            Value::Array(items) => Value::Array(items.iter().map(|i| walk(i, terms)).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), walk(v, terms)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    walk(v, &terms)
}

/// One round of every scanner, in an order where the more specific goes
/// first: an email holds names, a listed counterparty may look like an
/// amount (`3M`), a date looks like a phone number.
///
/// Then what no list names: IBANs before phones (an IBAN's digit groups
/// look like one), account numbers after amounts and dates, and last the
/// proper-noun pass, which sees listed names already replaced.
fn pass(text: &str, terms: &Terms) -> String {
    let mut buf = Buf::new(text);
    buf = buf.scan(Kind::Email, email_at);
    buf = buf.replace_terms(&terms.full);
    buf = buf.scan(Kind::Account, entities::iban_at);
    buf = buf.scan(Kind::Date, date_at);
    buf = buf.scan(Kind::Amount, amount_at);
    buf = buf.scan(Kind::Account, entities::account_at);
    buf = buf.scan(Kind::Phone, phone_at);
    buf = buf.scan(Kind::Number, entities::long_number_at);
    buf = buf.replace_terms(&terms.parts);
    buf = buf.replace_spans(entities::entity_spans);
    buf.render()
}

/// The text as characters, each marked if it belongs to a placeholder.
struct Buf {
    chars: Vec<char>,
    protected: Vec<bool>,
}

impl Buf {
    fn new(text: &str) -> Self {
        let chars: Vec<char> = text.chars().collect();
        let mut protected = vec![false; chars.len()];
        let mut i = 0;
        while i < chars.len() {
            let hit = Kind::ALL.iter().map(|k| k.placeholder()).find(|p| {
                let n = p.chars().count();
                chars
                    .get(i..i + n)
                    .is_some_and(|s| s.iter().copied().eq(p.chars()))
            });
            match hit {
                Some(p) => {
                    let n = p.chars().count();
                    protected[i..i + n].fill(true);
                    i += n;
                }
                None => i += 1,
            }
        }
        Self { chars, protected }
    }

    fn render(&self) -> String {
        self.chars.iter().collect()
    }

    fn free(&self, i: usize, end: usize) -> bool {
        end > i
            && self
                .protected
                .get(i..end)
                .is_some_and(|p| !p.contains(&true))
    }

    /// Scans left to right; where `find` reports a match ending at `end`,
    /// the characters `i..end` become the kind's placeholder.
    fn replace(self, find: impl Fn(&Buf, usize) -> Option<(usize, Kind)>) -> Self {
        let mut out = Buf {
            chars: Vec::with_capacity(self.chars.len()),
            protected: Vec::with_capacity(self.chars.len()),
        };
        let mut i = 0;
        while i < self.chars.len() {
            let hit = if self.protected[i] {
                None
            } else {
                find(&self, i).filter(|&(end, _)| self.free(i, end))
            };
            match hit {
                Some((end, kind)) => {
                    let p = kind.placeholder();
                    out.chars.extend(p.chars());
                    out.protected
                        .extend(std::iter::repeat_n(true, p.chars().count()));
                    i = end;
                }
                None => {
                    out.chars.push(self.chars[i]);
                    out.protected.push(self.protected[i]);
                    i += 1;
                }
            }
        }
        out
    }

    /// Replaces the spans `find` reports for the whole text (start, end,
    /// kind; in order, not overlapping).
    fn replace_spans(self, find: fn(&Buf) -> Vec<(usize, usize, Kind)>) -> Self {
        let spans: std::collections::HashMap<usize, (usize, Kind)> = find(&self)
            .into_iter()
            .map(|(start, end, kind)| (start, (end, kind)))
            .collect();
        if spans.is_empty() {
            return self;
        }
        self.replace(|_, i| spans.get(&i).copied())
    }

    fn scan(self, kind: Kind, find: fn(&[char], usize) -> Option<usize>) -> Self {
        self.replace(|b, i| find(&b.chars, i).map(|end| (end, kind)))
    }

    /// Terms are sorted longest first; the first that matches here, clear
    /// of placeholders, wins whatever its kind.
    fn replace_terms(self, terms: &[Term]) -> Self {
        if terms.is_empty() {
            return self;
        }
        self.replace(|b, i| {
            terms.iter().find_map(|t| {
                t.match_at(&b.chars, i)
                    .filter(|&end| b.free(i, end))
                    .map(|end| (end, t.kind))
            })
        })
    }
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn boundary_before(chars: &[char], i: usize) -> bool {
    i == 0 || chars.get(i - 1).is_none_or(|&c| !is_word(c))
}

fn boundary_at(chars: &[char], i: usize) -> bool {
    chars.get(i).is_none_or(|&c| !is_word(c))
}

/// One listed entity, or a variant derived from one.
struct Term {
    pattern: Vec<char>,
    kind: Kind,
    case: Case,
}

/// How a term's letters must be written in the text to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    /// Any case: the names as listed.
    Any,
    /// Any case, but the first letter a capital: name parts ("Roe" but not
    /// "roe") and shortened company names ("Acme" from "Acme Holdings").
    Capitalised,
    /// Exactly as derived: acronyms ("FCA"), which as lower case are words.
    Exact,
}

impl Term {
    fn new(s: &str, kind: Kind, case: Case) -> Option<Self> {
        let collapsed = s.split_whitespace().collect::<Vec<_>>().join(" ");
        // One letter would take every "a" and "I" with it.
        if collapsed.chars().filter(|c| c.is_alphanumeric()).count() < 2 {
            return None;
        }
        Some(Self {
            pattern: collapsed.chars().collect(),
            kind,
            case,
        })
    }

    fn match_at(&self, chars: &[char], i: usize) -> Option<usize> {
        let first = *self.pattern.first()?;
        if is_word(first) && !boundary_before(chars, i) {
            return None;
        }
        if self.case == Case::Capitalised && !chars.get(i).is_some_and(|c| c.is_uppercase()) {
            return None;
        }
        let mut t = i;
        for &p in &self.pattern {
            if p == ' ' {
                // A space in a name matches any run of whitespace, so a name
                // broken across lines is still found.
                let start = t;
                while chars.get(t).is_some_and(|c| c.is_whitespace()) {
                    t += 1;
                }
                if t == start {
                    return None;
                }
            } else {
                let c = *chars.get(t)?;
                let same = match self.case {
                    Case::Exact => c == p,
                    Case::Any | Case::Capitalised => same_letter(c, p),
                };
                if !same {
                    return None;
                }
                t += 1;
            }
        }
        let last = *self.pattern.last()?;
        if is_word(last) && !boundary_at(chars, t) {
            return None;
        }
        // "... with Cascade Packaging Inc. Current pricing": the full stop
        // ends the sentence too, so leave it.
        if last == '.' {
            let next = chars[t..].iter().find(|c| !c.is_whitespace());
            if next.is_none_or(|c| c.is_uppercase()) {
                return Some(t - 1);
            }
        }
        Some(t)
    }
}

fn same_letter(a: char, b: char) -> bool {
    let apostrophe = |c: char| if c == '\u{2019}' { '\'' } else { c };
    let (a, b) = (apostrophe(a), apostrophe(b));
    a == b || a.to_lowercase().eq(b.to_lowercase())
}

/// The listed entities as terms: `full` are the names as given (and company
/// names without their legal form), `parts` the parts of people's names.
struct Terms {
    full: Vec<Term>,
    parts: Vec<Term>,
}

const LEGAL_FORMS: &[&str] = &[
    "inc",
    "inc.",
    "incorporated",
    "llc",
    "l.l.c.",
    "ltd",
    "ltd.",
    "limited",
    "plc",
    "corp",
    "corp.",
    "corporation",
    "co",
    "co.",
    "company",
    "gmbh",
    "ag",
    "sa",
    "s.a.",
    "sas",
    "se",
    "bv",
    "b.v.",
    "nv",
    "n.v.",
    "llp",
    "lp",
    "pty",
    "holdings",
    "holding",
    "group",
    "&",
];

/// Words before a name that are not part of it ("Dr. Li Wei").
const TITLES: &[&str] = &["mr", "mrs", "ms", "mx", "dr", "prof", "sir", "dame"];
/// Words after a name that are not part of it ("John Smith Jr.").
const SUFFIXES: &[&str] = &["jr", "sr", "ii", "iii", "iv", "esq", "phd"];

impl Terms {
    fn new(r: &Redactions) -> Self {
        let mut full = Vec::new();
        let mut parts = Vec::new();
        for (list, kind) in [
            (&r.companies, Kind::Company),
            (&r.counterparties, Kind::Counterparty),
        ] {
            for name in list {
                full.extend(Term::new(name, kind, Case::Any));
                full.extend(short_forms(name, kind));
            }
        }
        for name in &r.people {
            full.extend(Term::new(name, Kind::Person, Case::Any));
            let bare = |w: &str| {
                w.trim_matches(|c: char| !c.is_alphanumeric())
                    .to_lowercase()
            };
            let mut words: Vec<&str> = name.split_whitespace().collect();
            while words.len() > 1
                && words
                    .first()
                    .is_some_and(|w| TITLES.contains(&bare(w).as_str()))
            {
                words.remove(0);
            }
            while words.len() > 1
                && words
                    .last()
                    .is_some_and(|w| SUFFIXES.contains(&bare(w).as_str()))
            {
                words.pop();
            }
            // "Al-Sayed" as a whole, and "Sayed" alone; "Al" is too short.
            let pieces = words.iter().flat_map(|w| w.split('-'));
            for word in words.iter().copied().chain(pieces) {
                let word = word.trim_matches(|c: char| !c.is_alphanumeric());
                if word.chars().filter(|c| c.is_alphabetic()).count() >= 3 {
                    parts.extend(Term::new(word, Kind::Person, Case::Capitalised));
                }
            }
        }
        // Longest first, so "Acme Holdings" wins over "Acme"; at equal
        // length, the order of Kind (company, counterparty, person).
        let order = |t: &Term| {
            (
                std::cmp::Reverse(t.pattern.len()),
                Kind::ALL.iter().position(|k| *k == t.kind),
            )
        };
        full.sort_by_key(order);
        parts.sort_by_key(order);
        Self { full, parts }
    }
}

/// What notes call a company besides its full name: the name without its
/// legal form and its leading words ("Pacific Rim Distributors Pty" ->
/// "Pacific Rim Distributors", "Pacific Rim"; "Acme Holdings" -> "Acme"),
/// and the initials of a name of three words or more ("Metro Transit
/// Authority" -> "MTA"). A lone leading word that is an ordinary word
/// ("First", "Pacific") is not a short form: it would take too much.
fn short_forms(name: &str, kind: Kind) -> Vec<Term> {
    let mut words: Vec<&str> = name.split_whitespace().collect();
    while words.len() > 1
        && words.last().is_some_and(|w| {
            let w = w.trim_end_matches(',').to_lowercase();
            LEGAL_FORMS.contains(&w.as_str())
        })
    {
        words.pop();
    }
    let listed = name.split_whitespace().collect::<Vec<_>>().join(" ");
    let words: Vec<&str> = words
        .iter()
        .map(|w| w.trim_end_matches(','))
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .collect();
    let mut terms = Vec::new();
    for k in 1..=words.len() {
        let prefix = words[..k].join(" ");
        if prefix == listed {
            continue; // the name itself, already listed
        }
        let lead = words[0];
        if k == 1 {
            let letters = lead.chars().filter(|c| c.is_alphabetic()).count();
            if letters < 4 || GENERIC_WORDS.contains(&lead.to_lowercase().as_str()) {
                continue;
            }
        }
        terms.extend(Term::new(&prefix, kind, Case::Capitalised));
    }
    let initials: String = words
        .iter()
        .filter(|w| !["of", "and", "the", "for"].contains(&w.to_lowercase().as_str()))
        .filter_map(|w| w.chars().next())
        .filter(|c| c.is_uppercase())
        .collect();
    if words.len() >= 3 && initials.chars().count() >= 3 {
        terms.extend(Term::new(&initials, kind, Case::Exact));
    }
    terms
}

/// Leading words of company names that are too common to stand alone.
const GENERIC_WORDS: &[&str] = &[
    "the",
    "first",
    "new",
    "general",
    "national",
    "united",
    "american",
    "global",
    "international",
    "north",
    "northern",
    "south",
    "southern",
    "east",
    "eastern",
    "west",
    "western",
    "central",
    "metro",
    "city",
    "royal",
    "great",
    "pacific",
    "atlantic",
    "digital",
    "standard",
    "financial",
    "federal",
    "public",
    "private",
    "open",
    "next",
    "blue",
    "green",
    "golden",
    "silver",
    "summit",
    "premier",
    "capital",
    "allied",
];

// ---- emails ----

fn is_local(c: char) -> bool {
    c.is_alphanumeric() || "._%+-'".contains(c)
}

fn is_domain(c: char) -> bool {
    c.is_alphanumeric() || c == '.' || c == '-'
}

fn email_at(chars: &[char], i: usize) -> Option<usize> {
    if !chars.get(i).copied().is_some_and(is_local)
        || (i > 0 && chars.get(i - 1).copied().is_some_and(is_local))
    {
        return None;
    }
    let mut at = i;
    while chars.get(at).copied().is_some_and(is_local) {
        at += 1;
    }
    if chars.get(at) != Some(&'@') {
        return None;
    }
    let mut end = at + 1;
    while chars.get(end).copied().is_some_and(is_domain) {
        end += 1;
    }
    // A sentence may end right after the address.
    while end > at + 1 && matches!(chars.get(end - 1), Some('.' | '-')) {
        end -= 1;
    }
    let domain: String = chars.get(at + 1..end)?.iter().collect();
    let labels: Vec<&str> = domain.split('.').collect();
    let ok = labels.len() >= 2
        && labels.iter().all(|l| !l.is_empty())
        && labels
            .last()
            .is_some_and(|tld| tld.chars().count() >= 2 && tld.chars().all(char::is_alphabetic));
    ok.then_some(end)
}

// ---- shared number scanning ----

/// The end of a run of 1..=max ASCII digits starting at `i` that is not
/// followed by another digit, and its value.
fn digits(chars: &[char], i: usize, min: usize, max: usize) -> Option<(usize, u32)> {
    let mut end = i;
    let mut value: u32 = 0;
    while let Some(d) = chars.get(end).and_then(|c| c.to_digit(10)) {
        if end - i == max {
            return None;
        }
        value = value.saturating_mul(10).saturating_add(d);
        end += 1;
    }
    (end - i >= min).then_some((end, value))
}

fn skip_spaces(chars: &[char], mut i: usize, max: usize) -> usize {
    let start = i;
    while i - start < max && chars.get(i).is_some_and(|&c| c == ' ' || c == '\u{a0}') {
        i += 1;
    }
    i
}

/// Matches `word` case-insensitively at `i`, followed by a word boundary.
fn word_at(chars: &[char], i: usize, word: &str) -> Option<usize> {
    let mut t = i;
    for w in word.chars() {
        let c = *chars.get(t)?;
        if !same_letter(c, w) {
            return None;
        }
        t += 1;
    }
    boundary_at(chars, t).then_some(t)
}

// ---- dates ----

use crate::memory::when::MONTHS;
const MONTH_ABBREVIATIONS: [&str; 13] = [
    "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "febr",
];

/// A month name or abbreviation at `i` (an abbreviation may end with '.').
/// "May" and "March" are also ordinary words, so they count only when
/// capitalised.
fn month_at(chars: &[char], i: usize) -> Option<usize> {
    if !boundary_before(chars, i) {
        return None;
    }
    let capitalised = chars.get(i).is_some_and(|c| c.is_uppercase());
    for m in MONTHS {
        if let Some(end) = word_at(chars, i, m) {
            if (m == "may" || m == "march") && !capitalised {
                return None;
            }
            return Some(end);
        }
    }
    for m in MONTH_ABBREVIATIONS {
        if let Some(end) = word_at(chars, i, m) {
            if m == "mar" && !capitalised {
                return None;
            }
            return Some(if chars.get(end) == Some(&'.') {
                end + 1
            } else {
                end
            });
        }
    }
    None
}

/// A day of the month (1-31) at `i` with an optional ordinal suffix.
fn day_at(chars: &[char], i: usize) -> Option<usize> {
    let (end, d) = digits(chars, i, 1, 2)?;
    if !(1..=31).contains(&d) {
        return None;
    }
    for suffix in ["st", "nd", "rd", "th"] {
        if let Some(e) = word_at(chars, end, suffix) {
            return Some(e);
        }
    }
    boundary_at(chars, end).then_some(end)
}

fn year_at(chars: &[char], i: usize) -> Option<usize> {
    let (end, y) = digits(chars, i, 4, 4)?;
    ((1000..=2999).contains(&y) && boundary_at(chars, end)).then_some(end)
}

/// `, 2024` or ` 2024` after a day and month.
fn then_year(chars: &[char], i: usize) -> Option<usize> {
    let j = if chars.get(i) == Some(&',') { i + 1 } else { i };
    let k = skip_spaces(chars, j, 2);
    if k == j {
        return None;
    }
    year_at(chars, k)
}

/// A range's second day: `March 3-5`, `3–5 March`.
fn then_range_day(chars: &[char], i: usize) -> Option<usize> {
    let j = skip_spaces(chars, i, 1);
    if !matches!(chars.get(j), Some('-' | '\u{2013}')) {
        return None;
    }
    let k = skip_spaces(chars, j + 1, 1);
    day_at(chars, k)
}

fn date_at(chars: &[char], i: usize) -> Option<usize> {
    if !boundary_before(chars, i) {
        return None;
    }
    numeric_date(chars, i)
        .or_else(|| day_first_date(chars, i))
        .or_else(|| month_first_date(chars, i))
}

/// 2024-01-15 (with an optional time), 1/15/2024, 15.01.2024, 1/15/24.
fn numeric_date(chars: &[char], i: usize) -> Option<usize> {
    let (e1, a) = digits(chars, i, 1, 4)?;
    let sep = *chars.get(e1)?;
    if !matches!(sep, '-' | '/' | '.') {
        return None;
    }
    let (e2, b) = digits(chars, e1 + 1, 1, 2)?;
    if chars.get(e2) != Some(&sep) {
        return None;
    }
    let (e3, c) = digits(chars, e2 + 1, 1, 4)?;
    let (n1, n3) = (e1 - i, e3 - e2 - 1);
    let month = |m: u32| (1..=12).contains(&m);
    let day = |d: u32| (1..=31).contains(&d);
    let ok = if n1 == 4 {
        month(b) && day(c) && n3 <= 2
    } else if n1 <= 2 {
        let year_ok = n3 == 4 || (n3 == 2 && sep == '/');
        year_ok && ((day(a) && month(b)) || (month(a) && day(b)))
    } else {
        false
    };
    if !ok {
        return None;
    }
    // An ISO timestamp's time belongs to the date: 2024-01-15T10:30:00Z.
    if n1 == 4 && chars.get(e3) == Some(&'T') && chars.get(e3 + 1).is_some_and(char::is_ascii_digit)
    {
        let mut end = e3 + 1;
        while chars
            .get(end)
            .is_some_and(|&c| c.is_ascii_digit() || matches!(c, ':' | '.' | '+' | '-' | 'Z'))
        {
            end += 1;
        }
        return Some(end);
    }
    boundary_at(chars, e3).then_some(e3)
}

/// 15 January 2024, 15th of March, 3-5 Jan 2025, 15 Jan.
fn day_first_date(chars: &[char], i: usize) -> Option<usize> {
    let mut end = day_at(chars, i)?;
    if let Some(e) = then_range_day(chars, end) {
        end = e;
    }
    let mut j = skip_spaces(chars, end, 2);
    if j == end {
        return None;
    }
    if let Some(e) = word_at(chars, j, "of") {
        let k = skip_spaces(chars, e, 2);
        if k == e {
            return None;
        }
        j = k;
    }
    let end = month_at(chars, j)?;
    Some(then_year(chars, end).unwrap_or(end))
}

/// January 15, 2024; Jan 15 2024; March 3rd; March 3-5; January 2024.
fn month_first_date(chars: &[char], i: usize) -> Option<usize> {
    let m = month_at(chars, i)?;
    let j = skip_spaces(chars, m, 2);
    if j == m {
        return None;
    }
    if let Some(end) = year_at(chars, j) {
        return Some(end);
    }
    let mut end = day_at(chars, j)?;
    if let Some(e) = then_range_day(chars, end) {
        end = e;
    }
    Some(then_year(chars, end).unwrap_or(end))
}

// ---- amounts ----

const SYMBOLS: &[char] = &['$', '£', '€', '¥', '₹', '₩', '₽', '₪', '₣'];
const CODES: &[&str] = &[
    "USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "NZD", "SEK", "NOK", "DKK", "SGD", "HKD",
    "CNY", "RMB", "INR", "BRL", "MXN", "ZAR", "KRW", "PLN", "CZK", "ILS", "AED", "SAR",
];
const CURRENCY_WORDS: &[&str] = &[
    "dollars",
    "dollar",
    "euros",
    "euro",
    "pounds sterling",
    "pounds",
    "pound",
    "sterling",
    "yen",
    "francs",
    "rupees",
    "yuan",
    "bucks",
];
/// Magnitudes written as words or, attached to the number, as letters.
const MAGNITUDE_WORDS: &[&str] = &[
    "million", "billion", "trillion", "thousand", "mn", "bn", "tn",
];
const MAGNITUDE_LETTERS: &[&str] = &["bn", "mn", "mm", "tn", "m", "k", "b"];

/// A number with thousands separators and decimals: 4,200,000 or 4.2.
fn number_at(chars: &[char], i: usize) -> Option<usize> {
    let (mut end, _) = digits(chars, i, 1, usize::MAX)?;
    while matches!(chars.get(end), Some(',' | '.'))
        && chars.get(end + 1).is_some_and(char::is_ascii_digit)
    {
        end = digits(chars, end + 1, 1, usize::MAX)?.0;
    }
    Some(end)
}

/// After a number: `M`, `bn`, ` million`; the end if one is there.
fn magnitude_at(chars: &[char], i: usize, spaced_letters: bool) -> Option<usize> {
    for m in MAGNITUDE_LETTERS {
        if let Some(e) = word_at(chars, i, m) {
            return Some(e);
        }
    }
    let j = skip_spaces(chars, i, 1);
    for m in MAGNITUDE_WORDS {
        if let Some(e) = word_at(chars, j, m) {
            return Some(e);
        }
    }
    if spaced_letters && j > i {
        for m in MAGNITUDE_LETTERS {
            if let Some(e) = word_at(chars, j, m) {
                return Some(e);
            }
        }
    }
    None
}

/// After an amount: ` dollars`, ` USD`, `€`.
fn currency_after(chars: &[char], i: usize) -> Option<usize> {
    let j = skip_spaces(chars, i, 1);
    if chars.get(j).is_some_and(|c| SYMBOLS.contains(c)) {
        return Some(j + 1);
    }
    if j == i {
        return None;
    }
    CURRENCY_WORDS
        .iter()
        .find_map(|w| words_at(chars, j, w))
        .or_else(|| CODES.iter().find_map(|c| exact_word_at(chars, j, c)))
}

/// Like [`word_at`] but a space in `phrase` matches a run of spaces.
fn words_at(chars: &[char], i: usize, phrase: &str) -> Option<usize> {
    let mut t = i;
    for (n, w) in phrase.split(' ').enumerate() {
        if n > 0 {
            let s = skip_spaces(chars, t, 3);
            if s == t {
                return None;
            }
            t = s;
        }
        t = word_at(chars, t, w)?;
    }
    Some(t)
}

/// A currency code, upper case only: "eur" in running text is not money.
fn exact_word_at(chars: &[char], i: usize, word: &str) -> Option<usize> {
    let n = word.chars().count();
    let same = chars.get(i..i + n)?.iter().copied().eq(word.chars());
    (same && boundary_at(chars, i + n)).then_some(i + n)
}

fn amount_at(chars: &[char], i: usize) -> Option<usize> {
    if !boundary_before(chars, i) {
        return None;
    }
    // US$5, A$20, HK$1m: a country prefix joined to the symbol.
    let mut j = i;
    while j - i < 3 && chars.get(j).is_some_and(char::is_ascii_uppercase) {
        j += 1;
    }
    if j > i && !chars.get(j).is_some_and(|c| SYMBOLS.contains(c)) {
        j = i;
    }
    let after_prefix = if chars.get(j).is_some_and(|c| SYMBOLS.contains(c)) {
        Some(j + 1)
    } else {
        CODES.iter().find_map(|c| {
            let n = c.chars().count();
            let same = chars.get(i..i + n)?.iter().copied().eq(c.chars());
            (same && !chars.get(i + n).is_some_and(|c| c.is_alphabetic())).then_some(i + n)
        })
    };
    if let Some(p) = after_prefix {
        let k = skip_spaces(chars, p, 1);
        let n = number_at(chars, k)?;
        // A symbol followed by a number is money whatever comes next.
        return Some(magnitude_at(chars, n, true).unwrap_or(n));
    }
    // Number first: 3 million dollars, 200k EUR, 1.2bn, 50,000 €.
    let n = number_at(chars, i)?;
    match magnitude_at(chars, n, false) {
        Some(m) => Some(currency_after(chars, m).unwrap_or(m)),
        None => currency_after(chars, n),
    }
}

// ---- phone numbers ----

fn is_phone_separator(c: char) -> bool {
    matches!(
        c,
        ' ' | '-' | '.' | '(' | ')' | '\u{2011}' | '\u{2013}' | '\u{a0}'
    )
}

/// Seven or more digits in groups joined by short runs of separators:
/// +1 (555) 010-2233, 555-010-2233, +44 20 7946 0958, 5550102233.
fn phone_at(chars: &[char], i: usize) -> Option<usize> {
    if i > 0
        && chars
            .get(i - 1)
            .is_some_and(|c| c.is_ascii_digit() || *c == '+')
    {
        return None;
    }
    let mut t = i;
    if matches!(chars.get(t), Some('+' | '(')) {
        t += 1;
    }
    if !chars.get(t).is_some_and(char::is_ascii_digit) {
        return None;
    }
    let mut count = 0;
    let mut end;
    loop {
        let start = t;
        while chars.get(t).is_some_and(char::is_ascii_digit) {
            t += 1;
        }
        count += t - start;
        end = t;
        let mut s = t;
        while s - t < 3 && chars.get(s).copied().is_some_and(is_phone_separator) {
            s += 1;
        }
        if s == t || !chars.get(s).is_some_and(char::is_ascii_digit) {
            break;
        }
        t = s;
    }
    (count >= 7).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn none() -> Redactions {
        Redactions::default()
    }

    fn acme() -> Redactions {
        Redactions {
            companies: vec!["Acme Holdings".into(), "acme".into()],
            people: vec![
                "Jane Roe".into(),
                "Dr. Li Wei".into(),
                "Mary-Kate O'Neil".into(),
            ],
            counterparties: vec!["Globex Corporation".into(), "3M".into()],
        }
    }

    #[track_caller]
    fn check(r: &Redactions, input: &str, expected: &str) {
        assert_eq!(anonymise(input, r), expected, "input: {input}");
    }

    #[test]
    fn companies_longest_first_case_insensitive_whole_words() {
        let r = acme();
        check(&r, "Acme Holdings signed.", "[COMPANY] signed.");
        check(
            &r,
            "ACME HOLDINGS and acme-ops",
            "[COMPANY] and [COMPANY]-ops",
        );
        check(&r, "Acme\nHoldings", "[COMPANY]");
        // Inside a longer word a name is not matched (lower case here: a
        // capitalised "Acmeville" is a name of its own to the entity pass).
        check(&r, "acmes and acmeville stay", "acmes and acmeville stay");
        check(&r, "Acme's board", "[COMPANY]'s board");
        check(&r, "see acme.com", "see [COMPANY].com");
    }

    #[test]
    fn company_names_without_their_legal_form() {
        let r = Redactions {
            companies: vec!["Northwind Traders Ltd".into()],
            counterparties: vec!["Initech, Inc.".into()],
            ..none()
        };
        check(
            &r,
            "Northwind Traders Ltd and Northwind Traders",
            "[COMPANY] and [COMPANY]",
        );
        check(
            &r,
            "Initech, Inc. vs Initech",
            "[COUNTERPARTY] vs [COUNTERPARTY]",
        );
        check(
            &r,
            "We met Initech, Inc. Then Initech, Inc.",
            "We met [COUNTERPARTY]. Then [COUNTERPARTY].",
        );
        // The shortened form must be capitalised, like a name.
        check(&r, "the initech way", "the initech way");
    }

    #[test]
    fn people_full_names_and_capitalised_parts() {
        let r = acme();
        check(
            &r,
            "Jane Roe joined; later Roe and Jane left.",
            "[PERSON] joined; later [PERSON] and [PERSON] left.",
        );
        check(&r, "the roe deer", "the roe deer");
        check(&r, "Dr. Li Wei and Wei", "[PERSON] and [PERSON]");
        // "Li" is too short to remove on its own; "Dr." is a title.
        check(&r, "Li said Dr. Smith", "Li said Dr. [PERSON]");
        // A title only before the name: as a surname it is a name part.
        let sir = Redactions {
            people: vec!["Aaa Sir".into(), "Mrs Joan Bell Jr.".into()],
            ..none()
        };
        check(
            &sir,
            "Sir, and Mrs Bell, Jr. Joan",
            "[PERSON], and Mrs [PERSON], Jr. [PERSON]",
        );
        check(
            &r,
            "Mary-Kate O'Neil, Kate and O\u{2019}Neil",
            "[PERSON], [PERSON] and [PERSON]",
        );
    }

    #[test]
    fn counterparties_and_kinds_at_equal_length() {
        let r = acme();
        check(
            &r,
            "Globex Corporation and Globex; 3M too",
            "[COUNTERPARTY] and [COUNTERPARTY]; [COUNTERPARTY] too",
        );
        let r = Redactions {
            companies: vec!["Apex".into()],
            counterparties: vec!["Apex".into()],
            people: vec!["Apex".into()],
        };
        check(&r, "Apex", "[COMPANY]");
    }

    #[test]
    fn emails() {
        let r = none();
        check(
            &r,
            "mail jane.roe+legal@acme-holdings.co.uk.",
            "mail [EMAIL].",
        );
        check(&r, "(ops@globex.com)", "([EMAIL])");
        check(
            &r,
            "meet @ noon, user@localhost",
            "meet @ noon, user@localhost",
        );
        // The email goes whole, not as a name and a domain.
        check(&acme(), "jane.roe@acme.com", "[EMAIL]");
    }

    #[test]
    fn phones() {
        let r = none();
        for phone in [
            "+1 (555) 010-2233",
            "555-010-2233",
            "+44 20 7946 0958",
            "(555) 010 2233",
            "5550102233",
            "+49.30.1234567",
            "010-2233 ext",
        ] {
            let out = anonymise(&format!("call {phone} now"), &r);
            assert!(out.starts_with("call [PHONE]"), "{phone} -> {out}");
        }
        check(
            &r,
            "room 101, 12 people, 2023 and 2024",
            "room 101, 12 people, 2023 and 2024",
        );
    }

    #[test]
    fn amounts() {
        let r = none();
        for amount in [
            "$4.2M",
            "$4,200,000",
            "USD 1.5 million",
            "3 million dollars",
            "EUR 200k",
            "£50,000",
            "1.2bn",
            "€ 3.5m",
            "US$ 900",
            "250,000 USD",
            "12 000", // not an amount: see below
        ] {
            let out = anonymise(&format!("paid {amount} today"), &r);
            if amount == "12 000" {
                assert_eq!(out, "paid 12 000 today");
            } else {
                assert_eq!(out, "paid [AMOUNT] today", "{amount}");
            }
        }
        check(
            &r,
            "a 50% stake, 3 seats, EURO zone",
            "a 50% stake, 3 seats, EURO zone",
        );
    }

    #[test]
    fn dates() {
        let r = none();
        for date in [
            "2024-01-15",
            "2024-01-15T10:30:00Z",
            "15 January 2024",
            "Jan 15, 2024",
            "January 15th",
            "1/15/2024",
            "15.01.2024",
            "March 3rd",
            "3rd of March",
            "Sept. 9",
            "March 3-5",
            "12 Dec",
            "June 2024",
            "1/15/24",
        ] {
            let out = anonymise(&format!("on {date} we met"), &r);
            assert_eq!(out, "on [DATE] we met", "{date}");
        }
        check(&r, "we may 3 times march on", "we may 3 times march on");
        check(
            &r,
            "version 1.2.3, Q3 2024, in 2024",
            "version 1.2.3, Q3 2024, in 2024",
        );
    }

    #[test]
    fn ordinary_text_is_kept() {
        let text = "The board approved the agreement after a long review.\n\tNext: hiring.";
        check(&acme(), text, text);
        check(&acme(), "", "");
    }

    #[test]
    fn placeholders_in_the_input_are_left_alone() {
        let r = Redactions {
            people: vec!["Person Date".into()],
            companies: vec!["company".into()],
            ..none()
        };
        check(
            &r,
            "[PERSON] met [COMPANY] on [DATE]",
            "[PERSON] met [COMPANY] on [DATE]",
        );
        check(
            &r,
            "Person Date of the company",
            "[PERSON] of the [COMPANY]",
        );
    }

    #[test]
    fn json_strings_everywhere_keys_kept() {
        let v = serde_json::json!({
            "text": "Jane Roe agreed $5M with Globex Corporation",
            "people": ["Jane Roe"],
            "nested": {"when": "2024-03-01", "n": 3, "ok": true, "acme": null}
        });
        let out = anonymise_json(&v, &acme());
        assert_eq!(
            out,
            serde_json::json!({
                "text": "[PERSON] agreed [AMOUNT] with [COUNTERPARTY]",
                "people": ["[PERSON]"],
                "nested": {"when": "[DATE]", "n": 3, "ok": true, "acme": null}
            })
        );
    }

    #[test]
    fn of_company_lists_name_id_and_contacts() {
        let new: crate::company::NewCompany = serde_json::from_value(serde_json::json!({
            "id": "acme", "name": "Acme Holdings", "industry": "fintech", "jurisdiction": "US-DE",
            "contacts": [{"name": "Jane Roe", "email": "jane@acme.com"}]
        }))
        .expect("valid json");
        let (id, profile) = new.validate().expect("valid");
        let r = Redactions::of_company(&id, &profile);
        assert_eq!(r.companies, ["Acme Holdings", "acme"]);
        assert_eq!(r.people, ["Jane Roe"]);
    }

    // ---- the leak test ----

    struct Note {
        title: String,
        redactions: Redactions,
        keep: Vec<String>,
        /// Names and numbers in the text that no list gives the anonymiser.
        unlisted: Vec<String>,
        text: String,
    }

    /// Parses tests/data/anonymise_corpus.txt: entries start with `=== title`,
    /// then `companies:`, `people:`, `counterparties:`, `keep:` lines
    /// (values separated by `|`), a `---` line, and the note's text.
    fn corpus() -> Vec<Note> {
        let raw = include_str!("../tests/data/anonymise_corpus.txt");
        let mut notes = Vec::new();
        for entry in raw.split("\n=== ").skip(1) {
            let (head, text) = entry.split_once("\n---\n").expect("a --- line");
            let mut lines = head.lines();
            let title = lines.next().expect("a title").trim().to_owned();
            let mut note = Note {
                title,
                redactions: none(),
                keep: Vec::new(),
                unlisted: Vec::new(),
                text: text.trim().to_owned(),
            };
            for line in lines {
                let (key, values) = line.split_once(':').expect("key: values");
                let values: Vec<String> = values
                    .split('|')
                    .map(|v| v.trim().to_owned())
                    .filter(|v| !v.is_empty())
                    .collect();
                match key.trim() {
                    "companies" => note.redactions.companies = values,
                    "people" => note.redactions.people = values,
                    "counterparties" => note.redactions.counterparties = values,
                    "keep" => note.keep = values,
                    "unlisted" => note.unlisted = values,
                    other => panic!("unknown corpus key {other} in {}", note.title),
                }
            }
            notes.push(note);
        }
        notes
    }

    /// Leak detectors written independently of the scanners: deliberately
    /// cruder, so that they catch what a scanner's rule misses.
    fn leaks(out: &str, r: &Redactions) -> Vec<String> {
        let mut found = Vec::new();
        let lower = out.to_lowercase();
        for entity in r.companies.iter().chain(&r.people).chain(&r.counterparties) {
            let e = entity.to_lowercase();
            // Substring, not whole word: stricter than the anonymiser.
            let mut from = 0;
            while let Some(pos) = lower[from..].find(&e) {
                let start = from + pos;
                let end = start + e.len();
                let before = lower[..start].chars().next_back();
                let after = lower[end..].chars().next();
                // Still a leak unless the match is inside a longer word.
                if !before.is_some_and(char::is_alphanumeric)
                    && !after.is_some_and(char::is_alphanumeric)
                {
                    found.push(format!("entity {entity:?}"));
                }
                from = end;
            }
        }
        // The lead word of each company name, as notes shorten it.
        for name in r.companies.iter().chain(&r.counterparties) {
            let lead = name
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .trim_end_matches(',');
            if lead.chars().count() >= 4
                && !GENERIC_WORDS.contains(&lead.to_lowercase().as_str())
                && lead.chars().next().is_some_and(char::is_uppercase)
            {
                for (pos, _) in out.match_indices(lead) {
                    let before = out[..pos].chars().next_back();
                    let after = out[pos + lead.len()..].chars().next();
                    if !before.is_some_and(char::is_alphanumeric)
                        && !after.is_some_and(char::is_alphanumeric)
                    {
                        found.push(format!("lead word {lead:?}"));
                    }
                }
            }
        }
        // Each name part of 3+ letters, capitalised.
        for person in &r.people {
            for part in person.split([' ', '-']) {
                let part = part.trim_matches(|c: char| !c.is_alphabetic());
                if part.chars().count() >= 3 && !["Mrs", "Prof"].contains(&part) {
                    for (pos, _) in out.match_indices(part) {
                        let before = out[..pos].chars().next_back();
                        let after = out[pos + part.len()..].chars().next();
                        if !before.is_some_and(char::is_alphanumeric)
                            && !after.is_some_and(char::is_alphanumeric)
                        {
                            found.push(format!("name part {part:?}"));
                        }
                    }
                }
            }
        }
        let chars: Vec<char> = out.chars().collect();
        for (i, c) in chars.iter().enumerate() {
            // '@' with a dot somewhere after it in the same token.
            if *c == '@' {
                let token: String = chars[i + 1..]
                    .iter()
                    .take_while(|c| !c.is_whitespace())
                    .collect();
                if token.trim_end_matches(['.', ',', ')', ';']).contains('.') {
                    found.push(format!("email near {i}"));
                }
            }
            // A currency symbol followed by a digit (spaces allowed).
            if "$£€¥".contains(*c) {
                let next = chars[i + 1..].iter().find(|c| **c != ' ');
                if next.is_some_and(char::is_ascii_digit) {
                    found.push(format!("currency near {i}"));
                }
            }
        }
        // 7+ digits, ignoring the separators phones use.
        let mut run = 0;
        for c in &chars {
            if c.is_ascii_digit() {
                run += 1;
                if run == 7 {
                    found.push("7+ digits".into());
                }
            } else if !" -.()+".contains(*c) {
                run = 0;
            }
        }
        // YYYY-MM-DD, and numeric d/m/y.
        let bytes: Vec<char> = chars.clone();
        for w in bytes.windows(10) {
            let d = |k: usize| w[k].is_ascii_digit();
            if d(0)
                && d(1)
                && d(2)
                && d(3)
                && w[4] == '-'
                && d(5)
                && d(6)
                && w[7] == '-'
                && d(8)
                && d(9)
            {
                found.push("YYYY-MM-DD".into());
            }
        }
        for token in out.split_whitespace() {
            let t = token.trim_matches(|c: char| !c.is_ascii_digit());
            let parts: Vec<&str> = t.split(['/', '.']).collect();
            if parts.len() == 3
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
                && parts[2].len() >= 2
            {
                found.push(format!("numeric date {token}"));
            }
        }
        // A month name followed by a number, or a number followed by one.
        let words: Vec<&str> = out
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|w| !w.is_empty())
            .collect();
        let months = [
            "January",
            "February",
            "March",
            "April",
            "May",
            "June",
            "July",
            "August",
            "September",
            "October",
            "November",
            "December",
            "Jan",
            "Feb",
            "Mar",
            "Apr",
            "Jun",
            "Jul",
            "Aug",
            "Sep",
            "Sept",
            "Oct",
            "Nov",
            "Dec",
        ];
        let is_month = |w: &str| months.contains(&w.trim_end_matches('.'));
        let starts_with_digit = |w: &str| w.chars().next().is_some_and(|c| c.is_ascii_digit());
        for pair in words.windows(2) {
            if (is_month(pair[0]) && starts_with_digit(pair[1]))
                || (starts_with_digit(pair[0]) && is_month(pair[1]))
            {
                found.push(format!("date {} {}", pair[0], pair[1]));
            }
        }
        // Money words after a number.
        for pair in words.windows(2) {
            let money = [
                "million", "billion", "dollars", "euros", "pounds", "USD", "EUR", "GBP",
            ];
            if starts_with_digit(pair[0]) && money.contains(&pair[1]) {
                found.push(format!("amount {} {}", pair[0], pair[1]));
            }
        }
        found
    }

    /// Detectors for what no list names, written as regular expressions,
    /// apart from the scanners: each unlisted name or number of the note
    /// (whole, any case), IBANs, emails, phone-like digit groups, money,
    /// six digits in a row, and a number after an account word.
    fn unlisted_leaks(out: &str, unlisted: &[String]) -> Vec<String> {
        use regex::Regex;
        let mut found = Vec::new();
        for u in unlisted {
            let re =
                Regex::new(&format!(r"(?i)(^|[^\w]){}($|[^\w])", regex::escape(u))).expect("regex");
            if re.is_match(out) {
                found.push(format!("unlisted {u:?}"));
            }
        }
        let patterns = [
            ("iban", r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b"),
            // A part of one: country, check digits and the first group.
            ("iban part", r"\b[A-Z]{2}[0-9]{2}[ ]?[A-Z0-9]{4}"),
            ("email", r"[\w.+-]+@[\w-]+\.[\w.-]+"),
            ("phone", r"\+?\(?[0-9][0-9 ().-]{6,}[0-9]"),
            (
                "money",
                r"[$£€¥][ ]?[0-9]|(?i)\b(?:usd|eur|gbp|chf)[ ]?[0-9]|[0-9][0-9,.]*[ ]?(?:USD|EUR|GBP|million|billion|bn\b)",
            ),
            ("digits", r"[0-9]{6,}"),
            (
                "account",
                r"(?i)\b(?:account|acct|iban)\b[^A-Za-z0-9]{0,6}(?:no\.?[^A-Za-z0-9]{0,3})?[A-Z0-9-]*[0-9]{4,}",
            ),
        ];
        for (what, p) in patterns {
            for m in Regex::new(p).expect("regex").find_iter(out) {
                found.push(format!("{what} {:?}", m.as_str()));
            }
        }
        found
    }

    #[test]
    fn corpus_has_zero_leaks() {
        let notes = corpus();
        assert!(notes.len() >= 37, "only {} notes", notes.len());
        let mut failures = Vec::new();
        let mut count = 0;
        for note in &notes {
            assert!(
                !leaks(&note.text, &note.redactions).is_empty(),
                "{}: the detectors find nothing even before anonymising",
                note.title
            );
            for u in &note.unlisted {
                assert!(
                    !unlisted_leaks(&note.text, std::slice::from_ref(u)).is_empty(),
                    "{}: {u:?} is not in the note",
                    note.title
                );
                assert!(
                    !note.redactions.people.contains(u)
                        && !note.redactions.counterparties.contains(u),
                    "{}: {u:?} is listed",
                    note.title
                );
            }
            let out = anonymise(&note.text, &note.redactions);
            let found: Vec<String> = leaks(&out, &note.redactions)
                .into_iter()
                .chain(unlisted_leaks(&out, &note.unlisted))
                .collect();
            count += found.len();
            for leak in found {
                failures.push(format!("{}: {leak}\n{out}", note.title));
            }
            for word in &note.keep {
                if !out.to_lowercase().contains(&word.to_lowercase()) {
                    failures.push(format!("{}: lost {word:?}\n{out}", note.title));
                }
            }
            // Each kind of placeholder the note needs shows up.
            for p in ["[PERSON]", "[COMPANY]"] {
                if !out.contains(p) {
                    failures.push(format!("{}: no {p}\n{out}", note.title));
                }
            }
        }
        println!("corpus: {} notes, {count} leaks", notes.len());
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }

    // ---- properties ----

    fn tricky_text() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            prop::sample::select(vec![
                "Jane",
                "Roe",
                "Jane Roe",
                "jane",
                "Acme",
                "ACME Holdings",
                "acme-ops",
                "Globex",
                "3M",
                "$",
                "£",
                "€",
                "4.2",
                "M",
                "million",
                "dollars",
                "USD",
                "2024",
                "-",
                "01",
                "15",
                "/",
                ".",
                ",",
                "January",
                "Jan",
                "March",
                "3rd",
                "of",
                "+1",
                "(555)",
                "010",
                "2233",
                "@",
                "jane.roe",
                "acme.com",
                "[PERSON]",
                "[DATE",
                "]",
                "[",
                " ",
                "\n",
                "é",
                "İ",
                "ß",
                "日本",
                "🙂",
                "\u{2019}",
                "T",
                "10:30",
            ])
            .prop_map(str::to_owned),
            "\\PC{0,4}",
        ];
        prop::collection::vec(token, 0..24).prop_map(|t| t.concat())
    }

    proptest! {
        #[test]
        fn anonymise_is_idempotent_on_tricky_text(text in tricky_text()) {
            let once = anonymise(&text, &acme());
            prop_assert_eq!(anonymise(&once, &acme()), once);
        }

        #[test]
        fn anonymise_is_idempotent_and_total_on_any_text(
            text in "\\PC{0,200}",
            name in "\\PC{0,12}",
        ) {
            let r = Redactions {
                companies: vec![name.clone()],
                people: vec![name.clone(), "Jane Roe".into()],
                counterparties: vec![name],
            };
            let once = anonymise(&text, &r);
            prop_assert_eq!(anonymise(&once, &r), once);
        }

        #[test]
        fn listed_entities_never_survive(
            first in "[A-Z][a-z]{2,8}",
            last in "[A-Z][a-z]{2,8}",
            pre in "[a-z ]{0,10}",
            post in "[a-z ]{0,10}",
        ) {
            // "Jr", "Iii" after a name are suffixes, not names.
            prop_assume!(!SUFFIXES.contains(&last.to_lowercase().as_str()));
            let name = format!("{first} {last}");
            let r = Redactions { people: vec![name.clone()], ..Redactions::default() };
            let out = anonymise(&format!("{pre} {name}, {post} {last}."), &r);
            prop_assert!(!out.contains(&name) && !out.contains(&last), "{}", out);
        }
    }
}
