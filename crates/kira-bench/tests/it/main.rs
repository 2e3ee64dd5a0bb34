//! kira-bench's integration tests, one binary: each benchmark's logic on a
//! small run. (Their figures are measured by `kira bench`, not here.)

mod runs;
