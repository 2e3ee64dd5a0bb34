//! Episodic memory on both backends: writes and their audit entries, lists
//! and cursors, full-text search, archive states, compaction's write, the
//! embedding queue and vectors, and isolation between companies.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use kira_core::memory::retention::FactCheck;
use kira_core::memory::{EventType, Memory, Workstream};
use kira_store::memory::*;
use kira_store::{AuditPage, Store, StoreError};
use serde_json::json;
use uuid::Uuid;

use crate::support::{Fresh, cid, create, record, scope, t0};

conformance!(
    insert_get_and_list_with_every_filter,
    many_lists_at_once_equal_each_alone,
    pages_have_no_gaps_or_duplicates,
    batch_limits_and_refusals_write_nothing,
    search_ranks_matches_and_survives_hostile_queries,
    another_companys_memories_never_change_a_ranking,
    a_question_s_common_words_do_not_rank,
    a_company_named_within_anothers_id_keeps_its_ranking,
    archive_restore_and_what_each_view_sees,
    delete_and_purge_remove_vectors_and_jobs,
    summary_replaces_its_sources_atomically,
    stats_count_live_archived_and_embedded,
    embed_jobs_are_claimed_oldest_first_under_leases,
    concurrent_claimers_never_share_a_job,
    vectors_round_trip_replace_and_filter,
    forced_company_delete_removes_its_memory,
    another_company_can_neither_see_nor_touch_memories,
);

/// Whole microseconds: what both backends keep.
fn base() -> DateTime<Utc> {
    t0().trunc_subsecs(6)
}

/// Ids in a known order (the store treats them as opaque).
fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + n)
}

/// A note of `company`, id `n`, that occurred `n` minutes after a day
/// before [`base`] and was recorded `n` seconds after it.
fn mem(company: &str, n: u128, text: &str) -> Memory {
    let k = i64::try_from(n).expect("small");
    Memory {
        id: id(n),
        company_id: cid(company),
        occurred_at: base() - TimeDelta::days(1) + TimeDelta::minutes(k),
        event_type: EventType::Note,
        workstream: Workstream::General,
        category: "general".into(),
        content: json!({"text": text}),
        importance: 5,
        indexed_terms: vec![],
        source: None,
        created_at: base() + TimeDelta::seconds(k),
        archived_at: None,
        compacted_from: vec![],
        supersedes: None,
    }
}

async fn insert(s: &dyn Store, company: &str, memories: &[Memory]) {
    s.insert_memories(
        &scope(company),
        memories,
        record(Some(company), "memory.add"),
    )
    .await
    .expect("insert");
}

async fn audit_count(s: &dyn Store, company: &str) -> usize {
    s.list_company_audit(
        &scope(company),
        AuditPage {
            after_seq: 0,
            limit: 10_000,
        },
    )
    .await
    .expect("audit")
    .len()
}

async fn list_ids(s: &dyn Store, company: &str, filter: &MemoryFilter) -> Vec<Uuid> {
    s.list_memories(&scope(company), filter, None, 1000)
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.id)
        .collect()
}

async fn search_ids(s: &dyn Store, company: &str, q: &str, filter: &MemoryFilter) -> Vec<Uuid> {
    s.search_memories(&scope(company), q, filter, 100)
        .await
        .expect("search")
        .into_iter()
        .map(|h| h.memory.id)
        .collect()
}

fn archived(a: Archived) -> MemoryFilter {
    MemoryFilter {
        archived: a,
        ..Default::default()
    }
}

async fn insert_get_and_list_with_every_filter(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let plain = mem("acme", 1, "Plain note");
    let rich = Memory {
        event_type: EventType::Decision,
        workstream: Workstream::Legal,
        category: "key_decisions".into(),
        content: json!({
            "text": "Signed the Globex supply contract.",
            "people": ["Dana Ruiz"],
            "counterparties": ["Globex"],
            "amounts": [{"usd": 2_000_000}]
        }),
        importance: 9,
        indexed_terms: vec!["dana ruiz".into(), "globex".into()],
        source: Some("acme_legal_001".into()),
        compacted_from: vec![id(90), id(91)],
        supersedes: Some(id(92)),
        // Nanoseconds are kept to microseconds.
        occurred_at: base() - TimeDelta::hours(2) + TimeDelta::nanoseconds(999),
        ..mem("acme", 2, "")
    };
    let meeting = Memory {
        event_type: EventType::Meeting,
        workstream: Workstream::Financial,
        category: "board_meetings".into(),
        importance: 7,
        ..mem("acme", 3, "Board meeting")
    };
    let before = audit_count(s, "acme").await;
    insert(s, "acme", &[plain.clone(), rich.clone(), meeting.clone()]).await;
    assert_eq!(
        audit_count(s, "acme").await,
        before + 1,
        "one audit entry per batch"
    );

    let got = s.get_memory(&scope("acme"), rich.id).await.expect("get");
    let mut expected = rich.clone();
    expected.occurred_at = rich.occurred_at.trunc_subsecs(6);
    assert_eq!(got, expected, "every field round-trips");
    assert_eq!(
        s.get_memory(&scope("acme"), plain.id).await.expect("get"),
        plain
    );
    assert!(matches!(
        s.get_memory(&scope("acme"), id(77)).await,
        Err(StoreError::NotFound)
    ));
    let mut some = s
        .get_memories(&scope("acme"), &[meeting.id, id(77), plain.id, plain.id])
        .await
        .expect("get many");
    some.sort_by_key(|m| m.id);
    assert_eq!(some, [plain.clone(), meeting.clone()]);
    assert!(
        s.get_memories(&scope("acme"), &[])
            .await
            .expect("none")
            .is_empty()
    );

    // Newest occurred_at first.
    let all = MemoryFilter::default();
    assert_eq!(
        list_ids(s, "acme", &all).await,
        [rich.id, meeting.id, plain.id]
    );
    let cases = [
        (
            MemoryFilter {
                event_type: Some(EventType::Meeting),
                ..Default::default()
            },
            vec![meeting.id],
        ),
        (
            MemoryFilter {
                workstream: Some(Workstream::Legal),
                ..Default::default()
            },
            vec![rich.id],
        ),
        (
            MemoryFilter {
                category: Some("general".into()),
                ..Default::default()
            },
            vec![plain.id],
        ),
        (
            // Inclusive lower bound.
            MemoryFilter {
                from: Some(meeting.occurred_at),
                ..Default::default()
            },
            vec![rich.id, meeting.id],
        ),
        (
            // Exclusive upper bound.
            MemoryFilter {
                until: Some(meeting.occurred_at),
                ..Default::default()
            },
            vec![plain.id],
        ),
        (
            MemoryFilter {
                min_importance: Some(7),
                ..Default::default()
            },
            vec![rich.id, meeting.id],
        ),
        (
            // Terms compare lower-cased.
            MemoryFilter {
                term: Some("Dana Ruiz".into()),
                ..Default::default()
            },
            vec![rich.id],
        ),
        (
            MemoryFilter {
                term: Some("dana".into()),
                ..Default::default()
            },
            vec![],
        ),
        (
            MemoryFilter {
                workstream: Some(Workstream::Financial),
                min_importance: Some(8),
                ..Default::default()
            },
            vec![],
        ),
    ];
    for (filter, want) in cases {
        assert_eq!(list_ids(s, "acme", &filter).await, want, "{filter:?}");
    }
    assert!(
        s.list_memories(&scope("acme"), &all, None, 0)
            .await
            .expect("list")
            .is_empty()
    );
}

