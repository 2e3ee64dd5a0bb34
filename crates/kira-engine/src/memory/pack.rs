//! Fitting a context pack to its token budget: the pure part of
//! `Memories::context`. Candidates arrive per section, best first; the pack
//! takes them section by section, each section up to its share of the
//! budget, then hands what is left over first to the relevance hits that
//! did not fit, most relevant first, whatever their section, then to the
//! rest, in section order. Tokens are counted with cl100k (tiktoken) on the exact
//! text an agent is shown, section headings included, so the pack never
//! exceeds its budget.

use std::collections::{HashMap, HashSet};

use kira_core::memory::Layer;
use serde::Serialize;
use utoipa::ToSchema;

/// The parts of a context pack, in the order an agent reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    /// The company's most recent and most important memories.
    Hot,
    /// Memories of the task's workstream or matching its text.
    Warm,
    /// The best search hits for the task text among older memories.
    Cold,
    /// Shared knowledge base entries.
    Knowledge,
    /// Anonymised items from other companies, where a sharing rule allows.
    Shared,
}

impl Section {
    pub const ALL: [Section; 5] = [
        Section::Hot,
        Section::Warm,
        Section::Cold,
        Section::Knowledge,
        Section::Shared,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Section::Hot => "hot",
            Section::Warm => "warm",
            Section::Cold => "cold",
            Section::Knowledge => "knowledge",
            Section::Shared => "shared",
        }
    }

    fn heading(self) -> &'static str {
        match self {
            Section::Hot => "## Recent and important",
            Section::Warm => "## Related to this task",
            Section::Cold => "## From further back",
            Section::Knowledge => "## Shared knowledge",
            Section::Shared => "## From other companies (anonymised)",
        }
    }
}

/// Fractions of the budget each section may take before the leftover pass.
/// They need not sum to 1: a section's unused share goes to the others.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shares {
    pub hot: f64,
    pub warm: f64,
    pub cold: f64,
    pub knowledge: f64,
    pub shared: f64,
}

impl Default for Shares {
    fn default() -> Self {
        Self {
            hot: 0.25,
            warm: 0.35,
            cold: 0.25,
            knowledge: 0.10,
            shared: 0.05,
        }
    }
}

impl Shares {
    fn raw(&self, s: Section) -> f64 {
        match s {
            Section::Hot => self.hot,
            Section::Warm => self.warm,
            Section::Cold => self.cold,
            Section::Knowledge => self.knowledge,
            Section::Shared => self.shared,
        }
    }

    fn of(&self, s: Section) -> f64 {
        let v = self.raw(s);
        if v.is_finite() {
            v.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    pub fn validate(&self) -> Result<(), kira_core::ValidationError> {
        for s in Section::ALL {
            if !(0.0..=1.0).contains(&self.raw(s)) {
                return Err(kira_core::ValidationError::new(
                    format!("context.shares.{}", s.as_str()),
                    "must be between 0 and 1",
                ));
            }
        }
        Ok(())
    }
}

/// Something that may go into a pack.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// A memory id, `kb:<id>` for knowledge, `shared:<company-free id>`.
    pub id: String,
    pub layer: Option<Layer>,
    pub score: f64,
    /// The line an agent is shown.
    pub text: String,
    /// What the line is shown under, once for all the section's items that
    /// share it (a memory's date and kind); None: the line stands alone.
    pub group: Option<String>,
}

/// An item in a pack, with where it came from and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PackItem {
    pub section: Section,
    pub id: String,
    pub layer: Option<Layer>,
    pub score: f64,
    /// Its line's tokens, newline included; the section's heading and the
    /// group's line, each shown once, are counted in the pack's `tokens`.
    pub tokens: usize,
    pub text: String,
    /// The group line the item is shown under (a memory's date and kind:
    /// `2023-05-08 note/general`), shared with the section's other items
    /// of that group; None for an item that stands alone.
    pub group: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ContextPack {
    pub budget: usize,
    /// Tokens of `render()`, never above `budget`.
    pub tokens: usize,
    pub items: Vec<PackItem>,
    /// Candidates that were offered and left out (no room, or duplicates).
    pub left_out: usize,
}

impl ContextPack {
    /// What an agent is shown: each non-empty section's heading, then its
    /// items, one per line, those of one group under one line naming it.
    pub fn render(&self) -> String {
        render(&self.items)
    }

