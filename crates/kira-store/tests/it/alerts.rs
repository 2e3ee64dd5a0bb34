//! Alerts on both backends: one open alert per rule and subject, the
//! evaluator's writes never overwriting a person's acknowledgement, a
//! company key reading and changing only its own company's alerts (every
//! change audited), notification attempts kept with their alert,
//! silences, a forced company delete taking the company's alerts, and
//! the notices held for their group taken out once, each group with its
//! alerts as they stand, marked as being sent until its delivery is
//! recorded (taken again once the mark's lease ran out).

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use kira_core::alerts::{
    Alert, AlertState, Audience, GroupKey, Grouping, Held, Matcher, NoticeKind, RuleKind, Severity,
    Silence, Subject,
};
use kira_core::auth::{AdminScope, Principal};
use kira_store::alerts::{AlertFilter, AlertReader, Delivery, NotificationAttempt};
use kira_store::{AuditPage, StoreError};
use uuid::Uuid;

use crate::support::{Fresh, cid, create, record, scope, t0};

conformance!(
    one_open_alert_per_rule_and_subject,
    a_stale_evaluation_never_overwrites_an_acknowledgement,
    a_company_sees_and_changes_only_its_own_alerts,
    notification_attempts_stay_with_their_alert,
    silences_are_kept_ended_and_audited,
    a_forced_delete_removes_the_company_alerts,
    held_notices_are_taken_once_and_go_with_their_company,
    a_taken_group_is_taken_again_after_its_lease_until_recorded,
);

fn now() -> DateTime<Utc> {
    t0().trunc_subsecs(0)
}

fn admin() -> AdminScope {
    Principal::system().admin().expect("system is admin")
}

fn alert(rule: &str, subject: Subject, state: AlertState) -> Alert {
    Alert {
        id: Uuid::now_v7(),
        rule: rule.into(),
        kind: RuleKind::SlaViolation,
        severity: Severity::Warning,
        subject,
        labels: [("team".to_string(), "ops".to_string())].into(),
        state,
        summary: "p95 response 42.0s over the SLA of 30s".into(),
        value: 42.0,
        started_at: now(),
        fired_at: (state == AlertState::Firing).then(now),
        acknowledged_at: None,
        acknowledged_by: None,
        escalated_at: None,
        last_notified_at: (state == AlertState::Firing).then(now),
        resolved_at: None,
        resolved_by: None,
        updated_at: now(),
        version: 0,
    }
}

fn company(id: &str) -> Subject {
    Subject::Company(cid(id))
}

async fn one_open_alert_per_rule_and_subject(f: Fresh) {
    let s = &*f.store;
    create(s, "acme").await;
    let a = alert("sla_violation", company("acme"), AlertState::Pending);
    let twin = alert("sla_violation", company("acme"), AlertState::Pending);
    let other_rule = alert("error_rate", company("acme"), AlertState::Pending);
    let system = alert("stuck_queue", Subject::System, AlertState::Firing);
    let written = s
        .write_alert_plan(
            &[a.clone(), twin.clone(), other_rule.clone(), system.clone()],
            &[],
        )
        .await
        .expect("write");
    assert_eq!(
        written,
        [a.id, other_rule.id, system.id],
        "the twin is left out"
    );
    let open = s.open_alerts().await.expect("open");
    assert_eq!(open.len(), 3);
    let stored = open.iter().find(|x| x.id == a.id).expect("stored");
    assert_eq!(stored, &a, "read back as written");

    // Resolved, the rule and subject take a new alert, in the same plan.
    let mut closed = a.clone();
    closed.state = AlertState::Resolved;
    closed.resolved_at = Some(now());
    closed.resolved_by = Some("evaluator".into());
    let again = alert("sla_violation", company("acme"), AlertState::Pending);
    let written = s
        .write_alert_plan(std::slice::from_ref(&again), std::slice::from_ref(&closed))
        .await
        .expect("write");
    assert_eq!(written, [a.id, again.id]);
    let all = s
        .list_alerts(AlertReader::Admin(&admin()), &AlertFilter::default())
        .await
        .expect("list");
    assert_eq!(all.len(), 4);
    let open_only = AlertFilter {
        open_only: true,
        ..AlertFilter::default()
    };
    let open = s
        .list_alerts(AlertReader::Admin(&admin()), &open_only)
        .await
        .expect("list");
    assert_eq!(open.len(), 3);
    assert!(open.iter().all(|x| x.id != a.id));
}

