//! Prompt → token ids, exactly as the references tokenize.
//!
//! The prompt text is first augmented with the clip's duration/resolution (see
//! [`metadata`]), wrapped as one user turn by the checkpoint tokenizer's own chat template
//! (generation prompt added), tokenized without extra special tokens, and then `eos` and
//! `<|vision_start|>` are appended: the vision tokens follow that boundary token in the
//! joint sequence. The attention mask of the result is all ones (no padding), so only the
//! ids are returned.

pub mod metadata;
pub mod negative;
pub mod pyjson;
mod qwen;
pub mod template;
mod transfer;

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::Tokenizer;

pub use metadata::ClipMeta;
pub use qwen::write_qwen_tokenizer;
use template::{ChatTemplate, Message};
pub use transfer::SYSTEM_PROMPT_TRANSFER;

use crate::{Error, Result};

/// Token that separates the text from the generated media in the joint sequence.
pub const VISION_START: &str = "<|vision_start|>";

/// diffusers' system prompts (its wording, typo included: the model saw exactly this).
const SYSTEM_PROMPT_VIDEO: &str =
    "You are a helpful assistant who will generate videos from a give prompt.";
const SYSTEM_PROMPT_IMAGE: &str =
    "You are a helpful assistant who will generate images from a give prompt.";

/// Which reference's prompt conventions to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PromptStyle {
    /// PhyAI: no system prompt, metadata (sentences or JSON fields) on the positive prompt
    /// only, structured "bad video" default negative prompt.
    #[default]
    Phyai,
    /// diffusers: system prompt, metadata sentences on the positive prompt and "is not"
    /// sentences on the negative prompt, empty default negative prompt.
    Diffusers,
}

/// What to tokenize, and the clip the metadata describes.
#[derive(Debug, Clone)]
pub struct PromptInputs {
    pub prompt: String,
    /// `None` selects the style's default negative prompt; `Some("")` an empty one.
    pub negative_prompt: Option<String>,
    pub num_frames: usize,
    pub height: usize,
    pub width: usize,
    pub fps: f64,
    pub style: PromptStyle,
}

/// The checkpoint's text tokenizer with its chat template and the two boundary ids.
pub struct Processor {
    tokenizer: Tokenizer,
    template: ChatTemplate,
    eos_id: u32,
    vision_start_id: u32,
    /// diffusers style only: whether the system turn is added (the pipeline's
    /// `default_use_system_prompt`, read from the checkpoint's `model_index.json`).
    diffusers_system_prompt: bool,
}

impl Processor {
    /// Loads `tokenizer.json` and `tokenizer_config.json` (chat template taken from
    /// `chat_template.jinja` when present, else from the config) from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let tok_file = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tok_file)
            .map_err(|e| Error::config(&tok_file, "", format!("cannot load tokenizer: {e}")))?;
        let cfg_file = dir.join("tokenizer_config.json");
        let config = read_json_value(&cfg_file)?;
        let special_tokens = special_tokens(dir, &config)?;
        let template_src = chat_template_source(dir, &cfg_file, &config)?;
        let template = ChatTemplate::new(template_src, special_tokens.clone(), &cfg_file)?;
        let eos = special_tokens
            .iter()
            .find(|(k, _)| k == "eos_token")
            .map(|(_, v)| v.clone())
            .ok_or_else(|| Error::config(&cfg_file, "eos_token", "missing"))?;
        let eos_id = token_id(&tokenizer, &eos, &cfg_file, "eos_token")?;
        let vision_start_id = token_id(&tokenizer, VISION_START, &tok_file, "added_tokens")?;
        Ok(Self {
            tokenizer,
            template,
            eos_id,
            vision_start_id,
            diffusers_system_prompt: default_use_system_prompt(dir)?,
        })
    }

    /// Id of the end-of-sequence token appended after the chat text.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Id of `<|vision_start|>`, the last token of every prompt.
    pub fn vision_start_id(&self) -> u32 {
        self.vision_start_id
    }

    /// (positive, negative) user-turn texts after metadata augmentation.
    pub fn captions(&self, inputs: &PromptInputs) -> Result<(String, String)> {
        captions(inputs)
    }

    /// Token ids of the positive and the negative prompt.
    pub fn encode_pair(&self, inputs: &PromptInputs) -> Result<(Vec<u32>, Vec<u32>)> {
        let (pos, neg) = captions(inputs)?;
        let system = match inputs.style {
            PromptStyle::Phyai => None,
            PromptStyle::Diffusers if !self.diffusers_system_prompt => None,
            PromptStyle::Diffusers if inputs.num_frames == 1 => Some(SYSTEM_PROMPT_IMAGE),
            PromptStyle::Diffusers => Some(SYSTEM_PROMPT_VIDEO),
        };
        // diffusers renders with `add_vision_id=False`; PhyAI leaves it undefined.
        let extra: &[(&str, bool)] = match inputs.style {
            PromptStyle::Phyai => &[],
            PromptStyle::Diffusers => &[("add_vision_id", false)],
        };
        Ok((
            self.encode_turn(system, &pos, extra)?,
            self.encode_turn(system, &neg, extra)?,
        ))
    }

    /// Token ids of two user texts taken as they are (no metadata sentences), as the
    /// reference tokenizes action captions: its system prompt when the checkpoint enables
    /// it (the image one for one frame, else the video one).
    pub fn encode_raw_pair(
        &self,
        pos: &str,
        neg: &str,
        num_frames: usize,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        let system = match (self.diffusers_system_prompt, num_frames) {
            (false, _) => None,
            (true, 1) => Some(SYSTEM_PROMPT_IMAGE),
            (true, _) => Some(SYSTEM_PROMPT_VIDEO),
        };
        let extra = &[("add_vision_id", false)];
        Ok((
            self.encode_turn(system, pos, extra)?,
            self.encode_turn(system, neg, extra)?,
        ))
    }

    /// One conversation (optional system turn + user turn) → ids + [eos, vision_start].
    fn encode_turn(
        &self,
        system: Option<&str>,
        user: &str,
        extra: &[(&str, bool)],
    ) -> Result<Vec<u32>> {
        let mut messages = Vec::with_capacity(2);
        if let Some(s) = system {
            messages.push(Message {
                role: "system".into(),
                content: s.into(),
            });
        }
        messages.push(Message {
            role: "user".into(),
            content: user.into(),
        });
        let text = self.template.render(&messages, extra)?;
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::msg(format!("tokenizer failed: {e}")))?;
        let mut ids = enc.get_ids().to_vec();
        ids.extend([self.eos_id, self.vision_start_id]);
        Ok(ids)
    }
}

