//! Memory through the engine, on SQLite and PostgreSQL, with the clock in
//! the test's hands: layer boundaries in context packs, budgets, isolation
//! between companies, compaction, and the embedder with the real model.

use std::sync::Arc;

use chrono::TimeDelta;
use kira_core::CompanyId;
use kira_core::audit::{AuditRecord, Outcome};
use kira_core::auth::{Access, CompanyScope, Principal};
use kira_core::clock::{Clock, ManualClock};
use kira_core::company::NewCompany;
use kira_core::memory::{EventType, Layer, Memory, NewMemory, Workstream};
use kira_engine::memory::{ContextRequest, Section};
use kira_engine::{Engine, EngineConfig};
use kira_store::Store;
use kira_store::memory::{Archived, MemoryFilter};
use serde_json::json;

use crate::common::{Backend, fresh_store, t0};

struct Setup {
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
    _dir: Option<tempfile::TempDir>,
}

async fn setup(backend: Backend) -> Setup {
    let (store, dir) = fresh_store(backend).await;
    let s = Setup {
        store,
        clock: Arc::new(ManualClock::new(t0())),
        _dir: dir,
    };
    for c in ["acme", "globex"] {
        company(&s, c).await;
    }
    s
}

fn scope(c: &str) -> CompanyScope {
    Principal::system()
        .scope(&CompanyId::parse(c).expect("id"), Access::Write)
        .expect("scope")
}

fn audit(c: &str) -> AuditRecord {
    AuditRecord {
        at: t0(),
        request_id: String::new(),
        actor: "system".into(),
        company_id: CompanyId::parse(c).ok(),
        action: "test".into(),
        target: "test".into(),
        outcome: Outcome::Ok,
        detail: String::new(),
    }
}

async fn company(s: &Setup, id: &str) {
    let (cid, p) = serde_json::from_value::<NewCompany>(json!({
        "id": id, "name": id, "industry": "fintech", "jurisdiction": "US-DE"
    }))
    .expect("json")
    .validate()
    .expect("valid");
    s.store
        .create_company(&scope(cid.as_str()), &p, t0(), audit(id))
        .await
        .expect("create");
}

fn engine(s: &Setup) -> Engine {
    Engine::new(s.store.clone(), s.clock.clone(), EngineConfig::default())
}

struct M<'a> {
    text: &'a str,
    age: TimeDelta,
    importance: i16,
    workstream: Workstream,
    category: &'a str,
}

fn m(text: &str, age: TimeDelta, importance: i16) -> M<'_> {
    M {
        text,
        age,
        importance,
        workstream: Workstream::General,
        category: "general",
    }
}

fn new(x: &M<'_>) -> NewMemory {
    NewMemory {
        occurred_at: t0() - x.age,
        event_type: EventType::Note,
        workstream: x.workstream,
        category: x.category.into(),
        content: json!({ "text": x.text }),
        importance: x.importance,
        indexed_terms: vec![],
        source: None,
    }
}