async fn a_stale_evaluation_never_overwrites_an_acknowledgement(f: Fresh) {
    let s = &*f.store;
    create(s, "acme").await;
    let a = alert("sla_violation", company("acme"), AlertState::Firing);
    s.write_alert_plan(std::slice::from_ref(&a), &[])
        .await
        .expect("write");
    // The evaluator read version 0 and plans an escalation...
    let mut escalated = a.clone();
    escalated.escalated_at = Some(now() + TimeDelta::hours(2));
    // ...while a person acknowledges it.
    let acked = s
        .acknowledge_alert(
            AlertReader::Company(&scope("acme")),
            a.id,
            "ops-key",
            now() + TimeDelta::hours(1),
            record(Some("acme"), "alert.ack"),
        )
        .await
        .expect("ack");
    assert_eq!(acked.state, AlertState::Acknowledged);
    assert_eq!(acked.version, 1);
    let written = s
        .write_alert_plan(&[], std::slice::from_ref(&escalated))
        .await
        .expect("write");
    assert!(written.is_empty(), "the stale escalation is not written");
    let stored = &s.open_alerts().await.expect("open")[0];
    assert_eq!(stored.state, AlertState::Acknowledged);
    assert_eq!(stored.escalated_at, None);
    assert_eq!(stored.acknowledged_by.as_deref(), Some("ops-key"));
}

async fn a_company_sees_and_changes_only_its_own_alerts(f: Fresh) {
    let s = &*f.store;
    create(s, "acme").await;
    create(s, "globex").await;
    let mine = alert("sla_violation", company("acme"), AlertState::Firing);
    let theirs = alert("sla_violation", company("globex"), AlertState::Firing);
    let system = alert("stuck_queue", Subject::System, AlertState::Firing);
    s.write_alert_plan(&[mine.clone(), theirs.clone(), system.clone()], &[])
        .await
        .expect("write");
    let acme = scope("acme");
    let seen = s
        .list_alerts(AlertReader::Company(&acme), &AlertFilter::default())
        .await
        .expect("list");
    assert_eq!(seen.iter().map(|a| a.id).collect::<Vec<_>>(), [mine.id]);
    for id in [theirs.id, system.id] {
        let got = s.get_alert(AlertReader::Company(&acme), id).await;
        assert!(matches!(got, Err(StoreError::NotFound)), "{got:?}");
        let ack = s
            .acknowledge_alert(
                AlertReader::Company(&acme),
                id,
                "k",
                now(),
                record(Some("acme"), "alert.ack"),
            )
            .await;
        assert!(matches!(ack, Err(StoreError::NotFound)), "{ack:?}");
        let resolve = s
            .resolve_alert(
                AlertReader::Company(&acme),
                id,
                "k",
                now(),
                record(Some("acme"), "alert.resolve"),
            )
            .await;
        assert!(matches!(resolve, Err(StoreError::NotFound)), "{resolve:?}");
    }
    let open = s.open_alerts().await.expect("open");
    assert!(
        open.iter().all(|a| a.state == AlertState::Firing),
        "nothing changed"
    );

    // Acknowledged once; only a firing alert is.
    s.acknowledge_alert(
        AlertReader::Company(&acme),
        mine.id,
        "k",
        now(),
        record(Some("acme"), "alert.ack"),
    )
    .await
    .expect("ack");
    let twice = s
        .acknowledge_alert(
            AlertReader::Company(&acme),
            mine.id,
            "k",
            now(),
            record(Some("acme"), "alert.ack"),
        )
        .await;
    assert!(matches!(twice, Err(StoreError::Conflict(_))), "{twice:?}");
    // The admin resolves the system's alert and globex's; the entry of
    // globex's is in globex's own log.
    for id in [system.id, theirs.id] {
        let done = s
            .resolve_alert(
                AlertReader::Admin(&admin()),
                id,
                "admin",
                now(),
                record(None, "alert.resolve"),
            )
            .await
            .expect("resolve");
        assert_eq!(done.state, AlertState::Resolved);
        assert_eq!(done.resolved_by.as_deref(), Some("admin"));
    }
    let page = AuditPage {
        after_seq: 0,
        limit: 100,
    };
    let log = s
        .list_company_audit(&scope("globex"), page)
        .await
        .expect("audit");
    assert_eq!(
        log.iter().filter(|e| e.action == "alert.resolve").count(),
        1
    );
    let log = s.list_company_audit(&acme, page).await.expect("audit");
    assert_eq!(log.iter().filter(|e| e.action == "alert.ack").count(), 1);
}

