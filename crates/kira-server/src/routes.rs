//! The handlers, one module per resource.

pub mod agents;
pub mod alerts;
pub mod audit;
pub mod budget;
pub mod companies;
pub mod dashboard;
pub mod keys;
pub mod knowledge;
pub mod memory;
pub mod metrics;
pub mod reviews;
pub mod sharing;
pub mod system;
pub mod tasks;
pub mod tools;
