//! [`AlertStore`], written once for every [`Db`]: alerts, their
//! notification attempts and silences (migration 0019). A company key's
//! reads and changes run in its company's transaction and bind its id; the
//! admin's reads use the admin read, and the evaluator's and the admin's
//! changes set `app.alerts` (PostgreSQL), the one setting that admits
//! every alert row for writing.

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use kira_core::CompanyId;
use std::collections::{BTreeSet, HashMap};

use kira_core::alerts::{
    Alert, AlertState, Audience, Check, Group, GroupKey, Grouping, Held, Matcher, NoticeKind,
    Outbox, RuleKind, Severity, Silence, Subject, Verification,
};
use kira_core::audit::AuditRecord;
use kira_core::auth::AdminScope;
use uuid::Uuid;

use crate::alerts::{
    AlertDetail, AlertFilter, AlertReader, AlertStore, Delivery, MAX_NOTIFICATIONS_SHOWN,
    NotificationAttempt, Sending,
};
use crate::flow::store::{Db, commit_or_roll_back, lock_company};
use crate::sql::{Columns, Conn, Stmt, q, q_each};
use crate::{Result, StoreError};

/// `SELECT` of every alert column `FROM alerts`, then `$rest`.
macro_rules! select_alerts {
    ($rest:literal) => {
        concat!(
            "SELECT alert_id, company_id, rule, kind, severity, subject, labels, state, \
             summary, value, started_at, fired_at, acknowledged_at, acknowledged_by, \
             escalated_at, last_notified_at, resolved_at, resolved_by, updated_at, version \
             FROM alerts ",
            $rest
        )
    };
}

fn corrupt(what: &str, v: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} {v:?}"))
}

fn alert_from_row<R: Columns + ?Sized>(r: &R) -> Result<Alert> {
    let text = |col: &str| r.text(col);
    let (kind, severity, subject, state) = (
        text("kind")?,
        text("severity")?,
        text("subject")?,
        text("state")?,
    );
    let labels = serde_json::from_value(r.json("labels")?)
        .map_err(|e| StoreError::Corrupt(format!("alert labels: {e}")))?;
    Ok(Alert {
        id: r.uuid("alert_id")?,
        rule: text("rule")?,
        kind: RuleKind::parse(&kind).ok_or_else(|| corrupt("alert kind", &kind))?,
        severity: Severity::parse(&severity).ok_or_else(|| corrupt("severity", &severity))?,
        subject: Subject::parse(&subject).ok_or_else(|| corrupt("subject", &subject))?,
        labels,
        state: AlertState::parse(&state).ok_or_else(|| corrupt("alert state", &state))?,
        summary: text("summary")?,
        value: r.real("value")?,
        started_at: r.time("started_at")?,
        fired_at: r.opt_time("fired_at")?,
        acknowledged_at: r.opt_time("acknowledged_at")?,
        acknowledged_by: r.opt_text("acknowledged_by")?,
        escalated_at: r.opt_time("escalated_at")?,
        last_notified_at: r.opt_time("last_notified_at")?,
        resolved_at: r.opt_time("resolved_at")?,
        resolved_by: r.opt_text("resolved_by")?,
        updated_at: r.time("updated_at")?,
        version: r.int("version")?,
    })
}

fn notice(s: &str) -> Result<NoticeKind> {
    Ok(match s {
        "firing" => NoticeKind::Firing,
        "repeat" => NoticeKind::Repeat,
        "escalation" => NoticeKind::Escalation,
        "resolved" => NoticeKind::Resolved,
        _ => return Err(corrupt("notice", s)),
    })
}

fn attempt_from_row<R: Columns + ?Sized>(r: &R) -> Result<NotificationAttempt> {
    let outcome = r.text("outcome")?;
    Ok(NotificationAttempt {
        alert_id: r.uuid("alert_id")?,
        company_id: match r.opt_text("company_id")? {
            Some(c) => Some(CompanyId::parse(&c).map_err(|_| corrupt("company", &c))?),
            None => None,
        },
        notice: notice(&r.text("notice")?)?,
        channel: r.text("channel")?,
        target: r.text("target")?,
        attempt: r.int32("attempt")?,
        at: r.time("at")?,
        outcome: match outcome.as_str() {
            "sent" => Delivery::Sent,
            "failed" => Delivery::Failed,
            o => return Err(corrupt("delivery outcome", o)),
        },
        error: r.opt_text("error")?,
    })
}