async fn notification_attempts_stay_with_their_alert(f: Fresh) {
    let s = &*f.store;
    create(s, "acme").await;
    create(s, "globex").await;
    let a = alert("sla_violation", company("acme"), AlertState::Firing);
    s.write_alert_plan(std::slice::from_ref(&a), &[])
        .await
        .expect("write");
    let attempt = |n: i32, outcome: Delivery| NotificationAttempt {
        alert_id: a.id,
        company_id: Some(cid("acme")),
        notice: NoticeKind::Firing,
        channel: "webhook".into(),
        target: "https://hooks.example.com/x".into(),
        attempt: n,
        at: now() + TimeDelta::seconds(i64::from(n)),
        outcome,
        error: (outcome == Delivery::Failed).then(|| "HTTP 503".into()),
    };
    let attempts = [attempt(1, Delivery::Failed), attempt(2, Delivery::Sent)];
    s.record_notifications(&attempts).await.expect("record");
    let seen = s
        .get_alert(AlertReader::Company(&scope("acme")), a.id)
        .await
        .expect("get");
    assert_eq!(seen.alert, a);
    assert_eq!(seen.notifications, attempts);
    let admin_view = s
        .get_alert(AlertReader::Admin(&admin()), a.id)
        .await
        .expect("get");
    assert_eq!(admin_view.notifications.len(), 2);
    let other = s
        .get_alert(AlertReader::Company(&scope("globex")), a.id)
        .await;
    assert!(matches!(other, Err(StoreError::NotFound)));
}

async fn silences_are_kept_ended_and_audited(f: Fresh) {
    let s = &*f.store;
    let silence = Silence {
        id: Uuid::now_v7(),
        matchers: vec![Matcher {
            name: "subject".into(),
            value: "company:acme".into(),
        }],
        starts_at: now(),
        ends_at: now() + TimeDelta::hours(2),
        created_by: "admin".into(),
        comment: "planned maintenance".into(),
        created_at: now(),
    };
    s.create_silence(&admin(), &silence, record(None, "alert.silence"))
        .await
        .expect("create");
    let live = s.list_silences(&admin(), now(), false).await.expect("list");
    assert_eq!(live, std::slice::from_ref(&silence));
    let ended = s
        .end_silence(
            &admin(),
            silence.id,
            now() + TimeDelta::minutes(30),
            record(None, "alert.unsilence"),
        )
        .await
        .expect("end");
    assert_eq!(ended.ends_at, now() + TimeDelta::minutes(30));
    let later = now() + TimeDelta::hours(1);
    assert!(
        s.list_silences(&admin(), later, false)
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(
        s.list_silences(&admin(), later, true)
            .await
            .expect("list")
            .len(),
        1
    );
    let again = s
        .end_silence(&admin(), silence.id, later, record(None, "alert.unsilence"))
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    let missing = s
        .end_silence(
            &admin(),
            Uuid::now_v7(),
            later,
            record(None, "alert.unsilence"),
        )
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "{missing:?}");
}