async fn many_lists_at_once_equal_each_alone(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    create(s, "beta").await;
    let acme: Vec<Memory> = (1..=12)
        .map(|n| Memory {
            importance: i16::try_from(n % 10 + 1).expect("small"),
            workstream: if n % 3 == 0 {
                Workstream::Legal
            } else {
                Workstream::General
            },
            ..mem("acme", n, &format!("acme note {n}"))
        })
        .collect();
    insert(s, "acme", &acme).await;
    // Beta's memories match every filter too, and must never show.
    let beta: Vec<Memory> = (101..=106)
        .map(|n| Memory {
            importance: 9,
            workstream: Workstream::Legal,
            ..mem("beta", n, "beta note")
        })
        .collect();
    insert(s, "beta", &beta).await;
    let lists = vec![
        (
            MemoryFilter {
                from: Some(acme[5].occurred_at),
                ..Default::default()
            },
            4,
        ),
        (
            MemoryFilter {
                min_importance: Some(8),
                ..Default::default()
            },
            10,
        ),
        // Nothing asked: nothing read.
        (MemoryFilter::default(), 0),
        (
            MemoryFilter {
                workstream: Some(Workstream::Legal),
                ..Default::default()
            },
            3,
        ),
        (archived(Archived::Only), 5),
    ];
    let many = s
        .list_memories_many(&scope("acme"), &lists)
        .await
        .expect("many");
    assert_eq!(many.len(), lists.len(), "one list per list asked");
    for ((filter, limit), got) in lists.iter().zip(&many) {
        let alone = s
            .list_memories(&scope("acme"), filter, None, *limit)
            .await
            .expect("alone");
        assert_eq!(got, &alone, "{filter:?} limit {limit}");
        assert!(got.iter().all(|m| m.company_id == cid("acme")));
    }
    assert_eq!(many[0].len(), 4, "each list keeps its own limit");
    assert!(!many[1].is_empty() && !many[3].is_empty());
    assert!(many[2].is_empty() && many[4].is_empty());
    assert!(
        s.list_memories_many(&scope("acme"), &[])
            .await
            .expect("none")
            .is_empty()
    );
}

async fn pages_have_no_gaps_or_duplicates(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    // Several memories share an occurred_at: ties go by id, descending.
    let memories: Vec<Memory> = (0..23u128)
        .map(|n| Memory {
            occurred_at: base() - TimeDelta::minutes(i64::try_from(n / 3).expect("small")),
            importance: if n % 2 == 0 { 8 } else { 3 },
            ..mem("acme", n, &format!("note {n}"))
        })
        .collect();
    insert(s, "acme", &memories).await;
    let mut expected = memories.clone();
    expected.sort_by_key(|m| std::cmp::Reverse((m.occurred_at, m.id)));

    for (filter, size) in [
        (MemoryFilter::default(), 4),
        (MemoryFilter::default(), 1),
        (MemoryFilter::default(), 23),
        (
            MemoryFilter {
                min_importance: Some(8),
                ..Default::default()
            },
            5,
        ),
    ] {
        let want: Vec<Uuid> = expected
            .iter()
            .filter(|m| filter.min_importance.is_none_or(|i| m.importance >= i))
            .map(|m| m.id)
            .collect();
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = s
                .list_memories(&scope("acme"), &filter, after, size)
                .await
                .expect("page");
            assert!(page.len() <= size as usize);
            let Some(last) = page.last() else { break };
            // As an API hands it out and gets it back.
            after = MemoryCursor::decode(&MemoryCursor::of(last).encode());
            assert!(after.is_some());
            seen.extend(page.iter().map(|m| m.id));
        }
        assert_eq!(seen, want, "page size {size}, {filter:?}");
    }
}