fn silence_from_row<R: Columns + ?Sized>(r: &R) -> Result<Silence> {
    let matchers: Vec<Matcher> = serde_json::from_value(r.json("matchers")?)
        .map_err(|e| StoreError::Corrupt(format!("silence matchers: {e}")))?;
    Ok(Silence {
        id: r.uuid("silence_id")?,
        matchers,
        starts_at: r.time("starts_at")?,
        ends_at: r.time("ends_at")?,
        created_by: r.text("created_by")?,
        comment: r.text("comment")?,
        created_at: r.time("created_at")?,
    })
}

/// Admits every alert row for this transaction (PostgreSQL).
async fn alerts_policy(c: &mut dyn Conn) -> Result<()> {
    c.exec(q("SELECT set_config('app.alerts', 'on', true)").pg_only())
        .await?;
    Ok(())
}

/// The company a reader is limited to (None: the admin's every alert).
fn limit_of<'a>(who: &AlertReader<'a>) -> Option<&'a str> {
    match who {
        AlertReader::Admin(_) => None,
        AlertReader::Company(s) => Some(s.company().as_str()),
    }
}

async fn insert_alert(c: &mut dyn Conn, a: &Alert) -> Result<bool> {
    let labels = serde_json::to_value(&a.labels).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let subject = a.subject.key();
    let s = q(
        "INSERT INTO alerts (alert_id, company_id, rule, kind, severity, subject, labels, \
               state, summary, value, started_at, fired_at, acknowledged_at, acknowledged_by, \
               escalated_at, last_notified_at, resolved_at, resolved_by, updated_at, version) \
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
               $17, $18, $19, 0) ON CONFLICT DO NOTHING",
    )
    .arg(a.id)
    .arg(a.company().map(CompanyId::as_str))
    .arg(&a.rule)
    .arg(a.kind.as_str())
    .arg(a.severity.as_str())
    .arg(&subject)
    .arg(&labels);
    let s = times(s.arg(a.state.as_str()).arg(&a.summary).arg(a.value), a);
    Ok(c.exec(s.arg(a.updated_at)).await? == 1)
}

/// `started_at` to `resolved_by`, in the columns' order.
fn times<'a>(s: Stmt<'a>, a: &'a Alert) -> Stmt<'a> {
    s.arg(a.started_at)
        .arg(a.fired_at)
        .arg(a.acknowledged_at)
        .arg(a.acknowledged_by.as_deref())
        .arg(a.escalated_at)
        .arg(a.last_notified_at)
        .arg(a.resolved_at)
        .arg(a.resolved_by.as_deref())
}

/// Writes `a` where the stored alert is still at `a.version`.
async fn update_alert(c: &mut dyn Conn, a: &Alert) -> Result<bool> {
    let s = q(
        "UPDATE alerts SET state = $3, summary = $4, value = $5, started_at = $6, \
               fired_at = $7, acknowledged_at = $8, acknowledged_by = $9, escalated_at = $10, \
               last_notified_at = $11, resolved_at = $12, resolved_by = $13, updated_at = $14, \
               version = version + 1 \
               WHERE alert_id = $1 AND version = $2",
    )
    .arg(a.id)
    .arg(a.version)
    .arg(a.state.as_str())
    .arg(&a.summary)
    .arg(a.value);
    let s = times(s, a).arg(a.updated_at);
    Ok(c.exec(s).await? == 1)
}

async fn load_alert(
    c: &mut dyn Conn,
    id: Uuid,
    company: Option<&str>,
    lock: bool,
) -> Result<Alert> {
    let sql = select_alerts!("WHERE alert_id = $1 AND ($2 IS NULL OR company_id = $2)");
    let mut s = q(sql).arg(id).arg(company);
    if lock {
        s = s.for_update();
    }
    alert_from_row(&c.one(s).await?)
}

async fn list_alerts_of(
    c: &mut dyn Conn,
    company: Option<&str>,
    f: &AlertFilter,
) -> Result<Vec<Alert>> {
    let sql = select_alerts!(
        "WHERE ($1 IS NULL OR company_id = $1) AND ($2 IS NULL OR state = $2) \
      AND ($3 IS NULL OR rule = $3) AND (NOT $4 OR state <> 'resolved') \
      AND ($6 IS NULL OR updated_at >= $6) \
    ORDER BY started_at DESC, alert_id LIMIT $5"
    );
    let s = q(sql)
        .arg(company)
        .arg(f.state.map(AlertState::as_str))
        .arg(f.rule.as_deref())
        .arg(f.open_only)
        .arg(i64::from(f.limit.clamp(1, 1_000)))
        .arg(f.changed_since);
    c.all(s).await?.iter().map(alert_from_row).collect()
}

