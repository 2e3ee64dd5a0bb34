//! Real agents through the real binary: the default executor on the local
//! model (SmolLM2, installed by ./scripts/install-models; no network), and
//! `kira agents list|show`.

use std::time::Duration;

use serde_json::Value;

use crate::support::{Server, fails, kira_in, ok, ok_json, s, wait_for};

fn start(work: &std::path::Path, config: &str) -> Server {
    std::fs::write(work.join("kira.toml"), config).expect("write kira.toml");
    Server::start(work, &[])
}

#[test]
fn the_local_model_answers_a_task_with_the_companys_context() {
    let work = tempfile::tempdir().expect("temp dir");
    // The local model's defaults, a little smaller so the test stays short.
    let server = start(
        work.path(),
        "[executor]\nkind = \"agents\"\n\n[agents.primary]\nmax_concurrent = 2\nmax_steps = 1\nmax_output_tokens = 48\ncontext_budget = 200\n",
    );
    assert!(
        server.stderr().contains("agents use the local model"),
        "{}",
        server.stderr()
    );
    ok(server.kira().args([
        "company",
        "add",
        "acme",
        "--name",
        "Acme Robotics",
        "--industry",
        "fintech",
        "--jurisdiction",
        "US-DE",
    ]));
    ok(server.kira().args([
        "memory",
        "add",
        "acme",
        "--type",
        "decision",
        "--importance",
        "9",
        "The board approved the 2027 budget of 4 million dollars.",
    ]));
    let task = ok_json(server.kira().args([
        "task",
        "submit",
        "acme",
        "What budget did the board approve?",
        "--type",
        "quick_question_answer",
    ]));
    let id = s(&task, "task_id").to_owned();
    let done: Value = wait_for(Duration::from_secs(240), "the local model's answer", || {
        let t = ok_json(server.kira().args(["task", "show", &id]));
        matches!(s(&t, "status"), "completed" | "needs_review" | "failed").then_some(t)
    });
    // Its one call is held to the result schema: the answer is a result
    // with the confidence the model stated, completed or waiting for a
    // human by the review policy on that confidence.
    assert!(
        matches!(s(&done, "status"), "completed" | "needs_review"),
        "{done}"
    );
    assert_eq!(done["result"]["well_formed"], true, "{done}");
    let confidence = done["result"]["confidence"].as_f64().expect("confidence");
    assert_eq!(
        s(&done, "status") == "needs_review",
        confidence < 0.7,
        "{done}"
    );
    assert_eq!(s(&done, "agent"), "primary");
    assert!(
        done["prompt_tokens"].as_i64().expect("prompt") > 0,
        "{done}"
    );
    assert!(
        done["completion_tokens"].as_i64().expect("completion") > 0,
        "{done}"
    );
    assert_eq!(done["result"]["model"], "SmolLM2-135M-Instruct");
    // The company's memory was in the prompt the model was given.
    let trace = ok_json(server.kira().args(["task", "trace", &id]));
    let steps = trace["steps"].as_array().expect("steps");
    assert!(steps.iter().any(|st| st["kind"] == "llm"), "{trace}");
    assert!(server.stop().success());
}

