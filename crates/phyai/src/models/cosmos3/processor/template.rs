//! The checkpoint tokenizer's Jinja chat template, rendered the way HF transformers
//! renders it (`trim_blocks`, `lstrip_blocks`, undefined values falsy, the special tokens
//! and `raise_exception` in scope), plus the few Python string/dict methods Qwen-style
//! templates call.

use std::path::Path;

use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, ErrorKind, State};
use serde::Serialize;

use crate::{Error, Result};

/// One chat turn.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A compiled chat template together with the special tokens it may reference.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// `bos_token`, `eos_token`, ... as strings, as transformers passes them.
    special_tokens: Vec<(String, String)>,
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compiles `source`; `file` names where it came from in errors.
    pub fn new(source: String, special_tokens: Vec<(String, String)>, file: &Path) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.set_unknown_method_callback(python_method);
        env.add_template_owned(NAME, source)
            .map_err(|e| Error::config(file, "chat_template", format!("does not compile: {e}")))?;
        Ok(Self {
            env,
            special_tokens,
        })
    }

    /// Renders `messages` with the generation prompt added. `extra` adds boolean
    /// variables (e.g. diffusers passes `add_vision_id=False`).
    pub fn render(&self, messages: &[Message], extra: &[(&str, bool)]) -> Result<String> {
        let mut ctx: Vec<(String, Value)> = vec![
            ("messages".into(), Value::from_serialize(messages)),
            ("add_generation_prompt".into(), Value::from(true)),
        ];
        for (k, v) in &self.special_tokens {
            ctx.push((k.clone(), Value::from(v.as_str())));
        }
        for (k, v) in extra {
            ctx.push(((*k).to_string(), Value::from(*v)));
        }
        let ctx: Value = ctx.into_iter().collect();
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| Error::msg(format!("chat template: {e}")))?;
        template
            .render(ctx)
            .map_err(|e| Error::msg(format!("chat template failed to render: {e}")))
    }
}

fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False)` layout.
fn tojson(value: Value) -> std::result::Result<Value, minijinja::Error> {
    let json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let text = serde_json::to_string(&json)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(Value::from_safe_string(python_separators(&text)))
}

/// Rewrites compact JSON (`,` `:`) to Python's default `", "` / `": "` outside strings.
fn python_separators(compact: &str) -> String {
    let mut out = String::with_capacity(compact.len() + compact.len() / 8);
    let (mut in_str, mut escaped) = (false, false);
    for c in compact.chars() {
        out.push(c);
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => {}
            }
        } else if c == '"' {
            in_str = true;
        } else if c == ',' || c == ':' {
            out.push(' ');
        }
    }
    out
}

fn arg_str(args: &[Value], i: usize) -> Option<String> {
    args.get(i).and_then(|v| v.as_str().map(str::to_string))
}

/// Python methods on strings and dicts that chat templates commonly use.
fn python_method(
    _state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, minijinja::Error> {
    let unknown = || minijinja::Error::from(ErrorKind::UnknownMethod);
    if let Some(s) = value.as_str() {
        let chars = arg_str(args, 0);
        let set = |c: char| match &chars {
            Some(cs) => cs.contains(c),
            None => c.is_whitespace(),
        };
        return Ok(match method {
            "startswith" => Value::from(s.starts_with(&arg_str(args, 0).ok_or_else(unknown)?)),
            "endswith" => Value::from(s.ends_with(&arg_str(args, 0).ok_or_else(unknown)?)),
            "strip" => Value::from(s.trim_matches(set)),
            "lstrip" => Value::from(s.trim_start_matches(set)),
            "rstrip" => Value::from(s.trim_end_matches(set)),
            "upper" => Value::from(s.to_uppercase()),
            "lower" => Value::from(s.to_lowercase()),
            "replace" => {
                let from = arg_str(args, 0).ok_or_else(unknown)?;
                let to = arg_str(args, 1).ok_or_else(unknown)?;
                Value::from(s.replace(&from, &to))
            }
            "split" => {
                let parts: Vec<Value> = match arg_str(args, 0) {
                    Some(sep) => s.split(sep.as_str()).map(Value::from).collect(),
                    None => s.split_whitespace().map(Value::from).collect(),
                };
                Value::from(parts)
            }
            _ => return Err(unknown()),
        });
    }
    if value.kind() == ValueKind::Map {
        return match method {
            "get" => {
                let key = args.first().ok_or_else(unknown)?;
                let v = value.get_item(key)?;
                Ok(if v.is_undefined() {
                    args.get(1).cloned().unwrap_or(Value::from(()))
                } else {
                    v
                })
            }
            "items" | "keys" | "values" => {
                let mut out = Vec::new();
                for key in value.try_iter()? {
                    let item = value.get_item(&key)?;
                    out.push(match method {
                        "items" => Value::from(vec![key, item]),
                        "keys" => key,
                        _ => item,
                    });
                }
                Ok(Value::from(out))
            }
            _ => Err(unknown()),
        };
    }
    Err(unknown())
}
