//! `kira bench answers`: how often the local model answers a question
//! whose answer is in the company's memory, asked the way a user asks:
//! a real `kira serve` (this binary, its default configuration on a new
//! SQLite database), the company and its [`FACTS`] recorded through the
//! HTTP API, each question submitted as a task and read back when it
//! ends. The same questions run twice, on two servers: as shipped (every
//! call held to the format the agent loop asks for, by constrained
//! decoding) and with `structured_output = false` (every call free, the
//! answer read by the tolerant parser).

use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::BenchError;
use crate::local_model::names;

/// Thirty facts about a made-up company, each with a question only that
/// fact answers and the strings that count as its answer (named as a
/// whole word or number, in any case: [`names`]). Several facts hold a
/// second value beside the one asked for, so reading the right one
/// matters as well as finding it.
pub const FACTS: [(&str, &str, &[&str]); 30] = [
    (
        "Priya Raman is our chief financial officer; Daniel Okafor is our chief technology officer.",
        "Who is our chief technology officer?",
        &["Daniel Okafor", "Okafor"],
    ),
    (
        "The lease of the office at 14 Harbour Street ends on 30 September 2027.",
        "When does the lease of the Harbour Street office end?",
        &["September"],
    ),
    (
        "The board approved a marketing budget of 850,000 dollars for 2027.",
        "What marketing budget did the board approve for 2027?",
        &["850,000", "850000", "850k"],
    ),
    (
        "Our servo motors come from Kestrel Components in Stuttgart.",
        "Which company supplies our servo motors?",
        &["Kestrel"],
    ),
    (
        "Invoice INV-2291 to Globex is for 12,400 euros and is 45 days overdue.",
        "How much is invoice INV-2291 for?",
        &["12,400", "12400"],
    ),
    (
        "Payroll runs on the 25th of every month.",
        "On which day of the month does payroll run?",
        &["25th", "25"],
    ),
    (
        "Customer support is open from 8 am to 6 pm, Monday to Friday.",
        "At what time does customer support close?",
        &["6 pm", "6pm", "18:00", "6:00 pm", "six"],
    ),
    (
        "The Rotterdam warehouse holds 3,200 units of the R2 arm.",
        "How many R2 arms are in the Rotterdam warehouse?",
        &["3,200", "3200"],
    ),
    (
        "Our VAT number in the Netherlands is NL859201457B01.",
        "What is our Dutch VAT number?",
        &["NL859201457B01"],
    ),
    (
        "The series B round closed at 18 million dollars, led by Harbor Peak Ventures.",
        "Which firm led our series B round?",
        &["Harbor Peak"],
    ),
    (
        "The Initech support contract renews on 1 March unless cancelled 60 days before.",
        "How many days before renewal must the Initech contract be cancelled?",
        &["60", "sixty"],
    ),
    (
        "The controller firmware is written in Rust; the test tools are written in Python.",
        "In which language is the controller firmware written?",
        &["Rust"],
    ),
    (
        "Van Dijk & Partners audit our 2026 accounts.",
        "Who audits our 2026 accounts?",
        &["Van Dijk"],
    ),
    (
        "The R3 arm launches on 12 May 2027 at a trade fair in Hamburg.",
        "In which city does the R3 arm launch?",
        &["Hamburg"],
    ),
    (
        "Hofmann Foods is our largest customer, at 31% of revenue.",
        "What share of our revenue comes from our largest customer?",
        &["31%", "31"],
    ),
    (
        "Unopened units may be returned for a refund within 30 days of delivery.",
        "Within how many days of delivery may unopened units be returned?",
        &["30", "thirty"],
    ),
    (
        "Our bank is Rabobank; the payroll account number ends in 4471.",
        "Which bank do we use?",
        &["Rabobank"],
    ),
    (
        "We employ 46 people, 19 of them engineers.",
        "How many people do we employ?",
        &["46", "forty-six"],
    ),
    (
        "Our ISO 9001 certificate expires in November 2027.",
        "In which month does our ISO 9001 certificate expire?",
        &["November"],
    ),
    (
        "The domain northwind-robotics.eu is registered with Gandi and renews every April.",
        "In which month does our domain name renew?",
        &["April"],
    ),
    (
        "Sara Lindqvist heads sales in the Nordic region.",
        "Who heads our sales in the Nordic region?",
        &["Sara Lindqvist", "Lindqvist"],
    ),
    (
        "The R2 arm carries a warranty of 24 months.",
        "How long is the warranty on the R2 arm?",
        &["24", "two years", "2 years"],
    ),
    (
        "Our servers run at Hetzner, for about 2,100 euros a month.",
        "Which cloud provider runs our servers?",
        &["Hetzner"],
    ),
    (
        "A distributor must order at least 20 units at a time.",
        "What is the smallest order a distributor may place?",
        &["20", "twenty"],
    ),
    (
        "The R2 arm sells for 14,900 euros and the R1 arm for 9,500 euros.",
        "What is the price of the R2 arm?",
        &["14,900", "14900"],
    ),
    (
        "Tom Becker is our purchasing contact at Globex.",
        "Who is our purchasing contact at Globex?",
        &["Tom Becker", "Becker"],
    ),
    (
        "The annual general meeting is held in the last week of June.",
        "In which month is the annual general meeting held?",
        &["June"],
    ),
    (
        "Orders to the United Kingdom ship with DHL; orders within the EU ship with DB Schenker.",
        "Which carrier ships our orders to the United Kingdom?",
        &["DHL"],
    ),
    (
        "The trademark NORTHWIND is registered in the EU under number 018234567.",
        "Under which number is the NORTHWIND trademark registered in the EU?",
        &["018234567"],
    ),
    (
        "Northwind Robotics was founded in Delft in 2019.",
        "In which year was the company founded?",
        &["2019"],
    ),
];

