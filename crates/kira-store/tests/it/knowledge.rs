//! The shared knowledge base on both backends: upsert by (domain, key),
//! batches in one transaction, lists with filters and cursors, full-text
//! search with OR semantics, deletes, and vectors.

use chrono::{SubsecRound, TimeDelta};
use kira_core::auth::{AdminScope, Principal};
use kira_core::knowledge::{KnowledgeEntry, NewKnowledge};
use kira_store::knowledge::{KnowledgeCursor, KnowledgeFilter, KnowledgeVector};
use kira_store::{AuditPage, StoreError};
use uuid::Uuid;

use crate::support::{Fresh, cid, create, record, scope, t0};

conformance!(
    knowledge_upsert_updates_by_domain_and_key,
    knowledge_batch_is_one_transaction,
    knowledge_lists_filter_and_page,
    knowledge_search_matches_any_word,
    knowledge_vectors_follow_the_text,
    conflict_flags_are_idempotent_and_resolvable,
);

fn admin() -> AdminScope {
    Principal::system().admin().expect("system is admin")
}

fn entry(domain: &str, key: &str, title: &str, body: &str, tags: &[&str]) -> KnowledgeEntry {
    NewKnowledge {
        domain: domain.into(),
        key: key.into(),
        title: title.into(),
        body: body.into(),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        jurisdiction: None,
        industry: None,
    }
    .validate(Uuid::now_v7(), t0())
    .expect("valid entry")
}

fn seed() -> Vec<KnowledgeEntry> {
    vec![
        KnowledgeEntry {
            jurisdiction: Some("US-DE".into()),
            industry: Some("fintech".into()),
            ..entry(
                "legal_frameworks",
                "delaware_corp",
                "Delaware corporations",
                "Directors owe fiduciary duties of care and loyalty.",
                &["corporate", "governance"],
            )
        },
        KnowledgeEntry {
            jurisdiction: Some("GB".into()),
            ..entry(
                "legal_frameworks",
                "uk_gdpr",
                "UK GDPR",
                "Personal data needs a lawful basis; breaches are reported within 72 hours.",
                &["privacy"],
            )
        },
        entry(
            "business_patterns",
            "saas_metrics",
            "SaaS metrics",
            "Net revenue retention, churn and CAC payback.",
            &["saas", "metrics"],
        ),
        KnowledgeEntry {
            industry: Some("fintech".into()),
            ..entry(
                "industry_standards",
                "pci_dss",
                "PCI DSS",
                "Cardholder data must be encrypted at rest and in transit.",
                &["security", "payments"],
            )
        },
    ]
}

async fn audit_actions(f: &Fresh) -> Vec<String> {
    f.store
        .list_all_audit(
            &admin(),
            None,
            AuditPage {
                after_seq: 0,
                limit: 1000,
            },
            record(None, "audit.list"),
        )
        .await
        .expect("audit")
        .into_iter()
        .map(|e| e.action)
        .collect()
}

async fn knowledge_upsert_updates_by_domain_and_key(f: Fresh) {
    let s = f.store.as_ref();
    let stored = s
        .upsert_knowledge(&admin(), &seed(), record(None, "knowledge.upsert"))
        .await
        .expect("upsert");
    assert_eq!(stored.len(), 4);
    let first = stored[0].clone();
    assert_eq!(first.created_at.timestamp_subsec_nanos() % 1000, 0);
    assert_eq!(s.get_knowledge(first.id).await.expect("get"), first);

    // The same (domain, key) again, under a new id and a later time: an update.
    let later = t0() + TimeDelta::hours(2);
    let again = KnowledgeEntry {
        id: Uuid::now_v7(),
        body: "Directors owe fiduciary duties; the business judgment rule protects them.".into(),
        updated_at: later,
        created_at: later,
        ..first.clone()
    };
    let upd = s
        .upsert_knowledge(&admin(), &[again], record(None, "knowledge.upsert"))
        .await
        .expect("update")
        .remove(0);
    assert_eq!(upd.id, first.id, "the stored id is kept");
    assert_eq!(upd.created_at, first.created_at);
    assert_eq!(upd.updated_at, later.trunc_subsecs(6));
    assert!(upd.body.contains("business judgment"));
    assert_eq!(s.get_knowledge(first.id).await.expect("get"), upd);
    let all = s
        .list_knowledge(&KnowledgeFilter::default(), None, 100)
        .await
        .expect("list");
    assert_eq!(all.len(), 4, "no second row for the pair");

    assert!(matches!(
        s.get_knowledge(Uuid::now_v7()).await,
        Err(StoreError::NotFound)
    ));

    s.delete_knowledge(&admin(), first.id, record(None, "knowledge.delete"))
        .await
        .expect("delete");
    assert!(matches!(
        s.get_knowledge(first.id).await,
        Err(StoreError::NotFound)
    ));
    let r = s
        .delete_knowledge(&admin(), first.id, record(None, "knowledge.delete"))
        .await;
    assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");

    let actions = audit_actions(&f).await;
    assert_eq!(
        actions
            .iter()
            .filter(|a| a.starts_with("knowledge."))
            .collect::<Vec<_>>(),
        ["knowledge.upsert", "knowledge.upsert", "knowledge.delete"],
        "each write audited once, a failed delete not at all"
    );
}

