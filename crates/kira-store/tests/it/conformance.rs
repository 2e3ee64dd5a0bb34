//! The storage conformance suite: every scenario runs on SQLite and on
//! PostgreSQL and must behave the same.

use std::sync::Arc;

use chrono::TimeDelta;
use kira_core::audit::{GENESIS, Outcome};
use kira_core::auth::{NewKey, Principal, Role};
use kira_core::company::CompanyPatch;
use kira_store::{AuditPage, StoreError};
use rand::SeedableRng;

use crate::support::{Fresh, cid, create, record, scope, t0};

conformance!(
    company_round_trip,
    duplicate_company_conflicts,
    update_applies_a_valid_patch_and_refuses_an_invalid_one,
    archive_freezes_and_hides_from_default_list,
    forced_delete_removes_every_row_but_the_audit_log,
    keys_bootstrap_once_then_insert_find_list_revoke,
    audit_chain_pages_filters_and_verifies,
    concurrent_appends_keep_one_chain,
    batched_appends_are_in_order_on_the_chain,
    every_company_change_moves_the_directory_version,
    a_failed_change_writes_nothing,
);

fn all_page() -> AuditPage {
    AuditPage {
        after_seq: 0,
        limit: 1000,
    }
}

fn admin() -> kira_core::auth::AdminScope {
    Principal::system().admin().expect("system is admin")
}

async fn company_round_trip(f: Fresh) {
    let s = f.store.as_ref();
    let made = create(s, "acme").await;
    assert_eq!(made.id.as_str(), "acme");
    assert_eq!(made.profile.revenue_usd, 4_200_000);
    assert_eq!(made.profile.priority_multiplier, 1.0);
    assert_eq!(made.profile.contacts.len(), 1);
    assert!(made.profile.sharing_consent.contains("process_templates"));
    assert_eq!(
        made.created_at.timestamp_subsec_nanos() % 1000,
        0,
        "kept to microseconds"
    );
    assert_eq!(made.archived_at, None);
    let got = s.get_company(&scope("acme")).await.expect("get");
    assert_eq!(got, made);
    assert!(matches!(
        s.get_company(&scope("ghost")).await,
        Err(StoreError::NotFound)
    ));
}

async fn duplicate_company_conflicts(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let (_, p) = crate::support::new_company("acme")
        .validate()
        .expect("valid");
    let r = s
        .create_company(
            &scope("acme"),
            &p,
            t0(),
            record(Some("acme"), "company.create"),
        )
        .await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
}

async fn update_applies_a_valid_patch_and_refuses_an_invalid_one(f: Fresh) {
    let s = f.store.as_ref();
    let made = create(s, "acme").await;
    let later = t0() + TimeDelta::hours(1);
    let patch = CompanyPatch {
        name: Some("Acme Holdings".into()),
        sla_response_seconds: Some(60),
        ..Default::default()
    };
    let upd = s
        .update_company(
            &scope("acme"),
            patch,
            later,
            record(Some("acme"), "company.update"),
        )
        .await
        .expect("update");
    assert_eq!(upd.profile.name, "Acme Holdings");
    assert_eq!(upd.profile.sla_response_seconds, 60);
    assert_eq!(upd.profile.industry, made.profile.industry);
    assert_eq!(upd.created_at, made.created_at);
    assert!(upd.updated_at > made.updated_at);
    let bad = CompanyPatch {
        complexity_score: Some(2.0),
        ..Default::default()
    };
    let r = s
        .update_company(
            &scope("acme"),
            bad,
            later,
            record(Some("acme"), "company.update"),
        )
        .await;
    assert!(
        matches!(&r, Err(StoreError::Invalid(v)) if v.field == "complexity_score"),
        "{r:?}"
    );
    assert_eq!(s.get_company(&scope("acme")).await.expect("get"), upd);
    let r = s
        .update_company(
            &scope("ghost"),
            CompanyPatch::default(),
            later,
            record(Some("ghost"), "x"),
        )
        .await;
    assert!(matches!(r, Err(StoreError::NotFound)));
}

