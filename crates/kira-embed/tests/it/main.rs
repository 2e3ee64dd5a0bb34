//! The embedder against the real all-MiniLM-L6-v2 files. These tests fail,
//! never skip, when the model is not installed: `./scripts/test` installs it.

use std::path::Path;
use std::sync::OnceLock;

use kira_embed::{DIM, EmbedError, Embedder, MODEL_ID, dot, model_dir, models_dir, top_k};

fn embedder() -> &'static Embedder {
    static EMBEDDER: OnceLock<Embedder> = OnceLock::new();
    EMBEDDER.get_or_init(|| {
        let dir = model_dir(&models_dir());
        Embedder::load(&dir).unwrap_or_else(|e| {
            panic!("these tests need the embedding model (./scripts/test installs it): {e}")
        })
    })
}

fn embed(texts: &[&str]) -> Vec<Vec<f32>> {
    embedder().embed(texts).expect("embed")
}

fn norm(v: &[f32]) -> f32 {
    dot(v, v).sqrt()
}

/// `n` words of plausible conversation, different for each `seed`.
fn turn(seed: usize, n: usize) -> String {
    const WORDS: [&str; 16] = [
        "contract", "meeting", "budget", "deadline", "supplier", "the", "we", "agreed", "review",
        "invoice", "Tuesday", "legal", "team", "should", "send", "draft",
    ];
    (0..n)
        .map(|i| WORDS[(i * 7 + seed * 13 + i / 3) % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn paraphrases_score_far_above_unrelated_sentences() {
    let v = embed(&[
        "The board approved the acquisition of the startup.",
        "The board agreed to acquire the startup.",
        "My grandmother grows tomatoes in her garden.",
    ]);
    let paraphrase = dot(&v[0], &v[1]);
    let unrelated = dot(&v[0], &v[2]);
    assert!(paraphrase > 0.7, "paraphrase cosine {paraphrase}");
    assert!(unrelated < 0.3, "unrelated cosine {unrelated}");
}

#[test]
fn scores_match_sentence_transformers() {
    // The cosines sentence-transformers' documentation prints for this
    // model (semantic textual similarity and usage examples): the same
    // weights, tokenisation and pooling must give the same numbers.
    let pairs = [
        (
            "The new movie is awesome",
            "The new movie is so great",
            0.8939,
        ),
        (
            "The cat sits outside",
            "The dog plays in the garden",
            0.2838,
        ),
        (
            "A man is eating food.",
            "A man is eating a piece of bread.",
            0.7553,
        ),
    ];
    for (a, b, expected) in pairs {
        let v = embed(&[a, b]);
        let got = dot(&v[0], &v[1]);
        assert!(
            (got - expected).abs() < 1e-3,
            "{a} | {b}: {got}, expected {expected}"
        );
    }
}

#[test]
fn vectors_are_unit_length_and_dim_long() {
    let v = embed(&[
        "short",
        "",
        "a somewhat longer sentence about quarterly budgets",
    ]);
    assert_eq!(v.len(), 3);
    for x in &v {
        assert_eq!(x.len(), DIM);
        assert!((norm(x) - 1.0).abs() < 1e-4, "norm {}", norm(x));
    }
    assert_eq!(embedder().model_id(), MODEL_ID);
}

#[test]
fn batched_output_is_in_input_order_and_matches_one_at_a_time() {
    // More texts than one batch, lengths from one word to past the window,
    // shuffled so sorting by length really reorders them.
    let lengths = [40, 1, 300, 7, 120, 2, 55, 0, 15, 80, 3, 200, 33, 9, 61];
    let texts: Vec<String> = (0..34)
        .map(|i| turn(i, lengths[i % lengths.len()] + i % 4))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let batched = embed(&refs);
    assert_eq!(batched.len(), refs.len());
    for (i, text) in refs.iter().enumerate() {
        let single = embed(&[text]);
        let worst = batched[i]
            .iter()
            .zip(&single[0])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "text {i}: batched differs by {worst}");
    }
}

#[test]
fn long_text_is_truncated_to_the_window_not_refused() {
    let head = turn(1, 400);
    let a = format!("{head} and then the first ending about invoices");
    let b = format!("{head} {}", turn(2, 5000));
    let v = embed(&[&a, &b]);
    assert!((norm(&v[0]) - 1.0).abs() < 1e-4);
    // Both begin with the same 400 words, more than 256 word pieces: only
    // the window counts, so what follows changes nothing.
    assert!(dot(&v[0], &v[1]) > 0.9999, "cosine {}", dot(&v[0], &v[1]));
}

#[test]
fn empty_input_gives_empty_output() {
    assert!(embed(&[]).is_empty());
}

#[test]
fn the_same_text_gives_the_same_vector() {
    let text = "Jane agreed to send the revised supplier contract by Friday.";
    let once = embed(&[text]);
    let again = embed(&[text]);
    let twice = embed(&[text, text]);
    assert_eq!(once[0], again[0]);
    assert_eq!(twice[0], twice[1]);
}

#[test]
fn top_k_finds_the_memory_a_question_is_about() {
    let memories = [
        "Lunch with the marketing team at the Italian place.",
        "Acme signed the office lease for five years at 4,000 a month.",
        "The server migration to the new cloud provider finished on Sunday.",
        "Bob is allergic to peanuts.",
    ];
    let vectors = embed(&memories);
    let query = embed(&["How long is the rental agreement for the office?"]);
    let refs: Vec<&[f32]> = vectors.iter().map(Vec::as_slice).collect();
    let best = top_k(&query[0], &refs, 2);
    assert_eq!(best.len(), 2);
    assert_eq!(best[0].0, 1, "{best:?}");
    assert!(best[0].1 >= best[1].1);
}

#[test]
fn missing_model_names_the_folder_and_how_to_install() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("config.json"), "{}").expect("write");
    let err = Embedder::load(dir.path()).expect_err("no model there");
    let EmbedError::Missing { dir: named, hint } = &err else {
        panic!("expected Missing, got {err:?}");
    };
    assert_eq!(named, dir.path());
    assert!(hint.contains("./scripts/install-models"), "{hint}");
    assert!(hint.contains("model.safetensors"), "{hint}");
    assert!(hint.contains("tokenizer.json"), "{hint}");
    assert!(
        !hint.contains("config.json"),
        "config.json is there: {hint}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    assert!(message.contains("./scripts/install-models"), "{message}");
}

#[test]
fn unreadable_model_files_are_a_load_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let real = model_dir(&models_dir());
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(real.join(f), dir.path().join(f))
            .unwrap_or_else(|e| panic!("copy {f} from {}: {e}", real.display()));
    }
    std::fs::write(dir.path().join("model.safetensors"), b"not safetensors").expect("write");
    let err = Embedder::load(dir.path()).expect_err("corrupt weights");
    assert!(matches!(err, EmbedError::Load(_)), "{err:?}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

#[test]
fn models_dir_is_kira_models_or_the_home_cache() {
    // Read-only check of the rule against this process's environment.
    let dir = models_dir();
    match std::env::var_os("KIRA_MODELS").filter(|d| !d.is_empty()) {
        Some(m) => assert_eq!(dir, Path::new(&m)),
        None => assert!(dir.ends_with(".cache/kira/models"), "{}", dir.display()),
    }
}