async fn knowledge_batch_is_one_transaction(f: Fresh) {
    let s = f.store.as_ref();
    let mut batch = seed();
    let mut dup = batch[0].clone();
    dup.id = Uuid::now_v7();
    batch.push(dup);
    let r = s
        .upsert_knowledge(&admin(), &batch, record(None, "knowledge.upsert"))
        .await;
    assert!(
        matches!(&r, Err(StoreError::Invalid(v)) if v.field == "entries.4.key"),
        "{r:?}"
    );
    let r = s
        .upsert_knowledge(&admin(), &[], record(None, "knowledge.upsert"))
        .await;
    assert!(
        matches!(&r, Err(StoreError::Invalid(v)) if v.field == "entries"),
        "{r:?}"
    );
    let big: Vec<_> = (0..=kira_store::knowledge::MAX_BATCH)
        .map(|i| entry("business_patterns", &format!("k{i}"), "T", "B", &[]))
        .collect();
    let r = s
        .upsert_knowledge(&admin(), &big, record(None, "knowledge.upsert"))
        .await;
    assert!(matches!(&r, Err(StoreError::Invalid(_))), "{r:?}");
    // An id stored under another pair fails the whole batch at the database.
    s.upsert_knowledge(&admin(), &seed()[..1], record(None, "knowledge.upsert"))
        .await
        .expect("one");
    let stored = s
        .list_knowledge(&KnowledgeFilter::default(), None, 10)
        .await
        .expect("list");
    let clash = KnowledgeEntry {
        key: "other_key".into(),
        ..stored[0].clone()
    };
    let fresh = entry("business_patterns", "fresh", "Fresh", "Fresh body", &[]);
    let r = s
        .upsert_knowledge(&admin(), &[fresh, clash], record(None, "knowledge.upsert"))
        .await;
    assert!(matches!(&r, Err(StoreError::Conflict(_))), "{r:?}");
    let after = s
        .list_knowledge(&KnowledgeFilter::default(), None, 10)
        .await
        .expect("list");
    assert_eq!(after, stored, "nothing of the failed batch was written");

    // The largest batch goes in at once.
    let max: Vec<_> = (0..kira_store::knowledge::MAX_BATCH)
        .map(|i| entry("business_patterns", &format!("k{i:04}"), "T", "B", &[]))
        .collect();
    s.upsert_knowledge(&admin(), &max, record(None, "knowledge.upsert"))
        .await
        .expect("1000 entries");
    let filter = KnowledgeFilter {
        domain: Some("business_patterns".into()),
        ..Default::default()
    };
    let n = s
        .list_knowledge(&filter, None, 2000)
        .await
        .expect("list")
        .len();
    assert_eq!(n, kira_store::knowledge::MAX_BATCH);
}

