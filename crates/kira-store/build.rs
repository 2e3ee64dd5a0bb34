// `sqlx::migrate!` embeds the migrations at compile time: a new or changed
// migration must rebuild the crate (sqlx's own advice, `sqlx migrate
// build-script`).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