async fn archive_freezes_and_hides_from_default_list(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    create(s, "beta").await;
    let a = s
        .archive_company(
            &scope("acme"),
            t0(),
            record(Some("acme"), "company.archive"),
        )
        .await
        .expect("archive");
    assert!(a.is_archived());
    let again = s
        .archive_company(
            &scope("acme"),
            t0(),
            record(Some("acme"), "company.archive"),
        )
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))));
    let upd = s
        .update_company(
            &scope("acme"),
            CompanyPatch {
                revenue_usd: Some(1),
                ..Default::default()
            },
            t0(),
            record(Some("acme"), "u"),
        )
        .await;
    assert!(matches!(upd, Err(StoreError::Conflict(_))));
    let live: Vec<_> = s
        .list_companies(&admin(), false, record(None, "company.list"))
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.id.to_string())
        .collect();
    assert_eq!(live, ["beta"]);
    let all: Vec<_> = s
        .list_companies(&admin(), true, record(None, "company.list"))
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.id.to_string())
        .collect();
    assert_eq!(all, ["acme", "beta"]);
}

fn key(role: Role, company: Option<&str>, seed: u64) -> kira_core::auth::IssuedKey {
    NewKey {
        name: format!("{role} key"),
        role,
        company_id: company.map(str::to_owned),
    }
    .issue(&mut rand::rngs::StdRng::seed_from_u64(seed), t0())
    .expect("valid key")
}

async fn forced_delete_removes_every_row_but_the_audit_log(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    create(s, "beta").await;
    let op = key(Role::Operator, Some("acme"), 1);
    s.insert_key(&admin(), &op.stored, record(None, "key.create"))
        .await
        .expect("key");
    let other = key(Role::Operator, Some("beta"), 2);
    s.insert_key(&admin(), &other.stored, record(None, "key.create"))
        .await
        .expect("key");
    let before = s
        .list_company_audit(&scope("acme"), all_page())
        .await
        .expect("audit");
    assert!(!before.is_empty());

    let deleted = s
        .delete_company(&scope("acme"), record(Some("acme"), "company.delete"))
        .await
        .expect("delete");
    let count = |t: &str| deleted.tables.iter().find(|(n, _)| n == t).map(|(_, n)| *n);
    assert_eq!((count("api_keys"), count("companies")), (Some(1), Some(1)));
    assert!(matches!(
        s.get_company(&scope("acme")).await,
        Err(StoreError::NotFound)
    ));
    assert!(s.find_key(&op.stored.key.id).await.expect("find").is_none());
    assert!(
        s.find_key(&other.stored.key.id)
            .await
            .expect("find")
            .is_some(),
        "another company's key stays"
    );
    assert!(s.get_company(&scope("beta")).await.is_ok());
    let after = s
        .list_company_audit(&scope("acme"), all_page())
        .await
        .expect("audit");
    assert_eq!(
        after.len(),
        before.len() + 1,
        "the audit log keeps every entry and adds the delete"
    );
    assert_eq!(
        after.last().map(|e| e.action.as_str()),
        Some("company.delete")
    );
    assert!(
        s.verify_audit(&admin(), record(None, "audit.verify"))
            .await
            .expect("verify")
            .ok
    );
    let again = s
        .delete_company(&scope("acme"), record(Some("acme"), "company.delete"))
        .await;
    assert!(matches!(again, Err(StoreError::NotFound)));
}

