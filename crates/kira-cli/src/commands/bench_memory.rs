//! `kira bench memory`: LoCoMo evidence recall of context packs.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use kira_core::clock::ManualClock;
use kira_engine::membench::{self, CATEGORIES};
use kira_engine::{Engine, EngineConfig};
use kira_store::StoreConfig;

use crate::cli::{BenchLongmemevalArgs, BenchMemoryArgs, BenchMemoryScaleArgs};

/// Context settings where every item is chosen by relevance to the
/// question: all memories cold, the cold section takes the whole budget,
/// and ranking ignores recency and importance (LoCoMo asks about any
/// point of a conversation, and every turn has the same importance).
fn retrieval_config() -> EngineConfig {
    let mut cfg = EngineConfig::default();
    let m = &mut cfg.memory;
    m.layers.hot_days = 0;
    m.layers.hot_importance = 11;
    m.layers.warm_days = 0;
    m.layers.warm_importance = 11;
    m.context.shares = kira_engine::memory::Shares {
        hot: 0.0,
        warm: 0.0,
        cold: 1.0,
        knowledge: 0.0,
        shared: 0.0,
    };
    m.context.cold_hits = 400;
    m.candidates = 400;
    m.search.recency = 0.0;
    m.search.importance = 0.0;
    cfg
}

/// Search and pack pairs `bench memory-scale` runs, untimed, before it
/// times any: the first statements of each pooled connection are prepared.
const WARM_UP_PACKS: usize = 20;
/// Memories each company of `memory-scale` publishes for legal patterns.
const PUBLISHED_PER_COMPANY: usize = 5;

/// The p50 and p99 of latencies in microseconds, in milliseconds.
fn ms(micros: &[u64]) -> kira_engine::bench::Percentiles {
    kira_engine::bench::percentiles(micros.iter().map(|&u| u as f64 / 1000.0).collect())
}