async fn add(e: &Engine, company: &str, items: &[M<'_>]) -> Vec<Memory> {
    e.memory()
        .add(
            &scope(company),
            items.iter().map(new).collect(),
            true,
            audit(company),
        )
        .await
        .expect("add")
}

fn layer_of(
    pack: &kira_engine::memory::ContextPack,
    text: &str,
) -> Option<(Section, Option<Layer>)> {
    pack.items
        .iter()
        .find(|i| i.text.contains(text))
        .map(|i| (i.section, i.layer))
}

async fn layer_boundaries(b: Backend) {
    let s = setup(b).await;
    let e = engine(&s);
    let day = TimeDelta::days(1);
    add(
        &e,
        "acme",
        &[
            m("exactly seven days old invoice", day * 7, 5),
            m(
                "seven days and a second old invoice",
                day * 7 + TimeDelta::seconds(1),
                7,
            ),
            m("ancient but important invoice", day * 400, 8),
            m("ancient and ordinary invoice", day * 400, 5),
            m("twenty days old invoice", day * 20, 5),
        ],
    )
    .await;
    let pack = e
        .memory()
        .context(
            &scope("acme"),
            &ContextRequest {
                task_type: None,
                query: "invoice".into(),
                budget: Some(4_000),
            },
        )
        .await
        .expect("pack");
    assert_eq!(
        layer_of(&pack, "exactly seven days old"),
        Some((Section::Hot, Some(Layer::Hot))),
        "{b:?}"
    );
    // Importance 7 is below the hot threshold (8) but warm (>= 6).
    assert_eq!(
        layer_of(&pack, "seven days and a second"),
        Some((Section::Warm, Some(Layer::Warm)))
    );
    assert_eq!(
        layer_of(&pack, "ancient but important"),
        Some((Section::Hot, Some(Layer::Hot)))
    );
    assert_eq!(
        layer_of(&pack, "twenty days old"),
        Some((Section::Warm, Some(Layer::Warm)))
    );
    assert_eq!(
        layer_of(&pack, "ancient and ordinary"),
        Some((Section::Cold, Some(Layer::Cold)))
    );
    assert!(pack.tokens <= 4_000);
    assert_eq!(
        pack.tokens,
        kira_engine::memory::pack::count_tokens(&pack.render())
    );
}

#[tokio::test]
async fn layer_boundaries_sqlite() {
    layer_boundaries(Backend::Sqlite).await;
}

#[tokio::test]
async fn layer_boundaries_postgres() {
    layer_boundaries(Backend::Postgres).await;
}

async fn packs_fit_and_stay_in_their_company(b: Backend) {
    let s = setup(b).await;
    let e = engine(&s);
    let long = "renewal terms of the supplier agreement with clauses ".repeat(8);
    let acme: Vec<String> = (0..60).map(|i| format!("acme note {i}: {long}")).collect();
    let items: Vec<M<'_>> = acme
        .iter()
        .enumerate()
        .map(|(i, t)| m(t, TimeDelta::days(i as i64), (i % 10) as i16 + 1))
        .collect();
    add(&e, "acme", &items).await;
    add(
        &e,
        "globex",
        &[m(
            "globex secret: renewal terms of the supplier agreement",
            TimeDelta::days(1),
            9,
        )],
    )
    .await;
    for budget in [0, 1, 50, 300, 1_000, 2_500] {
        let pack = e
            .memory()
            .context(
                &scope("acme"),
                &ContextRequest {
                    task_type: Some("legal".into()),
                    query: "supplier agreement renewal terms".into(),
                    budget: Some(budget),
                },
            )
            .await
            .expect("pack");
        assert!(pack.tokens <= budget, "{b:?}: {} > {budget}", pack.tokens);
        assert!(pack.items.iter().all(|i| !i.text.contains("globex")));
    }
    let hits = e
        .memory()
        .search(
            &scope("globex"),
            "acme note renewal",
            &MemoryFilter::default(),
            50,
        )
        .await
        .expect("search");
    assert!(
        hits.iter()
            .all(|h| h.memory.company_id.as_str() == "globex")
    );
    // A budget past the limit and an unknown task type are refused by name.
    let err = e
        .memory()
        .context(
            &scope("acme"),
            &ContextRequest {
                task_type: Some("astrology".into()),
                query: String::new(),
                budget: None,
            },
        )
        .await
        .expect_err("unknown type");
    assert!(err.to_string().contains("astrology"), "{err}");
}

#[tokio::test]
async fn packs_fit_and_stay_in_their_company_sqlite() {
    packs_fit_and_stay_in_their_company(Backend::Sqlite).await;
}

#[tokio::test]
async fn packs_fit_and_stay_in_their_company_postgres() {
    packs_fit_and_stay_in_their_company(Backend::Postgres).await;
}

/// Every memory older than the warm window and of ordinary importance:
/// the hot and warm sections are empty, and what they leave unused goes to
/// the task's search hits, as many as the budget holds (not a fixed five).
async fn a_pack_fills_its_budget(b: Backend) {
    let s = setup(b).await;
    let e = engine(&s);
    let texts: Vec<String> = (0..200)
        .map(|i| {
            format!(
                "Supplier renewal call {i}: the vendor asked for {} more days on clause {}.",
                i % 17 + 3,
                i % 11 + 1
            )
        })
        .collect();
    let items: Vec<M<'_>> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| m(t, TimeDelta::days(60 + i as i64), 5))
        .collect();
    add(&e, "acme", &items).await;
    for budget in [500, 1_000, 2_000] {
        let pack = e
            .memory()
            .context(
                &scope("acme"),
                &ContextRequest {
                    task_type: None,
                    query: "supplier renewal vendor clause".into(),
                    budget: Some(budget),
                },
            )
            .await
            .expect("pack");
        assert!(pack.tokens <= budget, "{b:?}: {} > {budget}", pack.tokens);
        assert!(
            pack.tokens * 10 >= budget * 9,
            "{b:?}: {} of {budget} tokens used",
            pack.tokens
        );
        assert!(
            pack.items
                .iter()
                .all(|i| i.section == Section::Cold && i.layer == Some(Layer::Cold)),
            "{b:?}: every item is a cold hit and says so"
        );
    }
}

#[tokio::test]
async fn a_pack_fills_its_budget_sqlite() {
    a_pack_fills_its_budget(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_pack_fills_its_budget_postgres() {
    a_pack_fills_its_budget(Backend::Postgres).await;
}

/// Hot items are ranked by relevance to the task as well as by recency and
/// importance: a recent important memory about the task is the first hot
/// item, ahead of newer unrelated ones that alone would fill the hot
/// share, and ahead of an old memory about the same thing.
async fn a_relevant_hot_memory_comes_first(b: Backend) {
    let s = setup(b).await;
    let e = engine(&s);
    let filler: Vec<String> = (0..40)
        .map(|i| format!("Standup {i}: the office printer queue was cleared again today."))
        .collect();
    let mut items: Vec<M<'_>> = filler
        .iter()
        .enumerate()
        .map(|(i, t)| m(t, TimeDelta::hours(i as i64), 9))
        .collect();
    items.push(m(
        "Initech asked to renegotiate the licence fee before the March renewal.",
        TimeDelta::days(3),
        8,
    ));
    items.push(m(
        "Initech signed the licence at a fee of $12,000 a year.",
        TimeDelta::days(400),
        5,
    ));
    add(&e, "acme", &items).await;
    let pack = e
        .memory()
        .context(
            &scope("acme"),
            &ContextRequest {
                task_type: None,
                query: "Initech licence fee renewal".into(),
                budget: Some(400),
            },
        )
        .await
        .expect("pack");
    let pos = |text: &str| pack.items.iter().position(|i| i.text.contains(text));
    let recent = pos("renegotiate").expect("the recent relevant memory is in");
    assert_eq!(pack.items[recent].section, Section::Hot, "{b:?}");
    assert_eq!(
        recent, 0,
        "{b:?}: first of the hot section: {:?}",
        pack.items
    );
    let old = pos("signed the licence").expect("the old relevant memory is in");
    assert_eq!(pack.items[old].section, Section::Cold, "{b:?}");
    assert!(recent < old);
    assert!(pack.tokens <= 400);
}

#[tokio::test]
async fn a_relevant_hot_memory_comes_first_sqlite() {
    a_relevant_hot_memory_comes_first(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_relevant_hot_memory_comes_first_postgres() {
    a_relevant_hot_memory_comes_first(Backend::Postgres).await;
}

/// The turn just after a strong hit (the answer to the question it asked)
/// shares no word with the task, yet comes into the pack close behind its
/// hit, ahead of weaker hits elsewhere, and is shown beside it under the
/// day's one line.
async fn a_strong_hits_next_turn_comes_before_weaker_hits(b: Backend) {
    let s = setup(b).await;
    let e = engine(&s);
    let asked = "When is the Initech renewal due?";
    let answer = "March 3rd, I think; legal wants the signed copy before the \
                  quarterly review, and procurement asked for the usual paperwork.";
    let weak: Vec<String> = (10..30)
        .map(|i| format!("Initech lunch note {i}: the team met at the usual cafe."))
        .collect();
    let mut items = vec![
        m(asked, TimeDelta::days(60), 5),
        m(answer, TimeDelta::days(60) - TimeDelta::minutes(1), 5),
    ];
    items.extend(
        weak.iter()
            .enumerate()
            .map(|(i, t)| m(t, TimeDelta::days(90 + i as i64), 5)),
    );
    add(&e, "acme", &items).await;
    // A line's cost in a pack: its tokens with its newline.
    let line = |t: &str| kira_engine::memory::pack::count_tokens(&format!("{t}\n"));
    let day = |age: TimeDelta| format!("[{} note/general]", (t0() - age).format("%Y-%m-%d"));
    let weak_cost = weak
        .iter()
        .enumerate()
        .map(|(i, t)| line(t) + line(&day(TimeDelta::days(90 + i as i64))))
        .max()
        .unwrap_or(0);
    // The hit and its answer, and room for three weaker hits besides.
    let budget = line("## From further back")
        + 1
        + line(&day(TimeDelta::days(60)))
        + line(asked)
        + line(answer)
        + 3 * weak_cost
        + 2;
    let pack = e
        .memory()
        .context(
            &scope("acme"),
            &ContextRequest {
                task_type: None,
                query: "Initech renewal".into(),
                budget: Some(budget),
            },
        )
        .await
        .expect("pack");
    let pos = |text: &str| pack.items.iter().position(|i| i.text == text);
    let hit = pos(asked).expect("the strong hit is in");
    assert_eq!(pos(answer), Some(hit + 1), "{b:?}: {}", pack.render());
    let weaker = pack
        .items
        .iter()
        .filter(|i| i.text.contains("lunch"))
        .count();
    assert!(
        (1..weak.len()).contains(&weaker),
        "{b:?}: {weaker} weaker hits"
    );
    assert!(pack.tokens <= budget);
}

#[tokio::test]
async fn a_strong_hits_next_turn_comes_before_weaker_hits_sqlite() {
    a_strong_hits_next_turn_comes_before_weaker_hits(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_strong_hits_next_turn_comes_before_weaker_hits_postgres() {
    a_strong_hits_next_turn_comes_before_weaker_hits(Backend::Postgres).await;
}

async fn compaction(b: Backend) {
    let s = setup(b).await;
    let e = engine(&s);
    let day = TimeDelta::days(1);
    let legal = |text, age, category| M {
        text,
        age,
        importance: 5,
        workstream: Workstream::Legal,
        category,
    };
    // 2026-04 (old): two routine reviews (summarised), a draft (discarded),
    // a key decision (preserved); 2026-05-30 (hot): a routine review left alone.
    let added = add(
        &e,
        "acme",
        &[
            legal(
                "Reviewed the NDA with Initech. Renewal fee $4,000 due 30 April 2026.",
                day * 55,
                "routine_reviews",
            ),
            legal(
                "Second review of the Initech NDA; no changes needed.",
                day * 50,
                "routine_reviews",
            ),
            legal(
                "Draft v3 of the services agreement.",
                day * 52,
                "draft_iterations",
            ),
            legal(
                "Decided to litigate against Hooli.",
                day * 53,
                "key_decisions",
            ),
            legal("Routine review this week.", day * 2, "routine_reviews"),
        ],
    )
    .await;
    let sc = scope("acme");
    let dry = e.memory().compact(&sc, true).await.expect("dry run");
    assert_eq!((dry.discarded, dry.groups.len()), (1, 1), "{dry:?}");
    assert!(dry.groups[0].summary_id.is_none());
    let live = |f: Archived| {
        let store = s.store.clone();
        let sc = sc.clone();
        async move {
            store
                .list_memories(
                    &sc,
                    &MemoryFilter {
                        archived: f,
                        ..MemoryFilter::default()
                    },
                    None,
                    100,
                )
                .await
                .expect("list")
        }
    };
    assert_eq!(
        live(Archived::Exclude).await.len(),
        5,
        "a dry run changes nothing"
    );

    let r = e.memory().compact(&sc, false).await.expect("compact");
    assert_eq!((r.discarded, r.groups.len()), (1, 1), "{r:?}");
    assert!(r.tokens_after < r.tokens_before, "{r:?}");
    let now_live = live(Archived::Exclude).await;
    // The decision, the recent review and the summary.
    assert_eq!(now_live.len(), 3, "{now_live:?}");
    let decision = &added[3];
    assert!(
        now_live.iter().any(|m| m == decision),
        "preserved untouched"
    );
    let summary = now_live
        .iter()
        .find(|m| !m.compacted_from.is_empty())
        .expect("summary");
    assert_eq!(summary.compacted_from.len(), 2);
    assert!(summary.text().contains("$4,000"), "{}", summary.text());
    assert_eq!(summary.category, "routine_reviews");

    // Idempotent: a second run finds nothing to do.
    let again = e.memory().compact(&sc, false).await.expect("again");
    assert_eq!((again.discarded, again.groups.len()), (0, 0), "{again:?}");
    assert_eq!(live(Archived::Exclude).await.len(), 3);

    // Archived sources can be restored, and are purged after retention.
    let draft = &added[2];
    s.store
        .set_archived(&sc, &[draft.id], None, audit("acme"))
        .await
        .expect("restore");
    assert!(
        !s.store
            .get_memory(&sc, draft.id)
            .await
            .expect("get")
            .is_archived()
    );
    s.store
        .set_archived(&sc, &[draft.id], Some(t0()), audit("acme"))
        .await
        .expect("archive again");
    s.clock.advance(TimeDelta::days(31));
    let purge = e.memory().compact(&sc, false).await.expect("purge run");
    // The discarded draft goes; the summarised sources are kept.
    assert_eq!(purge.purged, 1, "{purge:?}");
    let archived = live(Archived::Only).await;
    assert_eq!(archived.len(), 2, "{archived:?}");
    assert!(
        archived
            .iter()
            .all(|m| summary.compacted_from.contains(&m.id))
    );
}

/// What the summarised memories said stays findable: a pack for a
/// question about any one of them holds the fact, amount, date and name,
/// from the archived source if the summary left it out; and the sources
/// outlive the retention period.
async fn compaction_keeps_the_facts_findable(b: Backend) {
    let s = setup(b).await;
    let e = engine(&s);
    let facts = [
        (
            "Priya said the Hooli invoice of $18,400 is due on 12 March.",
            "When is the Hooli invoice due?",
            "$18,400",
        ),
        (
            "Marco booked the Lisbon offsite for 40 people at EUR 9,250.",
            "How much did the Lisbon offsite cost?",
            "EUR 9,250",
        ),
        (
            "Decision: Dana hires two support engineers starting 3 April.",
            "When do the support engineers start?",
            "3 April",
        ),
        (
            "The Initech migration slipped to 28 February after the audit.",
            "When is the Initech migration?",
            "28 February",
        ),
        (
            "Kenji reported churn at 2.4% in January, down from 3.1%.",
            "What was churn in January?",
            "2.4%",
        ),
        (
            "Legal asked Omar to renew the Globex NDA before 15 May.",
            "Who renews the Globex NDA?",
            "Omar",
        ),
    ];
    let chatter = [
        "Thanks everyone, good meeting.",
        "Let's keep going as planned.",
        "Nothing else from me today.",
        "Great work, team!",
        "See you all next week.",
        "Sounds good to me.",
    ];
    let mut items: Vec<M<'_>> = Vec::new();
    for (i, (fact, _, _)) in facts.iter().enumerate() {
        for (text, offset) in [(*fact, 0), (chatter[i], 1)] {
            items.push(M {
                text,
                age: TimeDelta::days(60) - TimeDelta::hours(2 * i as i64 + offset),
                importance: 5,
                workstream: Workstream::Operational,
                category: "status_meetings",
            });
        }
    }
    add(&e, "acme", &items).await;
    let sc = scope("acme");
    let r = e.memory().compact(&sc, false).await.expect("compact");
    assert_eq!(r.groups.len(), 1, "{b:?}: {r:?}");
    let summary_id = r.groups[0].summary_id.expect("written");
    // The job's own check of what the summary kept (the context-retention
    // KPI) is the check of the summary's text against its sources'.
    let summary = s.store.get_memory(&sc, summary_id).await.expect("summary");
    let expected =
        kira_core::memory::retention::check(items.iter().map(|m| m.text), summary.text());
    assert_eq!(r.groups[0].facts, expected, "{b:?}");
    assert_eq!(r.facts, expected);
    assert!(expected.facts > 0 && expected.kept > 0, "{expected:?}");
    assert_eq!(r.retention, expected.share());
    // The company's metrics show it for a window holding the compaction.
    let m = e
        .metrics()
        .company(
            &sc,
            &kira_engine::metrics::SeriesRequest {
                from: Some(s.clock.now() - TimeDelta::days(1)),
                to: Some(s.clock.now() + TimeDelta::hours(1)),
                step_seconds: Some(3_600),
            },
        )
        .await
        .expect("metrics");
    assert_eq!(m.context_retention.facts, expected.facts);
    assert_eq!(m.context_retention.kept, expected.kept);
    assert_eq!(m.context_retention.share, expected.share());
    s.clock.advance(TimeDelta::days(45));
    let again = e
        .memory()
        .compact(&sc, false)
        .await
        .expect("past retention");
    assert_eq!(again.purged, 0, "{b:?}: summarised sources are not purged");
    for (fact, question, key) in facts {
        let pack = e
            .memory()
            .context(
                &sc,
                &ContextRequest {
                    task_type: Some("operational".into()),
                    query: question.into(),
                    budget: Some(300),
                },
            )
            .await
            .expect("pack");
        assert!(
            pack.items.iter().any(|i| i.text.contains(key)),
            "{b:?}: {key} ({fact}) not in the pack for {question:?}: {:?}",
            pack.items
        );
        assert!(pack.tokens <= 300);
    }
}

#[tokio::test]
async fn compaction_keeps_the_facts_findable_sqlite() {
    compaction_keeps_the_facts_findable(Backend::Sqlite).await;
}

#[tokio::test]
async fn compaction_keeps_the_facts_findable_postgres() {
    compaction_keeps_the_facts_findable(Backend::Postgres).await;
}

#[tokio::test]
async fn compaction_sqlite() {
    compaction(Backend::Sqlite).await;
}

#[tokio::test]
async fn compaction_postgres() {
    compaction(Backend::Postgres).await;
}

fn embedder() -> Arc<kira_embed::Embedder> {
    let dir = kira_embed::model_dir(&kira_embed::models_dir());
    Arc::new(kira_embed::Embedder::load(&dir).unwrap_or_else(|e| {
        panic!("the embedding model is needed (run ./scripts/install-models): {e}")
    }))
}

async fn semantic_search(b: Backend) {
    let s = setup(b).await;
    let e = engine(&s).with_embedder(embedder());
    add(
        &e,
        "acme",
        &[
            m(
                "We bought a new car for the sales team.",
                TimeDelta::days(3),
                5,
            ),
            m(
                "The quarterly tax filing was submitted.",
                TimeDelta::days(3),
                5,
            ),
            m("Lunch menu: soup and salad.", TimeDelta::days(3), 5),
        ],
    )
    .await;
    add(
        &e,
        "globex",
        &[m(
            "Globex purchased an automobile fleet.",
            TimeDelta::days(1),
            5,
        )],
    )
    .await;
    assert_eq!(e.embeddings().pass().await.expect("embed"), 4);
    assert_eq!(
        e.embeddings().pass().await.expect("embed again"),
        0,
        "the queue is empty"
    );

    // No word in common: only meaning finds it, and only in acme's memory.
    let hits = e
        .memory()
        .search(
            &scope("acme"),
            "automobile purchase",
            &MemoryFilter::default(),
            3,
        )
        .await
        .expect("search");
    assert_eq!(
        hits[0].memory.text(),
        "We bought a new car for the sales team.",
        "{b:?}"
    );
    assert_eq!(hits[0].text_rank, None);
    assert_eq!(hits[0].vector_rank, Some(1));
    assert!(hits.iter().all(|h| h.memory.company_id.as_str() == "acme"));

    // A memory not yet embedded is still found by its words.
    add(
        &e,
        "acme",
        &[m(
            "Renewed the automobile insurance policy.",
            TimeDelta::days(1),
            5,
        )],
    )
    .await;
    let hits = e
        .memory()
        .search(&scope("acme"), "insurance", &MemoryFilter::default(), 3)
        .await
        .expect("search");
    assert_eq!(
        hits[0].memory.text(),
        "Renewed the automobile insurance policy."
    );
    assert_eq!((hits[0].text_rank, hits[0].vector_rank), (Some(1), None));
}

#[tokio::test]
async fn semantic_search_sqlite() {
    semantic_search(Backend::Sqlite).await;
}

#[tokio::test]
async fn semantic_search_postgres() {
    semantic_search(Backend::Postgres).await;
}

async fn the_job_compacts_every_company(b: Backend) {
    let s = setup(b).await;
    let e = engine(&s);
    let old = |text| M {
        text,
        age: TimeDelta::days(40),
        importance: 3,
        workstream: Workstream::Operational,
        category: "routine_tasks",
    };
    add(
        &e,
        "acme",
        &[old("Rotated the logs."), old("Cleared the cache.")],
    )
    .await;
    add(&e, "globex", &[old("Restarted the printer.")]).await;
    assert_eq!(e.memory().compact_all().await.expect("job"), Some(2));
    for c in ["acme", "globex"] {
        let live = s
            .store
            .list_memories(&scope(c), &MemoryFilter::default(), None, 10)
            .await
            .expect("list");
        assert!(
            live.is_empty(),
            "{c}: routine tasks are discarded: {live:?}"
        );
    }
    // The run is audited, company by company.
    let admin = Principal::system().admin().expect("admin");
    let entries = s
        .store
        .list_all_audit(
            &admin,
            None,
            kira_store::AuditPage {
                after_seq: 0,
                limit: 1000,
            },
            audit("acme"),
        )
        .await
        .expect("audit");
    for c in ["acme", "globex"] {
        assert!(
            entries.iter().any(|e| e.action == "memory.compact.discard"
                && e.company_id.as_ref().map(|x| x.as_str()) == Some(c)),
            "{c}"
        );
    }
}

#[tokio::test]
async fn the_job_compacts_every_company_sqlite() {
    the_job_compacts_every_company(Backend::Sqlite).await;
}

#[tokio::test]
async fn the_job_compacts_every_company_postgres() {
    the_job_compacts_every_company(Backend::Postgres).await;
}

async fn knowledge_is_found_by_meaning(b: Backend) {
    let s = setup(b).await;
    let e = engine(&s).with_embedder(embedder());
    let admin = Principal::system().admin().expect("admin");
    let entry = |key: &str, title: &str, body: &str| {
        serde_json::from_value::<kira_core::knowledge::NewKnowledge>(json!({
            "domain": "legal_frameworks", "key": key, "title": title, "body": body
        }))
        .expect("entry")
    };
    e.knowledge()
        .add(
            &admin,
            kira_engine::knowledge::KnowledgeWrite::Batch(vec![
                entry(
                    "gdpr",
                    "GDPR",
                    "Personal data of people in the EU needs a lawful basis.",
                ),
                entry(
                    "leases",
                    "Office leases",
                    "Commercial leases usually run five years.",
                ),
            ]),
            audit("acme"),
        )
        .await
        .expect("add");
    assert_eq!(e.embeddings().pass().await.expect("embed"), 2);
    // No word in common with the GDPR entry.
    let hits = e
        .knowledge()
        .search(
            "privacy of customer information in Europe",
            &Default::default(),
            2,
        )
        .await
        .expect("search");
    assert_eq!(hits[0].entry.key, "gdpr", "{b:?}: {hits:?}");
    // And the context pack takes it into its knowledge section.
    let cands = e
        .knowledge()
        .candidates("privacy of customer information in Europe", 1)
        .await
        .expect("candidates");
    assert!(cands[0].2.contains("GDPR"), "{cands:?}");
}

#[tokio::test]
async fn knowledge_is_found_by_meaning_sqlite() {
    knowledge_is_found_by_meaning(Backend::Sqlite).await;
}

#[tokio::test]
async fn knowledge_is_found_by_meaning_postgres() {
    knowledge_is_found_by_meaning(Backend::Postgres).await;
}

/// A question that names a day favours what happened that day, and what
/// was said the day after about "yesterday", over equally matching
/// memories of other days (two of them newer); a question naming no time
/// ranks as before, newest first among equals.
async fn a_date_in_the_question_finds_that_days_memories(b: Backend) {
    let s = setup(b).await;
    let e = engine(&s);
    // t0 is 1 June 2026: ages of 40 to 99 days, 12 April is 50 days back.
    let places: Vec<String> = (0..60)
        .map(|i| format!("The team had lunch at the Place{i} cafe."))
        .collect();
    let mut items: Vec<M<'_>> = places
        .iter()
        .enumerate()
        .map(|(i, t)| m(t, TimeDelta::days(40 + i as i64), 5))
        .collect();
    items.push(m(
        "Yesterday the team had lunch at Rosa's, and loved it.",
        TimeDelta::days(49) - TimeDelta::hours(3),
        5,
    ));
    add(&e, "acme", &items).await;
    let top = |q: &'static str| {
        let e = e.clone();
        async move {
            e.memory()
                .search(&scope("acme"), q, &MemoryFilter::default(), 2)
                .await
                .expect("search")
                .into_iter()
                .map(|h| h.memory.text().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let mut dated = top("Where did the team have lunch on 12 April 2026?").await;
    dated.sort();
    assert_eq!(
        dated,
        vec![
            "The team had lunch at the Place10 cafe.".to_owned(),
            "Yesterday the team had lunch at Rosa's, and loved it.".to_owned(),
        ],
        "{b:?}"
    );
    // The same day said relatively, asked on 13 April.
    s.clock.set(t0() - TimeDelta::days(49));
    let mut relative = top("Where did the team have lunch yesterday?").await;
    relative.sort();
    assert_eq!(relative, dated, "{b:?}");
    s.clock.set(t0());
    let undated = top("Where did the team have lunch?").await;
    assert_eq!(
        undated[0], "The team had lunch at the Place0 cafe.",
        "{b:?}"
    );
}

#[tokio::test]
async fn a_date_in_the_question_finds_that_days_memories_sqlite() {
    a_date_in_the_question_finds_that_days_memories(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_date_in_the_question_finds_that_days_memories_postgres() {
    a_date_in_the_question_finds_that_days_memories(Backend::Postgres).await;
}

/// Search finds what the question is about whatever its age: an old
/// memory that answers it ranks ahead of a memory of yesterday that matches
/// it in part, which recency alone would put first; among hits about
/// equally relevant the newer still comes first (see the test above).
async fn an_old_answer_outranks_a_fresh_partial_match(b: Backend) {
    let s = setup(b).await;
    let e = engine(&s);
    let answer = "Initech signed the licence at a fee of $12,000 a year.";
    let fresh = "Initech called.";
    let visits: Vec<String> = (0..20)
        .map(|i| {
            format!("Initech visit number {i} went well overall, with coffee and a short tour.")
        })
        .collect();
    let mut items = vec![
        m(answer, TimeDelta::days(400), 5),
        m(fresh, TimeDelta::days(1), 5),
    ];
    for (i, t) in [
        "Initech asked about the licence terms.",
        "Initech questioned one fee on the invoice.",
        "The invoice schedule was filed.",
    ]
    .iter()
    .enumerate()
    {
        items.push(m(t, TimeDelta::days(100 + i as i64), 5));
    }
    items.extend(
        visits
            .iter()
            .enumerate()
            .map(|(i, t)| m(t, TimeDelta::days(200 + i as i64), 5)),
    );
    add(&e, "acme", &items).await;
    let hits = e
        .memory()
        .search(
            &scope("acme"),
            "Initech licence fee",
            &MemoryFilter::default(),
            30,
        )
        .await
        .expect("search");
    let texts: Vec<&str> = hits.iter().map(|h| h.memory.text()).collect();
    assert_eq!(texts[0], answer, "{b:?}: {texts:#?}");
    let pos = |t: &str| texts.iter().position(|x| *x == t);
    assert!(pos(fresh) > Some(0), "{b:?}: {texts:#?}");
}

#[tokio::test]
async fn an_old_answer_outranks_a_fresh_partial_match_sqlite() {
    an_old_answer_outranks_a_fresh_partial_match(Backend::Sqlite).await;
}

#[tokio::test]
async fn an_old_answer_outranks_a_fresh_partial_match_postgres() {
    an_old_answer_outranks_a_fresh_partial_match(Backend::Postgres).await;
}

/// Memories of one source in close succession (a conversation's turns) are
/// one episode, and its hits support each other: five turns that each
/// match a question come before a single better match elsewhere. The same
/// turns hours apart, or from different sources, are no episode: the
/// single better match stays first.
async fn hits_of_one_conversation_support_each_other(b: Backend) {
    let s = setup(b).await;
    let e = engine(&s);
    let lone = "Initech renewal contract.";
    let turns = [
        "We talked about Initech today and the renewal of their contract, among other things.",
        "The Initech contract renewal has a few open points we still need to settle with them.",
        "For the renewal, Initech asked whether the contract could run for three more years.",
        "I told them the contract renewal price for Initech depends on the volume they commit.",
        "Initech will send their comments on the renewal contract draft by the end of the week.",
    ];
    let filler: Vec<String> = (0..10)
        .map(|i| format!("Initech visit number {i} went well overall."))
        .collect();
    let at = t0() - TimeDelta::days(3);
    let memory = |text: &str, occurred_at, source: &str| NewMemory {
        occurred_at,
        event_type: EventType::Note,
        workstream: Workstream::General,
        category: "general".into(),
        content: json!({ "text": text }),
        importance: 5,
        indexed_terms: vec![],
        source: Some(source.into()),
    };
    // acme: the turns a minute apart, one source; globex: the same turns
    // two hours apart.
    for (company, apart) in [
        ("acme", TimeDelta::minutes(1)),
        ("globex", TimeDelta::hours(2)),
    ] {
        let mut items = vec![memory(lone, at, "note-1")];
        for (i, t) in turns.iter().enumerate() {
            items.push(memory(t, at - apart * (i as i32 + 1), "chat-7"));
        }
        for (i, t) in filler.iter().enumerate() {
            items.push(memory(t, at, &format!("visit-{i}")));
        }
        e.memory()
            .add(&scope(company), items, true, audit(company))
            .await
            .expect("add");
    }
    let ranked = |company: &'static str| {
        let e = e.clone();
        async move {
            e.memory()
                .search(
                    &scope(company),
                    "Initech renewal contract",
                    &MemoryFilter::default(),
                    20,
                )
                .await
                .expect("search")
                .into_iter()
                .map(|h| h.memory.text().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let acme = ranked("acme").await;
    let lone_at = acme.iter().position(|t| t == lone).expect("the lone hit");
    // The conversation leads: its turns come before the lone match, bar
    // at most its weakest one (with fusion's k at 20, the lone match's
    // first places in both lists weigh more than at the paper's 60).
    assert!(lone_at >= turns.len() - 1, "{b:?}: {acme:#?}");
    assert!(
        acme[..lone_at].iter().all(|t| turns.contains(&t.as_str())),
        "{b:?}: {acme:#?}"
    );
    let globex = ranked("globex").await;
    assert_eq!(globex[0], lone, "{b:?}: {globex:#?}");
}

#[tokio::test]
async fn hits_of_one_conversation_support_each_other_sqlite() {
    hits_of_one_conversation_support_each_other(Backend::Sqlite).await;
}

#[tokio::test]
async fn hits_of_one_conversation_support_each_other_postgres() {
    hits_of_one_conversation_support_each_other(Backend::Postgres).await;
}
