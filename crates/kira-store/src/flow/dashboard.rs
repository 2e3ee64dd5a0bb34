//! [`DashboardStore`], written once for every [`Db`].

use async_trait::async_trait;
use kira_core::auth::{AdminScope, CompanyScope};

use crate::Result;
use crate::dashboard::{DashboardStore, WorkerLeases};
use crate::flow::store::Db;
use crate::metrics::{QueueGauge, WaitingWork};
use crate::sql::{Columns, Conn, q};

async fn company_waiting(c: &mut dyn Conn, company: &str) -> Result<WaitingWork> {
    let queue = c
        .all(
            q(
                "SELECT status, priority, count(*) AS n, min(waiting_since) AS oldest \
               FROM task_queue WHERE company_id = $1 \
               GROUP BY status, priority ORDER BY status, priority",
            )
            .arg(company),
        )
        .await?
        .iter()
        .map(|r| {
            Ok(QueueGauge {
                status: r.text("status")?,
                priority: r.text("priority")?,
                tasks: r.int("n")?,
                oldest_waiting_since: r.opt_time("oldest")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    // The partial index `tasks_needs_review` (0018) holds just these.
    let reviews = c
        .int(
            q("SELECT count(*) FROM tasks WHERE status = 'needs_review' AND company_id = $1")
                .arg(company),
        )
        .await?
        .unwrap_or(0);
    Ok(WaitingWork {
        queue,
        reviews_waiting: if reviews > 0 {
            vec![(company.to_owned(), reviews)]
        } else {
            vec![]
        },
    })
}

async fn workers_of(c: &mut dyn Conn) -> Result<Vec<WorkerLeases>> {
    c.all(q(
        "SELECT lease_owner, count(*) AS n, max(lease_expires_at) AS expires \
         FROM task_queue WHERE lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL \
         GROUP BY lease_owner ORDER BY lease_owner",
    ))
    .await?
    .iter()
    .map(|r| {
        Ok(WorkerLeases {
            worker: r.text("lease_owner")?,
            running: r.int("n")?,
            lease_expires_at: r.time("expires")?,
        })
    })
    .collect()
}

#[async_trait]
impl<D: Db> DashboardStore for D {
    async fn company_waiting_work(&self, scope: &CompanyScope) -> Result<WaitingWork> {
        let company = scope.company();
        let mut r = self.read_for(company).await?;
        let found = company_waiting(&mut r, company.as_str()).await;
        D::end_read(r).await?;
        found
    }

    async fn workers(&self, _admin: &AdminScope) -> Result<Vec<WorkerLeases>> {
        let mut r = self.read_all(false).await?;
        let found = workers_of(&mut r).await;
        D::end_read(r).await?;
        found
    }
}