/// Validates the inputs and builds both texts for the selected style.
fn captions(inputs: &PromptInputs) -> Result<(String, String)> {
    if metadata::py_strip(&inputs.prompt).is_empty() {
        return Err(Error::invalid("prompt", "is empty"));
    }
    if !(inputs.fps.is_finite() && inputs.fps > 0.0) {
        return Err(Error::invalid(
            "fps",
            format!("must be > 0, got {}", inputs.fps),
        ));
    }
    if inputs.num_frames == 0 || inputs.height == 0 || inputs.width == 0 {
        return Err(Error::invalid(
            "num_frames/height/width",
            format!(
                "must be positive, got {}x{}x{}",
                inputs.num_frames, inputs.height, inputs.width
            ),
        ));
    }
    let meta = ClipMeta {
        num_frames: inputs.num_frames,
        height: inputs.height,
        width: inputs.width,
        fps: inputs.fps,
    };
    Ok(match inputs.style {
        PromptStyle::Phyai => {
            let neg = inputs
                .negative_prompt
                .clone()
                .unwrap_or_else(|| negative::phyai_default().to_string());
            (metadata::phyai_caption(&inputs.prompt, &meta), neg)
        }
        PromptStyle::Diffusers => {
            let neg = inputs
                .negative_prompt
                .as_deref()
                .unwrap_or(negative::diffusers_default());
            (
                metadata::diffusers_caption(&inputs.prompt, &meta, false),
                metadata::diffusers_caption(neg, &meta, true),
            )
        }
    })
}

/// `default_use_system_prompt` of the pipeline config next to the tokenizer folder
/// (`<checkpoint>/model_index.json`, or `modular_model_index.json` for a distilled
/// checkpoint); true, the pipeline default, when absent.
fn default_use_system_prompt(dir: &Path) -> Result<bool> {
    let Some(root) = dir.parent() else {
        return Ok(true);
    };
    let Some(index) = ["model_index.json", "modular_model_index.json"]
        .iter()
        .map(|name| root.join(name))
        .find(|p| p.exists())
    else {
        return Ok(true);
    };
    match read_json_value(&index)?.get("default_use_system_prompt") {
        None | Some(Value::Null) => Ok(true),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(Error::config(
            &index,
            "default_use_system_prompt",
            format!("expected a boolean, got {other}"),
        )),
    }
}

fn read_json_value(file: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    serde_json::from_str(&text).map_err(|e| Error::config(file, "", format!("invalid JSON: {e}")))
}

/// A special-token entry is either a string or an object with `content`.
fn token_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(m) => m.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// `bos_token`, `eos_token`, `unk_token`, `pad_token` from the config, falling back to
/// `special_tokens_map.json`.
fn special_tokens(dir: &Path, config: &Value) -> Result<Vec<(String, String)>> {
    let map_file = dir.join("special_tokens_map.json");
    let map = if map_file.exists() {
        Some(read_json_value(&map_file)?)
    } else {
        None
    };
    let mut out = Vec::new();
    for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
        let found = config
            .get(key)
            .and_then(token_string)
            .or_else(|| map.as_ref().and_then(|m| m.get(key)).and_then(token_string));
        if let Some(tok) = found {
            out.push((key.to_string(), tok));
        }
    }
    Ok(out)
}

fn chat_template_source(dir: &Path, cfg_file: &Path, config: &Value) -> Result<String> {
    let jinja: PathBuf = dir.join("chat_template.jinja");
    if jinja.exists() {
        return std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e));
    }
    match config.get("chat_template") {
        Some(Value::String(s)) => Ok(s.clone()),
        // A list of named templates: use the one called "default".
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template").and_then(Value::as_str))
            .map(str::to_string)
            .ok_or_else(|| {
                Error::config(cfg_file, "chat_template", "no template named \"default\"")
            }),
        _ => Err(Error::config(
            cfg_file,
            "chat_template",
            "missing (and no chat_template.jinja next to it)",
        )),
    }
}

fn token_id(tokenizer: &Tokenizer, token: &str, file: &Path, key: &str) -> Result<u32> {
    tokenizer.token_to_id(token).ok_or_else(|| {
        Error::config(
            file,
            key,
            format!("token {token:?} is not in the vocabulary"),
        )
    })
}