pub async fn run(args: BenchMemoryArgs, json: bool) -> anyhow::Result<ExitCode> {
    if args.budgets.is_empty() || args.budgets.contains(&0) {
        bail!("--budgets must list token budgets above 0, such as 1000,2000,4000");
    }
    let path = args.data.join("locomo").join("locomo10.json");
    let mut convs = membench::load_locomo(&path).map_err(anyhow::Error::msg)?;
    if let Some(n) = args.conversations {
        convs.truncate(n);
    }
    let temp = std::env::temp_dir().join(format!(
        "kira-bench-memory-{}",
        uuid::Uuid::now_v7().simple()
    ));
    let url = match &args.database_url {
        Some(u) => u.clone(),
        None => {
            std::fs::create_dir_all(&temp)?;
            format!("sqlite://{}", temp.join("bench.db").display())
        }
    };
    let store = kira_store::open(&StoreConfig {
        database_url: url.clone(),
        app_database_url: None,
    })
    .await
    .with_context(|| format!("opening {}", crate::config::redact_url(&url)))?;
    // By default the configuration `kira serve` starts with, through
    // `load_context`, the code behind GET /v1/companies/{id}/context.
    let cfg = if args.retrieval {
        retrieval_config()
    } else {
        EngineConfig::default()
    };
    let first = convs.first().map(|c| membench::after_last(&c.turns));
    let clock = Arc::new(ManualClock::new(first.unwrap_or_default()));
    let mut engine = Engine::new(store, clock.clone(), cfg);
    if !args.no_embed {
        let dir = kira_embed::model_dir(&kira_embed::models_dir());
        let e = kira_embed::Embedder::load(&dir).context("loading the embedding model")?;
        engine = engine.with_embedder(Arc::new(e));
    }

    let load_start = Instant::now();
    let mut companies = Vec::new();
    let mut turns = 0usize;
    for c in &convs {
        clock.set(membench::after_last(&c.turns));
        let items: Vec<_> = c
            .turns
            .iter()
            .map(|t| (t.text.clone(), t.at, t.dia_id.clone()))
            .collect();
        turns += items.len();
        let kind = if args.compacted {
            membench::AS_STATUS_MEETINGS
        } else {
            membench::AS_CONVERSATION
        };
        companies.push(membench::load_company(&engine, &c.id, &items, kind).await?);
    }
    let loaded = load_start.elapsed();
    let embed_start = Instant::now();
    let embedded = membench::embed_all(&engine).await?;
    let embed_time = embed_start.elapsed();
    eprintln!(
        "loaded {turns} turns of {} conversations in {:.1}s; embedded {embedded} in {:.1}s",
        convs.len(),
        loaded.as_secs_f64(),
        embed_time.as_secs_f64()
    );

    let (results, micros) = score_all(&engine, &clock, &convs, &companies, &args.budgets).await?;
    let compacted = if args.compacted {
        let mut summaries = (0, 0);
        for (c, id) in convs.iter().zip(&companies) {
            clock.set(membench::after_last(&c.turns));
            let (s, n) = membench::compact_all(&engine, std::slice::from_ref(id)).await?;
            summaries = (summaries.0 + s, summaries.1 + n);
        }
        let embedded = membench::embed_all(&engine).await?;
        eprintln!(
            "compacted: {} summaries replaced {} turns; embedded {embedded}",
            summaries.0, summaries.1
        );
        let (after, _) = score_all(&engine, &clock, &convs, &companies, &args.budgets).await?;
        Some(after)
    } else {
        None
    };
    let mode = if args.retrieval {
        "retrieval"
    } else {
        "default"
    };
    let semantic = !args.no_embed;
    if json {
        let rows: Vec<_> = results
            .iter()
            .map(|(b, r)| {
                let mut row = serde_json::Map::new();
                row.insert("budget".into(), serde_json::json!(b));
                for (c, name) in CATEGORIES {
                    row.insert(name.into(), serde_json::json!(r.category(c)));
                }
                row.insert(
                    "all_but_adversarial".into(),
                    serde_json::json!(r.all_but_adversarial()),
                );
                serde_json::Value::Object(row)
            })
            .collect();
        let mut out = serde_json::json!({
            "mode": mode, "semantic": semantic, "turns": turns,
            "recall_percent": rows,
            "pack_ms": { "p50": ms(&micros).p50_ms, "p99": ms(&micros).p99_ms },
        });
        if let (Some(after), Some(obj)) = (&compacted, out.as_object_mut()) {
            let rows: Vec<_> = after
                .iter()
                .map(|(b, r)| {
                    let before = results.get(b).map_or(0.0, |x| x.all_but_adversarial());
                    serde_json::json!({
                        "budget": b,
                        "all_but_adversarial": r.all_but_adversarial(),
                        "retention_percent": retention(before, r.all_but_adversarial()),
                    })
                })
                .collect();
            obj.insert("after_compaction".into(), serde_json::json!(rows));
        }
        crate::output::print_json(&out)?;
    } else {
        println!(
            "LoCoMo evidence recall (%), {} packs, {}:",
            if args.retrieval {
                "retrieval-only"
            } else {
                "default-configuration"
            },
            if semantic {
                "full text + embeddings"
            } else {
                "full text only"
            }
        );
        let mut t = crate::output::table(&[
            "budget",
            "single-hop",
            "multi-hop",
            "temporal",
            "open-domain",
            "adversarial",
            "all but adversarial",
        ]);
        for (b, r) in &results {
            let f = |c| r.category(c).map_or("-".into(), |v| format!("{v:.1}"));
            t.add_row(vec![
                b.to_string(),
                f(4),
                f(1),
                f(2),
                f(3),
                f(5),
                format!("{:.1}", r.all_but_adversarial()),
            ]);
        }
        println!("{t}");
        if let Some(after) = &compacted {
            println!("after compaction (all but adversarial, %):");
            let mut t = crate::output::table(&["budget", "before", "after", "retention"]);
            for (b, r) in after {
                let before = results.get(b).map_or(0.0, |x| x.all_but_adversarial());
                t.add_row(vec![
                    b.to_string(),
                    format!("{before:.1}"),
                    format!("{:.1}", r.all_but_adversarial()),
                    format!("{:.1}", retention(before, r.all_but_adversarial())),
                ]);
            }
            println!("{t}");
        }
        println!(
            "context pack latency: p50 {:.1} ms, p99 {:.1} ms ({} packs)",
            ms(&micros).p50_ms,
            ms(&micros).p99_ms,
            micros.len()
        );
    }
    if args.database_url.is_none() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    Ok(ExitCode::SUCCESS)
}

