//! Dashboard sessions on both backends: stored with only their secret's
//! hash, found with their key, ended by sign-out (audited, once), swept
//! when expired by the next sign-in, and removed with their key's company.

use chrono::{SubsecRound, TimeDelta};
use kira_core::auth::{NewKey, Principal, Role, StoredSession};
use kira_core::ids::KeyId;
use rand::SeedableRng;

use crate::support::{Fresh, create, record, scope, t0};

conformance!(sessions_live_and_end_with_their_key);

fn admin() -> kira_core::auth::AdminScope {
    Principal::system().admin().expect("system is admin")
}

async fn sessions_live_and_end_with_their_key(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let key = NewKey {
        name: "viewer".into(),
        role: Role::Viewer,
        company_id: Some("acme".into()),
    }
    .issue(&mut rand::rngs::StdRng::seed_from_u64(3), t0())
    .expect("key");
    s.insert_key(&admin(), &key.stored, record(None, "key.create"))
        .await
        .expect("key");
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let id = key.stored.key.id.clone();
    let first = StoredSession::issue(&mut rng, id.clone(), t0(), TimeDelta::hours(1));
    s.insert_session(&first.stored, record(Some("acme"), "ui.sign_in"))
        .await
        .expect("session");

    let (found, k) = s
        .find_session(&first.stored.id)
        .await
        .expect("find")
        .expect("there");
    assert_eq!(
        (&found.id, &found.secret_sha256, &found.csrf),
        (
            &first.stored.id,
            &first.stored.secret_sha256,
            &first.stored.csrf
        )
    );
    assert_eq!(found.expires_at, first.stored.expires_at.trunc_subsecs(6));
    assert_eq!(k.key.id, id);
    let p = Principal::authenticate_session(&first.token, &found, &k, t0()).expect("valid");
    assert_eq!(p.role(), Role::Viewer);
    assert!(
        s.find_session("nosuchsession")
            .await
            .expect("find")
            .is_none()
    );

    // A session of an unknown key is refused.
    let ghost = StoredSession::issue(
        &mut rng,
        KeyId::parse("zzzzzzzzzzzz").expect("id"),
        t0(),
        TimeDelta::hours(1),
    );
    assert!(matches!(
        s.insert_session(&ghost.stored, record(None, "ui.sign_in"))
            .await,
        Err(kira_store::StoreError::NotFound)
    ));

    // A sign-in two hours later sweeps the expired first session.
    let second = StoredSession::issue(
        &mut rng,
        id.clone(),
        t0() + TimeDelta::hours(2),
        TimeDelta::hours(1),
    );
    s.insert_session(&second.stored, record(Some("acme"), "ui.sign_in"))
        .await
        .expect("session");
    assert!(
        s.find_session(&first.stored.id)
            .await
            .expect("find")
            .is_none()
    );

    // Sign-out ends it once.
    assert!(
        s.delete_session(&second.stored.id, record(Some("acme"), "ui.sign_out"))
            .await
            .expect("end")
    );
    assert!(
        !s.delete_session(&second.stored.id, record(Some("acme"), "ui.sign_out"))
            .await
            .expect("end")
    );

    // The company's delete takes its keys' sessions.
    let third = StoredSession::issue(&mut rng, id, t0(), TimeDelta::hours(1));
    s.insert_session(&third.stored, record(Some("acme"), "ui.sign_in"))
        .await
        .expect("session");
    let deleted = s
        .delete_company(&scope("acme"), record(Some("acme"), "company.delete"))
        .await
        .expect("delete");
    let count = |t: &str| deleted.tables.iter().find(|(n, _)| n == t).map(|(_, n)| *n);
    assert_eq!(count("ui_sessions"), Some(1));
    assert!(
        s.find_session(&third.stored.id)
            .await
            .expect("find")
            .is_none()
    );
}