async fn keys_bootstrap_once_then_insert_find_list_revoke(f: Fresh) {
    let s = f.store.as_ref();
    let boot = key(Role::Admin, None, 3);
    assert!(
        s.bootstrap_admin_key(&boot.stored, record(None, "key.bootstrap"))
            .await
            .expect("boot")
    );
    let second = key(Role::Admin, None, 4);
    assert!(
        !s.bootstrap_admin_key(&second.stored, record(None, "key.bootstrap"))
            .await
            .expect("boot")
    );
    assert!(
        s.find_key(&second.stored.key.id)
            .await
            .expect("find")
            .is_none()
    );

    let orphan = key(Role::Viewer, Some("ghost"), 5);
    let r = s
        .insert_key(&admin(), &orphan.stored, record(None, "key.create"))
        .await;
    assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");

    create(s, "acme").await;
    let v = key(Role::Viewer, Some("acme"), 6);
    let listed = s
        .insert_key(&admin(), &v.stored, record(None, "key.create"))
        .await
        .expect("insert");
    assert_eq!(listed.company_id.as_ref().map(|c| c.as_str()), Some("acme"));
    let found = s
        .find_key(&v.stored.key.id)
        .await
        .expect("find")
        .expect("present");
    assert_eq!(found.token_sha256, v.stored.token_sha256);
    assert_eq!(found.key, listed);
    assert!(Principal::authenticate(&v.token, &found).is_some());

    let keys = s
        .list_keys(&admin(), record(None, "key.list"))
        .await
        .expect("list");
    assert_eq!(keys.len(), 2);
    let revoked = s
        .revoke_key(&admin(), &v.stored.key.id, t0(), record(None, "key.revoke"))
        .await
        .expect("revoke");
    assert!(revoked.revoked_at.is_some());
    let found = s
        .find_key(&v.stored.key.id)
        .await
        .expect("find")
        .expect("present");
    assert!(
        Principal::authenticate(&v.token, &found).is_none(),
        "a revoked key stops working"
    );
    let again = s
        .revoke_key(&admin(), &v.stored.key.id, t0(), record(None, "key.revoke"))
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))));
}

async fn audit_chain_pages_filters_and_verifies(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    create(s, "beta").await;
    for i in 0..5 {
        let c = if i % 2 == 0 { "acme" } else { "beta" };
        let mut r = record(Some(c), "note");
        r.outcome = if i == 3 { Outcome::Denied } else { Outcome::Ok };
        s.append_audit(r).await.expect("append");
    }
    s.append_audit(record(None, "system.note"))
        .await
        .expect("append");
    let all = s
        .list_all_audit(&admin(), None, all_page(), record(None, "audit.list"))
        .await
        .expect("all");
    assert_eq!(all.len(), 8);
    assert_eq!(all[0].prev_hash, GENESIS);
    for w in all.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1);
        assert_eq!(w[1].prev_hash, w[0].hash);
    }
    let acme = s
        .list_company_audit(&scope("acme"), all_page())
        .await
        .expect("acme");
    assert_eq!(acme.len(), 4);
    assert!(
        acme.iter()
            .all(|e| e.company_id.as_ref().map(|c| c.as_str()) == Some("acme"))
    );
    let page = s
        .list_company_audit(
            &scope("acme"),
            AuditPage {
                after_seq: acme[1].seq,
                limit: 1,
            },
        )
        .await
        .expect("page");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].seq, acme[2].seq);
    let beta = s
        .list_all_audit(
            &admin(),
            Some(&cid("beta")),
            all_page(),
            record(None, "audit.list"),
        )
        .await
        .expect("beta");
    assert_eq!(beta.len(), 3);
    let report = s
        .verify_audit(&admin(), record(None, "audit.verify"))
        .await
        .expect("verify");
    assert!(report.ok, "{report:?}");
    assert_eq!(
        report.entries, 10,
        "8 entries plus the two admin reads, each audited"
    );
}