#[test]
fn agents_list_and_show_describe_the_pool() {
    let work = tempfile::tempdir().expect("temp dir");
    let server = start(work.path(), "[executor]\nkind = \"agents\"\n");
    let list = ok(server.kira().args(["agents", "list"]));
    for a in [
        "primary",
        "legal",
        "financial",
        "technical",
        "content",
        "research",
    ] {
        assert!(list.contains(a), "{list}");
    }
    assert!(
        list.contains("local/SmolLM2-135M-Instruct (local)"),
        "{list}"
    );
    assert!(list.contains("executor: agents"), "{list}");
    let legal = ok(server.kira().args(["agents", "show", "legal"]));
    assert!(legal.contains("You are the legal specialist"), "{legal}");
    assert!(legal.contains("complex_legal_analysis"), "{legal}");
    let v = ok_json(server.kira().args(["agents", "show", "legal"]));
    assert_eq!(v["max_concurrent"], 2);
    assert_eq!(v["model"]["local"], true);
    let out = server
        .kira()
        .args(["agents", "show", "astrologer"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("agent 'astrologer' not found"));
    assert!(server.stop().success());
}

#[test]
fn bench_answers_asks_a_real_server_held_to_the_format_and_free() {
    let work = tempfile::tempdir().expect("temp dir");
    // Two of the thirty questions, each on two `kira serve`s of this
    // binary: the defaults, and `structured_output = false`; one call a
    // run, so the test stays short.
    let short = work.path().join("short.toml");
    std::fs::write(
        &short,
        "[agents.primary]\nmax_concurrent = 2\nmax_steps = 1\nmax_output_tokens = 48\ncontext_budget = 200\n",
    )
    .expect("write");
    let v = ok_json(
        kira_in(work.path())
            .args(["bench", "answers", "--questions", "2", "--config"])
            .arg(&short),
    );
    assert_eq!(v["model"], "SmolLM2-135M-Instruct", "{v}");
    assert_eq!(v["questions"], 2, "{v}");
    assert_eq!(v["configuration"], "the defaults and --config", "{v}");
    for mode in ["held", "free"] {
        let o = &v[mode];
        let ended = ["completed", "needs_review", "failed"]
            .iter()
            .map(|k| o[k].as_u64().expect("count"))
            .sum::<u64>();
        assert_eq!(ended, 2, "{mode}: {o}");
        let right = o["right"].as_u64().expect("right");
        let wrong = o["wrong"].as_array().expect("wrong").len() as u64;
        assert_eq!(right + wrong, 2, "{mode}: {o}");
    }
    // Held to the result's schema, every answer parses and none fails.
    assert_eq!(v["held"]["well_formed"], 2, "{v}");
    assert_eq!(v["held"]["failed"], 0, "{v}");
    // Bad input is refused before any server starts.
    let out = fails(
        kira_in(work.path()).args(["bench", "answers", "--questions", "31"]),
        1,
    );
    assert!(out.stderr.contains("--questions"), "{}", out.stderr);
}

#[test]
fn bench_local_model_times_the_model_and_the_constraint_and_checks_answers() {
    let work = tempfile::tempdir().expect("temp dir");
    let v = ok_json(kira_in(work.path()).args([
        "bench",
        "local-model",
        "--tokens",
        "8",
        "--runs",
        "1",
        "--answers",
        "1",
        "--questions",
        "1",
        "--prompt-repeat",
        "2",
    ]));
    assert_eq!(v["model"], "SmolLM2-135M-Instruct", "{v}");
    let number = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k}: {v}"));
    assert!(number("load_seconds") > 0.0, "{v}");
    // Two repeats of the two facts, the system prompt and the template.
    assert!((40.0..400.0).contains(&number("prompt_tokens")), "{v}");
    assert!(number("prompt_tokens_per_second") > 0.0, "{v}");
    assert!((2.0..=8.0).contains(&number("generated_tokens")), "{v}");
    assert!(
        (2.0..=8.0).contains(&number("constrained_generated_tokens")),
        "{v}"
    );
    // The mask was computed on the constrained calls, and costs a share
    // of their decoding time.
    let cost = number("constraint_cost");
    assert!(cost > 0.0 && cost < 1.0, "{v}");
    // SmolLM2's quantized weights, read once per token, and the bound
    // they give at the bandwidth measured.
    assert!(
        (50e6..200e6).contains(&number("weight_bytes_per_token")),
        "{v}"
    );
    assert!(number("read_bandwidth_bytes_per_second") > 1e8, "{v}");
    let bound = number("bandwidth_bound_tokens_per_second");
    let expected = number("read_bandwidth_bytes_per_second") / number("weight_bytes_per_token");
    assert!((bound - expected).abs() < 1e-6 * expected, "{v}");
    // Held to the result's schema, the answer parses; the question is
    // scored right or listed wrong with the model's answer.
    assert_eq!(v["results_well_formed_constrained"], 1, "{v}");
    let right = v["questions_right"].as_u64().expect("right");
    let wrong = v["questions_wrong"].as_array().expect("wrong");
    assert_eq!(right + wrong.len() as u64, 1, "{v}");
    assert!(wrong.iter().all(|w| w["answer"].is_string()), "{v}");
    // Bad input is refused before the model loads.
    let out = fails(
        kira_in(work.path()).args(["bench", "local-model", "--model", "gpt-5"]),
        1,
    );
    assert!(out.stderr.contains("--model"), "{}", out.stderr);
}
