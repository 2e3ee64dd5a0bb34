//! kira-store's integration tests: one binary, both backends.

mod conformance;
mod isolation;
mod rls;
mod support;
