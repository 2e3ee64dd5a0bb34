//! `kira bench memory-scale`: memory at scale. COMPANIES x PER_COMPANY
//! memories (full text; no vectors at this size), each company publishing
//! a few for legal patterns; batch insert throughput, then search and
//! context pack latency, timed on a running engine.

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use kira_core::CompanyId;
use kira_core::audit::{AuditRecord, Outcome};
use kira_core::auth::{Access, CompanyScope, Principal};
use kira_core::clock::ManualClock;
use kira_core::company::NewCompany;
use kira_core::memory::{EventType, NewMemory, Workstream};
use kira_engine::memory::ContextRequest;
use kira_engine::{Engine, EngineConfig};
use kira_store::Store;
use kira_store::memory::MemoryFilter;
use rand::{Rng, SeedableRng};

use crate::report::{micros, ms, print_json};
use crate::{BenchError, Scratch};

/// Words the scale benchmark writes its memories from.
const SCALE_WORDS: &[&str] = &[
    "contract",
    "renewal",
    "invoice",
    "board",
    "forecast",
    "hiring",
    "engineer",
    "audit",
    "compliance",
    "supplier",
    "customer",
    "churn",
    "revenue",
    "margin",
    "pricing",
    "roadmap",
    "release",
    "incident",
    "security",
    "review",
    "deadline",
    "budget",
    "expense",
    "payroll",
    "lawsuit",
    "patent",
    "trademark",
    "lease",
    "office",
    "migration",
    "database",
    "latency",
    "campaign",
    "launch",
    "partner",
    "investor",
    "term",
    "sheet",
    "valuation",
    "tax",
    "filing",
    "quarter",
    "metrics",
    "retention",
    "onboarding",
    "training",
    "policy",
    "vendor",
    "risk",
    "insurance",
    "claim",
    "warranty",
    "shipment",
    "inventory",
    "forecasting",
    "analysis",
    "meeting",
    "decision",
    "approval",
    "escalation",
    "support",
    "ticket",
    "outage",
    "backup",
];

/// What the scale benchmark searches for.
pub const SCALE_QUERY_WORDS: &[&str] = SCALE_WORDS;

/// A deterministic memory text for the scale benchmark: 12 to 40 words
/// drawn from a small business vocabulary, so searches hit many rows.
pub fn scale_text(rng: &mut impl rand::Rng, company: usize, i: usize) -> String {
    let n = rng.random_range(12..=40);
    let mut words: Vec<&str> = (0..n)
        .map(|_| SCALE_WORDS[rng.random_range(0..SCALE_WORDS.len())])
        .collect();
    words[0] = "Note";
    format!("{} (company {company}, item {i}).", words.join(" "))
}

/// Search and pack pairs `bench memory-scale` runs, untimed, before it
/// times any: the first statements of each pooled connection are prepared.
const WARM_UP_PACKS: usize = 20;
/// Memories each company of `memory-scale` publishes for legal patterns.
const PUBLISHED_PER_COMPANY: usize = 5;

#[derive(Debug, clap::Args)]
pub struct MemoryScaleArgs {
    /// An EMPTY database to run in (postgres://...); default: a new SQLite file in a temp directory.
    #[arg(long)]
    pub database_url: Option<String>,
    #[arg(long, default_value_t = 1000)]
    pub companies: usize,
    #[arg(long, default_value_t = 1000)]
    pub per_company: usize,
    /// Searches and context packs to time.
    #[arg(long, default_value_t = 300)]
    pub queries: usize,
    /// The context pack's budget in tokens.
    #[arg(long, default_value_t = 8000)]
    pub budget: usize,
}

/// What the timed queries measured.
#[derive(Debug, Default)]
struct Timings {
    search_us: Vec<u64>,
    pack_us: Vec<u64>,
    pack_tokens: usize,
    companies_timed: HashSet<usize>,
    warm_ups: usize,
}

/// `kira bench memory-scale`: fills the database (or reuses one an earlier
/// run of the same size filled), times searches and context packs, and
/// prints the figures.
pub async fn command(args: MemoryScaleArgs, json: bool) -> Result<ExitCode, BenchError> {
    if args.companies == 0 || args.per_company == 0 || args.queries == 0 {
        return Err(BenchError::Invalid(
            "--companies, --per-company and --queries must be at least 1".into(),
        ));
    }
    let db = Scratch::new(args.database_url.as_deref(), "kira-bench-scale")?;
    let store = db.open().await?;
    let now = chrono::DateTime::parse_from_rfc3339("2026-11-01T12:00:00Z")
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| BenchError::during("time", e))?;
    let clock = Arc::new(ManualClock::new(now));
    let engine = Engine::new(store.clone(), clock, EngineConfig::default());
    let total = args.companies * args.per_company;
    // A database an earlier run of the same size filled is timed as it is,
    // without writing again. (Full text only: this engine has no embedder.)
    let reused = already_filled(&store, &args).await?;
    if reused {
        eprintln!(
            "reusing the {total} memories of {} companies already there",
            args.companies
        );
    } else {
        eprintln!(
            "writing {total} memories for {} companies ...",
            args.companies
        );
    }
    let (scopes, insert_secs) = if reused {
        let scopes = (0..args.companies)
            .map(|c| Ok(Principal::system().scope(&company_id(c)?, Access::Write)?))
            .collect::<Result<Vec<_>, BenchError>>()?;
        (scopes, 0.0)
    } else {
        fill(&engine, store.as_ref(), &args, now).await?
    };
    let timings = time_queries(&engine, &scopes, &args).await?;
    let rate = (!reused).then(|| total as f64 / insert_secs);
    let backend = if db.is_postgres() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    print(&timings, rate, backend, &args, json)?;
    db.remove();
    Ok(ExitCode::SUCCESS)
}

