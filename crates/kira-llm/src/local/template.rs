//! The prompt text for the local model: messages as (role, text) turns,
//! rendered with the GGUF's own Jinja chat template, or ChatML by hand.

use minijinja::{Environment, Error, ErrorKind, Value, context};

use super::tools::{render_call, tool_prompt};
use crate::{Message, Role, ToolSpec};

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Turn {
    pub role: &'static str,
    pub content: String,
}

/// The messages as the template's turns. Tools go into the system message
/// (one is added if there is none); an assistant's tool calls are written
/// in the JSON protocol after its text; a tool result becomes a user turn
/// naming the tool, since the model knows no `tool` role.
pub(crate) fn turns(messages: &[Message], tools: &[ToolSpec], call_required: bool) -> Vec<Turn> {
    let mut out = Vec::with_capacity(messages.len() + 1);
    let instructions = (!tools.is_empty()).then(|| tool_prompt(tools, call_required));
    let has_system = messages.iter().any(|m| m.role == Role::System);
    if let (Some(instructions), false) = (&instructions, has_system) {
        out.push(Turn {
            role: "system",
            content: instructions.clone(),
        });
    }
    let mut instructions_added = !has_system;
    for m in messages {
        let content = match m.role {
            Role::System => match &instructions {
                Some(i) if !instructions_added => {
                    instructions_added = true;
                    format!("{}\n\n{i}", m.content)
                }
                _ => m.content.clone(),
            },
            Role::User => m.content.clone(),
            Role::Assistant => {
                let mut text = m.content.clone();
                for c in &m.tool_calls {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&render_call(&c.name, &c.arguments));
                }
                text
            }
            Role::Tool => {
                let id = m.tool_call_id.as_deref().unwrap_or_default();
                let name = messages
                    .iter()
                    .flat_map(|m| &m.tool_calls)
                    .find(|c| c.id == id)
                    .map_or("the tool", |c| c.name.as_str());
                format!("Result of {name}:\n{}", m.content)
            }
        };
        let role = match m.role {
            Role::Tool => "user",
            r => r.as_str(),
        };
        out.push(Turn { role, content });
    }
    out
}

/// Renders a Hugging Face chat template with the generation prompt.
pub(crate) fn render(template: &str, turns: &[Turn]) -> Result<String, Error> {
    let mut env = Environment::new();
    env.add_function(
        "raise_exception",
        |message: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        },
    );
    let messages: Vec<Value> = turns
        .iter()
        .map(|t| context! { role => t.role, content => t.content.as_str() })
        .collect();
    env.render_str(
        template,
        context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => "<|im_start|>",
            eos_token => "<|im_end|>",
        },
    )
}

/// ChatML, the format SmolLM2 was trained on, for a GGUF without a usable
/// template.
pub(crate) fn chatml(turns: &[Turn]) -> String {
    let mut out = String::new();
    for t in turns {
        out.push_str(&format!(
            "<|im_start|>{}\n{}<|im_end|>\n",
            t.role, t.content
        ));
    }
    out.push_str("<|im_start|>assistant\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ToolCall;
    use serde_json::json;

    /// SmolLM2-135M-Instruct's template as its GGUF carries it.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn the_gguf_template_renders_chatml() {
        let t = turns(
            &[Message::system("Be brief."), Message::user("Hi")],
            &[],
            false,
        );
        let rendered = render(SMOLLM2, &t).expect("render");
        assert_eq!(rendered, chatml(&t));
        assert_eq!(
            rendered,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        // Without a system message the template adds its own.
        let rendered = render(SMOLLM2, &turns(&[Message::user("Hi")], &[], false)).expect("render");
        assert!(rendered.starts_with("<|im_start|>system\nYou are a helpful AI assistant"));
    }

    /// Qwen2.5-Coder-0.5B-Instruct's template as its GGUF carries it.
    const QWEN25: &str = r##"{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"##;

    #[test]
    fn qwen25s_template_renders_chatml_without_tools() {
        let t = turns(
            &[Message::system("Be brief."), Message::user("Hi")],
            &[],
            false,
        );
        assert_eq!(render(QWEN25, &t).expect("render"), chatml(&t));
        let rendered = render(QWEN25, &turns(&[Message::user("Hi")], &[], false)).expect("render");
        assert!(
            rendered.starts_with("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
        );
        assert!(rendered.ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"));
    }

    #[test]
    fn raise_exception_fails_the_render() {
        let t = turns(&[Message::user("x")], &[], false);
        assert!(render("{{ raise_exception('no') }}", &t).is_err());
    }

    #[test]
    fn tools_join_the_system_message_and_calls_and_results_are_text() {
        let tools = [ToolSpec {
            name: "lookup".into(),
            description: "Look up.".into(),
            parameters: json!({}),
        }];
        let mut call = Message::assistant("");
        call.tool_calls.push(ToolCall {
            id: "call_0".into(),
            name: "lookup".into(),
            arguments: json!({"q": "a"}),
        });
        let msgs = [
            Message::user("find a"),
            call,
            Message::tool("call_0", "found a"),
        ];
        let t = turns(&msgs, &tools, false);
        assert_eq!(t[0].role, "system");
        assert!(t[0].content.contains("- lookup: Look up."));
        assert_eq!(t[2].content, r#"{"tool":"lookup","arguments":{"q":"a"}}"#);
        assert_eq!(t[3].role, "user");
        assert_eq!(t[3].content, "Result of lookup:\nfound a");

        let t = turns(&[Message::system("S"), Message::user("u")], &tools, false);
        assert_eq!(t.len(), 2);
        assert!(t[0].content.starts_with("S\n\nYou can call tools."));
    }
}
