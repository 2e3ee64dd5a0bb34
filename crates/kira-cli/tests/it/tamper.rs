//! Editing the audit log behind the server's back is found by
//! `kira audit verify`, which names the first altered entry.

use sqlx::Connection;

use crate::support::{Server, block_on, fails, ok};

#[test]
fn tampering_with_the_audit_log_is_found() {
    let work = tempfile::tempdir().expect("temp dir");
    let server = Server::start(work.path(), &[]);
    for id in ["acme", "beta"] {
        ok(server.kira().args([
            "company",
            "add",
            id,
            "--name",
            id,
            "--industry",
            "x",
            "--jurisdiction",
            "GB",
        ]));
    }
    ok(server.kira().args(["audit", "verify"]));
    let db = server.data_dir.join("kira.db");
    assert!(server.stop().success());

    block_on(async {
        let url = format!("sqlite://{}", db.display());
        let mut conn = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("open kira.db");
        sqlx::raw_sql(
            "DROP TRIGGER IF EXISTS audit_log_no_update; \
             UPDATE audit_log SET target = 'tampered' WHERE seq = 2;",
        )
        .execute(&mut conn)
        .await
        .expect("tamper");
        conn.close().await.expect("close");
    });

    let server = Server::start(work.path(), &[]);
    assert!(server.stdout().is_empty(), "no new admin key on a restart");
    let out = fails(server.kira().args(["audit", "verify"]), 1);
    assert!(
        out.stdout.starts_with("audit chain BROKEN at entry 2: "),
        "{}",
        out.stdout
    );
    let report = ok_json_failing(&server);
    assert_eq!(report["ok"], false);
    assert_eq!(report["first_broken"]["seq"], 2);
    assert!(server.stop().success());
}

/// `audit verify --json` on a broken chain: still JSON, still exit 1.
fn ok_json_failing(server: &Server) -> serde_json::Value {
    let out = fails(server.kira().args(["audit", "verify", "--json"]), 1);
    serde_json::from_str(&out.stdout).expect("JSON")
}
