//! Alerts (issue 22, migration 0019): what the evaluator found
//! (`kira_core::alerts::Alert`), every notification attempt, and the
//! silences. A company's alerts and their notifications are company data
//! (row-level security; a company key reads and changes only its own); the
//! system's alerts and the silences are the admin's. The evaluator's
//! writes go through the `app.alerts` setting, which admits every alert.

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use kira_core::CompanyId;
use kira_core::alerts::{
    Alert, AlertState, GroupKey, Grouping, Held, NoticeKind, Silence, Verification,
};
use kira_core::audit::AuditRecord;
use kira_core::auth::{AdminScope, CompanyScope};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::Result;

/// Who reads or changes alerts: the admin (every alert), or a company's
/// key (its company's alerts only; the system's are never its).
#[derive(Debug, Clone, Copy)]
pub enum AlertReader<'a> {
    Admin(&'a AdminScope),
    Company(&'a CompanyScope),
}

/// Which alerts to list, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertFilter {
    /// Only open ones (pending, firing, acknowledged).
    pub open_only: bool,
    pub state: Option<AlertState>,
    pub rule: Option<String>,
    /// Only those changed (opened, fired, acknowledged, escalated,
    /// notified or resolved) at or after this.
    pub changed_since: Option<DateTime<Utc>>,
    pub limit: u32,
}

impl Default for AlertFilter {
    fn default() -> Self {
        Self {
            open_only: false,
            state: None,
            rule: None,
            changed_since: None,
            limit: 100,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    Sent,
    Failed,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Sent => "sent",
            Delivery::Failed => "failed",
        }
    }
}

/// One attempt to deliver a notice.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct NotificationAttempt {
    pub alert_id: Uuid,
    /// The alert's company, if any (so the row is the company's).
    #[serde(skip)]
    pub company_id: Option<CompanyId>,
    pub notice: NoticeKind,
    /// `log`, `webhook`, ...
    pub channel: String,
    /// Where to: a URL (its password hidden), a team, `log`.
    pub target: String,
    /// 1 for the first try.
    pub attempt: i32,
    pub at: DateTime<Utc>,
    pub outcome: Delivery,
    pub error: Option<String>,
}

/// An alert and every notification attempt made for it, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AlertDetail {
    pub alert: Alert,
    pub notifications: Vec<NotificationAttempt>,
}

/// A group taken out of the outbox to be sent: its notices are marked
/// as being sent under `id` until [`AlertStore::finish_sending`] records
/// the delivery, or the lease runs out and the next evaluator takes the
/// group again (at least once).
#[derive(Debug, Clone, PartialEq)]
pub struct Sending {
    pub id: Uuid,
    pub key: GroupKey,
    /// Its alerts as they stand now, in the order they were held.
    pub alerts: Vec<Alert>,
}

/// The most notification attempts [`AlertStore::get_alert`] returns.
pub const MAX_NOTIFICATIONS_SHOWN: u32 = 500;

#[async_trait]
pub trait AlertStore: Send + Sync {
    /// Every open alert (the evaluator's read).
    async fn open_alerts(&self) -> Result<Vec<Alert>>;

    /// Inserts `new` and writes `changed` where each is still at the
    /// version read, in one transaction; returns the ids written. A new
    /// alert whose rule and subject already have an open one, or a change
    /// to an alert changed meanwhile (acknowledged, resolved), is left out:
    /// the next evaluation starts from what is stored.
    async fn write_alert_plan(&self, new: &[Alert], changed: &[Alert]) -> Result<Vec<Uuid>>;

    /// [`AlertStore::write_alert_plan`], and in the same transaction each
    /// of `held` whose alert was written held for its group at `now`
    /// (the stored outbox, every process's: `kira_core::alerts::Outbox`'s
    /// rule).
    async fn write_evaluation(
        &self,
        new: &[Alert],
        changed: &[Alert],
        held: &[(GroupKey, Held)],
        now: DateTime<Utc>,
    ) -> Result<Vec<Uuid>>;

    /// Takes the groups due at `now` out of the stored outbox, in one
    /// transaction (so two evaluators never take one notice both), and
    /// the groups whose sender's lease ran out (it died before recording
    /// their delivery): each marked as being sent until `now + lease`,
    /// with its alerts as they stand now, in the order they were held (an
    /// alert gone with its company's delete is left out); and the notices
    /// still held after.
    async fn take_due_notices(
        &self,
        now: DateTime<Utc>,
        grouping: Grouping,
        lease: TimeDelta,
    ) -> Result<(Vec<Sending>, usize)>;

    /// Records delivery attempts.
    async fn record_notifications(&self, attempts: &[NotificationAttempt]) -> Result<()>;

    /// Records a taken group's delivery attempts and removes its
    /// being-sent mark, in one transaction (a mark taken again since,
    /// its lease run out, is another's and stays).
    async fn finish_sending(&self, sending: Uuid, attempts: &[NotificationAttempt]) -> Result<()>;

    /// Records a scheduled verification's run, in place of its last.
    async fn record_verification(&self, run: &Verification) -> Result<()>;

    /// The latest run of each scheduled verification, every process's.
    async fn verifications(&self) -> Result<Vec<Verification>>;

    async fn list_alerts(&self, who: AlertReader<'_>, filter: &AlertFilter) -> Result<Vec<Alert>>;

    /// NotFound for an alert the reader may not see.
    async fn get_alert(&self, who: AlertReader<'_>, id: Uuid) -> Result<AlertDetail>;

    /// Firing -> acknowledged, and appends `audit` (its company set to the
    /// alert's). NotFound as for `get_alert`; Conflict when not firing.
    async fn acknowledge_alert(
        &self,
        who: AlertReader<'_>,
        id: Uuid,
        by: &str,
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Alert>;

    /// Any open state -> resolved by `by`, and appends `audit`. Conflict
    /// when already resolved.
    async fn resolve_alert(
        &self,
        who: AlertReader<'_>,
        id: Uuid,
        by: &str,
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Alert>;

    /// Silences ending after `now` (all of them with `expired`), newest
    /// first, at most 1,000.
    async fn list_silences(
        &self,
        admin: &AdminScope,
        now: DateTime<Utc>,
        expired: bool,
    ) -> Result<Vec<Silence>>;

    /// Stores a silence and appends `audit`.
    async fn create_silence(
        &self,
        admin: &AdminScope,
        silence: &Silence,
        audit: AuditRecord,
    ) -> Result<Silence>;

    /// Ends a silence at `at` (kept for the record) and appends `audit`.
    /// NotFound; Conflict when it has ended already.
    async fn end_silence(
        &self,
        admin: &AdminScope,
        id: Uuid,
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Silence>;
}