async fn concurrent_appends_keep_one_chain(f: Fresh) {
    let store = f.store.clone();
    create(store.as_ref(), "acme").await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let s = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for i in 0..15 {
                let c = if (t + i) % 2 == 0 { Some("acme") } else { None };
                s.append_audit(record(c, "stress")).await.expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let report = store
        .verify_audit(&admin(), record(None, "audit.verify"))
        .await
        .expect("verify");
    assert!(report.ok, "{report:?}");
    assert_eq!(report.entries, 1 + 8 * 15);
}

async fn batched_appends_are_in_order_on_the_chain(f: Fresh) {
    let store = f.store.clone();
    create(store.as_ref(), "acme").await;
    assert!(
        store
            .append_audits(Vec::new())
            .await
            .expect("none")
            .is_empty(),
        "an empty batch writes nothing"
    );
    let mut tasks = Vec::new();
    for t in 0..4 {
        let s = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for i in 0..5 {
                let batch: Vec<_> = (0..3)
                    .map(|j| record(Some("acme"), &format!("batch.{t}.{i}.{j}")))
                    .collect();
                let written = s.append_audits(batch).await.expect("append");
                assert_eq!(written.len(), 3);
                for (j, w) in written.windows(2).enumerate() {
                    assert_eq!(w[1].seq, w[0].seq + 1, "a batch is contiguous");
                    assert_eq!(w[1].prev_hash, w[0].hash);
                    assert_eq!(w[1].action, format!("batch.{t}.{i}.{}", j + 1));
                }
                s.append_audit(record(None, "single"))
                    .await
                    .expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let report = store
        .verify_audit(&admin(), record(None, "audit.verify"))
        .await
        .expect("verify");
    assert!(report.ok, "{report:?}");
    assert_eq!(report.entries, 1 + 4 * 5 * 4);
}

async fn every_company_change_moves_the_directory_version(f: Fresh) {
    let s = f.store.as_ref();
    let ids = |cs: Vec<kira_core::company::Company>| -> Vec<String> {
        cs.into_iter().map(|c| c.id.to_string()).collect()
    };
    let v0 = s.directory_version().await.expect("version");
    create(s, "acme").await;
    create(s, "beta").await;
    let v1 = s.directory_version().await.expect("version");
    assert!(v1 > v0, "made");
    assert_eq!(
        ids(s.company_directory(&admin()).await.expect("dir")),
        ["acme", "beta"]
    );
    let reads = s.directory_version().await.expect("version");
    assert_eq!(reads, v1, "reading changes nothing");
    s.update_company(
        &scope("beta"),
        CompanyPatch {
            revenue_usd: Some(7),
            ..Default::default()
        },
        t0(),
        record(Some("beta"), "u"),
    )
    .await
    .expect("update");
    let v2 = s.directory_version().await.expect("version");
    assert!(v2 > v1, "changed, even at the same instant");
    s.archive_company(&scope("acme"), t0(), record(Some("acme"), "a"))
        .await
        .expect("archive");
    let v3 = s.directory_version().await.expect("version");
    assert!(v3 > v2, "archived");
    assert_eq!(
        ids(s.company_directory(&admin()).await.expect("dir")),
        ["beta"],
        "archived companies are not in the directory"
    );
    s.delete_company(&scope("acme"), record(Some("acme"), "company.delete"))
        .await
        .expect("delete");
    assert!(
        s.directory_version().await.expect("version") > v3,
        "deleted"
    );
}

async fn a_failed_change_writes_nothing(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let head = |v: Vec<kira_core::audit::AuditEntry>| v.last().map(|e| e.seq);
    let before = head(
        s.list_company_audit(&scope("acme"), all_page())
            .await
            .expect("audit"),
    );
    let (_, p) = crate::support::new_company("acme")
        .validate()
        .expect("valid");
    let _ = s
        .create_company(
            &scope("acme"),
            &p,
            t0(),
            record(Some("acme"), "company.create"),
        )
        .await;
    let _ = s
        .update_company(
            &scope("acme"),
            CompanyPatch {
                activity_score: Some(-1.0),
                ..Default::default()
            },
            t0(),
            record(Some("acme"), "u"),
        )
        .await;
    let _ = s
        .delete_company(&scope("ghost"), record(Some("ghost"), "company.delete"))
        .await;
    let after = head(
        s.list_company_audit(&scope("acme"), all_page())
            .await
            .expect("audit"),
    );
    assert_eq!(
        before, after,
        "a refused change leaves no audit entry behind"
    );
    let all = s
        .list_all_audit(&admin(), None, all_page(), record(None, "audit.list"))
        .await
        .expect("all");
    assert_eq!(all.len(), 1, "only the create is in the log");
}