async fn knowledge_lists_filter_and_page(f: Fresh) {
    let s = f.store.as_ref();
    s.upsert_knowledge(&admin(), &seed(), record(None, "knowledge.upsert"))
        .await
        .expect("upsert");
    let keys = |v: Vec<KnowledgeEntry>| v.into_iter().map(|e| e.key).collect::<Vec<_>>();
    let all = KnowledgeFilter::default();
    assert_eq!(
        keys(s.list_knowledge(&all, None, 100).await.expect("list")),
        ["saas_metrics", "pci_dss", "delaware_corp", "uk_gdpr"],
        "(domain, key) order"
    );
    let page1 = s.list_knowledge(&all, None, 3).await.expect("page");
    let cursor = KnowledgeCursor::of(page1.last().expect("last"));
    let cursor = KnowledgeCursor::decode(&cursor.encode()).expect("round trip");
    let page2 = s
        .list_knowledge(&all, Some(&cursor), 3)
        .await
        .expect("page");
    assert_eq!(keys(page2), ["uk_gdpr"]);

    let cases: Vec<(KnowledgeFilter, Vec<&str>)> = vec![
        (
            KnowledgeFilter {
                domain: Some("legal_frameworks".into()),
                ..Default::default()
            },
            vec!["delaware_corp", "uk_gdpr"],
        ),
        (
            KnowledgeFilter {
                tag: Some("Privacy".into()),
                ..Default::default()
            },
            vec!["uk_gdpr"],
        ),
        (
            KnowledgeFilter {
                jurisdiction: Some("US-DE".into()),
                ..Default::default()
            },
            vec!["delaware_corp"],
        ),
        (
            KnowledgeFilter {
                industry: Some(" FinTech".into()),
                ..Default::default()
            },
            vec!["pci_dss", "delaware_corp"],
        ),
        (
            KnowledgeFilter {
                industry: Some("fintech".into()),
                domain: Some("legal_frameworks".into()),
                ..Default::default()
            },
            vec!["delaware_corp"],
        ),
        (
            KnowledgeFilter {
                tag: Some("nothing".into()),
                ..Default::default()
            },
            vec![],
        ),
    ];
    for (filter, expected) in cases {
        assert_eq!(
            keys(s.list_knowledge(&filter, None, 100).await.expect("list")),
            expected,
            "{filter:?}"
        );
    }
}

async fn knowledge_search_matches_any_word(f: Fresh) {
    let s = f.store.as_ref();
    s.upsert_knowledge(&admin(), &seed(), record(None, "knowledge.upsert"))
        .await
        .expect("upsert");
    let all = KnowledgeFilter::default();
    let keys = |hits: Vec<kira_store::knowledge::KnowledgeHit>| {
        let mut k: Vec<_> = hits.into_iter().map(|h| h.entry.key).collect();
        k.sort();
        k
    };
    // Either word is enough; stemming finds "encrypted" from "encryption".
    assert_eq!(
        keys(
            s.search_knowledge("fiduciary encryption", &all, 10)
                .await
                .expect("search")
        ),
        ["delaware_corp", "pci_dss"]
    );
    // Tags and titles are searched.
    assert_eq!(
        keys(
            s.search_knowledge("governance", &all, 10)
                .await
                .expect("tag")
        ),
        ["delaware_corp"]
    );
    assert_eq!(
        keys(s.search_knowledge("gdpr", &all, 10).await.expect("title")),
        ["uk_gdpr"]
    );
    // Operators and quotes are plain separators, never syntax errors. (SQLite
    // keeps stop words, PostgreSQL drops them: no word here is in the corpus.)
    for q in [
        "\"churn\" OR (x*) NOT -",
        "churn' ; DROP TABLE knowledge; --",
        "NEAR(churn retention)",
    ] {
        assert_eq!(
            keys(s.search_knowledge(q, &all, 10).await.expect("sanitised")),
            ["saas_metrics"],
            "{q}"
        );
    }
    assert!(
        s.search_knowledge("  \"* ", &all, 10)
            .await
            .expect("empty")
            .is_empty()
    );
    assert!(
        s.search_knowledge("zyxwvut", &all, 10)
            .await
            .expect("none")
            .is_empty()
    );
    // Filters narrow; the limit holds; the best match comes first.
    let legal = KnowledgeFilter {
        domain: Some("legal_frameworks".into()),
        ..Default::default()
    };
    assert!(
        s.search_knowledge("encryption", &legal, 10)
            .await
            .expect("filtered")
            .is_empty()
    );
    let hits = s
        .search_knowledge("data fiduciary", &all, 1)
        .await
        .expect("limit");
    assert_eq!(hits.len(), 1);
    let hits = s
        .search_knowledge("PCI cardholder data", &all, 10)
        .await
        .expect("rank");
    assert_eq!(hits[0].entry.key, "pci_dss", "{hits:?}");
    assert!(hits.windows(2).all(|w| w[0].relevance >= w[1].relevance));
    // A deleted entry is no longer found.
    s.delete_knowledge(&admin(), hits[0].entry.id, record(None, "knowledge.delete"))
        .await
        .expect("delete");
    assert!(
        s.search_knowledge("cardholder", &all, 10)
            .await
            .expect("gone")
            .is_empty()
    );
}

