//! The times a text speaks of: "7 May 2023", "October 13, 2023",
//! "May 2023", "2023", "in June", and relative ones ("yesterday", "last
//! week", "two days ago", "last Tuesday", "the past month"), each as a
//! window of time, relative ones resolved against the moment the text was
//! said (`at`: when a question is asked, when a memory occurred). Search
//! uses them to favour memories that happened, or say something happened,
//! when a question asks about. Pure: the time is handed in.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc, Weekday};

/// A span of time, `from` inclusive, `until` exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    pub from: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

impl TimeWindow {
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.from <= t && t < self.until
    }

    pub fn overlaps(&self, other: &TimeWindow) -> bool {
        self.from < other.until && other.from < self.until
    }

    fn days(from: NaiveDate, days: i64) -> Option<TimeWindow> {
        let from = Utc.from_utc_datetime(&from.and_hms_opt(0, 0, 0)?);
        Some(TimeWindow {
            from,
            until: from + Duration::days(days.max(1)),
        })
    }

    fn month(year: i32, month: u32) -> Option<TimeWindow> {
        let first = NaiveDate::from_ymd_opt(year, month, 1)?;
        let next = if month == 12 {
            NaiveDate::from_ymd_opt(year + 1, 1, 1)?
        } else {
            NaiveDate::from_ymd_opt(year, month + 1, 1)?
        };
        Self::days(first, (next - first).num_days())
    }

    fn year(year: i32) -> Option<TimeWindow> {
        let first = NaiveDate::from_ymd_opt(year, 1, 1)?;
        let next = NaiveDate::from_ymd_opt(year + 1, 1, 1)?;
        Self::days(first, (next - first).num_days())
    }

    /// From `from` days before `at`'s day to `until` days before it (the
    /// latter exclusive); negative counts lie after it.
    fn around(at: NaiveDate, from_days_back: i64, until_days_back: i64) -> Option<TimeWindow> {
        let first = at.checked_sub_signed(Duration::days(from_days_back))?;
        Self::days(first, from_days_back - until_days_back)
    }
}

/// Years a bare four-digit number counts as: a calendar year, not an
/// amount.
const YEARS: std::ops::RangeInclusive<i64> = 1900..=2100;

/// The windows of time `text` names, relative phrases resolved against
/// `at`, in the order they appear. A phrase names one window; the same
/// window twice is listed once.
pub fn windows_in(text: &str, at: DateTime<Utc>) -> Vec<TimeWindow> {
    let words = words(text);
    let today = at.date_naive();
    let mut out: Vec<TimeWindow> = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let (found, used) = absolute(&words, i, today)
            .or_else(|| relative(&words, i, today))
            .unwrap_or((None, 1));
        if let Some(w) = found.filter(|w| !out.contains(w)) {
            out.push(w);
        }
        i += used.max(1);
    }
    out
}

/// Whether a memory speaks of a time in `windows`: it occurred in one, or
/// its text names a time (resolved against when it occurred) that overlaps
/// one.
pub fn speaks_of(windows: &[TimeWindow], occurred_at: DateTime<Utc>, text: &str) -> bool {
    windows.iter().any(|w| w.contains(occurred_at))
        || windows_in(text, occurred_at)
            .iter()
            .any(|m| windows.iter().any(|w| w.overlaps(m)))
}

/// Lower-cased words of letters and digits; an ordinal's suffix goes
/// ("13th" is "13").
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            let w = w.to_lowercase();
            let digits = w.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            let suffix = &w[digits.len()..];
            if !digits.is_empty()
                && digits.chars().all(|c| c.is_ascii_digit())
                && matches!(suffix, "st" | "nd" | "rd" | "th")
            {
                digits.to_owned()
            } else {
                w
            }
        })
        .collect()
}

