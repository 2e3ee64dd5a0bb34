//! `kira secret`: a master key, and an API key sealed from stdin for the
//! configuration file; refusals without a key or with nothing to seal.

use crate::support::{fails, kira_in};

#[test]
fn keygen_then_encrypt_prints_a_sealed_line_and_never_the_key() {
    let work = tempfile::tempdir().expect("temp dir");
    let out = kira_in(work.path())
        .args(["secret", "keygen"])
        .output()
        .expect("keygen");
    assert!(out.status.success());
    let master = String::from_utf8(out.stdout).expect("utf-8");
    let master = master.trim();
    assert_eq!(master.len(), 64);
    assert!(master.bytes().all(|b| b.is_ascii_hexdigit()));

    let out = kira_in(work.path())
        .args(["secret", "encrypt", "--provider", "openai"])
        .env("KIRA_SECRET_KEY", master)
        .write_stdin("sk-test-very-secret\n")
        .output()
        .expect("encrypt");
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        line.starts_with("api_key_encrypted = \"kira-sealed-v1:"),
        "{line}"
    );
    assert!(!line.contains("sk-test-very-secret"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("sk-test-very-secret"));

    let out = fails(
        kira_in(work.path())
            .args(["secret", "encrypt", "--provider", "openai"])
            .env_remove("KIRA_SECRET_KEY")
            .write_stdin("sk-x"),
        1,
    );
    assert!(
        out.stderr.contains("KIRA_SECRET_KEY is not set"),
        "{}",
        out.stderr
    );
    let out = fails(
        kira_in(work.path())
            .args(["secret", "encrypt", "--provider", "openai"])
            .env("KIRA_SECRET_KEY", master)
            .write_stdin(""),
        1,
    );
    assert!(out.stderr.contains("no key on stdin"), "{}", out.stderr);
}