async fn batch_limits_and_refusals_write_nothing(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    create(s, "beta").await;
    let sc = scope("acme");
    let rec = || record(Some("acme"), "memory.add");

    let r = s.insert_memories(&sc, &[], rec()).await;
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
    let too_many: Vec<Memory> = (0..=MAX_BATCH as u128)
        .map(|n| mem("acme", n, "x"))
        .collect();
    let r = s.insert_memories(&sc, &too_many, rec()).await;
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");

    // Another company's memory anywhere in the batch: nothing is written.
    let mut mixed: Vec<Memory> = (0..5u128).map(|n| mem("acme", n, "x")).collect();
    mixed[3].company_id = cid("beta");
    match s.insert_memories(&sc, &mixed, rec()).await {
        Err(StoreError::Invalid(e)) => assert_eq!(e.field, "memories.3.company_id"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(
        list_ids(s, "acme", &archived(Archived::Include))
            .await
            .is_empty()
    );
    assert!(
        list_ids(s, "beta", &archived(Archived::Include))
            .await
            .is_empty()
    );

    // The largest batch goes in whole, in one audited transaction.
    let audit_before = audit_count(s, "acme").await;
    let full: Vec<Memory> = (0..MAX_BATCH as u128)
        .map(|n| mem("acme", n, &format!("memory {n}")))
        .collect();
    s.insert_memories(&sc, &full, rec())
        .await
        .expect("full batch");
    let stats = s.memory_stats(&sc, "m").await.expect("stats");
    assert_eq!(stats.live, MAX_BATCH as u64);
    assert_eq!(audit_count(s, "acme").await, audit_before + 1);

    // An id already stored, or twice in one batch: Conflict, nothing written.
    let dup = vec![mem("acme", 5000, "new"), mem("acme", 7, "again")];
    let r = s.insert_memories(&sc, &dup, rec()).await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
    let twice = vec![mem("acme", 6000, "a"), mem("acme", 6000, "b")];
    let r = s.insert_memories(&sc, &twice, rec()).await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
    assert!(matches!(
        s.get_memory(&sc, id(5000)).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.get_memory(&sc, id(6000)).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        s.get_memory(&sc, id(7)).await.expect("kept").text(),
        "memory 7"
    );
    assert_eq!(s.memory_stats(&sc, "m").await.expect("stats"), stats);
    assert_eq!(audit_count(s, "acme").await, audit_before + 1);

    // A company that does not exist.
    let r = s
        .insert_memories(
            &scope("ghost"),
            &[mem("ghost", 7777, "x")],
            record(Some("ghost"), "memory.add"),
        )
        .await;
    assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
}

async fn search_ranks_matches_and_survives_hostile_queries(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    create(s, "beta").await;
    let both = mem(
        "acme",
        1,
        "The board approved the acquisition of Initech after a long review.",
    );
    let one = mem("acme", 2, "Quarterly board meetings moved to Thursdays.");
    let none = mem("acme", 3, "Lunch with the marketing team.");
    let by_term = Memory {
        category: "key_decisions".into(),
        indexed_terms: vec!["globex corp".into()],
        content: json!({"text": "Signed it.", "counterparties": ["Globex Corp"]}),
        event_type: EventType::Contract,
        ..mem("acme", 4, "")
    };
    let unicode = mem("acme", 5, "Réunion à Tōkyō with Müller über 東京");
    insert(
        s,
        "acme",
        &[
            both.clone(),
            one.clone(),
            none.clone(),
            by_term.clone(),
            unicode.clone(),
        ],
    )
    .await;
    // The same words in another company are never found for acme.
    insert(
        s,
        "beta",
        &[mem("beta", 10, "The board approved the acquisition.")],
    )
    .await;
    let all = MemoryFilter::default();

    let hits = s
        .search_memories(&scope("acme"), "board acquisition", &all, 10)
        .await
        .expect("search");
    let ids: Vec<Uuid> = hits.iter().map(|h| h.memory.id).collect();
    assert_eq!(
        ids,
        [both.id, one.id],
        "both words beat one word (OR), no word no hit"
    );
    assert!(hits.iter().all(|h| h.relevance.is_finite()));
    assert!(hits[0].relevance > hits[1].relevance, "{hits:?}");
    assert_eq!(hits[0].memory, both);

    // Stemming, category and indexed terms (names) are searchable.
    assert_eq!(search_ids(s, "acme", "meeting", &all).await, [one.id]);
    assert_eq!(search_ids(s, "acme", "GLOBEX", &all).await, [by_term.id]);
    assert_eq!(search_ids(s, "acme", "decisions", &all).await, [by_term.id]);
    // Letters outside ASCII are words too. (Folding "muller" onto
    // "Müller" is SQLite's only: PostgreSQL would need `unaccent`.)
    assert_eq!(search_ids(s, "acme", "MÜLLER", &all).await, [unicode.id]);
    assert_eq!(search_ids(s, "acme", "東京", &all).await, [unicode.id]);
    // Filters narrow the hits; limit cuts them.
    let contracts = MemoryFilter {
        event_type: Some(EventType::Contract),
        ..Default::default()
    };
    assert!(search_ids(s, "acme", "board", &contracts).await.is_empty());
    assert_eq!(
        s.search_memories(&scope("acme"), "board", &all, 1)
            .await
            .expect("search")
            .len(),
        1
    );

    // Nothing a user types is syntax.
    for q in [
        "\"",
        "\"board",
        "board\" OR \"lunch",
        "AND OR NOT",
        "NOT board",
        "*",
        "board*",
        "(",
        "board)",
        ":",
        "text:board",
        "company:beta",
        "{text}: board",
        "NEAR(board acquisition)",
        "^board",
        "-board +lunch",
        "board & !lunch | <-> ''",
        "'; DROP TABLE memories; --",
        "\\",
        "\u{0}",
        "½ ① 東京 Müller",
        "",
        "   ",
    ] {
        let r = s.search_memories(&scope("acme"), q, &all, 10).await;
        let hits = r.unwrap_or_else(|e| panic!("{q:?}: {e}"));
        assert!(
            hits.iter().all(|h| h.memory.company_id.as_str() == "acme"),
            "{q:?}"
        );
    }
    for q in ["\"", "*", "(", ":", "", "  ", "&|!"] {
        assert!(search_ids(s, "acme", q, &all).await.is_empty(), "{q:?}");
    }
    // Operators are words: "NOT board" still finds board.
    assert!(
        search_ids(s, "acme", "NOT board", &all)
            .await
            .contains(&both.id)
    );
    assert!(search_ids(s, "acme", "company:beta", &all).await.is_empty());
}

/// A ranking is the company's own: what other companies write (here,
/// many memories with one of the query's words) changes neither its order
/// nor its scores. The full-text scores of both backends use no statistics
/// beyond the company (and so reveal nothing of the others), and reading
/// none keeps a search's cost the company's, not the whole table's.
async fn another_companys_memories_never_change_a_ranking(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    create(s, "beta").await;
    insert(
        s,
        "acme",
        &[
            mem("acme", 1, "Board meeting about the Initech renewal."),
            mem("acme", 2, "Board dinner, then board games."),
            mem("acme", 3, "The board approved the budget."),
            mem("acme", 4, "Initech sent the signed renewal."),
            mem("acme", 5, "Lunch with the marketing team."),
        ],
    )
    .await;
    let all = MemoryFilter::default();
    let ranking = || async {
        s.search_memories(&scope("acme"), "board initech renewal", &all, 10)
            .await
            .expect("search")
            .into_iter()
            .map(|h| (h.memory.id, h.relevance))
            .collect::<Vec<_>>()
    };
    let before = ranking().await;
    assert_eq!(before.len(), 4, "{before:?}");
    assert_eq!(before[0].0, id(1), "the memory with every word first");
    let many: Vec<Memory> = (100..160)
        .map(|n| mem("beta", n, "Initech renewal, Initech again."))
        .collect();
    insert(s, "beta", &many).await;
    assert_eq!(ranking().await, before);
}

/// A question's stop words ("when", "did", "the") find nothing on either
/// backend: a memory that shares only them with the question is no hit,
/// and one with the question's own words comes first. (SQLite kept every
/// word: the memory of five stop words outranked the one of two names.)
/// A question of nothing but stop words still searches with them.
async fn a_question_s_common_words_do_not_rank(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    insert(
        s,
        "acme",
        &[
            mem("acme", 1, "When did they say the team would be there?"),
            mem("acme", 2, "Initech renewal signed."),
            mem("acme", 3, "Lunch with marketing."),
        ],
    )
    .await;
    let all = MemoryFilter::default();
    let hits = search_ids(s, "acme", "When did the Initech renewal happen?", &all).await;
    assert_eq!(hits, vec![id(2)]);
    // Only stop words: SQLite searches with them; PostgreSQL's english
    // configuration drops them (no hit), as it always did.
    let common = search_ids(s, "acme", "when did they", &all).await;
    assert!(common.is_empty() || common == vec![id(1)], "{common:?}");
}

/// Issue 17: SQLite's index tokenised the company id, so `delta-bank`'s
/// memories counted among `delta`'s word frequencies. A company whose id
/// holds another's as a word changes nothing of the other's ranking.
async fn a_company_named_within_anothers_id_keeps_its_ranking(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "delta").await;
    create(s, "delta-bank").await;
    insert(
        s,
        "delta",
        &[
            mem("delta", 1, "Board meeting about the Initech renewal."),
            mem("delta", 2, "Board dinner, then board games."),
            mem("delta", 3, "Initech sent the signed renewal."),
            mem("delta", 4, "Lunch with the marketing team."),
        ],
    )
    .await;
    let all = MemoryFilter::default();
    let ranking = || async {
        s.search_memories(&scope("delta"), "board initech renewal", &all, 10)
            .await
            .expect("search")
            .into_iter()
            .map(|h| (h.memory.id, h.relevance))
            .collect::<Vec<_>>()
    };
    let before = ranking().await;
    assert_eq!(before.len(), 3, "{before:?}");
    let many: Vec<Memory> = (100..160)
        .map(|n| mem("delta-bank", n, "Initech renewal, Initech again, board."))
        .collect();
    insert(s, "delta-bank", &many).await;
    assert_eq!(ranking().await, before);
    // And each still finds only its own.
    let theirs = s
        .search_memories(&scope("delta-bank"), "initech", &all, 100)
        .await
        .expect("search");
    assert_eq!(theirs.len(), 60);
    assert!(
        theirs
            .iter()
            .all(|h| h.memory.company_id == cid("delta-bank"))
    );
}

async fn archive_restore_and_what_each_view_sees(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let a = mem("acme", 1, "Archived budget memo");
    let b = mem("acme", 2, "Live budget memo");
    insert(s, "acme", &[a.clone(), b.clone()]).await;
    let sc = scope("acme");
    let at = base() + TimeDelta::hours(1);
    let rec = || record(Some("acme"), "memory.archive");

    let audit_before = audit_count(s, "acme").await;
    let n = s
        .set_archived(&sc, &[a.id, id(99)], Some(at), rec())
        .await
        .expect("archive");
    assert_eq!(n, 1, "unknown ids are not counted");
    assert_eq!(audit_count(s, "acme").await, audit_before + 1);
    let n = s
        .set_archived(&sc, &[a.id, b.id], Some(at), rec())
        .await
        .expect("archive");
    assert_eq!(n, 1, "already archived is left alone");
    let n = s
        .set_archived(&sc, &[b.id], None, rec())
        .await
        .expect("restore");
    assert_eq!(n, 1);
    let n = s
        .set_archived(&sc, &[b.id], None, rec())
        .await
        .expect("restore");
    assert_eq!(n, 0, "already live");

    let got = s.get_memory(&sc, a.id).await.expect("get archived");
    assert_eq!(got.archived_at, Some(at));
    assert_eq!(
        s.get_memories(&sc, &[a.id, b.id])
            .await
            .expect("many")
            .len(),
        2,
        "get sees archived memories"
    );

    for (view, want) in [
        (Archived::Exclude, vec![b.id]),
        (Archived::Include, vec![b.id, a.id]),
        (Archived::Only, vec![a.id]),
    ] {
        assert_eq!(list_ids(s, "acme", &archived(view)).await, want, "{view:?}");
        let mut found = search_ids(s, "acme", "budget", &archived(view)).await;
        found.sort();
        let mut want = want;
        want.sort();
        assert_eq!(found, want, "search {view:?}");
    }

    // Restored, it is back everywhere.
    s.set_archived(&sc, &[a.id], None, rec())
        .await
        .expect("restore");
    assert_eq!(
        search_ids(s, "acme", "archived", &MemoryFilter::default()).await,
        [a.id]
    );
    assert_eq!(s.get_memory(&sc, a.id).await.expect("get"), a);
}

async fn delete_and_purge_remove_vectors_and_jobs(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let sc = scope("acme");
    let memories: Vec<Memory> = (1..=4u128)
        .map(|n| mem("acme", n, &format!("unicorn {n}")))
        .collect();
    insert(s, "acme", &memories).await;
    s.put_vectors(
        &sc,
        "m",
        &[MemoryVector {
            memory_id: id(1),
            vector: vec![1.0, 2.0],
        }],
    )
    .await
    .expect("vectors");

    let before = audit_count(s, "acme").await;
    s.delete_memory(&sc, id(1), record(Some("acme"), "memory.delete"))
        .await
        .expect("delete");
    s.delete_memory(&sc, id(2), record(Some("acme"), "memory.delete"))
        .await
        .expect("delete");
    assert_eq!(audit_count(s, "acme").await, before + 2);
    assert!(matches!(
        s.get_memory(&sc, id(1)).await,
        Err(StoreError::NotFound)
    ));
    let again = s
        .delete_memory(&sc, id(1), record(Some("acme"), "memory.delete"))
        .await;
    assert!(matches!(again, Err(StoreError::NotFound)), "{again:?}");
    assert!(
        s.memory_vectors(&sc, "m", &archived(Archived::Include))
            .await
            .expect("vectors")
            .is_empty()
    );
    assert_eq!(
        search_ids(s, "acme", "unicorn", &MemoryFilter::default()).await,
        [id(4), id(3)]
    );
    // The deleted memories' jobs are gone with them.
    let jobs = s.claim_embed_jobs(base(), 100).await.expect("claim");
    assert_eq!(
        jobs.iter().map(|j| j.memory_id).collect::<Vec<_>>(),
        [id(3), id(4)]
    );

    // Purge takes what was archived before the cut-off, nothing else.
    let at = base() + TimeDelta::days(1);
    s.set_archived(&sc, &[id(3)], Some(at), record(Some("acme"), "a"))
        .await
        .expect("archive");
    let rec = || record(Some("acme"), "memory.purge");
    assert_eq!(
        s.purge_archived(&sc, at, rec()).await.expect("purge"),
        0,
        "archived at the cut-off is kept"
    );
    assert_eq!(
        s.purge_archived(&sc, at + TimeDelta::microseconds(1), rec())
            .await
            .expect("purge"),
        1
    );
    assert!(matches!(
        s.get_memory(&sc, id(3)).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        list_ids(s, "acme", &archived(Archived::Include)).await,
        [id(4)]
    );
    assert_eq!(
        search_ids(s, "acme", "unicorn", &archived(Archived::Include)).await,
        [id(4)]
    );
    let later = base() + TimeDelta::days(2);
    let jobs = s.claim_embed_jobs(later, 100).await.expect("claim");
    assert_eq!(
        jobs.iter().map(|j| j.memory_id).collect::<Vec<_>>(),
        [id(4)]
    );
}

/// A summary's check of its sources' facts: 3 of 4 kept.
const CHECK: FactCheck = FactCheck { facts: 4, kept: 3 };

async fn summary_replaces_its_sources_atomically(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let sc = scope("acme");
    let sources: Vec<Memory> = (1..=3u128)
        .map(|n| mem("acme", n, &format!("draft iteration {n}")))
        .collect();
    insert(s, "acme", &sources).await;
    let at = base() + TimeDelta::hours(3);
    let summary = Memory {
        compacted_from: vec![id(1), id(2), id(3)],
        category: "draft_iterations".into(),
        ..mem("acme", 10, "Three draft iterations, settled on v3.")
    };
    let rec = || record(Some("acme"), "memory.compact");

    // A source already archived: Conflict, and nothing changes.
    s.set_archived(&sc, &[id(3)], Some(at), record(Some("acme"), "a"))
        .await
        .expect("archive");
    let audit_before = audit_count(s, "acme").await;
    let r = s
        .replace_with_summary(&sc, &summary, CHECK, at, rec())
        .await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
    assert_eq!(
        list_ids(s, "acme", &MemoryFilter::default()).await,
        [id(2), id(1)]
    );
    assert!(matches!(
        s.get_memory(&sc, summary.id).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(audit_count(s, "acme").await, audit_before);
    // An unknown source is no better.
    let ghost = Memory {
        compacted_from: vec![id(1), id(404)],
        ..summary.clone()
    };
    let r = s.replace_with_summary(&sc, &ghost, CHECK, at, rec()).await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
    // A summary of nothing, or of another company, is refused outright.
    let empty = Memory {
        compacted_from: vec![],
        ..summary.clone()
    };
    let r = s.replace_with_summary(&sc, &empty, CHECK, at, rec()).await;
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
    let foreign = Memory {
        company_id: cid("beta"),
        ..summary.clone()
    };
    let r = s
        .replace_with_summary(&sc, &foreign, CHECK, at, rec())
        .await;
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");

    s.set_archived(&sc, &[id(3)], None, record(Some("acme"), "r"))
        .await
        .expect("restore");
    s.replace_with_summary(&sc, &summary, CHECK, at, rec())
        .await
        .expect("replace");
    assert_eq!(audit_count(s, "acme").await, audit_before + 2);
    assert_eq!(
        list_ids(s, "acme", &MemoryFilter::default()).await,
        [summary.id]
    );
    // Its check is the company's context retention in a window holding
    // `at`, and nothing outside it; the admin sees it per company.
    let hour = TimeDelta::hours(1);
    assert_eq!(
        s.retention(&sc, at - hour, at + hour)
            .await
            .expect("retention"),
        CHECK
    );
    assert_eq!(
        s.retention(&sc, at + hour, at + hour * 2)
            .await
            .expect("retention"),
        FactCheck::default()
    );
    let admin = kira_core::auth::Principal::system().admin().expect("admin");
    assert_eq!(
        s.retention_totals(&admin).await.expect("totals"),
        vec![("acme".to_owned(), CHECK)]
    );
    // A check that keeps more than it checked is refused.
    let odd = Memory {
        id: id(12),
        ..summary.clone()
    };
    let r = s
        .replace_with_summary(&sc, &odd, FactCheck { facts: 1, kept: 2 }, at, rec())
        .await;
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
    assert_eq!(
        s.get_memory(&sc, summary.id).await.expect("summary"),
        summary
    );
    for m in s
        .get_memories(&sc, &[id(1), id(2), id(3)])
        .await
        .expect("sources")
    {
        assert_eq!(m.archived_at, Some(at), "{}", m.id);
    }
    // The summary waits for its embedding like any new memory.
    let jobs = s.claim_embed_jobs(base(), 100).await.expect("claim");
    assert!(jobs.iter().any(|j| j.memory_id == summary.id));
    // Another run over the same sources finds them taken.
    let rerun = Memory {
        id: id(11),
        ..summary.clone()
    };
    let r = s.replace_with_summary(&sc, &rerun, CHECK, at, rec()).await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
}

async fn stats_count_live_archived_and_embedded(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let sc = scope("acme");
    assert_eq!(
        s.memory_stats(&sc, "m").await.expect("stats"),
        MemoryStats::default()
    );
    let memories: Vec<Memory> = (1..=5u128).map(|n| mem("acme", n, "x")).collect();
    insert(s, "acme", &memories).await;
    let v = |n| MemoryVector {
        memory_id: id(n),
        vector: vec![0.5],
    };
    s.put_vectors(&sc, "m", &[v(1), v(2), v(3)])
        .await
        .expect("vectors");
    s.put_vectors(&sc, "other", &[v(4)]).await.expect("vectors");
    s.set_archived(
        &sc,
        &[id(1), id(5)],
        Some(base()),
        record(Some("acme"), "a"),
    )
    .await
    .expect("archive");
    assert_eq!(
        s.memory_stats(&sc, "m").await.expect("stats"),
        MemoryStats {
            live: 3,
            archived: 2,
            embedded: 2
        }
    );
    assert_eq!(
        s.memory_stats(&sc, "other").await.expect("stats").embedded,
        1
    );
}

async fn embed_jobs_are_claimed_oldest_first_under_leases(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    create(s, "beta").await;
    // Queued in created_at order: beta's 2 before acme's 3.
    insert(s, "acme", &[mem("acme", 3, "c"), mem("acme", 1, "a")]).await;
    insert(s, "beta", &[mem("beta", 2, "b")]).await;
    let now = base() + TimeDelta::hours(1);
    let ids = |jobs: &[EmbedJob]| jobs.iter().map(|j| j.memory_id).collect::<Vec<_>>();

    let first = s.claim_embed_jobs(now, 2).await.expect("claim");
    assert_eq!(
        first,
        [
            EmbedJob {
                company_id: cid("acme"),
                memory_id: id(1)
            },
            EmbedJob {
                company_id: cid("beta"),
                memory_id: id(2)
            },
        ]
    );
    assert_eq!(
        ids(&s.claim_embed_jobs(now, 10).await.expect("claim")),
        [id(3)]
    );
    assert!(s.claim_embed_jobs(now, 10).await.expect("claim").is_empty());
    assert!(s.claim_embed_jobs(now, 0).await.expect("claim").is_empty());
    // The lease holds through its last instant, then lapses.
    assert!(
        s.claim_embed_jobs(now + EMBED_LEASE, 10)
            .await
            .expect("claim")
            .is_empty()
    );
    let later = now + EMBED_LEASE + TimeDelta::microseconds(1);
    assert_eq!(
        ids(&s.claim_embed_jobs(later, 10).await.expect("claim")),
        [id(1), id(2), id(3)]
    );

    // A stored vector or a dropped job leaves the queue; another
    // company's scope drops nothing.
    s.put_vectors(
        &scope("acme"),
        "m",
        &[MemoryVector {
            memory_id: id(1),
            vector: vec![1.0],
        }],
    )
    .await
    .expect("vectors");
    s.drop_embed_jobs(&scope("acme"), &[id(3), id(2)])
        .await
        .expect("drop");
    let much_later = later + EMBED_LEASE * 2;
    let left = s.claim_embed_jobs(much_later, 10).await.expect("claim");
    assert_eq!(ids(&left), [id(2)], "beta's job stays");
}

async fn concurrent_claimers_never_share_a_job(f: Fresh) {
    let store: Arc<dyn Store> = f.store.clone();
    create(store.as_ref(), "acme").await;
    create(store.as_ref(), "beta").await;
    let a: Vec<Memory> = (0..150u128).map(|n| mem("acme", n, "x")).collect();
    let b: Vec<Memory> = (150..300u128).map(|n| mem("beta", n, "x")).collect();
    insert(store.as_ref(), "acme", &a).await;
    insert(store.as_ref(), "beta", &b).await;
    let now = base() + TimeDelta::hours(1);
    let mut claimers = Vec::new();
    for _ in 0..4 {
        let s = store.clone();
        claimers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let jobs = s.claim_embed_jobs(now, 7).await.expect("claim");
                if jobs.is_empty() {
                    return got;
                }
                got.extend(jobs.into_iter().map(|j| j.memory_id));
            }
        }));
    }
    let mut all = Vec::new();
    for c in claimers {
        all.extend(c.await.expect("claimer"));
    }
    let distinct: BTreeSet<Uuid> = all.iter().copied().collect();
    assert_eq!(all.len(), 300, "every job claimed once");
    assert_eq!(distinct.len(), 300, "no job claimed twice");
}

async fn vectors_round_trip_replace_and_filter(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    create(s, "beta").await;
    let sc = scope("acme");
    let decision = Memory {
        event_type: EventType::Decision,
        ..mem("acme", 2, "b")
    };
    insert(
        s,
        "acme",
        &[mem("acme", 1, "a"), decision, mem("acme", 3, "c")],
    )
    .await;
    insert(s, "beta", &[mem("beta", 9, "z")]).await;
    let v1 = MemoryVector {
        memory_id: id(1),
        vector: vec![0.25, -1.5, f32::MIN_POSITIVE, 3.0e7],
    };
    let v2 = MemoryVector {
        memory_id: id(2),
        vector: vec![1.0, 0.0, 0.0, -0.0],
    };
    let foreign = MemoryVector {
        memory_id: id(9),
        vector: vec![9.0; 4],
    };
    let unknown = MemoryVector {
        memory_id: id(404),
        vector: vec![4.0; 4],
    };
    s.put_vectors(&sc, "minilm", &[v1.clone(), v2.clone(), foreign, unknown])
        .await
        .expect("put");
    let all = MemoryFilter::default();
    assert_eq!(
        s.memory_vectors(&sc, "minilm", &all).await.expect("read"),
        [v1.clone(), v2.clone()],
        "exact floats back; others' ids skipped"
    );
    assert!(
        s.memory_vectors(&scope("beta"), "minilm", &all)
            .await
            .expect("read")
            .is_empty(),
        "beta's memory got no vector from acme's scope"
    );
    assert!(
        s.memory_vectors(&sc, "other", &all)
            .await
            .expect("read")
            .is_empty()
    );
    let decisions = MemoryFilter {
        event_type: Some(EventType::Decision),
        ..Default::default()
    };
    assert_eq!(
        s.memory_vectors(&sc, "minilm", &decisions)
            .await
            .expect("read"),
        std::slice::from_ref(&v2)
    );

    // A new vector replaces the old, the last of duplicates winning.
    let v1b = MemoryVector {
        memory_id: id(1),
        vector: vec![7.0],
    };
    s.put_vectors(&sc, "minilm", &[v1.clone(), v1b.clone()])
        .await
        .expect("replace");
    assert_eq!(
        s.memory_vectors(&sc, "minilm", &all).await.expect("read"),
        [v1b, v2.clone()]
    );
    // One vector per memory: another model's takes its place.
    s.put_vectors(&sc, "other", std::slice::from_ref(&v1))
        .await
        .expect("other model");
    assert_eq!(
        s.memory_vectors(&sc, "minilm", &all).await.expect("read"),
        std::slice::from_ref(&v2)
    );
    assert_eq!(
        s.memory_vectors(&sc, "other", &all).await.expect("read"),
        [v1]
    );

    // Archived memories' vectors follow the archive filter.
    s.set_archived(&sc, &[id(2)], Some(base()), record(Some("acme"), "a"))
        .await
        .expect("archive");
    assert!(
        s.memory_vectors(&sc, "minilm", &all)
            .await
            .expect("read")
            .is_empty()
    );
    assert_eq!(
        s.memory_vectors(&sc, "minilm", &archived(Archived::Include))
            .await
            .expect("read"),
        [v2]
    );
}

async fn forced_company_delete_removes_its_memory(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    create(s, "beta").await;
    let memories: Vec<Memory> = (1..=4u128)
        .map(|n| mem("acme", n, "secret plans"))
        .collect();
    insert(s, "acme", &memories).await;
    insert(s, "beta", &[mem("beta", 10, "secret plans")]).await;
    s.put_vectors(
        &scope("acme"),
        "m",
        &[MemoryVector {
            memory_id: id(1),
            vector: vec![1.0],
        }],
    )
    .await
    .expect("vectors");

    let deleted = s
        .delete_company(&scope("acme"), record(Some("acme"), "company.delete"))
        .await
        .expect("delete");
    let count = |t: &str| deleted.tables.iter().find(|(n, _)| n == t).map(|(_, n)| *n);
    assert_eq!(count("memories"), Some(4));
    assert_eq!(count("memory_vectors"), Some(1));
    assert_eq!(count("memory_embed_queue"), Some(3));
    assert!(
        list_ids(s, "acme", &archived(Archived::Include))
            .await
            .is_empty()
    );
    assert!(
        search_ids(s, "acme", "secret", &MemoryFilter::default())
            .await
            .is_empty()
    );
    // The id may be used again by a new company of that name.
    create(s, "acme").await;
    insert(s, "acme", &[mem("acme", 1, "fresh start")]).await;
    assert_eq!(
        search_ids(s, "acme", "secret fresh", &MemoryFilter::default()).await,
        [id(1)]
    );
    // Beta keeps everything, its queued job included.
    assert_eq!(
        search_ids(s, "beta", "secret", &MemoryFilter::default()).await,
        [id(10)]
    );
    let jobs = s.claim_embed_jobs(base(), 100).await.expect("claim");
    assert_eq!(
        jobs.iter().map(|j| j.memory_id).collect::<BTreeSet<_>>(),
        BTreeSet::from([id(1), id(10)])
    );
}

async fn another_company_can_neither_see_nor_touch_memories(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    create(s, "beta").await;
    let a = Memory {
        indexed_terms: vec!["globex".into()],
        ..mem("acme", 1, "Confidential merger with Globex")
    };
    let a2 = mem("acme", 2, "Confidential board minutes");
    insert(s, "acme", &[a.clone(), a2.clone()]).await;
    s.put_vectors(
        &scope("acme"),
        "m",
        &[MemoryVector {
            memory_id: a.id,
            vector: vec![1.0],
        }],
    )
    .await
    .expect("vectors");
    s.set_archived(
        &scope("acme"),
        &[a2.id],
        Some(base()),
        record(Some("acme"), "a"),
    )
    .await
    .expect("archive");
    insert(s, "beta", &[mem("beta", 3, "Beta's own note")]).await;

    let b = scope("beta");
    let rec = || record(Some("beta"), "memory.write");
    let include = archived(Archived::Include);
    assert!(matches!(
        s.get_memory(&b, a.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(
        s.get_memories(&b, &[a.id, a2.id])
            .await
            .expect("get")
            .is_empty()
    );
    assert_eq!(list_ids(s, "beta", &include).await, [id(3)]);
    assert!(
        search_ids(s, "beta", "confidential merger globex", &include)
            .await
            .is_empty()
    );
    let term = MemoryFilter {
        term: Some("globex".into()),
        archived: Archived::Include,
        ..Default::default()
    };
    assert!(list_ids(s, "beta", &term).await.is_empty());
    assert!(
        s.memory_vectors(&b, "m", &include)
            .await
            .expect("vectors")
            .is_empty()
    );
    assert_eq!(
        s.memory_stats(&b, "m").await.expect("stats"),
        MemoryStats {
            live: 1,
            archived: 0,
            embedded: 0
        }
    );

    // Writes through beta's scope change nothing of acme's.
    assert_eq!(
        s.set_archived(&b, &[a.id], Some(base()), rec())
            .await
            .expect("archive"),
        0
    );
    assert_eq!(
        s.set_archived(&b, &[a2.id], None, rec())
            .await
            .expect("restore"),
        0
    );
    assert!(matches!(
        s.delete_memory(&b, a.id, rec()).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        s.purge_archived(&b, base() + TimeDelta::days(1), rec())
            .await
            .expect("purge"),
        0
    );
    let steal = Memory {
        compacted_from: vec![a.id],
        ..mem("beta", 4, "summary")
    };
    let r = s
        .replace_with_summary(&b, &steal, CHECK, base(), rec())
        .await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
    let r = s
        .insert_memories(&b, &[mem("acme", 5, "forged")], rec())
        .await;
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
    s.put_vectors(
        &b,
        "m",
        &[MemoryVector {
            memory_id: a2.id,
            vector: vec![6.0],
        }],
    )
    .await
    .expect("put");
    s.drop_embed_jobs(&b, &[a2.id]).await.expect("drop");

    let acme = scope("acme");
    assert_eq!(s.get_memory(&acme, a.id).await.expect("still there"), a);
    assert_eq!(
        s.get_memory(&acme, a2.id)
            .await
            .expect("still there")
            .archived_at,
        Some(base())
    );
    assert_eq!(
        s.memory_stats(&acme, "m").await.expect("stats"),
        MemoryStats {
            live: 1,
            archived: 1,
            embedded: 1
        }
    );
    assert!(matches!(
        s.get_memory(&acme, id(4)).await,
        Err(StoreError::NotFound)
    ));
    let jobs = s.claim_embed_jobs(base(), 100).await.expect("claim");
    assert!(
        jobs.iter().any(|j| j.memory_id == a2.id),
        "acme's job survives beta's drop"
    );
}

mod isolation_property {
    //! For any interleaving of writes by three companies, each aimed at
    //! any company's memories, a company's reads (list, search, stats,
    //! vectors) show exactly its own memories in the state its own writes
    //! left them.

    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};

    use proptest::prelude::*;

    use super::*;

    const COMPANIES: usize = 3;
    const WORDS: [&str; 3] = ["alpha", "bravo", "charlie"];

    #[derive(Debug, Clone)]
    enum Op {
        Insert {
            by: usize,
            word: usize,
        },
        /// `target` picks among every memory made so far, any company's.
        Archive {
            by: usize,
            target: usize,
        },
        Restore {
            by: usize,
            target: usize,
        },
        Delete {
            by: usize,
            target: usize,
        },
        Vector {
            by: usize,
            target: usize,
        },
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        let c = 0..COMPANIES;
        let t = 0..64usize;
        let op = prop_oneof![
            3 => (c.clone(), 0..WORDS.len()).prop_map(|(by, word)| Op::Insert { by, word }),
            1 => (c.clone(), t.clone()).prop_map(|(by, target)| Op::Archive { by, target }),
            1 => (c.clone(), t.clone()).prop_map(|(by, target)| Op::Restore { by, target }),
            1 => (c.clone(), t.clone()).prop_map(|(by, target)| Op::Delete { by, target }),
            1 => (c, t).prop_map(|(by, target)| Op::Vector { by, target }),
        ];
        proptest::collection::vec(op, 1..30)
    }

    struct Model {
        owner: usize,
        word: usize,
        archived: bool,
        vector: bool,
    }

    /// Ids and company names unique across cases: the store is shared.
    static NEXT: AtomicU64 = AtomicU64::new(1_000_000);

    fn fail(e: StoreError) -> TestCaseError {
        TestCaseError::fail(e.to_string())
    }

    async fn check(s: &dyn Store, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let case = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = |i: usize| format!("p{case}-{i}");
        for i in 0..COMPANIES {
            create(s, &name(i)).await;
        }
        let mut made: Vec<Uuid> = Vec::new();
        let mut model: BTreeMap<Uuid, Model> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Insert { by, word } => {
                    let n = u128::from(NEXT.fetch_add(1, Ordering::SeqCst));
                    let m = mem(&name(by), n, &format!("{} memo", WORDS[word]));
                    s.insert_memories(
                        &scope(&name(by)),
                        std::slice::from_ref(&m),
                        record(Some(&name(by)), "memory.add"),
                    )
                    .await
                    .map_err(fail)?;
                    made.push(m.id);
                    model.insert(
                        m.id,
                        Model {
                            owner: by,
                            word,
                            archived: false,
                            vector: false,
                        },
                    );
                }
                Op::Archive { by, target } | Op::Restore { by, target } => {
                    let Some(&id) = made.get(target % made.len().max(1)) else {
                        continue;
                    };
                    let archive = matches!(op, Op::Archive { .. });
                    let n = s
                        .set_archived(
                            &scope(&name(by)),
                            &[id],
                            archive.then(base),
                            record(Some(&name(by)), "memory.archive"),
                        )
                        .await
                        .map_err(fail)?;
                    let expected = match model.get_mut(&id) {
                        Some(m) if m.owner == by && m.archived != archive => {
                            m.archived = archive;
                            1
                        }
                        _ => 0,
                    };
                    prop_assert_eq!(n, expected);
                }
                Op::Delete { by, target } => {
                    let Some(&id) = made.get(target % made.len().max(1)) else {
                        continue;
                    };
                    let r = s
                        .delete_memory(
                            &scope(&name(by)),
                            id,
                            record(Some(&name(by)), "memory.delete"),
                        )
                        .await;
                    match model.get(&id) {
                        Some(m) if m.owner == by => {
                            r.map_err(fail)?;
                            model.remove(&id);
                        }
                        _ => prop_assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}"),
                    }
                }
                Op::Vector { by, target } => {
                    let Some(&id) = made.get(target % made.len().max(1)) else {
                        continue;
                    };
                    let v = MemoryVector {
                        memory_id: id,
                        vector: vec![1.0],
                    };
                    s.put_vectors(&scope(&name(by)), "m", &[v])
                        .await
                        .map_err(fail)?;
                    if let Some(m) = model.get_mut(&id).filter(|m| m.owner == by) {
                        m.vector = true;
                    }
                }
            }
        }
        let include = archived(Archived::Include);
        for c in 0..COMPANIES {
            let sc = scope(&name(c));
            let own = |pred: &dyn Fn(&Model) -> bool| -> BTreeSet<Uuid> {
                model
                    .iter()
                    .filter(|(_, m)| m.owner == c && pred(m))
                    .map(|(id, _)| *id)
                    .collect()
            };
            let listed: BTreeSet<Uuid> = s
                .list_memories(&sc, &include, None, 1000)
                .await
                .map_err(fail)?
                .into_iter()
                .map(|m| m.id)
                .collect();
            prop_assert_eq!(listed, own(&|_| true));
            for (w, word) in WORDS.iter().enumerate() {
                let found: BTreeSet<Uuid> = s
                    .search_memories(&sc, word, &MemoryFilter::default(), 1000)
                    .await
                    .map_err(fail)?
                    .into_iter()
                    .map(|h| h.memory.id)
                    .collect();
                prop_assert_eq!(found, own(&|m| m.word == w && !m.archived));
            }
            let vectors: BTreeSet<Uuid> = s
                .memory_vectors(&sc, "m", &include)
                .await
                .map_err(fail)?
                .into_iter()
                .map(|v| v.memory_id)
                .collect();
            prop_assert_eq!(vectors, own(&|m| m.vector));
            let stats = s.memory_stats(&sc, "m").await.map_err(fail)?;
            prop_assert_eq!(stats.live as usize, own(&|m| !m.archived).len());
            prop_assert_eq!(stats.archived as usize, own(&|m| m.archived).len());
            prop_assert_eq!(
                stats.embedded as usize,
                own(&|m| m.vector && !m.archived).len()
            );
        }
        Ok(())
    }

    fn run(open: crate::support::Open) {
        crate::support::property(
            "memory isolation",
            open,
            24,
            ops(),
            |store, ops| async move { check(store.as_ref(), ops).await },
        );
    }

    #[test]
    fn sqlite_memories_stay_with_their_company() {
        run(|| Box::pin(crate::support::sqlite()));
    }

    #[test]
    fn postgres_memories_stay_with_their_company() {
        run(|| Box::pin(crate::support::postgres()));
    }
}