/// Recall after as a share of recall before, in %.
fn retention(before: f64, after: f64) -> f64 {
    if before > 0.0 {
        100.0 * after / before
    } else {
        0.0
    }
}

/// Every conversation's questions at every budget, the clock set after
/// its last turn; recall per budget and the pack latencies.
async fn score_all(
    engine: &Engine,
    clock: &ManualClock,
    convs: &[membench::Conversation],
    companies: &[kira_core::CompanyId],
    budgets: &[usize],
) -> anyhow::Result<(
    std::collections::BTreeMap<usize, membench::Recall>,
    Vec<u64>,
)> {
    let mut results = std::collections::BTreeMap::new();
    let mut micros = Vec::new();
    for (c, id) in convs.iter().zip(companies) {
        clock.set(membench::after_last(&c.turns));
        let (r, m) = membench::score_locomo(
            engine,
            std::slice::from_ref(c),
            std::slice::from_ref(id),
            budgets,
        )
        .await?;
        micros.extend(m);
        for (budget, recall) in r {
            let e: &mut membench::Recall = results.entry(budget).or_default();
            for (cat, (s, n)) in recall.by_category {
                let x = e.by_category.entry(cat).or_default();
                x.0 += s;
                x.1 += n;
            }
        }
    }
    Ok((results, micros))
}

