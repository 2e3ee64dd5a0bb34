//! The memory's background work: the embedder loop and the compaction job
//! over every active company, on one node at a time (PostgreSQL advisory
//! lock), audited by the store as each group is written.

use std::sync::Arc;

use kira_core::audit::{AuditRecord, Outcome};
use kira_core::auth::{Access, Principal};
use tokio::task::JoinHandle;

use super::Memories;
use crate::{EngineError, Shutdown};

/// The advisory-lock key of the compaction job.
const JOB_COMPACTION: i64 = 0x6b69_7261_0002;

impl Memories {
    /// Compacts every active company's memory, if no other node is at it.
    /// Returns how many companies were compacted (None: another node holds
    /// the job). A company that fails is logged and the run goes on.
    pub async fn compact_all(&self) -> Result<Option<usize>, EngineError> {
        crate::locked(
            self.ctx.store.as_ref(),
            JOB_COMPACTION,
            self.compact_all_locked(),
        )
        .await
    }

    /// [`Memories::compact_all`] with its lock held.
    async fn compact_all_locked(&self) -> Result<usize, EngineError> {
        let system = Principal::system();
        let admin = system.admin().map_err(|_| {
            EngineError::Invalid(kira_core::ValidationError::new(
                "principal",
                "the system principal is not an admin",
            ))
        })?;
        let now = self.ctx.clock.now();
        let audit = AuditRecord {
            at: now,
            request_id: format!("compaction-{}", now.timestamp_millis()),
            actor: "system".into(),
            company_id: None,
            action: "memory.compact.all".into(),
            target: "companies".into(),
            outcome: Outcome::Ok,
            detail: String::new(),
        };
        let companies = self.ctx.store.list_companies(&admin, false, audit).await?;
        let mut done = 0;
        for c in companies {
            let Ok(scope) = system.scope(&c.id, Access::Write) else {
                continue;
            };
            match self.compact(&scope, false).await {
                Ok(r) => {
                    done += 1;
                    if r.discarded > 0 || !r.groups.is_empty() || r.purged > 0 {
                        tracing::info!(
                            company = %c.id,
                            discarded = r.discarded,
                            summarised_groups = r.groups.len(),
                            purged = r.purged,
                            tokens_before = r.tokens_before,
                            tokens_after = r.tokens_after,
                            "memory compacted"
                        );
                    }
                }
                Err(e) => tracing::error!(company = %c.id, error = %e, "compaction failed"),
            }
        }
        Ok(done)
    }

    /// Starts the embedder and the periodic compaction job; both stop on
    /// `shutdown`.
    pub fn start_jobs(self: &Arc<Self>, shutdown: Shutdown) -> JoinHandle<()> {
        let memory = self.clone();
        tokio::spawn(async move {
            let embedder = {
                let embeddings = memory.embeddings.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move { embeddings.run(shutdown).await })
            };
            let every = memory
                .ctx
                .config
                .memory
                .compaction_interval
                .to_std()
                .unwrap_or(std::time::Duration::from_secs(86_400));
            loop {
                tokio::select! {
                    () = shutdown.wait() => break,
                    () = tokio::time::sleep(every) => {}
                }
                if let Err(e) = memory.compact_all().await {
                    tracing::error!(error = %e, "compaction job failed");
                }
            }
            let _ = embedder.await;
        })
    }
}
