//! A bad configuration is refused before anything starts: exit status 2,
//! the key named, nothing created.

use crate::support::{fails, kira_in};

#[test]
fn bad_values_are_refused_with_the_key_named() {
    let work = tempfile::tempdir().expect("temp dir");
    let data = work.path().join("data");
    let data = data.to_str().expect("utf-8 path");

    let out = fails(
        kira_in(work.path()).args(["serve", "--data-dir", data, "--listen", "localhost"]),
        2,
    );
    assert!(
        out.stderr
            .starts_with("error: invalid configuration: listen (flag --listen): "),
        "{}",
        out.stderr
    );

    let out = fails(
        kira_in(work.path()).args([
            "serve",
            "--data-dir",
            data,
            "--database-url",
            "mysql://kira:s3cret@db/kira",
        ]),
        2,
    );
    assert!(
        out.stderr.contains("database_url (flag --database-url)"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("s3cret"),
        "passwords are never printed"
    );

    let out = fails(
        kira_in(work.path())
            .args(["serve", "--data-dir", data])
            .env("KIRA_MAX_BODY_BYTES", "0"),
        2,
    );
    assert!(
        out.stderr
            .contains("max_body_bytes (env KIRA_MAX_BODY_BYTES)"),
        "{}",
        out.stderr
    );

    let out = fails(
        kira_in(work.path()).args([
            "serve",
            "--data-dir",
            data,
            "--app-database-url",
            "postgres://app@db/kira",
        ]),
        2,
    );
    assert!(out.stderr.contains("app_database_url"), "{}", out.stderr);

    // ./kira.toml is read by default; an unknown key in it is named.
    std::fs::write(
        work.path().join("kira.toml"),
        "listen = \"127.0.0.1:0\"\nlisten_port = 8080\n",
    )
    .expect("write kira.toml");
    let out = fails(kira_in(work.path()).args(["serve", "--data-dir", data]), 2);
    assert!(
        out.stderr
            .contains("invalid configuration: listen_port (file kira.toml line 2): unknown key"),
        "{}",
        out.stderr
    );

    assert!(
        !work.path().join("data").exists(),
        "nothing is created before the configuration is valid"
    );
}

#[test]
fn engine_sections_are_checked_before_anything_starts() {
    let work = tempfile::tempdir().expect("temp dir");
    let data = work.path().join("data");
    let data = data.to_str().expect("utf-8 path");
    let write = |text: &str| std::fs::write(work.path().join("kira.toml"), text).expect("write");

    write("[budget]\nbase_percent = 70\n");
    let out = fails(kira_in(work.path()).args(["serve", "--data-dir", data]), 2);
    assert!(
        out.stderr.starts_with(
            "error: invalid configuration: budget.base_percent (file kira.toml line 2): "
        ),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("must be 100"), "{}", out.stderr);

    write("[executor]\nkind = \"simulated\"\nlatency_ms_min = 9\nlatency_ms_max = 1\n");
    let out = fails(kira_in(work.path()).args(["serve", "--data-dir", data]), 2);
    assert!(
        out.stderr
            .contains("invalid configuration: executor.latency_ms_min (file kira.toml line 3)"),
        "{}",
        out.stderr
    );

    write("[scheduler]\nlease_seconds = 60\nheartbeats = 5\n");
    let out = fails(kira_in(work.path()).args(["serve", "--data-dir", data]), 2);
    assert!(
        out.stderr.contains(
            "invalid configuration: scheduler.heartbeats (file kira.toml line 3): unknown key"
        ),
        "{}",
        out.stderr
    );

    assert!(
        !work.path().join("data").exists(),
        "nothing is created before the configuration is valid"
    );
}

#[test]
fn usage_errors_exit_2_and_client_errors_exit_1() {
    let work = tempfile::tempdir().expect("temp dir");
    fails(kira_in(work.path()).args(["company", "frobnicate"]), 2);
    // No token anywhere: a clear message, not a request.
    let out = fails(
        kira_in(work.path()).args([
            "--data-dir",
            "nowhere",
            "--url",
            "http://127.0.0.1:9",
            "whoami",
        ]),
        1,
    );
    assert!(out.stderr.contains("no API token"), "{}", out.stderr);
    // Nothing listening: says which server could not be reached.
    let out = fails(
        kira_in(work.path()).args(["--token", "kira_x", "--url", "http://127.0.0.1:9", "whoami"]),
        1,
    );
    assert!(
        out.stderr
            .contains("cannot reach the kira server at http://127.0.0.1:9"),
        "{}",
        out.stderr
    );
}
