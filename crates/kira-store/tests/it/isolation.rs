//! Isolation, as a property: for any sequence of writes across companies,
//! a scoped read returns only the scope's company's rows, and exactly the
//! ones written for it. Run on both backends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use kira_core::company::CompanyPatch;
use kira_store::{AuditPage, Store, StoreError};
use proptest::prelude::*;

use crate::support::{Open, property, record, scope, t0};

#[derive(Debug, Clone)]
enum Op {
    Create(usize),
    Update(usize, i64),
    Audit(usize),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        (0..4usize).prop_map(Op::Create),
        (0..4usize, 0..1_000_000i64).prop_map(|(c, r)| Op::Update(c, r)),
        (0..4usize).prop_map(Op::Audit),
    ];
    proptest::collection::vec(op, 1..25)
}

static CASE: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Model {
    exists: bool,
    revenue: i64,
    audit_entries: usize,
}

async fn check(s: &dyn Store, ops: Vec<Op>) -> Result<(), TestCaseError> {
    // Fresh company names per case: the store is shared by all cases.
    let case = CASE.fetch_add(1, Ordering::SeqCst);
    let name = |i: usize| format!("c{case}-{i}");
    let mut model: BTreeMap<usize, Model> = (0..4).map(|i| (i, Model::default())).collect();
    for op in ops {
        match op {
            Op::Create(i) => {
                let n = name(i);
                let (_, p) = crate::support::new_company(&n).validate().expect("valid");
                let r = s
                    .create_company(&scope(&n), &p, t0(), record(Some(&n), "company.create"))
                    .await;
                let m = model.get_mut(&i).expect("model");
                match r {
                    Ok(_) => {
                        prop_assert!(!m.exists);
                        m.exists = true;
                        m.revenue = p.revenue_usd;
                        m.audit_entries += 1;
                    }
                    Err(StoreError::Conflict(_)) => prop_assert!(m.exists),
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                }
            }
            Op::Update(i, revenue) => {
                let n = name(i);
                let patch = CompanyPatch {
                    revenue_usd: Some(revenue),
                    ..Default::default()
                };
                let r = s
                    .update_company(&scope(&n), patch, t0(), record(Some(&n), "company.update"))
                    .await;
                let m = model.get_mut(&i).expect("model");
                match r {
                    Ok(c) => {
                        prop_assert!(m.exists);
                        prop_assert_eq!(c.id.as_str(), n.as_str());
                        m.revenue = revenue;
                        m.audit_entries += 1;
                    }
                    Err(StoreError::NotFound) => prop_assert!(!m.exists),
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                }
            }
            Op::Audit(i) => {
                let n = name(i);
                s.append_audit(record(Some(&n), "note"))
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                model.get_mut(&i).expect("model").audit_entries += 1;
            }
        }
    }
    for (i, m) in &model {
        let n = name(*i);
        match s.get_company(&scope(&n)).await {
            Ok(c) => {
                prop_assert!(m.exists);
                prop_assert_eq!(c.id.as_str(), n.as_str());
                prop_assert_eq!(c.profile.revenue_usd, m.revenue);
            }
            Err(StoreError::NotFound) => prop_assert!(!m.exists),
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        }
        let entries = s
            .list_company_audit(
                &scope(&n),
                AuditPage {
                    after_seq: 0,
                    limit: 1000,
                },
            )
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(entries.len(), m.audit_entries);
        for e in entries {
            prop_assert_eq!(e.company_id.as_ref().map(|c| c.as_str()), Some(n.as_str()));
        }
    }
    Ok(())
}

fn run(open: Open) {
    property("isolation", open, 32, ops(), |store, ops| async move {
        check(store.as_ref(), ops).await
    });
}

#[test]
fn sqlite_scoped_reads_never_see_another_company() {
    run(|| Box::pin(crate::support::sqlite()));
}

#[test]
fn postgres_scoped_reads_never_see_another_company() {
    run(|| Box::pin(crate::support::postgres()));
}
