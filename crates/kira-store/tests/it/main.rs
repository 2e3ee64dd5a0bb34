//! kira-store's integration tests: one binary, both backends.

/// Runs each named scenario (`async fn name(Fresh)`) once on SQLite and
/// once on PostgreSQL.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(crate::support::sqlite().await).await } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(crate::support::postgres().await).await } )*
        }
    };
}

mod agents;
mod alerts;
mod budget_property;
mod conformance;
mod isolation;
mod knowledge;
mod memory;
mod metrics;
mod migrations;
mod nodes;
mod pg_work;
mod queue_property;
mod rls;
mod sessions;
mod support;
mod tools;
mod work;
