//! Tool calls for a model without function calling: the system prompt asks
//! for `{"tool": "<name>", "arguments": {...}}` on a line of its own, and
//! [`parse_tool_calls`] finds such objects in whatever the model wrote,
//! tolerating code fences, text around them, single quotes, Python's
//! `True`/`False`/`None` and trailing commas, as small models produce them.

use serde_json::{Map, Value, json};

use crate::ToolSpec;

/// The instructions added to the system prompt when tools are offered;
/// `required` when the answer must be a call.
pub fn tool_prompt(tools: &[ToolSpec], required: bool) -> String {
    let mut out = String::from(if required {
        "Answer with one tool call, only a JSON object on one line:\n\
         {\"tool\": \"<tool name>\", \"arguments\": {<arguments>}}\n\
         The result comes back in the next message. Tools:\n"
    } else {
        "You can call tools. To call one, answer with only a JSON object on one line:\n\
         {\"tool\": \"<tool name>\", \"arguments\": {<arguments>}}\n\
         The result comes back in the next message. Tools:\n"
    });
    for t in tools {
        out.push_str(&format!(
            "- {}: {} Arguments schema: {}\n",
            t.name, t.description, t.parameters
        ));
    }
    if !required {
        out.push_str("When you need no tool, answer in plain text.");
    }
    out.truncate(out.trim_end().len());
    out
}

/// The JSON schema of one call in this protocol: `{"tool": <name>,
/// "arguments": <that tool's parameters>}` for any one of `tools`. The
/// tool's name comes first, so a model held to this schema picks the tool
/// before it writes arguments for it.
pub fn tool_call_schema(tools: &[ToolSpec]) -> Value {
    let calls: Vec<Value> = tools
        .iter()
        .map(|t| {
            json!({
                "type": "object",
                "properties": {
                    "tool": {"const": t.name},
                    "arguments": t.parameters,
                },
                "required": ["tool", "arguments"],
                "additionalProperties": false,
            })
        })
        .collect();
    match <[Value; 1]>::try_from(calls) {
        Ok([one]) => one,
        Err(calls) => json!({ "anyOf": calls }),
    }
}

/// How an assistant's tool call is written back into the transcript, in
/// the same protocol, so the model sees its own earlier calls.
pub fn render_call(name: &str, arguments: &Value) -> String {
    json!({ "tool": name, "arguments": arguments }).to_string()
}

/// The calls of known tools in `text`, in order, and the text before the
/// first call (trimmed), which is the message's content. Objects that are
/// not calls of a tool in `known` stay text. Names match case-insensitively
/// and come back as `known` spells them.
pub fn parse_tool_calls(text: &str, known: &[&str]) -> (String, Vec<(String, Value)>) {
    let mut calls = Vec::new();
    let mut first_call_at = None;
    let mut from = 0;
    while let Some(open) = text[from..].find('{').map(|i| from + i) {
        let Some(close) = matching_brace(text, open) else {
            break;
        };
        let candidate = &text[open..=close];
        match parse_object(candidate).and_then(|v| as_call(v, known)) {
            Some(call) => {
                first_call_at.get_or_insert(open);
                calls.push(call);
                from = close + 1;
            }
            // Maybe a call is nested inside ({"tool_call": {...}}) or starts later.
            None => from = open + 1,
        }
    }
    let content = match first_call_at {
        Some(at) => strip_fence_opening(&text[..at]),
        None => text.trim().to_string(),
    };
    (content, calls)
}

/// The text before a call, without a code fence that opens the call.
fn strip_fence_opening(before: &str) -> String {
    let trimmed = before.trim_end();
    let trimmed = match trimmed.rfind("```") {
        Some(i) if trimmed[i + 3..].chars().all(|c| c.is_ascii_alphanumeric()) => &trimmed[..i],
        _ => trimmed,
    };
    trimmed.trim().to_string()
}