async fn knowledge_vectors_follow_the_text(f: Fresh) {
    let s = f.store.as_ref();
    let stored = s
        .upsert_knowledge(&admin(), &seed(), record(None, "knowledge.upsert"))
        .await
        .expect("upsert");
    let model = "minilm";
    let todo = s.knowledge_without_vectors(model, 10).await.expect("todo");
    assert_eq!(todo.len(), 4);
    assert_eq!(
        s.knowledge_without_vectors(model, 2)
            .await
            .expect("limited")
            .len(),
        2
    );
    let vectors: Vec<_> = stored
        .iter()
        .enumerate()
        .map(|(i, e)| KnowledgeVector {
            entry_id: e.id,
            vector: vec![i as f32, 0.5, -1.0],
        })
        .chain([KnowledgeVector {
            entry_id: Uuid::now_v7(),
            vector: vec![1.0],
        }])
        .collect();
    s.put_knowledge_vectors(&admin(), model, &vectors)
        .await
        .expect("put");
    assert!(
        s.knowledge_without_vectors(model, 10)
            .await
            .expect("none")
            .is_empty()
    );
    assert_eq!(
        s.knowledge_without_vectors("other-model", 10)
            .await
            .expect("other")
            .len(),
        4
    );
    let got = s
        .knowledge_vectors(model, &KnowledgeFilter::default())
        .await
        .expect("vectors");
    assert_eq!(got.len(), 4, "the unknown id was skipped");
    let fintech = KnowledgeFilter {
        industry: Some("fintech".into()),
        ..Default::default()
    };
    let mut got = s
        .knowledge_vectors(model, &fintech)
        .await
        .expect("filtered");
    got.sort_by_key(|v| v.entry_id);
    let mut expected: Vec<_> = vectors
        .iter()
        .filter(|v| [stored[0].id, stored[3].id].contains(&v.entry_id))
        .cloned()
        .collect();
    expected.sort_by_key(|v| v.entry_id);
    assert_eq!(got, expected);

    // Replacing a vector keeps one per (entry, model).
    s.put_knowledge_vectors(
        &admin(),
        model,
        &[KnowledgeVector {
            entry_id: stored[1].id,
            vector: vec![9.0],
        }],
    )
    .await
    .expect("replace");
    let got = s
        .knowledge_vectors(model, &KnowledgeFilter::default())
        .await
        .expect("vectors");
    assert_eq!(got.len(), 4);
    assert!(got.contains(&KnowledgeVector {
        entry_id: stored[1].id,
        vector: vec![9.0]
    }));

    // Same text again keeps the vector; new text drops it for re-embedding.
    let same = KnowledgeEntry {
        updated_at: t0() + TimeDelta::hours(1),
        ..stored[2].clone()
    };
    s.upsert_knowledge(&admin(), &[same], record(None, "knowledge.upsert"))
        .await
        .expect("same text");
    assert!(
        s.knowledge_without_vectors(model, 10)
            .await
            .expect("none")
            .is_empty()
    );
    let changed = KnowledgeEntry {
        body: "Gross margin and the rule of 40.".into(),
        ..stored[2].clone()
    };
    s.upsert_knowledge(&admin(), &[changed], record(None, "knowledge.upsert"))
        .await
        .expect("new text");
    let todo = s.knowledge_without_vectors(model, 10).await.expect("todo");
    assert_eq!(
        todo.iter().map(|e| e.id).collect::<Vec<_>>(),
        [stored[2].id]
    );

    // Deleting the entry removes its vector.
    s.delete_knowledge(&admin(), stored[0].id, record(None, "knowledge.delete"))
        .await
        .expect("delete");
    let got = s
        .knowledge_vectors(model, &KnowledgeFilter::default())
        .await
        .expect("vectors");
    assert!(got.iter().all(|v| v.entry_id != stored[0].id));
    assert_eq!(got.len(), 2);
}

