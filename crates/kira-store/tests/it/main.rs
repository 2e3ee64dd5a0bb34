//! kira-store's integration tests: one binary, both backends.

mod budget_property;
mod conformance;
mod isolation;
mod pg_work;
mod rls;
mod support;
mod work;