    pub fn section(&self, s: Section) -> impl Iterator<Item = &PackItem> {
        self.items.iter().filter(move |i| i.section == s)
    }
}

fn render(items: &[PackItem]) -> String {
    let mut out = String::new();
    let mut current = None;
    for s in Section::ALL {
        let mut group: Option<&str> = None;
        for item in items.iter().filter(|i| i.section == s) {
            if current != Some(s) {
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(s.heading());
                out.push('\n');
                current = Some(s);
            }
            if item.group.as_deref() != group {
                if let Some(g) = item.group.as_deref() {
                    out.push_str(&group_line(g));
                    out.push('\n');
                }
                group = item.group.as_deref();
            }
            out.push_str(&item.text);
            out.push('\n');
        }
    }
    out
}

/// What a line costs in a pack: its tokens with its newline, counted
/// together since BPE often merges them (".\n", "]\n"); counted apart, a
/// LoCoMo pack of day lines overcounted a tenth and stopped short of its
/// budget.
fn line_cost(line: &str, count: &dyn Fn(&str) -> usize) -> usize {
    count(&format!("{line}\n"))
}

/// The line a group's items are shown under.
fn group_line(group: &str) -> String {
    format!("[{group}]")
}

/// `items` (in section order, best first) with each section's items of one
/// group together, where the group's best item was: the best item still
/// leads, and a group's line is shown once.
fn grouped(items: Vec<PackItem>) -> Vec<PackItem> {
    let mut place: HashMap<(Section, String), usize> = HashMap::new();
    let mut slots: Vec<Vec<PackItem>> = Vec::with_capacity(items.len());
    for item in items {
        let Some(g) = &item.group else {
            slots.push(vec![item]);
            continue;
        };
        match place.get(&(item.section, g.clone())) {
            Some(&i) => slots[i].push(item),
            None => {
                place.insert((item.section, g.clone()), slots.len());
                slots.push(vec![item]);
            }
        }
    }
    slots.into_iter().flatten().collect()
}

/// Tokens of `text` in cl100k, the encoding of GPT-4-class models and a
/// close stand-in for the others.
pub fn count_tokens(text: &str) -> usize {
    tiktoken_rs::cl100k_base_singleton().count_ordinary(text)
}

/// Loads cl100k's tables, which the first count otherwise pays for (a
/// fifth of a second in a release build, more in debug): the engine calls
/// it in the background at start ([`warm_up_in_background`]), a benchmark
/// before it times anything.
pub fn warm_up() {
    count_tokens("warm up");
}

/// [`warm_up`] on a thread of its own, once per process, so starting an
/// engine does not wait for it; a pack that comes first waits for the
/// load instead of doing it again.
pub fn warm_up_in_background() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("kira-warm-up".into())
            .spawn(warm_up);
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no warm-up thread; the first context pack loads cl100k");
        }
    });
}

/// Builds the pack. `candidates` are per section, each list best first; an
/// id or text already taken by an earlier section (or earlier in the same
/// list) is a duplicate and left out. `relevance` holds, by id, how
/// relevant to the task the candidates a search found are (in [0, 1]): the
/// budget a section leaves unused goes to them first.
pub fn fit(
    candidates: Vec<(Section, Vec<Candidate>)>,
    relevance: &HashMap<String, f64>,
    budget: usize,
    shares: &Shares,
    count: &dyn Fn(&str) -> usize,
) -> ContextPack {
    fit_for_task(candidates, relevance, budget, shares, None, count)
}