async fn conflict_flags_are_idempotent_and_resolvable(f: Fresh) {
    use kira_core::conflict::ConflictStatus;
    let s = f.store.as_ref();
    for c in ["acme", "beta", "gamma"] {
        create(s, c).await;
    }
    let (acme, beta, gamma) = (cid("acme"), cid("beta"), cid("gamma"));
    let (m1, m2, m3) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let flag = |a, b, ids: Vec<Uuid>| {
        let (a, b): (&kira_core::CompanyId, &kira_core::CompanyId) = (a, b);
        async move {
            s.flag_conflict(
                &admin(),
                Uuid::now_v7(),
                a,
                b,
                "  Globex   Corp ",
                &ids,
                t0(),
                record(None, "conflict.flag"),
            )
            .await
            .expect("flag")
        }
    };
    assert!(!s.conflict_open(&admin(), &acme, &beta).await.expect("none"));
    let made = flag(&beta, &acme, vec![m1, m2]).await.expect("a new flag");
    assert_eq!(
        (made.company_a.as_str(), made.company_b.as_str()),
        ("acme", "beta")
    );
    assert_eq!(made.counterparty, "globex corp");
    assert_eq!(made.status, ConflictStatus::Open);
    assert!(
        flag(&acme, &beta, vec![m2, m1]).await.is_none(),
        "same ids: nothing changes"
    );
    let grown = flag(&acme, &beta, vec![m3]).await.expect("grows");
    assert_eq!(grown.id, made.id);
    assert_eq!(grown.memory_ids, [m1, m2, m3]);
    assert!(s.conflict_open(&admin(), &beta, &acme).await.expect("open"));
    assert!(!s.conflict_open(&admin(), &acme, &gamma).await.expect("not"));
    assert!(!s.conflict_open(&admin(), &acme, &acme).await.expect("self"));
    let r = s
        .flag_conflict(
            &admin(),
            Uuid::now_v7(),
            &acme,
            &acme,
            "x",
            &[m1],
            t0(),
            record(None, "conflict.flag"),
        )
        .await;
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");

    let resolved = s
        .resolve_conflict(
            &admin(),
            made.id,
            "separate deals",
            t0(),
            record(None, "conflict.resolve"),
        )
        .await
        .expect("resolve");
    assert_eq!(resolved.status, ConflictStatus::Resolved);
    assert_eq!(resolved.resolved_by.as_deref(), Some("system"));
    assert_eq!(resolved.note.as_deref(), Some("separate deals"));
    assert!(resolved.resolved_at.is_some());
    let r = s
        .resolve_conflict(
            &admin(),
            made.id,
            "again",
            t0(),
            record(None, "conflict.resolve"),
        )
        .await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
    let r = s
        .resolve_conflict(
            &admin(),
            Uuid::now_v7(),
            "?",
            t0(),
            record(None, "conflict.resolve"),
        )
        .await;
    assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
    assert!(
        !s.conflict_open(&admin(), &acme, &beta)
            .await
            .expect("resolved")
    );
    assert!(
        flag(&acme, &beta, vec![m1]).await.is_none(),
        "a human saw these memories"
    );
    let again = flag(&acme, &beta, vec![Uuid::now_v7()])
        .await
        .expect("new evidence");
    assert_ne!(again.id, made.id);
    flag(&beta, &gamma, vec![m1]).await.expect("another pair");

    let all = |status| async move {
        s.list_conflicts(&admin(), status, record(None, "conflict.list"))
            .await
            .expect("list")
    };
    assert_eq!(all(None).await.len(), 3);
    assert_eq!(all(Some(ConflictStatus::Open)).await.len(), 2);
    assert_eq!(all(Some(ConflictStatus::Resolved)).await[0].id, made.id);

    // A forced delete of a company removes the flags naming it.
    let deleted = s
        .delete_company(&scope("acme"), record(Some("acme"), "company.delete"))
        .await
        .expect("delete");
    assert!(
        deleted.tables.contains(&("conflicts".to_owned(), 2)),
        "{deleted:?}"
    );
    let left = all(None).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].company_a.as_str(), "beta");
    let actions = audit_actions(&f).await;
    // Each of the 4 flags made or grown: the admin's entry and a notice
    // under each of its two companies (issue 17).
    assert_eq!(actions.iter().filter(|a| *a == "conflict.flag").count(), 12);
    assert_eq!(
        actions.iter().filter(|a| *a == "conflict.resolve").count(),
        1
    );
}
