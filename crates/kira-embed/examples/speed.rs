//! Embedding throughput on this machine:
//! `cargo run --release -p kira-embed --example speed [ROUNDS]`.
//! Short sentences and ~40-word conversation turns, one text per call and
//! many per call (sorted and batched inside `embed`).

use std::time::Instant;

use kira_embed::{Embedder, model_dir, models_dir};

const SHORT: [&str; 8] = [
    "The board approved the budget.",
    "Send the draft to legal by Friday.",
    "Bob is allergic to peanuts.",
    "We moved the server to the new provider.",
    "Acme signed the lease.",
    "The invoice is overdue.",
    "Jane will chair the next meeting.",
    "Revenue grew twelve percent last quarter.",
];

/// About 40 words each, with varied lengths as real turns have.
fn turns(n: usize) -> Vec<String> {
    const WORDS: [&str; 24] = [
        "yesterday",
        "I",
        "talked",
        "with",
        "the",
        "supplier",
        "about",
        "our",
        "contract",
        "and",
        "they",
        "want",
        "to",
        "move",
        "the",
        "deadline",
        "because",
        "their",
        "team",
        "is",
        "short",
        "this",
        "month",
        "honestly",
    ];
    (0..n)
        .map(|i| {
            let len = 30 + (i * 7) % 21;
            (0..len)
                .map(|j| WORDS[(i * 5 + j * 11 + j / 4) % WORDS.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn rate(label: &str, texts: &[&str], per_call: usize, e: &Embedder) {
    let start = Instant::now();
    for chunk in texts.chunks(per_call) {
        let v = e.embed(chunk).expect("embed");
        assert_eq!(v.len(), chunk.len());
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{label:<40} {:>5} texts {:>7.2}s {:>8.1} texts/s",
        texts.len(),
        secs,
        texts.len() as f64 / secs
    );
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(64);
    let dir = model_dir(&models_dir());
    let start = Instant::now();
    let e = Embedder::load(&dir).unwrap_or_else(|err| panic!("{err}"));
    println!(
        "load {:.0} ms from {}",
        start.elapsed().as_secs_f64() * 1e3,
        dir.display()
    );

    let short: Vec<&str> = (0..rounds * SHORT.len())
        .map(|i| SHORT[i % SHORT.len()])
        .collect();
    let turns = turns(rounds * 8);
    let turns: Vec<&str> = turns.iter().map(String::as_str).collect();

    // Warm up allocator and thread pool.
    e.embed(&short[..8]).expect("embed");

    rate(
        "short sentences, one per call",
        &short[..short.len() / 4],
        1,
        &e,
    );
    rate("short sentences, all in one call", &short, short.len(), &e);
    rate(
        "~40-word turns, one per call",
        &turns[..turns.len() / 4],
        1,
        &e,
    );
    rate("~40-word turns, all in one call", &turns, turns.len(), &e);
}