async fn detail_of(c: &mut dyn Conn, id: Uuid, company: Option<&str>) -> Result<AlertDetail> {
    let alert = load_alert(c, id, company, false).await?;
    let s = q(
        "SELECT alert_id, company_id, notice, channel, target, attempt, at, outcome, error \
               FROM alert_notifications WHERE alert_id = $1 AND ($2 IS NULL OR company_id = $2) \
               ORDER BY notification_id LIMIT $3",
    )
    .arg(id)
    .arg(company)
    .arg(i64::from(MAX_NOTIFICATIONS_SHOWN));
    let notifications = c
        .all(s)
        .await?
        .iter()
        .map(attempt_from_row)
        .collect::<Result<_>>()?;
    Ok(AlertDetail {
        alert,
        notifications,
    })
}

/// What a person does to an alert.
#[derive(Clone, Copy)]
enum Act {
    Acknowledge,
    Resolve,
}

async fn act_on(
    c: &mut dyn Conn,
    company: Option<&str>,
    id: Uuid,
    act: Act,
    by: &str,
    at: DateTime<Utc>,
    mut audit: AuditRecord,
) -> Result<Alert> {
    let mut a = load_alert(c, id, company, true).await?;
    match act {
        Act::Acknowledge if !a.state.may_acknowledge() => {
            return Err(StoreError::Conflict(format!(
                "the alert is {}; only a firing alert is acknowledged",
                a.state.as_str()
            )));
        }
        Act::Resolve if !a.state.is_open() => {
            return Err(StoreError::Conflict("the alert is resolved already".into()));
        }
        Act::Acknowledge => {
            a.state = AlertState::Acknowledged;
            a.acknowledged_at = Some(at);
            a.acknowledged_by = Some(by.to_owned());
        }
        Act::Resolve => {
            a.state = AlertState::Resolved;
            a.resolved_at = Some(at);
            a.resolved_by = Some(by.to_owned());
        }
    }
    a.updated_at = at;
    if !update_alert(c, &a).await? {
        return Err(StoreError::Conflict("the alert changed meanwhile".into()));
    }
    a.version += 1;
    // The company's own log shows what was done to its alert.
    if audit.company_id.is_none() {
        audit.company_id = a.company().cloned();
    }
    c.audit(audit).await?;
    Ok(a)
}

async fn write_plan(c: &mut dyn Conn, new: &[Alert], changed: &[Alert]) -> Result<Vec<Uuid>> {
    alerts_policy(c).await?;
    let mut written = Vec::new();
    for a in changed {
        if update_alert(c, a).await? {
            written.push(a.id);
        }
    }
    // After the changes: a resolved alert frees its rule and subject.
    for a in new {
        if insert_alert(c, a).await? {
            written.push(a.id);
        }
    }
    Ok(written)
}

/// The transaction lock that puts the outbox's writers in line
/// (PostgreSQL; SQLite's one writer already does).
const OUTBOX_LOCK: i64 = 0x6b69_7261_0104;

fn audience_text(a: &Audience) -> String {
    match a {
        Audience::Team(t) => format!("team:{t}"),
        Audience::CompanyContact => "company_contact".into(),
    }
}

fn audience_of(s: &str) -> Result<Audience> {
    match s.strip_prefix("team:") {
        Some(team) => Ok(Audience::Team(team.to_owned())),
        None if s == "company_contact" => Ok(Audience::CompanyContact),
        None => Err(corrupt("audience", s)),
    }
}

fn company_of(v: Option<String>) -> Result<Option<CompanyId>> {
    v.map(|c| CompanyId::parse(&c).map_err(|_| corrupt("company", &c)))
        .transpose()
}

