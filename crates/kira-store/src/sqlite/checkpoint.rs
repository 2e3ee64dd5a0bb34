//! WAL checkpoints off the write path. SQLite's own checkpoint runs inside
//! the commit that crosses `wal_autocheckpoint` pages, fsync included, and
//! every other writer waits for it behind the writer turn. Here a task with
//! a connection of its own copies the WAL back into the database every
//! [`EVERY`] (a passive checkpoint: it never waits for, nor blocks, a reader
//! or a writer); commits checkpoint themselves only past [`BACKSTOP_PAGES`],
//! should this task ever fall behind.

use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, SqliteConnection};

use crate::Result;

/// How often the WAL is copied back.
pub(crate) const EVERY: Duration = Duration::from_millis(500);

/// WAL pages after which a commit checkpoints itself (SQLite's default is
/// 1,000; the task keeps the WAL far below this).
pub(crate) const BACKSTOP_PAGES: u32 = 20_000;

/// The background checkpointer; stops when dropped (with its store).
pub(crate) struct Checkpointer(tokio::task::JoinHandle<()>);

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Checkpointer {
    /// Starts checkpointing the database `opts` opens, `every` so often.
    pub(crate) async fn start(opts: &SqliteConnectOptions, every: Duration) -> Result<Self> {
        let mut conn = opts.connect().await?;
        Ok(Self(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = checkpoint(&mut conn).await {
                    tracing::warn!(error = %e, "a WAL checkpoint failed; the next one retries");
                }
            }
        })))
    }
}

/// One passive checkpoint.
async fn checkpoint(conn: &mut SqliteConnection) -> Result<()> {
    sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use sqlx::sqlite::{SqliteJournalMode, SqlitePoolOptions};

    use super::*;

    /// The database file's size: what checkpoints have copied back.
    fn main_file(path: &std::path::Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    /// Commits far past SQLite's own threshold (1,000 pages) leave their
    /// pages in the WAL; the checkpointer copies them back. (The timeout
    /// only bounds a failing test.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_leave_the_wal_to_the_checkpointer() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("t.db");
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .expect("url")
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .pragma("wal_autocheckpoint", BACKSTOP_PAGES.to_string());
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await
            .expect("open");
        sqlx::query("CREATE TABLE t (x BLOB)")
            .execute(&pool)
            .await
            .expect("table");
        // 8 MiB in 32 commits: 2,000 pages of 4 KiB.
        for _ in 0..32 {
            sqlx::query(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 32) \
                 INSERT INTO t SELECT randomblob(8192) FROM n",
            )
            .execute(&pool)
            .await
            .expect("insert");
        }
        let written = 8 << 20;
        assert!(
            main_file(&path) < written / 2,
            "a commit checkpointed: the database file holds {} bytes",
            main_file(&path)
        );
        let checkpointer = Checkpointer::start(&opts, Duration::from_millis(1))
            .await
            .expect("start");
        let copied = async {
            while main_file(&path) < written {
                tokio::task::yield_now().await;
            }
        };
        let copied = tokio::time::timeout(Duration::from_secs(60), copied).await;
        drop(checkpointer);
        assert!(copied.is_ok(), "the WAL was never copied back");
    }
}
