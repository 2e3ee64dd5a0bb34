//! An agent's final result: a summary, the answer or deliverable, and the
//! confidence the agent states. Read from `submit_result`'s arguments or
//! from a final message that holds the JSON object; anything else is kept
//! as the answer with confidence 0, so a result that does not follow the
//! protocol always goes to a human when the review policy asks for one.

use serde_json::{Value, json};

/// The name the result's schema goes by (a response format's name, the
/// tool Anthropic is made to call).
pub const RESULT_NAME: &str = "result";

#[derive(Debug, Clone, PartialEq)]
pub struct FinalResult {
    pub summary: String,
    pub answer: String,
    /// In [0, 1]; 0 when missing or unreadable.
    pub confidence: f64,
    /// False when the agent did not follow the protocol (no JSON object,
    /// or no readable confidence).
    pub well_formed: bool,
}

const SUMMARY_CHARS: usize = 300;

/// The result's JSON schema: `submit_result`'s parameters, and what a
/// model held to the result answers with. Confidence is required, a
/// number in [0, 1], so a model held to it states one the review policy
/// can use.
pub fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "summary": {"type": "string", "description": "one or two sentences", "minLength": 1, "maxLength": SUMMARY_CHARS},
            "answer": {"type": "string", "description": "the full answer or deliverable", "minLength": 1},
            "confidence": {
                "type": "number", "minimum": 0, "maximum": 1,
                "description": "how sure you are that the answer is correct and complete"
            }
        },
        "required": ["summary", "answer", "confidence"],
        "additionalProperties": false
    })
}

fn cut(s: &str, n: usize) -> String {
    super::cut(s.trim(), n)
}

/// A confidence in [0, 1] from a number or a numeric string ("0.8",
/// "80%"); None for anything else (including NaN and values outside
/// [0, 1] that are not percentages).
fn confidence(v: Option<&Value>) -> Option<f64> {
    let x = match v? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => {
            let s = s.trim();
            match s.strip_suffix('%') {
                Some(p) => p.trim().parse::<f64>().ok()? / 100.0,
                None => s.parse::<f64>().ok()?,
            }
        }
        _ => return None,
    };
    if !x.is_finite() {
        return None;
    }
    if (0.0..=1.0).contains(&x) {
        Some(x)
    } else if (1.0..=100.0).contains(&x) {
        // "confidence": 85 means 85 %.
        Some(x / 100.0)
    } else {
        None
    }
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Null => None,
        Value::String(_) => None,
        other => Some(other.to_string()),
    }
}

/// The result in `submit_result`'s arguments (or a JSON object found in a
/// final message).
pub fn from_object(v: &Value) -> FinalResult {
    let answer = text(v.get("answer"))
        .or_else(|| text(v.get("deliverable")))
        .or_else(|| text(v.get("result")));
    let summary = text(v.get("summary"));
    let conf = confidence(v.get("confidence"));
    let well_formed = conf.is_some() && (answer.is_some() || summary.is_some());
    let answer = answer.or_else(|| summary.clone()).unwrap_or_default();
    FinalResult {
        summary: summary.unwrap_or_else(|| cut(&answer, SUMMARY_CHARS)),
        answer,
        confidence: conf.unwrap_or(0.0),
        well_formed,
    }
}

/// The result in a final message: the first JSON object in it that looks
/// like a result (fenced or bare), else the whole text as the answer with
/// confidence 0.
pub fn from_text(content: &str) -> FinalResult {
    for (start, _) in content.match_indices('{') {
        let mut stream = serde_json::Deserializer::from_str(&content[start..]).into_iter::<Value>();
        if let Some(Ok(v)) = stream.next()
            && v.is_object()
            && (v.get("answer").is_some() || v.get("summary").is_some())
        {
            return from_object(&v);
        }
    }
    let answer = content.trim().to_owned();
    FinalResult {
        summary: cut(&answer, SUMMARY_CHARS),
        answer,
        confidence: 0.0,
        well_formed: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_well_formed_result_is_read_as_is() {
        let r = from_object(&json!({"summary": "s", "answer": "a", "confidence": 0.85}));
        assert_eq!(r.summary, "s");
        assert_eq!(r.answer, "a");
        assert_eq!(r.confidence, 0.85);
        assert!(r.well_formed);
    }

    #[test]
    fn confidence_missing_or_unreadable_counts_as_zero() {
        for v in [
            json!({"summary": "s", "answer": "a"}),
            json!({"summary": "s", "answer": "a", "confidence": "high"}),
            json!({"summary": "s", "answer": "a", "confidence": -0.2}),
            json!({"summary": "s", "answer": "a", "confidence": 1000}),
            json!({"summary": "s", "answer": "a", "confidence": null}),
            json!({"summary": "s", "answer": "a", "confidence": [0.9]}),
        ] {
            let r = from_object(&v);
            assert_eq!(r.confidence, 0.0, "{v}");
            assert!(!r.well_formed, "{v}");
        }
    }

    #[test]
    fn percentages_and_numeric_strings_are_understood() {
        assert_eq!(
            from_object(&json!({"answer": "a", "confidence": "0.7"})).confidence,
            0.7
        );
        assert_eq!(
            from_object(&json!({"answer": "a", "confidence": "70%"})).confidence,
            0.7
        );
        assert_eq!(
            from_object(&json!({"answer": "a", "confidence": 70})).confidence,
            0.7
        );
    }

    #[test]
    fn a_json_object_inside_text_is_found() {
        let r = from_text(
            "Here is my result:\n```json\n{\"summary\": \"ok\", \"answer\": \"42\", \"confidence\": 0.9}\n```",
        );
        assert_eq!((r.answer.as_str(), r.confidence), ("42", 0.9));
        // A brace that is not a result is skipped.
        let r = from_text("set {x} then {\"answer\": \"y\", \"confidence\": 1}");
        assert_eq!((r.answer.as_str(), r.confidence), ("y", 1.0));
    }

    #[test]
    fn the_schema_requires_a_confidence_in_the_unit_interval() {
        let s = schema();
        let required: Vec<&str> = s["required"]
            .as_array()
            .expect("required")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(required.contains(&"confidence"), "{s}");
        let c = &s["properties"]["confidence"];
        assert_eq!(
            (
                c["type"].as_str(),
                c["minimum"].as_f64(),
                c["maximum"].as_f64()
            ),
            (Some("number"), Some(0.0), Some(1.0))
        );
        // What it describes reads back well formed.
        let r = from_text(r#"{"summary": "s", "answer": "a", "confidence": 0.35}"#);
        assert!(r.well_formed);
        assert_eq!(r.confidence, 0.35);
    }

    #[test]
    fn plain_text_is_the_answer_with_zero_confidence() {
        let r = from_text("The contract renews on 1 March.");
        assert_eq!(r.answer, "The contract renews on 1 March.");
        assert_eq!(r.confidence, 0.0);
        assert!(!r.well_formed);
        let long = "x".repeat(1_000);
        assert!(from_text(&long).summary.chars().count() <= SUMMARY_CHARS + 1);
    }
}
