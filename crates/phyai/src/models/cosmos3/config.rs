//! `model_index.json`: which components a Cosmos3 checkpoint ships and the pipeline-level
//! switches diffusers stores there. The component configs live beside their models
//! (`transformer::config`, `vae::config`, `sampler::config`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The pipeline section of `model_index.json`. Component entries are `[library, class]`
/// pairs (or `[null, null]` for an absent optional component).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelIndex {
    #[serde(rename = "_class_name", default)]
    pub class_name: String,
    #[serde(rename = "_diffusers_version", default)]
    pub diffusers_version: Option<String>,
    #[serde(default = "default_true")]
    pub default_use_system_prompt: bool,
    #[serde(default = "default_true")]
    pub enable_safety_checker: bool,
    /// diffusers: when true the pipeline passes its own linear sigmas to the scheduler
    /// instead of letting the scheduler derive them from its config.
    #[serde(default)]
    pub use_native_flow_schedule: bool,
    #[serde(default)]
    pub transformer: Option<(Option<String>, Option<String>)>,
    #[serde(default)]
    pub vae: Option<(Option<String>, Option<String>)>,
    #[serde(default)]
    pub scheduler: Option<(Option<String>, Option<String>)>,
    #[serde(default)]
    pub text_tokenizer: Option<(Option<String>, Option<String>)>,
    #[serde(default)]
    pub sound_tokenizer: Option<(Option<String>, Option<String>)>,
}

fn default_true() -> bool {
    true
}

impl ModelIndex {
    /// The checkpoint must name the Cosmos3 pipeline and its mandatory components.
    pub fn validate(&self, file: &Path) -> Result<()> {
        if !self.class_name.starts_with("Cosmos3") {
            return Err(Error::config(
                file,
                "_class_name",
                format!("expected a Cosmos3 pipeline, found {:?}", self.class_name),
            ));
        }
        for (key, entry) in [
            ("transformer", &self.transformer),
            ("vae", &self.vae),
            ("scheduler", &self.scheduler),
            ("text_tokenizer", &self.text_tokenizer),
        ] {
            if !matches!(entry, Some((_, Some(_)))) {
                return Err(Error::config(file, key, "required component is missing"));
            }
        }
        Ok(())
    }

    /// True when the checkpoint ships an audio tokenizer (T2AV/I2AV possible).
    pub fn has_sound_tokenizer(&self) -> bool {
        matches!(self.sound_tokenizer, Some((_, Some(_))))
    }
}