/// The id of the c-th company.
fn company_id(c: usize) -> Result<CompanyId, BenchError> {
    Ok(CompanyId::parse(&format!("scale-{c:05}"))?)
}

/// Whether the first and last company already hold `per_company` live
/// memories each.
async fn already_filled(
    store: &Arc<dyn Store>,
    args: &MemoryScaleArgs,
) -> Result<bool, BenchError> {
    let system = Principal::system();
    let mut reused = true;
    for c in [0, args.companies - 1] {
        let scope = system.scope(&company_id(c)?, Access::Read)?;
        let live = match store.memory_stats(&scope, "").await {
            Ok(stats) => stats.live,
            Err(_) => 0,
        };
        reused &= store.get_company(&scope).await.is_ok() && live == args.per_company as u64;
    }
    Ok(reused)
}

fn audit(now: DateTime<Utc>, c: &CompanyId, action: &str) -> AuditRecord {
    AuditRecord {
        at: now,
        request_id: "bench".into(),
        actor: "system".into(),
        company_id: Some(c.clone()),
        action: action.into(),
        target: "bench".into(),
        outcome: Outcome::Ok,
        detail: String::new(),
    }
}

/// Creates every company with its memories and published items; returns
/// their scopes and the seconds spent inserting memories.
async fn fill(
    engine: &Engine,
    store: &dyn Store,
    args: &MemoryScaleArgs,
    now: DateTime<Utc>,
) -> Result<(Vec<CompanyScope>, f64), BenchError> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut scopes = Vec::with_capacity(args.companies);
    let mut insert_secs = 0.0;
    for c in 0..args.companies {
        let (scope, secs) = fill_company(engine, store, c, args.per_company, now, &mut rng).await?;
        insert_secs += secs;
        scopes.push(scope);
        if (c + 1) % 100 == 0 {
            eprintln!(
                "  {} companies, {:.0} memories/s",
                c + 1,
                ((c + 1) * args.per_company) as f64 / insert_secs
            );
        }
    }
    Ok((scopes, insert_secs))
}

/// Creates the c-th company with `per_company` random memories, 1,000 per
/// transaction, and publishes a few of them; returns its scope and the
/// seconds the inserts took.
async fn fill_company(
    engine: &Engine,
    store: &dyn Store,
    c: usize,
    per_company: usize,
    now: DateTime<Utc>,
    rng: &mut rand::rngs::StdRng,
) -> Result<(CompanyScope, f64), BenchError> {
    let system = Principal::system();
    let (id, profile) = serde_json::from_value::<NewCompany>(serde_json::json!({
        "id": format!("scale-{c:05}"), "name": format!("Scale {c}"),
        "industry": "saas", "jurisdiction": "US"
    }))?
    .validate()?;
    let scope = system.scope(&id, Access::Write)?;
    store
        .create_company(&scope, &profile, now, audit(now, &id, "bench.company"))
        .await?;
    let mut insert_secs = 0.0;
    let mut left = per_company;
    let mut i = 0;
    let mut first_batch = Vec::new();
    while left > 0 {
        let n = left.min(kira_store::memory::MAX_BATCH);
        let batch: Vec<NewMemory> = (0..n).map(|k| random_memory(rng, now, c, i + k)).collect();
        let started = Instant::now();
        let stored = engine
            .memory()
            .add(&scope, batch, true, audit(now, &id, "bench.memory"))
            .await?;
        insert_secs += started.elapsed().as_secs_f64();
        if first_batch.is_empty() {
            first_batch = stored;
        }
        left -= n;
        i += n;
    }
    publish_legal_patterns(engine, &scope, &first_batch, now).await?;
    Ok((scope, insert_secs))
}

/// The i-th memory of company `c`: a random type, workstream, age (up to a
/// year before `now`) and importance.
fn random_memory(
    rng: &mut rand::rngs::StdRng,
    now: DateTime<Utc>,
    c: usize,
    i: usize,
) -> NewMemory {
    let age = chrono::TimeDelta::minutes(rng.random_range(0..365 * 24 * 60));
    NewMemory {
        occurred_at: now - age,
        event_type: EventType::ALL[rng.random_range(0..EventType::ALL.len())],
        workstream: Workstream::ALL[rng.random_range(0..Workstream::ALL.len())],
        category: "general".into(),
        content: serde_json::json!({
            "text": scale_text(rng, c, i)
        }),
        importance: rng.random_range(1..=10),
        indexed_terms: vec![],
        source: None,
    }
}

