//! `kira bench memory`: LoCoMo evidence recall of context packs.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use kira_core::clock::ManualClock;
use kira_engine::membench::{self, CATEGORIES};
use kira_engine::{Engine, EngineConfig};
use kira_store::StoreConfig;

use crate::cli::BenchMemoryArgs;

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

fn pct(v: &[u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let i = ((s.len() as f64 - 1.0) * p).round() as usize;
    s[i.min(s.len() - 1)] as f64 / 1000.0
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
    let cfg = if args.layered {
        EngineConfig::default()
    } else {
        retrieval_config()
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
        companies.push(membench::load_company(&engine, &c.id, &items).await?);
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

    let mut results = std::collections::BTreeMap::new();
    let mut micros = Vec::new();
    for (c, id) in convs.iter().zip(&companies) {
        clock.set(membench::after_last(&c.turns));
        let (r, m) = membench::score_locomo(
            &engine,
            std::slice::from_ref(c),
            std::slice::from_ref(id),
            &args.budgets,
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
    let mode = if args.layered { "layered" } else { "retrieval" };
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
        crate::output::print_json(&serde_json::json!({
            "mode": mode, "semantic": semantic, "turns": turns,
            "recall_percent": rows,
            "pack_ms": { "p50": pct(&micros, 0.5), "p99": pct(&micros, 0.99) },
        }))?;
    } else {
        println!(
            "LoCoMo evidence recall (%), {mode} packs, {}:",
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
        println!(
            "context pack latency: p50 {:.1} ms, p99 {:.1} ms ({} packs)",
            pct(&micros, 0.5),
            pct(&micros, 0.99),
            micros.len()
        );
    }
    if args.database_url.is_none() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    Ok(ExitCode::SUCCESS)
}