/// The index of the `}` that closes the `{` at `open`, skipping braces in
/// strings of either quote; `None` if the object never closes.
fn matching_brace(text: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in text[open..].char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Strict JSON first, then the relaxed form.
fn parse_object(text: &str) -> Option<Value> {
    serde_json::from_str(text)
        .ok()
        .or_else(|| serde_json::from_str(&relax(text)).ok())
}

/// Rewrites Python-ish JSON as JSON: single-quoted strings double-quoted,
/// `True`/`False`/`None` as `true`/`false`/`null`, trailing commas dropped.
fn relax(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' => {
                // A double-quoted string, copied as it is.
                out.push(c);
                i += 1;
                while i < chars.len() {
                    out.push(chars[i]);
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        out.push(chars[i + 1]);
                        i += 1;
                    } else if chars[i] == '"' {
                        break;
                    }
                    i += 1;
                }
            }
            '\'' => {
                out.push('"');
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    match chars[i] {
                        '\\' if i + 1 < chars.len() && chars[i + 1] == '\'' => {
                            out.push('\'');
                            i += 1;
                        }
                        '\\' if i + 1 < chars.len() => {
                            out.push('\\');
                            out.push(chars[i + 1]);
                            i += 1;
                        }
                        '"' => out.push_str("\\\""),
                        ch => out.push(ch),
                    }
                    i += 1;
                }
                out.push('"');
            }
            ',' => {
                let next = chars[i + 1..].iter().find(|c| !c.is_whitespace());
                if !matches!(next, Some('}' | ']')) {
                    out.push(c);
                }
            }
            c if c.is_ascii_alphabetic() => {
                let start = i;
                while i + 1 < chars.len() && chars[i + 1].is_ascii_alphanumeric() {
                    i += 1;
                }
                let word: String = chars[start..=i].iter().collect();
                out.push_str(match word.as_str() {
                    "True" => "true",
                    "False" => "false",
                    "None" => "null",
                    w => w,
                });
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// A call if `value` names a known tool: `{"tool": n, "arguments": a}`, or
/// with `name`/`function` for the name and `args`/`parameters`/`input` for
/// the arguments, which may also be a JSON string of an object.
fn as_call(value: Value, known: &[&str]) -> Option<(String, Value)> {
    let Value::Object(mut object) = value else {
        return None;
    };
    let name = ["tool", "name", "function", "tool_name"]
        .iter()
        .find_map(|k| object.get(*k).and_then(Value::as_str))?
        .trim()
        .to_string();
    let name = known
        .iter()
        .find(|k| k.eq_ignore_ascii_case(&name))?
        .to_string();
    let arguments = ["arguments", "args", "parameters", "input"]
        .iter()
        .find_map(|k| object.remove(*k))
        .unwrap_or(Value::Object(Map::new()));
    let arguments = match arguments {
        Value::String(s) => parse_object(&s).unwrap_or(Value::String(s)),
        Value::Null => Value::Object(Map::new()),
        v => v,
    };
    Some((name, arguments))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &["search_memory", "submit_result"];

    fn calls(text: &str) -> Vec<(String, Value)> {
        parse_tool_calls(text, KNOWN).1
    }

    fn one(text: &str) -> (String, Value) {
        let c = calls(text);
        assert_eq!(c.len(), 1, "in {text:?}: {c:?}");
        c.into_iter().next().expect("one call")
    }

    #[test]
    fn finds_calls_in_the_shapes_small_models_write() {
        let q = json!({"query": "contract terms"});
        let shapes = [
            r#"{"tool": "search_memory", "arguments": {"query": "contract terms"}}"#,
            "  {\"tool\":\"search_memory\",\"arguments\":{\"query\":\"contract terms\"}}\n",
            "```json\n{\"tool\": \"search_memory\", \"arguments\": {\"query\": \"contract terms\"}}\n```",
            "```\n{\"tool\": \"search_memory\", \"arguments\": {\"query\": \"contract terms\"}}\n```\nDone.",
            "I will search.\n{\"tool\": \"search_memory\", \"arguments\": {\"query\": \"contract terms\"}} and then answer",
            "{'tool': 'search_memory', 'arguments': {'query': 'contract terms'}}",
            "{\"tool\": \"search_memory\", \"arguments\": {\"query\": \"contract terms\",},}",
            "{\"name\": \"search_memory\", \"arguments\": {\"query\": \"contract terms\"}}",
            "{\"tool\": \"search_memory\", \"args\": {\"query\": \"contract terms\"}}",
            "{\"function\": \"search_memory\", \"parameters\": {\"query\": \"contract terms\"}}",
            "{\"tool\": \"search_memory\", \"arguments\": \"{\\\"query\\\": \\\"contract terms\\\"}\"}",
            "{\"tool\": \"Search_Memory\", \"arguments\": {\"query\": \"contract terms\"}}",
            "{\"tool_call\": {\"tool\": \"search_memory\", \"arguments\": {\"query\": \"contract terms\"}}}",
        ];
        for text in shapes {
            assert_eq!(
                one(text),
                ("search_memory".to_string(), q.clone()),
                "{text}"
            );
        }
    }

    #[test]
    fn python_literals_quotes_and_braces_inside_strings() {
        let (_, args) =
            one("{'tool': 'submit_result', 'arguments': {'ok': True, 'note': None, 'x': False}}");
        assert_eq!(args, json!({"ok": true, "note": null, "x": false}));
        let (_, args) =
            one(r#"{'tool': 'submit_result', 'arguments': {'text': 'it\'s {braced} "quoted"'}}"#);
        assert_eq!(args, json!({"text": "it's {braced} \"quoted\""}));
        let (_, args) = one(r#"{"tool": "submit_result", "arguments": {"text": "a } b", "n": 3}}"#);
        assert_eq!(args, json!({"text": "a } b", "n": 3}));
        // A word that merely contains True stays as it was.
        let (_, args) = one("{'tool': 'submit_result', 'arguments': {'v': 'Trueish'}}");
        assert_eq!(args, json!({"v": "Trueish"}));
    }

    #[test]
    fn missing_arguments_are_an_empty_object() {
        assert_eq!(one(r#"{"tool": "submit_result"}"#).1, json!({}));
        assert_eq!(
            one(r#"{"tool": "submit_result", "arguments": null}"#).1,
            json!({})
        );
    }

    #[test]
    fn several_calls_in_order_and_the_text_before_them() {
        let text = "Let me check.\n```json\n{\"tool\": \"search_memory\", \"arguments\": {\"query\": \"a\"}}\n```\n{\"tool\": \"submit_result\", \"arguments\": {\"answer\": \"b\"}}";
        let (content, found) = parse_tool_calls(text, KNOWN);
        assert_eq!(content, "Let me check.");
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["search_memory", "submit_result"]);
    }

    #[test]
    fn plain_answers_and_unknown_or_broken_objects_are_text() {
        for text in [
            "The answer is 42.",
            "",
            "{\"tool\": \"delete_everything\", \"arguments\": {}}",
            "{\"result\": 1}",
            "{\"tool\": \"search_memory\", \"arguments\": {\"query\": ",
            "{not json at all}",
            "}{",
            "{\"tool\": 3}",
        ] {
            let (content, found) = parse_tool_calls(text, KNOWN);
            assert!(found.is_empty(), "{text:?} gave {found:?}");
            assert_eq!(content, text.trim());
        }
        // Inside an array, even an unclosed one, the object is still found.
        assert_eq!(calls("[{\"tool\": \"search_memory\"}]").len(), 1);
        assert_eq!(calls("[{\"tool\": \"search_memory\"}").len(), 1);
        // No known tools: nothing is a call.
        assert!(
            parse_tool_calls(r#"{"tool": "search_memory"}"#, &[])
                .1
                .is_empty()
        );
    }

    #[test]
    fn the_call_schema_names_each_tool_with_its_parameters() {
        let spec = |name: &str| ToolSpec {
            name: name.into(),
            description: String::new(),
            parameters: json!({"type": "object", "properties": {"q": {"type": "string"}}}),
        };
        let one = tool_call_schema(&[spec("a")]);
        assert_eq!(one["properties"]["tool"], json!({"const": "a"}));
        assert_eq!(
            one["properties"]["arguments"]["properties"]["q"]["type"],
            "string"
        );
        let two = tool_call_schema(&[spec("a"), spec("b")]);
        let names: Vec<&Value> = two["anyOf"]
            .as_array()
            .expect("anyOf")
            .iter()
            .map(|c| &c["properties"]["tool"]["const"])
            .collect();
        assert_eq!(names, [&json!("a"), &json!("b")]);
    }

    #[test]
    fn a_rendered_call_parses_back() {
        let args = json!({"query": "x", "k": 3});
        let text = render_call("search_memory", &args);
        assert_eq!(one(&text), ("search_memory".to_string(), args));
    }

    #[test]
    fn the_prompt_names_every_tool_and_the_format() {
        let tools = [ToolSpec {
            name: "search_memory".into(),
            description: "Search the company's memories.".into(),
            parameters: json!({"type": "object"}),
        }];
        let p = tool_prompt(&tools, false);
        assert!(p.contains("search_memory: Search the company's memories."));
        assert!(p.contains(r#"{"tool": "<tool name>", "arguments": {<arguments>}}"#));
        assert!(p.ends_with("answer in plain text."));
        let p = tool_prompt(&tools, true);
        assert!(p.starts_with("Answer with one tool call"));
        assert!(!p.contains("plain text"), "{p}");
    }
}