/// The stored outbox: every group and its held notices, in their order.
async fn load_outbox(c: &mut dyn Conn) -> Result<Outbox> {
    c.exec(
        q("SELECT pg_advisory_xact_lock($1)")
            .arg(OUTBOX_LOCK)
            .pg_only(),
    )
    .await?;
    let mut o = Outbox::default();
    let groups = q(
        "SELECT rule, notice, audience, company_id, held_since, sent_at \
                    FROM alert_groups",
    );
    for r in c.all(groups).await? {
        let key = GroupKey {
            rule: r.text("rule")?,
            notice: notice(&r.text("notice")?)?,
            audience: audience_of(&r.text("audience")?)?,
            company: company_of(r.opt_text("company_id")?)?,
        };
        let group = Group {
            sent_at: r.opt_time("sent_at")?,
            held_since: r.opt_time("held_since")?,
            held: Vec::new(),
        };
        o.groups.insert(key, group);
    }
    let held = q("SELECT rule, notice, audience, alert_id, company_id \
                  FROM alert_held_notices ORDER BY seq");
    for r in c.all(held).await? {
        let audience = audience_of(&r.text("audience")?)?;
        let company = company_of(r.opt_text("company_id")?)?;
        let key = GroupKey {
            rule: r.text("rule")?,
            notice: notice(&r.text("notice")?)?,
            company: match audience {
                Audience::CompanyContact => company.clone(),
                Audience::Team(_) => None,
            },
            audience,
        };
        o.groups.entry(key).or_default().held.push(Held {
            alert_id: r.uuid("alert_id")?,
            company,
        });
    }
    Ok(o)
}