pub async fn scale(args: BenchMemoryScaleArgs, json: bool) -> anyhow::Result<ExitCode> {
    use kira_core::audit::{AuditRecord, Outcome};
    use kira_core::auth::{Access, Principal};
    use kira_core::memory::{EventType, NewMemory, Workstream};
    use kira_engine::memory::ContextRequest;
    use kira_store::memory::MemoryFilter;
    use rand::{Rng, SeedableRng};

    if args.companies == 0 || args.per_company == 0 || args.queries == 0 {
        bail!("--companies, --per-company and --queries must be at least 1");
    }
    let temp = std::env::temp_dir().join(format!(
        "kira-bench-scale-{}",
        uuid::Uuid::now_v7().simple()
    ));
    let url = match &args.database_url {
        Some(u) => u.clone(),
        None => {
            std::fs::create_dir_all(&temp)?;
            format!("sqlite://{}", temp.join("bench.db").display())
        }
    };
    let store = kira_store::open(&StoreConfig {
        database_url: url.clone(),
        app_database_url: None,
    })
    .await
    .with_context(|| format!("opening {}", crate::config::redact_url(&url)))?;
    let now = chrono::DateTime::parse_from_rfc3339("2026-11-01T12:00:00Z")
        .map(|t| t.with_timezone(&chrono::Utc))
        .context("time")?;
    let clock = Arc::new(ManualClock::new(now));
    let engine = Engine::new(store.clone(), clock, EngineConfig::default());
    let system = Principal::system();
    let audit = |c: &kira_core::CompanyId, action: &str| AuditRecord {
        at: now,
        request_id: "bench".into(),
        actor: "system".into(),
        company_id: Some(c.clone()),
        action: action.into(),
        target: "bench".into(),
        outcome: Outcome::Ok,
        detail: String::new(),
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut ids = Vec::with_capacity(args.companies);
    let mut insert_secs = 0.0;
    let total = args.companies * args.per_company;
    // A database an earlier run of the same size filled is timed as it is,
    // without writing again. (Full text only: this engine has no embedder.)
    let name = |c: usize| -> anyhow::Result<kira_core::CompanyId> {
        kira_core::CompanyId::parse(&format!("scale-{c:05}")).map_err(|e| anyhow::anyhow!("{e}"))
    };
    let mut reused = true;
    for c in [0, args.companies - 1] {
        let scope = system
            .scope(&name(c)?, Access::Read)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let live = match store.memory_stats(&scope, "").await {
            Ok(stats) => stats.live,
            Err(_) => 0,
        };
        reused &= store.get_company(&scope).await.is_ok() && live == args.per_company as u64;
    }
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
    for c in 0..args.companies {
        if reused {
            ids.push(
                system
                    .scope(&name(c)?, Access::Write)
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            );
            continue;
        }
        let (id, profile) =
            serde_json::from_value::<kira_core::company::NewCompany>(serde_json::json!({
                "id": format!("scale-{c:05}"), "name": format!("Scale {c}"),
                "industry": "saas", "jurisdiction": "US"
            }))?
            .validate()
            .map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.message))?;
        let scope = system
            .scope(&id, Access::Write)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        store
            .create_company(&scope, &profile, now, audit(&id, "bench.company"))
            .await?;
        let mut left = args.per_company;
        let mut i = 0;
        let mut first_batch = Vec::new();
        while left > 0 {
            let n = left.min(kira_store::memory::MAX_BATCH);
            let batch: Vec<NewMemory> = (0..n)
                .map(|k| {
                    let age = chrono::TimeDelta::minutes(rng.random_range(0..365 * 24 * 60));
                    NewMemory {
                        occurred_at: now - age,
                        event_type: EventType::ALL[rng.random_range(0..EventType::ALL.len())],
                        workstream: Workstream::ALL[rng.random_range(0..Workstream::ALL.len())],
                        category: "general".into(),
                        content: serde_json::json!({
                            "text": membench::scale_text(&mut rng, c, i + k)
                        }),
                        importance: rng.random_range(1..=10),
                        indexed_terms: vec![],
                        source: None,
                    }
                })
                .collect();
            let started = Instant::now();
            let stored = engine
                .add_memories(&scope, batch, true, audit(&id, "bench.memory"))
                .await?;
            insert_secs += started.elapsed().as_secs_f64();
            if first_batch.is_empty() {
                first_batch = stored;
            }
            left -= n;
            i += n;
        }
        // Every company exchanges legal patterns with every other and
        // publishes a few memories for them, so legal packs read partners'
        // published items as they would in use.
        let legal = kira_core::sharing::Consent {
            scope: kira_core::sharing::SCOPE_ANONYMIZED_LEGAL_PATTERNS.into(),
            partner: kira_core::sharing::Partner::Any,
        };
        let admin = system.admin().map_err(|e| anyhow::anyhow!("{e}"))?;
        engine
            .put_consent(&admin, &id, &legal, "bench", audit(&id, "bench.consent"))
            .await?;
        for m in first_batch.iter().take(PUBLISHED_PER_COMPANY) {
            engine
                .publish_shared(
                    &scope,
                    m.id,
                    &legal.scope,
                    "bench",
                    audit(&id, "bench.publish"),
                )
                .await?;
        }
        ids.push(scope);
        if (c + 1) % 100 == 0 {
            eprintln!(
                "  {} companies, {:.0} memories/s",
                c + 1,
                ((c + 1) * args.per_company) as f64 / insert_secs
            );
        }
    }
    // What a process pays once (cl100k's tables, each pooled connection's
    // first statements) is paid here, untimed: the figures are of a
    // running engine.
    kira_engine::memory::pack::warm_up();
    // Its own stream, so a reused database is asked the same questions.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let warm_ups = WARM_UP_PACKS.min(args.queries);
    let mut search_us = Vec::new();
    let mut pack_us = Vec::new();
    let mut pack_tokens = 0usize;
    let mut companies_timed = std::collections::HashSet::new();
    for n in 0..warm_ups + args.queries {
        let c = rng.random_range(0..ids.len());
        let scope = &ids[c];
        let q: Vec<&str> = (0..3)
            .map(|_| {
                membench::SCALE_QUERY_WORDS[rng.random_range(0..membench::SCALE_QUERY_WORDS.len())]
            })
            .collect();
        let q = q.join(" ");
        // As specialists' tasks ask (every workstream but general), so a
        // sixth are legal packs, with their anonymised partner reads.
        let task_type = Workstream::ALL[rng.random_range(0..6)];
        let started = Instant::now();
        engine
            .search_memories(scope, &q, &MemoryFilter::default(), 20)
            .await?;
        let search = started.elapsed();
        let started = Instant::now();
        let pack = engine
            .load_context(
                scope,
                &ContextRequest {
                    task_type: Some(task_type.as_str().to_owned()),
                    query: q,
                    budget: Some(args.budget),
                },
            )
            .await?;
        let packed = started.elapsed();
        if n < warm_ups {
            continue;
        }
        companies_timed.insert(c);
        search_us.push(u64::try_from(search.as_micros()).unwrap_or(u64::MAX));
        pack_us.push(u64::try_from(packed.as_micros()).unwrap_or(u64::MAX));
        pack_tokens += pack.tokens;
    }
    let rate = (!reused).then(|| total as f64 / insert_secs);
    let backend = if url.starts_with("postgres") {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    if json {
        crate::output::print_json(&serde_json::json!({
            "backend": backend, "companies": args.companies, "memories": total,
            "insert_per_second": rate,
            "search_ms": { "p50": ms(&search_us).p50_ms, "p99": ms(&search_us).p99_ms },
            "context_ms": { "p50": ms(&pack_us).p50_ms, "p99": ms(&pack_us).p99_ms },
            "context_budget": args.budget,
            "mean_context_tokens": pack_tokens / args.queries,
            "companies_timed": companies_timed.len(),
            "untimed_warm_up_packs": warm_ups,
            "vectors": false,
        }))?;
    } else {
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
            ms(&search_us).p50_ms,
            ms(&search_us).p99_ms,
            args.queries
        );
        println!(
            "  context pack ({} tok):  p50 {:.1} ms, p99 {:.1} ms (mean {} tokens used)",
            args.budget,
            ms(&pack_us).p50_ms,
            ms(&pack_us).p99_ms,
            pack_tokens / args.queries
        );
        println!(
            "  timed over {} companies, six workstreams; after {warm_ups} untimed packs \
             and the tokenizer's load (a process's one-time start cost, excluded)",
            companies_timed.len()
        );
    }
    if args.database_url.is_none() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn longmemeval(args: BenchLongmemevalArgs, json: bool) -> anyhow::Result<ExitCode> {
    use kira_store::memory::MemoryFilter;

    use crate::cli::LongmemevalFile;
    let (name, label) = match args.file {
        LongmemevalFile::S => ("longmemeval_s_sample100.json.xz", "LongMemEval_S"),
        LongmemevalFile::Oracle => ("longmemeval_oracle.json.gz", "LongMemEval oracle"),
    };
    let path = args.data.join("longmemeval").join(name);
    let mut reader = std::io::BufReader::new(
        std::fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    let mut raw = Vec::new();
    match args.file {
        LongmemevalFile::S => lzma_rs::xz_decompress(&mut reader, &mut raw)
            .map_err(|e| anyhow::anyhow!("{} is not xz: {e:?}", path.display()))?,
        LongmemevalFile::Oracle => {
            use std::io::Read;
            flate2::read::GzDecoder::new(reader)
                .read_to_end(&mut raw)
                .with_context(|| format!("{} is not gzip", path.display()))?;
        }
    }
    let text = String::from_utf8(raw).context("LongMemEval is not UTF-8")?;
    let mut questions = membench::parse_longmemeval(&text).map_err(anyhow::Error::msg)?;
    if let Some(n) = args.questions {
        questions.truncate(n);
    }
    let temp =
        std::env::temp_dir().join(format!("kira-bench-lme-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&temp)?;
    let url = format!("sqlite://{}", temp.join("bench.db").display());
    let store = kira_store::open(&StoreConfig {
        database_url: url,
        app_database_url: None,
    })
    .await?;
    let latest = questions
        .iter()
        .flat_map(|q| q.sessions.iter().map(|s| s.1))
        .max()
        .unwrap_or_default()
        + chrono::TimeDelta::days(1);
    let clock = Arc::new(ManualClock::new(latest));
    let mut engine = Engine::new(store, clock, retrieval_config());
    if !args.no_embed {
        let dir = kira_embed::model_dir(&kira_embed::models_dir());
        let e = kira_embed::Embedder::load(&dir).context("loading the embedding model")?;
        engine = engine.with_embedder(Arc::new(e));
    }
    let started = Instant::now();
    let mut companies = Vec::new();
    let mut turns = 0;
    for (i, q) in questions.iter().enumerate() {
        let items: Vec<_> = q
            .sessions
            .iter()
            .flat_map(|(sid, at, user)| {
                user.iter().enumerate().map(move |(t, text)| {
                    (
                        text.clone(),
                        *at + chrono::TimeDelta::seconds(t as i64),
                        sid.clone(),
                    )
                })
            })
            .collect();
        turns += items.len();
        companies.push(
            membench::load_company(
                &engine,
                &format!("lme-{i:03}"),
                &items,
                membench::AS_CONVERSATION,
            )
            .await?,
        );
    }
    let embedded = membench::embed_all(&engine).await?;
    eprintln!(
        "loaded {turns} user turns of {} questions, embedded {embedded}, in {:.0}s",
        questions.len(),
        started.elapsed().as_secs_f64()
    );
    let system = kira_core::auth::Principal::system();
    let (mut all5, mut all10, mut any5, mut any10) = (0usize, 0usize, 0usize, 0usize);
    let mut micros = Vec::new();
    for (q, id) in questions.iter().zip(&companies) {
        let scope = system
            .scope(id, kira_core::auth::Access::Read)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let t = Instant::now();
        let hits = engine
            .search_memories(&scope, &q.question, &MemoryFilter::default(), 200)
            .await?;
        micros.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
        let sources: Vec<String> = hits
            .iter()
            .filter_map(|h| h.memory.source.clone())
            .collect();
        let ranked = membench::rank_sessions(&sources);
        let (a5, y5) = membench::session_recall(&ranked, &q.answer_sessions, 5);
        let (a10, y10) = membench::session_recall(&ranked, &q.answer_sessions, 10);
        all5 += usize::from(a5);
        any5 += usize::from(y5);
        all10 += usize::from(a10);
        any10 += usize::from(y10);
    }
    let n = questions.len().max(1) as f64;
    let f = |x: usize| x as f64 / n;
    if json {
        crate::output::print_json(&serde_json::json!({
            "file": name, "questions": questions.len(), "semantic": !args.no_embed,
            "recall_all_at_5": f(all5), "recall_all_at_10": f(all10),
            "recall_any_at_5": f(any5), "recall_any_at_10": f(any10),
            "search_ms": {"p50": ms(&micros).p50_ms, "p99": ms(&micros).p99_ms},
        }))?;
    } else {
        println!(
            "{label} session recall over {} questions ({}):",
            questions.len(),
            if args.no_embed {
                "full text only"
            } else {
                "full text + embeddings"
            }
        );
        println!(
            "  recall_all@5  {:.3}   recall_all@10 {:.3}",
            f(all5),
            f(all10)
        );
        println!(
            "  recall_any@5  {:.3}   recall_any@10 {:.3}",
            f(any5),
            f(any10)
        );
        println!(
            "  search p50 {:.1} ms, p99 {:.1} ms",
            ms(&micros).p50_ms,
            ms(&micros).p99_ms
        );
    }
    let _ = std::fs::remove_dir_all(&temp);
    Ok(ExitCode::SUCCESS)
}