async fn a_forced_delete_removes_the_company_alerts(f: Fresh) {
    let s = &*f.store;
    create(s, "acme").await;
    create(s, "globex").await;
    let mine = alert("sla_violation", company("acme"), AlertState::Firing);
    let theirs = alert("sla_violation", company("globex"), AlertState::Firing);
    s.write_alert_plan(&[mine.clone(), theirs.clone()], &[])
        .await
        .expect("write");
    let n = NotificationAttempt {
        alert_id: mine.id,
        company_id: Some(cid("acme")),
        notice: NoticeKind::Firing,
        channel: "log".into(),
        target: "log".into(),
        attempt: 1,
        at: now(),
        outcome: Delivery::Sent,
        error: None,
    };
    s.record_notifications(&[n]).await.expect("record");
    let deleted = s
        .delete_company(&scope("acme"), record(Some("acme"), "company.delete"))
        .await
        .expect("delete");
    let count = |t: &str| {
        deleted
            .tables
            .iter()
            .find(|(name, _)| name == t)
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(count("alerts"), 1);
    assert_eq!(count("alert_notifications"), 1);
    let open = s.open_alerts().await.expect("open");
    assert_eq!(open.iter().map(|a| a.id).collect::<Vec<_>>(), [theirs.id]);
}

async fn held_notices_are_taken_once_and_go_with_their_company(f: Fresh) {
    let s = &*f.store;
    create(s, "acme").await;
    create(s, "globex").await;
    let mine = alert("sla_violation", company("acme"), AlertState::Firing);
    let theirs = alert("sla_violation", company("globex"), AlertState::Firing);
    let system = alert("sla_violation", Subject::System, AlertState::Firing);
    let ops = Audience::Team("operator".into());
    let mut held = Vec::new();
    for a in [&mine, &theirs, &system] {
        held.push((GroupKey::of(a, NoticeKind::Firing, &ops), Held::from(a)));
        if a.company().is_some() {
            let contact = GroupKey::of(a, NoticeKind::Firing, &Audience::CompanyContact);
            held.push((contact, Held::from(a)));
        }
    }
    s.write_evaluation(
        &[mine.clone(), theirs.clone(), system.clone()],
        &[],
        &held,
        now(),
    )
    .await
    .expect("write");
    let g = Grouping {
        wait: TimeDelta::minutes(1),
        interval: TimeDelta::minutes(5),
    };
    let lease = TimeDelta::minutes(5);
    let (due, left) = s.take_due_notices(now(), g, lease).await.expect("take");
    assert!(due.is_empty());
    assert_eq!(left, 5);
    // acme's notices, and its contact's group, go with acme.
    let deleted = s
        .delete_company(&scope("acme"), record(Some("acme"), "company.delete"))
        .await
        .expect("delete");
    let count = |t: &str| {
        deleted
            .tables
            .iter()
            .find(|(name, _)| name == t)
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(count("alert_held_notices"), 2);
    assert_eq!(count("alert_groups"), 1);
    let later = now() + TimeDelta::minutes(1);
    let (due, left) = s.take_due_notices(later, g, lease).await.expect("take");
    let shape: Vec<_> = due
        .iter()
        .map(|d| {
            (
                d.key.audience.clone(),
                d.key.company.clone(),
                d.alerts.iter().map(|a| a.id).collect::<Vec<_>>(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            (ops, None, vec![theirs.id, system.id]),
            (
                Audience::CompanyContact,
                Some(cid("globex")),
                vec![theirs.id]
            ),
        ]
    );
    assert_eq!(left, 0);
    // Taken once: nothing is due again.
    let (due, _) = s.take_due_notices(later, g, lease).await.expect("take");
    assert!(due.is_empty());
}

/// At least once: a group taken out to be sent stays marked as being
/// sent until its delivery is recorded. No one takes it while the mark's
/// lease holds; once it ran out (its sender died) the next take has it
/// again under a new mark, which the first sender's late record leaves;
/// once its delivery is recorded it is gone, the attempts kept.
async fn a_taken_group_is_taken_again_after_its_lease_until_recorded(f: Fresh) {
    let s = &*f.store;
    create(s, "acme").await;
    let a = alert("sla_violation", company("acme"), AlertState::Firing);
    let ops = Audience::Team("operator".into());
    let key = GroupKey::of(&a, NoticeKind::Firing, &ops);
    s.write_evaluation(
        std::slice::from_ref(&a),
        &[],
        &[(key.clone(), Held::from(&a))],
        now(),
    )
    .await
    .expect("write");
    let g = Grouping {
        wait: TimeDelta::zero(),
        interval: TimeDelta::minutes(5),
    };
    let lease = TimeDelta::minutes(2);
    let take = |at: DateTime<Utc>| async move {
        let (due, left) = s.take_due_notices(at, g, lease).await.expect("take");
        assert_eq!(left, 0);
        due.into_iter()
            .map(|d| {
                (
                    d.id,
                    d.key,
                    d.alerts.iter().map(|a| a.id).collect::<Vec<_>>(),
                )
            })
            .collect::<Vec<_>>()
    };
    let first = take(now()).await;
    assert_eq!(first.len(), 1);
    assert_eq!((&first[0].1, &first[0].2), (&key, &vec![a.id]));
    // Its sender died: nothing to take while the lease holds.
    assert!(take(now() + lease - TimeDelta::seconds(1)).await.is_empty());
    let at = now() + lease;
    let second = take(at).await;
    assert_eq!(second.len(), 1);
    assert_eq!((&second[0].1, &second[0].2), (&key, &vec![a.id]));
    assert_ne!(second[0].0, first[0].0, "a new mark");
    // The first sender, late, records: the second's mark stays.
    s.finish_sending(first[0].0, &[]).await.expect("finish");
    let third = take(at + lease).await;
    assert_eq!(third.len(), 1, "the second sender never recorded");
    let sent = NotificationAttempt {
        alert_id: a.id,
        company_id: Some(cid("acme")),
        notice: NoticeKind::Firing,
        channel: "webhook".into(),
        target: "https://hooks.example.com/x".into(),
        attempt: 1,
        at: at + lease,
        outcome: Delivery::Sent,
        error: None,
    };
    s.finish_sending(third[0].0, std::slice::from_ref(&sent))
        .await
        .expect("finish");
    assert!(take(at + lease * 10).await.is_empty());
    let detail = s
        .get_alert(AlertReader::Admin(&admin()), a.id)
        .await
        .expect("get");
    assert_eq!(detail.notifications, [sent]);
}