/// Every company exchanges legal patterns with every other and publishes a
/// few memories for them, so legal packs read partners' published items as
/// they would in use.
async fn publish_legal_patterns(
    engine: &Engine,
    scope: &CompanyScope,
    memories: &[kira_core::memory::Memory],
    now: DateTime<Utc>,
) -> Result<(), BenchError> {
    let id = scope.company().clone();
    let legal = kira_core::sharing::Consent {
        scope: kira_core::sharing::SCOPE_ANONYMIZED_LEGAL_PATTERNS.into(),
        partner: kira_core::sharing::Partner::Any,
    };
    let admin = Principal::system().admin()?;
    engine
        .sharing()
        .put_consent(
            &admin,
            &id,
            &legal,
            "bench",
            audit(now, &id, "bench.consent"),
        )
        .await?;
    for m in memories.iter().take(PUBLISHED_PER_COMPANY) {
        engine
            .sharing()
            .publish(
                scope,
                m.id,
                &legal.scope,
                "bench",
                audit(now, &id, "bench.publish"),
            )
            .await?;
    }
    Ok(())
}

/// Times `args.queries` searches and context packs of random companies,
/// after untimed warm-ups.
async fn time_queries(
    engine: &Engine,
    scopes: &[CompanyScope],
    args: &MemoryScaleArgs,
) -> Result<Timings, BenchError> {
    // What a process pays once (cl100k's tables, each pooled connection's
    // first statements) is paid here, untimed: the figures are of a
    // running engine.
    kira_engine::memory::pack::warm_up();
    // Its own stream, so a reused database is asked the same questions.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut t = Timings {
        warm_ups: WARM_UP_PACKS.min(args.queries),
        ..Timings::default()
    };
    for n in 0..t.warm_ups + args.queries {
        let c = rng.random_range(0..scopes.len());
        let scope = &scopes[c];
        let q: Vec<&str> = (0..3)
            .map(|_| SCALE_QUERY_WORDS[rng.random_range(0..SCALE_QUERY_WORDS.len())])
            .collect();
        let q = q.join(" ");
        // As specialists' tasks ask (every workstream but general), so a
        // sixth are legal packs, with their anonymised partner reads.
        let task_type = Workstream::ALL[rng.random_range(0..6)];
        let started = Instant::now();
        engine
            .memory()
            .search(scope, &q, &MemoryFilter::default(), 20)
            .await?;
        let search = started.elapsed();
        let started = Instant::now();
        let pack = engine
            .memory()
            .context(
                scope,
                &ContextRequest {
                    task_type: Some(task_type.as_str().to_owned()),
                    query: q,
                    budget: Some(args.budget),
                },
            )
            .await?;
        let packed = started.elapsed();
        if n < t.warm_ups {
            continue;
        }
        t.companies_timed.insert(c);
        t.search_us.push(micros(search));
        t.pack_us.push(micros(packed));
        t.pack_tokens += pack.tokens;
    }
    Ok(t)
}

fn print(
    t: &Timings,
    rate: Option<f64>,
    backend: &str,
    args: &MemoryScaleArgs,
    json: bool,
) -> Result<(), BenchError> {
    let total = args.companies * args.per_company;
    let (search, pack) = (ms(&t.search_us), ms(&t.pack_us));
    if json {
        print_json(&serde_json::json!({
            "backend": backend, "companies": args.companies, "memories": total,
            "insert_per_second": rate,
            "search_ms": { "p50": search.p50_ms, "p99": search.p99_ms },
            "context_ms": { "p50": pack.p50_ms, "p99": pack.p99_ms },
            "context_budget": args.budget,
            "mean_context_tokens": t.pack_tokens / args.queries,
            "companies_timed": t.companies_timed.len(),
            "untimed_warm_up_packs": t.warm_ups,
            "vectors": false,
        }))?;
        return Ok(());
    }
    println!(
        "{backend}: {total} memories in {} companies (full text; no vectors at this scale)",
        args.companies
    );
    match rate {
        Some(rate) => println!("  batch insert: {rate:.0} memories/s (1,000 per transaction)"),
        None => {
            println!("  batch insert: not timed (the database was filled by an earlier run)")
        }
    }
    println!(
        "  search (20 hits):       p50 {:.1} ms, p99 {:.1} ms ({} queries)",
        search.p50_ms, search.p99_ms, args.queries
    );
    println!(
        "  context pack ({} tok):  p50 {:.1} ms, p99 {:.1} ms (mean {} tokens used)",
        args.budget,
        pack.p50_ms,
        pack.p99_ms,
        t.pack_tokens / args.queries
    );
    println!(
        "  timed over {} companies, six workstreams; after {} untimed packs \
         and the tokenizer's load (a process's one-time start cost, excluded)",
        t.companies_timed.len(),
        t.warm_ups
    );
    Ok(())
}