/// The candidates in section order, each with its cost (the line and its
/// newline) counted once, without an id or text an earlier one had; and how
/// many were offered.
#[allow(clippy::type_complexity)]
fn deduplicated(
    candidates: Vec<(Section, Vec<Candidate>)>,
    count: &dyn Fn(&str) -> usize,
) -> (usize, Vec<(Section, Vec<(Candidate, usize)>)>) {
    let mut offered = 0usize;
    let mut seen_ids: HashSet<String> = HashSet::new();
    let mut seen_texts: HashSet<String> = HashSet::new();
    let mut lists = Vec::new();
    let mut sorted = candidates;
    sorted.sort_by_key(|(s, _)| *s);
    for (section, list) in sorted {
        let mut kept = Vec::new();
        for c in list {
            offered += 1;
            let text_key = c.text.trim().to_lowercase();
            if !seen_ids.insert(c.id.clone()) || !seen_texts.insert(text_key) {
                continue;
            }
            let cost = line_cost(&c.text, count);
            kept.push((c, cost));
        }
        lists.push((section, kept));
    }
    (offered, lists)
}

/// How a pack for a task treats the hot and warm items that are not about
/// it: those no search found, or found with a relevance (in [0, 1], 1 the
/// best hit) below `below`, take their section's share only up to `items`
/// each (the first ones, by recency and importance), so the recent context
/// stays in view without crowding out what the task is about; the others
/// wait for what is left after the relevance hits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Background {
    pub items: usize,
    pub below: f64,
}