/// Writes what changed from `before` to `after`, group by group.
async fn save_outbox(c: &mut dyn Conn, before: &Outbox, after: &Outbox) -> Result<()> {
    let keys: BTreeSet<&GroupKey> = before.groups.keys().chain(after.groups.keys()).collect();
    for k in keys {
        let (was, is) = (before.groups.get(k), after.groups.get(k));
        if was == is {
            continue;
        }
        let audience = audience_text(&k.audience);
        let company = k.company.as_ref().map(CompanyId::as_str);
        let times = |g: Option<&Group>| g.map(|g| (g.sent_at, g.held_since));
        if times(was) != times(is) {
            c.exec(
                q(
                    "DELETE FROM alert_groups WHERE rule = $1 AND notice = $2 AND audience = $3 \
                   AND coalesce(company_id, '') = coalesce($4, '')",
                )
                .arg(&k.rule)
                .arg(k.notice.as_str())
                .arg(&audience)
                .arg(company),
            )
            .await?;
            if let Some(g) = is {
                c.exec(
                    q(
                        "INSERT INTO alert_groups (rule, notice, audience, company_id, \
                       held_since, sent_at) VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .arg(&k.rule)
                    .arg(k.notice.as_str())
                    .arg(&audience)
                    .arg(company)
                    .arg(g.held_since)
                    .arg(g.sent_at),
                )
                .await?;
            }
        }
        let held = |g: Option<&Group>| g.map(|g| g.held.clone()).unwrap_or_default();
        if held(was) == held(is) {
            continue;
        }
        // A team's group holds every company's alerts; a contact's, its
        // company's only.
        c.exec(
            q(
                "DELETE FROM alert_held_notices WHERE rule = $1 AND notice = $2 \
               AND audience = $3 AND ($4 IS NULL OR company_id = $4)",
            )
            .arg(&k.rule)
            .arg(k.notice.as_str())
            .arg(&audience)
            .arg(company),
        )
        .await?;
        for (i, h) in held(is).iter().enumerate() {
            c.exec(
                q(
                    "INSERT INTO alert_held_notices (rule, notice, audience, alert_id, \
                   company_id, seq) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .arg(&k.rule)
                .arg(k.notice.as_str())
                .arg(&audience)
                .arg(h.alert_id)
                .arg(h.company.as_ref().map(CompanyId::as_str))
                .arg(i as i64),
            )
            .await?;
        }
    }
    Ok(())
}

/// The plan's alerts, then each notice of an alert written held for its
/// group.
async fn write_evaluation_tx(
    c: &mut dyn Conn,
    new: &[Alert],
    changed: &[Alert],
    held: &[(GroupKey, Held)],
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>> {
    let written = write_plan(c, new, changed).await?;
    let holds: Vec<_> = held
        .iter()
        .filter(|(_, h)| written.contains(&h.alert_id))
        .collect();
    if !holds.is_empty() {
        let before = load_outbox(c).await?;
        let mut after = before.clone();
        for (key, h) in holds {
            after.hold(key.clone(), h.clone(), now);
        }
        save_outbox(c, &before, &after).await?;
    }
    Ok(written)
}

/// The notices of the groups whose sender's lease ran out at `now`, each
/// group in the order it was held, oldest taking first; their marks go.
async fn expired_sending(
    c: &mut dyn Conn,
    now: DateTime<Utc>,
) -> Result<Vec<(GroupKey, Vec<Held>)>> {
    let rows = c
        .all(
            q(
                "SELECT sending_id, rule, notice, audience, alert_id, company_id \
               FROM alert_sending_notices WHERE lease_until <= $1 ORDER BY sending_id, seq",
            )
            .arg(now),
        )
        .await?;
    let mut groups: Vec<(Uuid, GroupKey, Vec<Held>)> = Vec::new();
    for r in &rows {
        let id = r.uuid("sending_id")?;
        let audience = audience_of(&r.text("audience")?)?;
        let company = company_of(r.opt_text("company_id")?)?;
        let held = Held {
            alert_id: r.uuid("alert_id")?,
            company: company.clone(),
        };
        match groups.last_mut() {
            Some((last, _, notices)) if *last == id => notices.push(held),
            _ => {
                let key = GroupKey {
                    rule: r.text("rule")?,
                    notice: notice(&r.text("notice")?)?,
                    company: match audience {
                        Audience::CompanyContact => company,
                        Audience::Team(_) => None,
                    },
                    audience,
                };
                groups.push((id, key, vec![held]));
            }
        }
    }
    if !groups.is_empty() {
        c.exec(q("DELETE FROM alert_sending_notices WHERE lease_until <= $1").arg(now))
            .await?;
    }
    Ok(groups.into_iter().map(|(_, k, h)| (k, h)).collect())
}

/// Marks `held` as being sent under `id` until `until`.
async fn mark_sending(
    c: &mut dyn Conn,
    id: Uuid,
    key: &GroupKey,
    held: &[Held],
    until: DateTime<Utc>,
) -> Result<()> {
    let audience = audience_text(&key.audience);
    for (i, h) in held.iter().enumerate() {
        c.exec(
            q(
                "INSERT INTO alert_sending_notices (sending_id, rule, notice, audience, \
               alert_id, company_id, seq, lease_until) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .arg(id)
            .arg(&key.rule)
            .arg(key.notice.as_str())
            .arg(&audience)
            .arg(h.alert_id)
            .arg(h.company.as_ref().map(CompanyId::as_str))
            .arg(i as i64)
            .arg(until),
        )
        .await?;
    }
    Ok(())
}

async fn insert_attempts(c: &mut dyn Conn, attempts: &[NotificationAttempt]) -> Result<()> {
    for n in attempts {
        let s = q(
            "INSERT INTO alert_notifications (alert_id, company_id, notice, channel, \
                   target, attempt, at, outcome, error) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .arg(n.alert_id)
        .arg(n.company_id.as_ref().map(CompanyId::as_str))
        .arg(n.notice.as_str())
        .arg(&n.channel)
        .arg(&n.target)
        .arg(i64::from(n.attempt))
        .arg(n.at)
        .arg(n.outcome.as_str())
        .arg(n.error.as_deref());
        c.exec(s).await?;
    }
    Ok(())
}

type DueNotices = (Vec<Sending>, usize);

async fn take_due_tx(
    c: &mut dyn Conn,
    now: DateTime<Utc>,
    grouping: Grouping,
    lease: TimeDelta,
) -> Result<DueNotices> {
    alerts_policy(c).await?;
    let before = load_outbox(c).await?;
    let mut after = before.clone();
    let due = after.take_due(now, grouping);
    save_outbox(c, &before, &after).await?;
    // What a sender took and never recorded goes first: it is older.
    let mut taken = expired_sending(c, now).await?;
    taken.extend(due.into_iter().filter(|(_, held)| !held.is_empty()));
    let mut marked = Vec::with_capacity(taken.len());
    for (key, held) in taken {
        let id = Uuid::now_v7();
        mark_sending(c, id, &key, &held, now + lease).await?;
        marked.push((id, key, held));
    }
    let ids: Vec<Uuid> = marked
        .iter()
        .flat_map(|(_, _, held)| held.iter().map(|h| h.alert_id))
        .collect();
    let mut alerts = HashMap::new();
    if !ids.is_empty() {
        let s = q_each(
            select_alerts!("WHERE alert_id IN (SELECT value FROM json_each($1))"),
            select_alerts!("WHERE alert_id = ANY ($1)"),
        )
        .arg(&ids[..]);
        for r in c.all(s).await? {
            let a = alert_from_row(&r)?;
            alerts.insert(a.id, a);
        }
    }
    let due = marked
        .into_iter()
        .map(|(id, key, held)| Sending {
            id,
            key,
            alerts: held
                .iter()
                .filter_map(|h| alerts.get(&h.alert_id).cloned())
                .collect(),
        })
        .collect();
    Ok((due, after.held()))
}

async fn end_silence_tx(
    c: &mut dyn Conn,
    id: Uuid,
    at: DateTime<Utc>,
    audit: AuditRecord,
) -> Result<Silence> {
    let s = q(
        "SELECT silence_id, matchers, starts_at, ends_at, created_by, comment, created_at \
               FROM alert_silences WHERE silence_id = $1",
    )
    .arg(id);
    let mut silence = silence_from_row(&c.one(s.for_update()).await?)?;
    if silence.ends_at <= at {
        return Err(StoreError::Conflict("the silence has ended already".into()));
    }
    silence.ends_at = at;
    c.exec(
        q("UPDATE alert_silences SET ends_at = $2 WHERE silence_id = $1")
            .arg(id)
            .arg(at),
    )
    .await?;
    c.audit(audit).await?;
    Ok(silence)
}

#[async_trait]
impl<D: Db> AlertStore for D {
    async fn open_alerts(&self) -> Result<Vec<Alert>> {
        let mut r = self.read_all(false).await?;
        let s = q(select_alerts!(
            "WHERE state <> 'resolved' ORDER BY started_at, alert_id"
        ));
        let rows = r.all(s).await;
        D::end_read(r).await?;
        rows?.iter().map(alert_from_row).collect()
    }

    async fn write_alert_plan(&self, new: &[Alert], changed: &[Alert]) -> Result<Vec<Uuid>> {
        let mut tx = self.write_system().await?;
        let done = write_plan(&mut tx, new, changed).await;
        commit_or_roll_back::<D, _>(tx, done).await
    }

    async fn write_evaluation(
        &self,
        new: &[Alert],
        changed: &[Alert],
        held: &[(GroupKey, Held)],
        now: DateTime<Utc>,
    ) -> Result<Vec<Uuid>> {
        let mut tx = self.write_system().await?;
        let done = write_evaluation_tx(&mut tx, new, changed, held, now).await;
        commit_or_roll_back::<D, _>(tx, done).await
    }

    async fn take_due_notices(
        &self,
        now: DateTime<Utc>,
        grouping: Grouping,
        lease: TimeDelta,
    ) -> Result<DueNotices> {
        let mut tx = self.write_system().await?;
        let done = take_due_tx(&mut tx, now, grouping, lease).await;
        commit_or_roll_back::<D, _>(tx, done).await
    }

    async fn record_notifications(&self, attempts: &[NotificationAttempt]) -> Result<()> {
        if attempts.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_system().await?;
        let done = async {
            alerts_policy(&mut tx).await?;
            insert_attempts(&mut tx, attempts).await
        }
        .await;
        commit_or_roll_back::<D, _>(tx, done).await
    }

    async fn finish_sending(&self, sending: Uuid, attempts: &[NotificationAttempt]) -> Result<()> {
        let mut tx = self.write_system().await?;
        let done = async {
            alerts_policy(&mut tx).await?;
            insert_attempts(&mut tx, attempts).await?;
            let s = q("DELETE FROM alert_sending_notices WHERE sending_id = $1").arg(sending);
            tx.exec(s).await?;
            Ok(())
        }
        .await;
        commit_or_roll_back::<D, _>(tx, done).await
    }

    async fn record_verification(&self, run: &Verification) -> Result<()> {
        let mut tx = self.write_system().await?;
        let s = q(
            "INSERT INTO verification_runs (check_name, ran_at, failure) VALUES ($1, $2, $3) \
             ON CONFLICT (check_name) DO UPDATE SET ran_at = excluded.ran_at, \
             failure = excluded.failure",
        )
        .arg(run.check.as_str())
        .arg(run.at)
        .arg(run.failure.as_deref());
        let done = tx.exec(s).await.map(|_| ());
        commit_or_roll_back::<D, _>(tx, done).await
    }

    async fn verifications(&self) -> Result<Vec<Verification>> {
        let mut r = self.read_all(false).await?;
        let s = q("SELECT check_name, ran_at, failure FROM verification_runs ORDER BY check_name");
        let rows = r.all(s).await;
        D::end_read(r).await?;
        rows?
            .iter()
            .map(|r| {
                let name = r.text("check_name")?;
                Ok(Verification {
                    check: Check::parse(&name).ok_or_else(|| corrupt("check", &name))?,
                    at: r.time("ran_at")?,
                    failure: r.opt_text("failure")?,
                })
            })
            .collect()
    }

    async fn list_alerts(&self, who: AlertReader<'_>, filter: &AlertFilter) -> Result<Vec<Alert>> {
        let company = limit_of(&who);
        let mut r = match who {
            AlertReader::Admin(_) => self.read_all(false).await?,
            AlertReader::Company(s) => self.read_for(s.company()).await?,
        };
        let found = list_alerts_of(&mut r, company, filter).await;
        D::end_read(r).await?;
        found
    }

    async fn get_alert(&self, who: AlertReader<'_>, id: Uuid) -> Result<AlertDetail> {
        let company = limit_of(&who);
        let mut r = match who {
            AlertReader::Admin(_) => self.read_all(false).await?,
            AlertReader::Company(s) => self.read_for(s.company()).await?,
        };
        let found = detail_of(&mut r, id, company).await;
        D::end_read(r).await?;
        found
    }

    async fn acknowledge_alert(
        &self,
        who: AlertReader<'_>,
        id: Uuid,
        by: &str,
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Alert> {
        person_acts(self, who, id, Act::Acknowledge, by, at, audit).await
    }

    async fn resolve_alert(
        &self,
        who: AlertReader<'_>,
        id: Uuid,
        by: &str,
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Alert> {
        person_acts(self, who, id, Act::Resolve, by, at, audit).await
    }

    async fn list_silences(
        &self,
        _admin: &AdminScope,
        now: DateTime<Utc>,
        expired: bool,
    ) -> Result<Vec<Silence>> {
        let mut r = self.read_all(false).await?;
        let s = q(
            "SELECT silence_id, matchers, starts_at, ends_at, created_by, comment, created_at \
                   FROM alert_silences WHERE $1 OR ends_at > $2 \
                   ORDER BY created_at DESC, silence_id LIMIT 1000",
        )
        .arg(expired)
        .arg(now);
        let rows = r.all(s).await;
        D::end_read(r).await?;
        rows?.iter().map(silence_from_row).collect()
    }

    async fn create_silence(
        &self,
        _admin: &AdminScope,
        silence: &Silence,
        audit: AuditRecord,
    ) -> Result<Silence> {
        let matchers = serde_json::to_value(&silence.matchers)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.write_system().await?;
        let done = async {
            tx.exec(
                q(
                    "INSERT INTO alert_silences (silence_id, matchers, starts_at, ends_at, \
                   created_by, comment, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .arg(silence.id)
                .arg(&matchers)
                .arg(silence.starts_at)
                .arg(silence.ends_at)
                .arg(&silence.created_by)
                .arg(&silence.comment)
                .arg(silence.created_at),
            )
            .await?;
            tx.audit(audit).await?;
            Ok(silence.clone())
        }
        .await;
        commit_or_roll_back::<D, _>(tx, done).await
    }

    async fn end_silence(
        &self,
        _admin: &AdminScope,
        id: Uuid,
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Silence> {
        let mut tx = self.write_system().await?;
        let done = end_silence_tx(&mut tx, id, at, audit).await;
        commit_or_roll_back::<D, _>(tx, done).await
    }
}

/// Acknowledge and resolve: the company's transaction for its key (its
/// row held against a forced delete), the alerts setting for the admin.
async fn person_acts<D: Db>(
    db: &D,
    who: AlertReader<'_>,
    id: Uuid,
    act: Act,
    by: &str,
    at: DateTime<Utc>,
    audit: AuditRecord,
) -> Result<Alert> {
    let company = limit_of(&who);
    let mut tx = match who {
        AlertReader::Admin(_) => {
            let mut tx = db.write_system().await?;
            alerts_policy(&mut tx).await?;
            tx
        }
        AlertReader::Company(s) => {
            let mut tx = db.write_for(s.company()).await?;
            if !lock_company(&mut tx, s.company()).await? {
                let _ = D::rollback(tx).await;
                return Err(StoreError::NotFound);
            }
            tx
        }
    };
    let done = act_on(&mut tx, company, id, act, by, at, audit).await;
    commit_or_roll_back::<D, _>(tx, done).await
}