/// The months' English names, lower case, January first.
pub const MONTHS: [&str; 12] = [
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

fn month_of(w: &str) -> Option<u32> {
    if let Some(i) = MONTHS.iter().position(|n| *n == w) {
        return u32::try_from(i + 1).ok();
    }
    // Abbreviations, but not "mar" or "may" (words of their own).
    const SHORT: [(&str, u32); 9] = [
        ("jan", 1),
        ("feb", 2),
        ("apr", 4),
        ("jun", 6),
        ("jul", 7),
        ("aug", 8),
        ("sep", 9),
        ("sept", 9),
        ("oct", 10),
    ];
    let short = SHORT.iter().find(|(n, _)| *n == w).map(|(_, m)| *m);
    short.or(match w {
        "nov" => Some(11),
        "dec" => Some(12),
        _ => None,
    })
}

fn number(w: &str) -> Option<i64> {
    if let Ok(n) = w.parse::<i64>() {
        return Some(n);
    }
    Some(match w {
        "a" | "an" | "one" => 1,
        "two" | "couple" => 2,
        "three" | "few" => 3,
        "four" => 4,
        "five" => 5,
        "six" => 6,
        "seven" => 7,
        "eight" => 8,
        "nine" => 9,
        "ten" => 10,
        "eleven" => 11,
        "twelve" => 12,
        _ => return None,
    })
}

fn day_of_month(w: Option<&String>) -> Option<u32> {
    let d = w?.parse::<u32>().ok()?;
    (1..=31).contains(&d).then_some(d)
}

fn year_of(w: Option<&String>) -> Option<i32> {
    let w = w?;
    let y = w.parse::<i64>().ok().filter(|y| YEARS.contains(y))?;
    (w.len() == 4).then(|| i32::try_from(y).ok()).flatten()
}

/// Words that say a lone month name is a month ("in May", "since March"),
/// where "may", "march" and the short forms ("Jan") could be other words.
const MONTH_CUES: [&str; 15] = [
    "in", "during", "since", "early", "late", "mid", "of", "last", "this", "next", "until",
    "before", "after", "from", "by",
];

/// A date, a month or a year at `words[i]`; the window and the words used.
fn absolute(words: &[String], i: usize, today: NaiveDate) -> Option<(Option<TimeWindow>, usize)> {
    let w = &words[i];
    // "7 May 2023", "7 May", "7th of May, 2023".
    if let Some(d) = day_of_month(Some(w)) {
        let of = usize::from(words.get(i + 1).is_some_and(|x| x == "of"));
        if let Some(m) = words.get(i + 1 + of).and_then(|x| month_of(x)) {
            let year = year_of(words.get(i + 2 + of));
            let y = year.unwrap_or_else(|| latest_year(today, m, d));
            let used = 2 + of + usize::from(year.is_some());
            return Some((day(y, m, d), used));
        }
    }
    if let Some(m) = month_of(w) {
        let next = words.get(i + 1);
        // "October 13, 2023", "May 7".
        if let Some(d) = day_of_month(next) {
            let year = year_of(words.get(i + 2));
            let y = year.unwrap_or_else(|| latest_year(today, m, d));
            return Some((day(y, m, d), 2 + usize::from(year.is_some())));
        }
        // "May 2023".
        if let Some(y) = year_of(next) {
            return Some((TimeWindow::month(y, m), 2));
        }
        // "in June", "last May": the latest such month up to today's.
        let cue = i
            .checked_sub(1)
            .and_then(|p| words.get(p))
            .is_some_and(|p| MONTH_CUES.contains(&p.as_str()));
        let plain = w.len() > 4 || matches!(w.as_str(), "june" | "july");
        if cue || (plain && w != "march") {
            let y = if m <= today.month() {
                today.year()
            } else {
                today.year() - 1
            };
            return Some((TimeWindow::month(y, m), 1));
        }
        return None;
    }
    if let Some(y) = year_of(Some(w)) {
        return Some((TimeWindow::year(y), 1));
    }
    None
}

fn day(y: i32, m: u32, d: u32) -> Option<TimeWindow> {
    TimeWindow::days(NaiveDate::from_ymd_opt(y, m, d)?, 1)
}

/// The year of the latest `d` `m` on or before `today` (a date said
/// without its year is the last one).
fn latest_year(today: NaiveDate, m: u32, d: u32) -> i32 {
    if (m, d) <= (today.month(), today.day()) {
        today.year()
    } else {
        today.year() - 1
    }
}

fn weekday_of(w: &str) -> Option<Weekday> {
    Some(match w {
        "monday" => Weekday::Mon,
        "tuesday" => Weekday::Tue,
        "wednesday" => Weekday::Wed,
        "thursday" => Weekday::Thu,
        "friday" => Weekday::Fri,
        "saturday" => Weekday::Sat,
        "sunday" => Weekday::Sun,
        _ => return None,
    })
}

/// A phrase relative to `today` at `words[i]`; the window and the words
/// used.
fn relative(words: &[String], i: usize, today: NaiveDate) -> Option<(Option<TimeWindow>, usize)> {
    let w = words[i].as_str();
    let next = words.get(i + 1).map(String::as_str);
    match w {
        "today" | "tonight" => return Some((TimeWindow::around(today, 0, -1), 1)),
        "yesterday" => return Some((TimeWindow::around(today, 1, 0), 1)),
        "tomorrow" => return Some((TimeWindow::around(today, -1, -2), 1)),
        _ => {}
    }
    // "two days ago", "a few weeks ago", "a couple of months ago".
    if let Some(n) = number(w) {
        let mut j = i + 1;
        if matches!(words.get(j).map(String::as_str), Some("few" | "couple")) {
            j += 1;
        }
        let n = if j > i + 1 { number(&words[j - 1])? } else { n };
        if words.get(j).is_some_and(|x| x == "of") {
            j += 1;
        }
        let unit = words.get(j).map(String::as_str);
        if words.get(j + 1).is_some_and(|x| x == "ago") {
            return Some((ago(today, n, unit?)?, j + 2 - i));
        }
        return None;
    }
    // "last week", "the past month", "last Tuesday", "next year".
    let step: i64 = match w {
        "last" | "past" | "previous" => -1,
        "this" => 0,
        "next" | "coming" => 1,
        _ => return None,
    };
    let unit = next?;
    // "the past 3 weeks", "the last two months", "the past month": up to
    // today.
    if step == -1
        && let Some(n) = number(unit)
    {
        let span = words.get(i + 2).and_then(|u| unit_days(u))?;
        return Some((TimeWindow::around(today, n * span, -1), 3));
    }
    if w == "past"
        && let Some(span) = unit_days(unit)
    {
        return Some((TimeWindow::around(today, span, -1), 2));
    }
    let window = match unit {
        "night" if step == -1 => TimeWindow::around(today, 1, 0),
        "week" => match step {
            // The week before this one, a day either side.
            -1 => TimeWindow::around(today, week_day(today) + 8, week_day(today) - 1),
            0 => TimeWindow::around(today, week_day(today), week_day(today) - 7),
            _ => TimeWindow::around(today, week_day(today) - 7, week_day(today) - 14),
        },
        "weekend" => {
            // The Saturday and Sunday, a day either side.
            let to_sat = (week_day(today) - 5).rem_euclid(7);
            let sat_back = match step {
                -1 if to_sat == 0 => 7,
                -1 => to_sat,
                0 if to_sat <= 1 => to_sat,
                _ => to_sat - 7,
            };
            TimeWindow::around(today, sat_back + 1, sat_back - 3)
        }
        "month" => {
            let (y, m) = shift_month(today.year(), today.month(), step);
            TimeWindow::month(y, m)
        }
        "year" => TimeWindow::year(today.year() + i32::try_from(step).ok()?),
        _ => {
            let wd = weekday_of(unit)?;
            let back = (today.weekday().num_days_from_monday() as i64
                - wd.num_days_from_monday() as i64)
                .rem_euclid(7);
            let back = match step {
                -1 if back == 0 => 7,
                1 => back - 7,
                _ => back,
            };
            TimeWindow::around(today, back, back - 1)
        }
    };
    Some((window, 2))
}

/// Days since this week's Monday.
fn week_day(today: NaiveDate) -> i64 {
    i64::from(today.weekday().num_days_from_monday())
}

fn unit_days(unit: &str) -> Option<i64> {
    Some(match unit.trim_end_matches('s') {
        "day" => 1,
        "week" => 7,
        "month" => 31,
        "year" => 366,
        _ => return None,
    })
}

/// `n` `unit`s before `today`: the day (a day either side), the week (half
/// a week either side), the calendar month or year.
fn ago(today: NaiveDate, n: i64, unit: &str) -> Option<Option<TimeWindow>> {
    Some(match unit.trim_end_matches('s') {
        "day" => TimeWindow::around(today, n + 1, n - 2),
        "week" => TimeWindow::around(today, 7 * n + 4, 7 * n - 4),
        "month" => {
            let (y, m) = shift_month(today.year(), today.month(), -n);
            TimeWindow::month(y, m)
        }
        "year" => TimeWindow::year(today.year() - i32::try_from(n).ok()?),
        _ => return None,
    })
}

fn shift_month(year: i32, month: u32, by: i64) -> (i32, u32) {
    let index = i64::from(year) * 12 + i64::from(month) - 1 + by;
    let y = i32::try_from(index.div_euclid(12)).unwrap_or(year);
    let m = u32::try_from(index.rem_euclid(12) + 1).unwrap_or(month);
    (y, m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    /// The windows as `first day..last day` strings.
    fn spans(text: &str, now: &str) -> Vec<String> {
        windows_in(text, at(now))
            .iter()
            .map(|w| {
                format!(
                    "{}..{}",
                    w.from.format("%Y-%m-%d"),
                    (w.until - Duration::days(1)).format("%Y-%m-%d")
                )
            })
            .collect()
    }

    const NOW: &str = "2023-08-16T10:00:00Z"; // a Wednesday

    #[test]
    fn absolute_dates_months_and_years() {
        for (text, want) in [
            ("What did Maria do on 7 May 2023?", "2023-05-07..2023-05-07"),
            ("on 7 May, 2023", "2023-05-07..2023-05-07"),
            ("on October 13, 2023", "2023-10-13..2023-10-13"),
            ("on the 3rd of June, 2022", "2022-06-03..2022-06-03"),
            ("on May 23rd", "2023-05-23..2023-05-23"),
            ("What setback in October 2023?", "2023-10-01..2023-10-31"),
            ("in February, 2024", "2024-02-01..2024-02-29"),
            ("How many times in 2022?", "2022-01-01..2022-12-31"),
            // A month without its year is the latest one up to now.
            ("camping in June", "2023-06-01..2023-06-30"),
            ("in the month of November", "2022-11-01..2022-11-30"),
            ("since March", "2023-03-01..2023-03-31"),
        ] {
            assert_eq!(spans(text, NOW), vec![want.to_owned()], "{text}");
        }
    }

    #[test]
    fn words_that_only_look_like_dates_are_not() {
        for text in [
            "May I ask what you did?",
            "The march was long.",
            "We paid $1500 for 3 tickets.",
            "He is 30 years old and has 12 cats.",
            "",
        ] {
            assert_eq!(spans(text, NOW), Vec::<String>::new(), "{text}");
        }
    }

    #[test]
    fn relative_phrases_resolve_against_when_they_were_said() {
        for (text, want) in [
            ("yesterday", "2023-08-15..2023-08-15"),
            ("today", "2023-08-16..2023-08-16"),
            ("last night", "2023-08-15..2023-08-15"),
            ("two days ago", "2023-08-13..2023-08-15"),
            ("5 days ago", "2023-08-10..2023-08-12"),
            ("four weeks ago", "2023-07-15..2023-07-22"),
            ("a few months ago", "2023-05-01..2023-05-31"),
            ("a couple of years ago", "2021-01-01..2021-12-31"),
            // The week before this one (Mon 7 to Sun 13 August), a day
            // either side.
            ("last week", "2023-08-06..2023-08-14"),
            ("last weekend", "2023-08-11..2023-08-14"),
            ("last Tuesday", "2023-08-15..2023-08-15"),
            ("last Wednesday", "2023-08-09..2023-08-09"),
            ("last month", "2023-07-01..2023-07-31"),
            ("last year", "2022-01-01..2022-12-31"),
            ("next month", "2023-09-01..2023-09-30"),
            ("in the past month", "2023-07-16..2023-08-16"),
            ("over the past 2 weeks", "2023-08-02..2023-08-16"),
        ] {
            assert_eq!(spans(text, NOW), vec![want.to_owned()], "{text}");
        }
    }

    #[test]
    fn a_memory_speaks_of_when_it_happened_and_of_the_times_it_names() {
        let asked = windows_in("What did Mel do in July 2023?", at(NOW));
        // Happened then.
        assert!(speaks_of(&asked, at("2023-07-20T12:00:00Z"), "We painted."));
        // Said a week later about "last week".
        assert!(speaks_of(
            &asked,
            at("2023-08-03T12:00:00Z"),
            "Last week we painted a sunset."
        ));
        // Neither.
        assert!(!speaks_of(
            &asked,
            at("2023-08-20T12:00:00Z"),
            "We painted yesterday."
        ));
        // A question that names no time: nothing speaks of it.
        assert!(!speaks_of(&[], at(NOW), "in July 2023"));
    }
}
