//! The same story against PostgreSQL, in a fresh database of the test
//! cluster (`KIRA_TEST_PG_URL`, or the local default).

use crate::story::{check_first_start, run_story};
use crate::support::{Server, block_on};

#[test]
fn postgres_story() {
    let url = block_on(kira_store::testdb::fresh_postgres());
    let work = tempfile::tempdir().expect("temp dir");
    let server = Server::start(work.path(), &["--database-url", &url]);
    assert!(
        !server.data_dir.join("kira.db").exists(),
        "no SQLite file when the database is PostgreSQL"
    );
    check_first_start(&server);
    run_story(&server);
    let status = server.stop();
    assert!(
        status.success(),
        "SIGTERM stops the server cleanly: {status}"
    );
}
