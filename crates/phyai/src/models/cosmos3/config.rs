//! `model_index.json`: which components a Cosmos3 checkpoint ships and the pipeline-level
//! switches diffusers stores there. The component configs live beside their models
//! (`transformer::config`, `vae::config`, `sampler::config`). Distilled checkpoints ship a
//! `modular_model_index.json` instead, whose component entries carry a third element (the
//! loading spec); [`ModelIndex::from_checkpoint`] reads either.

use std::path::{Path, PathBuf};

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
    /// Reads `model_index.json`, or, when the checkpoint has none, the distilled layout's
    /// `modular_model_index.json`; returns the index and the file it came from (validated).
    pub fn from_checkpoint(root: &Path) -> Result<(Self, PathBuf)> {
        let plain = root.join("model_index.json");
        let modular = root.join("modular_model_index.json");
        let file = if plain.exists() || !modular.exists() {
            plain
        } else {
            modular
        };
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        let mut value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::config(&file, "", format!("invalid JSON: {e}")))?;
        if let Some(map) = value.as_object_mut() {
            for entry in map.values_mut() {
                // [library, class, {loading spec}] → [library, class]
                if let Some(list) = entry.as_array_mut() {
                    if list.len() == 3 && list[2].is_object() {
                        list.truncate(2);
                    }
                }
            }
        }
        let index: ModelIndex = serde_json::from_value(value)
            .map_err(|e| Error::config(&file, "", format!("not a pipeline index: {e}")))?;
        index.validate(&file)?;
        Ok((index, file))
    }

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

    /// True for the few-step distilled pipelines (guidance in the weights, fixed schedule).
    pub fn is_distilled(&self) -> bool {
        self.class_name.contains("Distilled")
    }

    /// True when the checkpoint ships an audio tokenizer (T2AV/I2AV possible).
    pub fn has_sound_tokenizer(&self) -> bool {
        matches!(self.sound_tokenizer, Some((_, Some(_))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
    }

    #[test]
    fn base_and_distilled_indexes_are_read() {
        let (base, file) = ModelIndex::from_checkpoint(&fixtures().join("tiny")).unwrap();
        assert!(file.ends_with("model_index.json") && !base.is_distilled());
        assert!(base.has_sound_tokenizer());
        let (d, file) = ModelIndex::from_checkpoint(&fixtures().join("tiny_distilled")).unwrap();
        assert!(file.ends_with("modular_model_index.json") && d.is_distilled());
        assert_eq!(
            d.scheduler,
            Some((
                Some("diffusers".into()),
                Some("FlowMatchEulerDiscreteScheduler".into())
            ))
        );
        assert!(d.default_use_system_prompt && !d.has_sound_tokenizer());
    }

    #[test]
    fn a_folder_without_an_index_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = ModelIndex::from_checkpoint(dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("model_index.json"), "{e}");
    }
}