/// [`fit`] for a task with a text to be relevant to (see [`Background`]);
/// `None` lets every item take its section's share.
pub fn fit_for_task(
    candidates: Vec<(Section, Vec<Candidate>)>,
    relevance: &HashMap<String, f64>,
    budget: usize,
    shares: &Shares,
    background: Option<Background>,
    count: &dyn Fn(&str) -> usize,
) -> ContextPack {
    let (offered, lists) = deduplicated(candidates, count);

    let heading_cost = |s: Section| count(s.heading()) + 2;
    let mut used = 0usize;
    let mut taken: Vec<Vec<bool>> = lists.iter().map(|(_, l)| vec![false; l.len()]).collect();
    let mut opened: HashSet<Section> = HashSet::new();
    // Groups whose line is paid for, by section.
    let mut opened_groups: HashSet<(Section, &str)> = HashSet::new();

    // Pass 1: each section within its share, best first.
    let mut pass1 = Vec::new();
    for (li, (_, list)) in lists.iter().enumerate() {
        pass1.extend((0..list.len()).map(|ci| (li, ci)));
    }
    // Pass 2: the leftover to relevance hits, most relevant first.
    let mut pass2: Vec<(usize, usize, f64)> = Vec::new();
    for (li, (_, list)) in lists.iter().enumerate() {
        for (ci, (c, _)) in list.iter().enumerate() {
            if let Some(r) = relevance.get(&c.id) {
                pass2.push((li, ci, *r));
            }
        }
    }
    // Stable: equal relevance keeps section order.
    pass2.sort_by(|a, b| b.2.total_cmp(&a.2));
    let pass2: Vec<(usize, usize)> = pass2.into_iter().map(|(li, ci, _)| (li, ci)).collect();
    // Pass 3: what is still left, in section order.
    let pass3 = pass1.clone();

    let mut section_used = vec![0usize; lists.len()];
    let mut unrelated = vec![0usize; lists.len()];
    for (pass, order) in [pass1, pass2, pass3].into_iter().enumerate() {
        for (li, ci) in order {
            if taken[li][ci] {
                continue;
            }
            let (section, list) = &lists[li];
            let in_background = matches!(section, Section::Hot | Section::Warm)
                && background
                    .is_some_and(|b| relevance.get(&list[ci].0.id).is_none_or(|r| *r < b.below));
            if pass == 0 && in_background && background.is_some_and(|b| unrelated[li] >= b.items) {
                continue;
            }
            let mut extra = if opened.contains(section) {
                0
            } else {
                heading_cost(*section)
            };
            let group = list[ci].0.group.as_deref().map(|g| (*section, g));
            if let Some(g) = group.filter(|g| !opened_groups.contains(g)) {
                extra += line_cost(&group_line(g.1), count);
            }
            let need = list[ci].1 + extra;
            let fits_share = pass > 0 || {
                let cap = ((budget as f64) * shares.of(*section)).floor() as usize;
                section_used[li] + need <= cap
            };
            if fits_share && used + need <= budget {
                if in_background {
                    unrelated[li] += 1;
                }
                taken[li][ci] = true;
                opened.insert(*section);
                if let Some(g) = group {
                    opened_groups.insert(g);
                }
                used += need;
                section_used[li] += need;
            }
        }
    }

    let mut items = Vec::new();
    for (li, (section, list)) in lists.into_iter().enumerate() {
        for (ci, (c, cost)) in list.into_iter().enumerate() {
            if taken[li][ci] {
                items.push(PackItem {
                    section,
                    id: c.id,
                    layer: c.layer,
                    score: c.score,
                    tokens: cost,
                    text: c.text,
                    group: c.group,
                });
            }
        }
    }
    let mut items = grouped(items);
    // Costs were counted per piece; BPE merges only shorten the whole, but
    // the guarantee is the rendered text's count, so check it.
    let mut tokens = count(&render(&items));
    while tokens > budget {
        items.pop();
        tokens = count(&render(&items));
    }
    let left_out = offered - items.len();
    ContextPack {
        budget,
        tokens,
        items,
        left_out,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cand(id: &str, text: &str, score: f64) -> Candidate {
        Candidate {
            id: id.into(),
            layer: None,
            score,
            text: text.into(),
            group: None,
        }
    }

    #[test]
    fn sections_keep_their_order_and_duplicates_go() {
        let pack = fit(
            vec![
                (
                    Section::Cold,
                    vec![cand("a", "alpha beta", 1.0), cand("c", "gamma", 0.5)],
                ),
                (
                    Section::Hot,
                    vec![cand("a", "alpha beta", 1.0), cand("b", "delta", 0.9)],
                ),
                (Section::Warm, vec![cand("d", "Delta", 0.4)]),
            ],
            &HashMap::new(),
            1_000,
            &Shares::default(),
            &count_tokens,
        );
        let ids: Vec<(&str, Section)> = pack
            .items
            .iter()
            .map(|i| (i.id.as_str(), i.section))
            .collect();
        // "a" goes to hot, the first section; "d" repeats "delta"'s text.
        assert_eq!(
            ids,
            vec![
                ("a", Section::Hot),
                ("b", Section::Hot),
                ("c", Section::Cold)
            ]
        );
        assert_eq!(pack.left_out, 2);
        let shown = pack.render();
        assert!(shown.starts_with("## Recent and important\nalpha beta\ndelta\n"));
        assert_eq!(pack.tokens, count_tokens(&shown));
    }

    /// Unrelated recent items keep only `background` places in their
    /// section's share: the relevant ones, wherever they are, come before
    /// the rest of them, which still take what is left.
    #[test]
    fn unrelated_hot_items_give_way_to_relevant_ones() {
        let long = "word ".repeat(20);
        let hot: Vec<Candidate> = (0..6)
            .map(|i| cand(&format!("h{i}"), &format!("recent {i} {long}"), 1.0))
            .collect();
        let cold: Vec<Candidate> = (0..6)
            .map(|i| cand(&format!("c{i}"), &format!("relevant {i} {long}"), 0.5))
            .collect();
        let relevance: HashMap<String, f64> = (0..6)
            .map(|i| (format!("c{i}"), 1.0 - f64::from(i) / 10.0))
            .collect();
        let per_item = count_tokens(&hot[0].text) + 1;
        // Room for about eight items: with every item in its share, hot
        // takes its quarter (one item) plus what cold leaves over.
        let budget = per_item * 8 + 20;
        let sections = || vec![(Section::Hot, hot.clone()), (Section::Cold, cold.clone())];
        let count_in = |p: &ContextPack, prefix: &str| {
            p.items.iter().filter(|i| i.id.starts_with(prefix)).count()
        };
        let shares = Shares {
            hot: 1.0,
            ..Shares::default()
        };
        let everyone = fit(sections(), &relevance, budget, &shares, &count_tokens);
        assert!(count_in(&everyone, "h") >= 6, "{everyone:?}");
        let focused = fit_for_task(
            sections(),
            &relevance,
            budget,
            &shares,
            Some(Background {
                items: 1,
                below: 0.0,
            }),
            &count_tokens,
        );
        assert_eq!(count_in(&focused, "c"), 6, "{focused:?}");
        // One background item in the share, then the leftover after the
        // relevant ones: still in the hot section, newest first.
        let hot_ids: Vec<&str> = focused
            .section(Section::Hot)
            .map(|i| i.id.as_str())
            .collect();
        assert_eq!(hot_ids[0], "h0");
        assert!(hot_ids.len() < 6, "{hot_ids:?}");
        assert!(focused.tokens <= budget);
    }

    /// A weak hit counts as background below the threshold, as a relevant
    /// one above it.
    #[test]
    fn a_weak_hit_in_hot_is_background_below_the_threshold() {
        let hot = vec![
            cand("h0", "newest but unrelated", 1.0),
            cand("h1", "loosely related", 0.9),
            cand("h2", "very related", 0.8),
        ];
        let relevance: HashMap<String, f64> =
            [("h1".to_string(), 0.2), ("h2".to_string(), 0.9)].into();
        let taken = |below: f64| {
            let pack = fit_for_task(
                vec![(Section::Hot, hot.clone())],
                &relevance,
                // Room for two of the three (10 tokens each, 2 the heading).
                30,
                &Shares {
                    hot: 1.0,
                    ..Shares::default()
                },
                Some(Background { items: 1, below }),
                &|t: &str| if t.starts_with("##") { 0 } else { 10 },
            );
            pack.items.iter().map(|i| i.id.clone()).collect::<Vec<_>>()
        };
        // Below 0.0 nothing found is background: the first two take the
        // room. Below 0.5 the weak hit is, and its place goes to h2.
        assert_eq!(taken(0.0), vec!["h0", "h1"]);
        assert_eq!(taken(0.5), vec!["h0", "h2"]);
    }

    #[test]
    fn a_section_over_its_share_gives_way_then_takes_the_leftover() {
        let long = "word ".repeat(40);
        let hot: Vec<Candidate> = (0..10)
            .map(|i| cand(&format!("h{i}"), &format!("{i} {long}"), 1.0))
            .collect();
        let cold = vec![cand("c", "the one cold fact", 1.0)];
        let pack = fit(
            vec![(Section::Hot, hot), (Section::Cold, cold)],
            &HashMap::new(),
            200,
            &Shares::default(),
            &count_tokens,
        );
        // Cold got in although hot alone could fill the budget.
        assert!(pack.items.iter().any(|i| i.id == "c"));
        assert!(pack.section(Section::Hot).count() >= 1);
        assert!(pack.tokens <= 200);
    }

    #[test]
    fn the_leftover_goes_to_relevance_hits_first() {
        let line = |i: usize, what: &str| format!("{what} {i} {}", "word ".repeat(15));
        // Ten unrelated hot items, then more cold hits (of falling
        // relevance) than the budget holds.
        let hot: Vec<Candidate> = (0..10)
            .map(|i| cand(&format!("h{i}"), &line(i, "hot"), 1.0))
            .collect();
        let cold: Vec<Candidate> = (0..40)
            .map(|i| cand(&format!("c{i}"), &line(i, "cold"), 0.5))
            .collect();
        let relevance: HashMap<String, f64> = (0..40)
            .map(|i| (format!("c{i}"), 1.0 - i as f64 / 40.0))
            .collect();
        let pack = fit(
            vec![(Section::Hot, hot), (Section::Cold, cold)],
            &relevance,
            400,
            &Shares::default(),
            &count_tokens,
        );
        let hot_n = pack.section(Section::Hot).count();
        let cold_ids: Vec<&str> = pack.section(Section::Cold).map(|i| i.id.as_str()).collect();
        // Hot keeps its share (a quarter); the rest goes to cold hits, best
        // first, although hot items came first in section order.
        assert!((1..=5).contains(&hot_n), "{hot_n} hot items");
        assert!(cold_ids.len() > hot_n, "{cold_ids:?}");
        let best: Vec<String> = (0..cold_ids.len()).map(|i| format!("c{i}")).collect();
        assert_eq!(cold_ids, best);
        assert!(pack.tokens <= 400);
    }

    /// Items that share a date and kind are shown under one line naming
    /// them, where the best of them would stand: the heading is paid once,
    /// so the same budget holds more items, and the best item still leads.
    #[test]
    fn items_of_one_day_share_a_heading() {
        let dated = |id: &str, text: &str, day: &str| Candidate {
            group: Some(format!("{day} note/general")),
            ..cand(id, text, 1.0)
        };
        let cold = vec![
            dated("a", "Caroline went to the support group.", "2023-05-08"),
            dated("b", "Melanie painted a sunrise.", "2023-06-01"),
            dated("c", "Caroline felt accepted there.", "2023-05-08"),
        ];
        let pack = fit(
            vec![(Section::Cold, cold)],
            &HashMap::new(),
            1_000,
            &Shares::default(),
            &count_tokens,
        );
        let ids: Vec<&str> = pack.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["a", "c", "b"]);
        assert_eq!(
            pack.render(),
            "## From further back\n[2023-05-08 note/general]\n\
             Caroline went to the support group.\nCaroline felt accepted there.\n\
             [2023-06-01 note/general]\nMelanie painted a sunrise.\n"
        );
        assert_eq!(pack.tokens, count_tokens(&pack.render()));

        // Room for the heading and two lines of one day, not for a
        // third line under a heading of its own.
        let heading = count_tokens("## From further back") + 2;
        let line = |t: &str| count_tokens(&format!("{t}\n"));
        let day = line("[2023-05-08 note/general]");
        let budget = heading
            + day
            + line("Caroline went to the support group.")
            + line("Caroline felt accepted there.")
            + 2;
        let cold = vec![
            dated("a", "Caroline went to the support group.", "2023-05-08"),
            dated("b", "Melanie painted a sunrise.", "2023-06-01"),
            dated("c", "Caroline felt accepted there.", "2023-05-08"),
        ];
        let pack = fit(
            vec![(Section::Cold, cold)],
            &HashMap::new(),
            budget,
            &Shares {
                cold: 1.0,
                ..Shares::default()
            },
            &count_tokens,
        );
        let ids: Vec<&str> = pack.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["a", "c"], "{}", pack.render());
        assert!(pack.tokens <= budget);
    }

    #[test]
    fn an_empty_budget_takes_nothing() {
        let pack = fit(
            vec![(Section::Hot, vec![cand("a", "x", 1.0)])],
            &HashMap::new(),
            0,
            &Shares::default(),
            &count_tokens,
        );
        assert!(pack.items.is_empty());
        assert_eq!(pack.tokens, 0);
        assert_eq!(pack.left_out, 1);
    }

    #[test]
    fn after_warm_up_a_count_does_not_pay_the_load() {
        warm_up_in_background();
        warm_up_in_background();
        warm_up();
        let started = std::time::Instant::now();
        assert_eq!(count_tokens("Board meeting"), 2);
        // The load takes hundreds of milliseconds; a short count, micros.
        assert!(started.elapsed() < std::time::Duration::from_millis(50));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever is offered, the rendered pack fits its budget, and
        /// every item's cost adds up to no more than the budget either.
        #[test]
        fn never_over_budget(
            budget in 0usize..600,
            texts in proptest::collection::vec(("[a-z ]{0,80}", 0usize..5, 0usize..4), 0..40),
            hot in 0.0f64..1.0, warm in 0.0f64..1.0, cold in 0.0f64..1.0,
        ) {
            let mut per: Vec<(Section, Vec<Candidate>)> =
                Section::ALL.iter().map(|s| (*s, Vec::new())).collect();
            for (i, (t, s, g)) in texts.into_iter().enumerate() {
                // Some items under a shared heading, some under none.
                let group = (g > 0).then(|| format!("2023-05-0{g} note/general"));
                per[s].1.push(Candidate { group, ..cand(&format!("{i}"), &t, 1.0) });
            }
            let shares = Shares { hot, warm, cold, knowledge: 0.1, shared: 0.1 };
            let pack = fit(per, &HashMap::new(), budget, &shares, &count_tokens);
            prop_assert!(pack.tokens <= budget, "{} > {}", pack.tokens, budget);
            let sum: usize = pack.items.iter().map(|i| i.tokens).sum();
            prop_assert!(sum <= budget);
        }
    }
}