/// How long the run may take per question asked before it gives up.
const PER_QUESTION: Duration = Duration::from_secs(120);
/// How long `kira serve` may take to answer `/healthz`.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// What `kira bench answers` is asked for.
#[derive(Debug, Clone, clap::Args)]
pub struct AnswersArgs {
    /// How many of the 30 questions to ask (each is asked twice: held to
    /// the format and free).
    #[arg(long, default_value_t = 30)]
    pub questions: usize,
    /// The local model (as `kira models list` names it); none: the default
    /// one, with no configuration at all.
    #[arg(long)]
    pub model: Option<String>,
    /// More configuration (a TOML file) for both servers, e.g. a lower
    /// step limit for a shortened run. The figures are then not those of
    /// the defaults, and the output says so.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// One server's run: how each question ended.
#[derive(Debug, Default)]
struct Outcome {
    right: usize,
    well_formed: usize,
    completed: usize,
    needs_review: usize,
    failed: usize,
    seconds: f64,
    /// The questions answered wrong, with the answer given.
    wrong: Vec<(String, String)>,
}

/// The configuration file of one run: `extra` (none: the defaults), then
/// the model and, free, `structured_output = false`.
fn config(extra: &str, model: Option<&str>, structured: bool) -> String {
    let mut c = extra.to_owned();
    if model.is_none() && structured {
        return c;
    }
    if !c.is_empty() && !c.ends_with('\n') {
        c.push('\n');
    }
    c.push_str("[providers.default]\nkind = \"local\"\n");
    if let Some(m) = model {
        c.push_str(&format!("model = {}\n", Value::from(m)));
    }
    if !structured {
        c.push_str("structured_output = false\n");
    }
    c
}

/// `kira serve` (this binary) in `dir`, on a free loopback port, killed
/// when dropped.
struct Server {
    child: Child,
    base: String,
    token: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    async fn start(dir: &Path, config: &str) -> Result<Server, BenchError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let file = dir.join("kira.toml");
        std::fs::write(&file, config)?;
        let data = dir.join("data");
        let log = std::fs::File::create(dir.join("serve.log"))?;
        let child = std::process::Command::new(std::env::current_exe()?)
            .current_dir(dir)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(&data)
            .arg("--config")
            .arg(&file)
            // The local model, on the embedded store: nothing of the
            // caller's environment picks another provider or database.
            .env_remove("KIRA_CONFIG")
            .env_remove("KIRA_DATABASE_URL")
            .env_remove("KIRA_LISTEN")
            .env_remove("KIRA_APP_DATABASE_URL")
            .env_remove("KIRA_METRICS_LISTEN")
            .env_remove("KIRA_DATA_DIR")
            .env_remove("KIRA_MODEL")
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENAI_BASE_URL")
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("ANTHROPIC_BASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let mut server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            token: String::new(),
        };
        let http = reqwest::Client::new();
        let began = Instant::now();
        loop {
            if let Some(status) = server.child.try_wait()? {
                return Err(BenchError::Data(format!(
                    "kira serve exited ({status}): {}",
                    std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
                )));
            }
            let up = http
                .get(format!("{}/healthz", server.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if up && let Ok(t) = std::fs::read_to_string(data.join("admin.key")) {
                server.token = t.trim().to_owned();
                return Ok(server);
            }
            if began.elapsed() > START_TIMEOUT {
                return Err(BenchError::Data(format!(
                    "kira serve did not answer within {} s",
                    START_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn call(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, BenchError> {
        let mut req = http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let (_, text) = crate::metrics::timed(req, path.to_owned()).await?;
        Ok(serde_json::from_str(&text)?)
    }
}

/// The company, its facts (recorded yesterday, of some importance), and
/// the first `n` questions as tasks on one server; how each ended.
async fn ask(server: &Server, n: usize) -> Result<Outcome, BenchError> {
    use reqwest::Method;
    let http = reqwest::Client::new();
    server
        .call(
            &http,
            Method::POST,
            "/v1/companies",
            Some(json!({
                "id": "northwind", "name": "Northwind Robotics",
                "industry": "robotics", "jurisdiction": "NL"
            })),
        )
        .await?;
    use kira_core::clock::{Clock, SystemClock};
    let yesterday = SystemClock.now() - chrono::Duration::days(1);
    let memories: Vec<Value> = FACTS
        .iter()
        .map(|(fact, _, _)| {
            json!({
                "occurred_at": yesterday, "event_type": "context",
                "content": {"text": fact}, "importance": 6
            })
        })
        .collect();
    server
        .call(
            &http,
            Method::POST,
            "/v1/companies/northwind/memory",
            Some(json!({ "memories": memories })),
        )
        .await?;
    // Embedding the facts runs in the background and takes well under a
    // second; the questions come after it, as a user's would.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let began = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for (_, question, _) in FACTS.iter().take(n) {
        let t = server
            .call(
                &http,
                Method::POST,
                "/v1/companies/northwind/tasks",
                Some(json!({"task": question, "type": "quick_question_answer"})),
            )
            .await?;
        let id = t["task_id"]
            .as_str()
            .ok_or_else(|| BenchError::Data(format!("no task_id in {t}")))?;
        ids.push(id.to_owned());
    }
    let mut out = Outcome::default();
    for (id, (_, question, accepted)) in ids.iter().zip(FACTS.iter()) {
        let path = format!("/v1/companies/northwind/tasks/{id}");
        let task = loop {
            let t = server.call(&http, Method::GET, &path, None).await?;
            if matches!(
                t["status"].as_str(),
                Some("completed" | "needs_review" | "failed" | "cancelled")
            ) {
                break t;
            }
            if began.elapsed() > PER_QUESTION * n as u32 {
                return Err(BenchError::Data(format!("{path} did not end in time: {t}")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        match task["status"].as_str() {
            Some("completed") => out.completed += 1,
            Some("needs_review") => out.needs_review += 1,
            _ => out.failed += 1,
        }
        let r = &task["result"];
        if r["well_formed"] == true {
            out.well_formed += 1;
        }
        let text = format!(
            "{} {}",
            r["summary"].as_str().unwrap_or_default(),
            r["answer"].as_str().unwrap_or_default()
        );
        if accepted.iter().any(|a| names(&text, a)) {
            out.right += 1;
        } else {
            out.wrong
                .push((question.to_string(), text.trim().to_owned()));
        }
    }
    out.seconds = began.elapsed().as_secs_f64();
    Ok(out)
}

/// A new temp directory named `prefix-<id>`.
fn temp_dir(prefix: &str) -> Result<PathBuf, BenchError> {
    let d = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// One server with `config`, asked the first `n` questions.
async fn run(config: &str, n: usize) -> Result<Outcome, BenchError> {
    let dir = temp_dir("kira-bench-answers")?;
    let result = async {
        let server = Server::start(&dir, config).await?;
        ask(&server, n).await
    }
    .await;
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn outcome_json(o: &Outcome) -> Value {
    json!({
        "right": o.right,
        "well_formed": o.well_formed,
        "completed": o.completed,
        "needs_review": o.needs_review,
        "failed": o.failed,
        "seconds": o.seconds,
        "wrong": o.wrong.iter().map(|(q, a)| json!({"question": q, "answer": a})).collect::<Vec<_>>(),
    })
}

pub async fn command(args: AnswersArgs, json_out: bool) -> Result<ExitCode, BenchError> {
    let n = args.questions;
    if n == 0 || n > FACTS.len() {
        return Err(BenchError::Invalid(format!(
            "--questions must be between 1 and {}",
            FACTS.len()
        )));
    }
    if let Some(m) = &args.model
        && kira_llm::local::LocalModel::named(m).is_none()
    {
        let known: Vec<&str> = kira_llm::local::LOCAL_MODELS
            .iter()
            .map(|m| m.name)
            .collect();
        return Err(BenchError::Invalid(format!(
            "--model: a local model is one of {}",
            known.join(", ")
        )));
    }
    let extra = match &args.config {
        Some(f) => std::fs::read_to_string(f)
            .map_err(|e| BenchError::Invalid(format!("--config {}: {e}", f.display())))?,
        None => String::new(),
    };
    let model = args.model.as_deref();
    let held = run(&config(&extra, model, true), n).await?;
    let free = run(&config(&extra, model, false), n).await?;
    let configuration = if args.config.is_some() {
        "the defaults and --config"
    } else {
        "the defaults"
    };
    let model_name = model.unwrap_or(kira_llm::local::SMOLLM2_135M.name);
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "model": model_name,
                "questions": n,
                "configuration": configuration,
                "held": outcome_json(&held),
                "free": outcome_json(&free),
            }))?
        );
    } else {
        println!(
            "{model_name} through kira serve ({configuration}): {n} questions answered from the company's memory"
        );
        println!(
            "  {:<28} {:>6} {:>11} {:>10} {:>12} {:>7} {:>8}",
            "", "right", "well formed", "completed", "needs review", "failed", "seconds"
        );
        for (label, o) in [
            ("held to the format (default)", &held),
            ("free (structured_output off)", &free),
        ] {
            println!(
                "  {label:<28} {:>6} {:>11} {:>10} {:>12} {:>7} {:>8.1}",
                o.right, o.well_formed, o.completed, o.needs_review, o.failed, o.seconds
            );
        }
        for (label, o) in [("held", &held), ("free", &free)] {
            for (q, a) in &o.wrong {
                println!(
                    "  wrong, {label}: {q} -> {}",
                    a.chars().take(120).collect::<String>()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fact_names_its_answer_and_no_question_does() {
        for (fact, question, accepted) in FACTS {
            assert!(
                accepted.iter().any(|a| names(fact, a)),
                "{fact} does not name any of {accepted:?}"
            );
            assert!(
                !accepted.iter().any(|a| names(question, a)),
                "{question} gives its own answer"
            );
        }
    }

    #[test]
    fn the_default_run_has_no_configuration_and_the_free_one_turns_structure_off() {
        assert_eq!(config("", None, true), "");
        let free = config("", None, false);
        assert!(free.contains("kind = \"local\""), "{free}");
        assert!(free.contains("structured_output = false"), "{free}");
        let other = config("", Some("Qwen2.5-Coder-0.5B-Instruct"), true);
        assert!(other.contains("model = \"Qwen2.5-Coder-0.5B-Instruct\""));
        assert!(!other.contains("structured_output"));
        let extra = "[agents.primary]\nmax_steps = 1";
        assert_eq!(config(extra, None, true), extra);
        let both = config(extra, None, false);
        assert!(
            both.starts_with("[agents.primary]\nmax_steps = 1\n[providers.default]\n"),
            "{both}"
        );
        for text in [config(extra, None, true), both] {
            let _: toml::Value = toml::from_str(&text).expect("valid TOML");
        }
    }
}
