//! `transformer/config.json`: the typed config of the Cosmos3 mixture-of-transformers
//! denoiser. Field names are the JSON keys; defaults are the reference's constructor
//! defaults (the Nano architecture).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::layers::mlp::Activation;
use crate::{Error, Result};

/// `rope_scaling` as stored by the checkpoint; only the mRoPE section is read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RopeScaling {
    #[serde(default)]
    pub mrope_section: Option<Vec<usize>>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransformerConfig {
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default = "d_head_dim")]
    pub head_dim: usize,
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "d_base_fps")]
    pub base_fps: f64,
    #[serde(default = "d_true")]
    pub enable_fps_modulation: bool,
    #[serde(default = "d_latent_channel")]
    pub latent_channel: usize,
    #[serde(default = "d_true")]
    pub unified_3d_mrope_reset_spatial_ids: bool,
    #[serde(default = "d_margin")]
    pub unified_3d_mrope_temporal_modality_margin: usize,
    #[serde(default = "d_patch")]
    pub latent_patch_size: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_kv_heads")]
    pub num_key_value_heads: usize,
    #[serde(default = "d_patch_dim")]
    pub patch_latent_dim: usize,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default = "d_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub action_dim: Option<usize>,
    #[serde(default)]
    pub action_gen: bool,
    #[serde(default = "d_domains")]
    pub num_embodiment_domains: usize,
    #[serde(default)]
    pub sound_dim: Option<usize>,
    #[serde(default)]
    pub sound_gen: bool,
    #[serde(default = "d_sound_fps")]
    pub sound_latent_fps: f64,
    #[serde(default = "d_timestep_scale")]
    pub timestep_scale: f64,
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_true")]
    pub qk_norm_for_text: bool,
    #[serde(default)]
    pub use_und_k_norm_for_gen: bool,
    /// Written back by the reference from `rope_scaling.mrope_section`; wins when present.
    #[serde(default)]
    pub rope_axes_dim: Option<Vec<usize>>,
    /// A quantized checkpoint's `quantization_config` (ModelOpt FP8), parsed by
    /// [`crate::layers::fp8::QuantConfig::parse`] when the model is built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization_config: Option<serde_json::Value>,
}

/// False for NaN as well as for values ≤ 0.
fn positive(x: f64) -> bool {
    x > 0.0
}
fn d_true() -> bool {
    true
}
fn d_head_dim() -> usize {
    128
}
fn d_hidden() -> usize {
    4096
}
fn d_intermediate() -> usize {
    12288
}
fn d_base_fps() -> f64 {
    24.0
}
fn d_latent_channel() -> usize {
    48
}
fn d_margin() -> usize {
    15000
}
fn d_patch() -> usize {
    2
}
fn d_heads() -> usize {
    32
}
fn d_layers() -> usize {
    36
}
fn d_kv_heads() -> usize {
    8
}
fn d_patch_dim() -> usize {
    192
}
fn d_eps() -> f64 {
    1e-6
}
fn d_theta() -> f64 {
    5_000_000.0
}
fn d_domains() -> usize {
    32
}
fn d_sound_fps() -> f64 {
    25.0
}
fn d_timestep_scale() -> f64 {
    0.001
}
fn d_vocab() -> usize {
    151936
}
fn d_act() -> String {
    "silu".to_string()
}

impl Default for TransformerConfig {
    /// The Nano architecture (every field at its default).
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

/// Size of the sinusoidal timestep features fed to the timestep MLP.
pub const TIMESTEP_CHANNELS: usize = 256;

impl TransformerConfig {
    /// The Nano architecture: hidden 4096, 36 layers, 32/8 heads of 128, MLP 12288, base
    /// frame rate 24 (the reference's constructor defaults; the same as `default()`).
    pub fn nano() -> Self {
        Self::default()
    }

    /// mRoPE slots per axis (t, h, w): `rope_axes_dim`, else `rope_scaling.mrope_section`,
    /// else `[24, 20, 20]`.
    pub fn mrope_section(&self) -> Vec<usize> {
        if let Some(a) = &self.rope_axes_dim {
            return a.clone();
        }
        self.rope_scaling
            .as_ref()
            .and_then(|r| r.mrope_section.clone())
            .unwrap_or_else(|| vec![24, 20, 20])
    }

    pub fn activation(&self) -> Result<Activation> {
        Activation::parse(&self.hidden_act)
    }

    /// Sound channels when the checkpoint generates sound.
    pub fn sound_channels(&self) -> Option<usize> {
        if self.sound_gen {
            self.sound_dim
        } else {
            None
        }
    }

    pub fn validate(&self, file: &Path) -> Result<()> {
        let bad = |key: &str, msg: String| Err(Error::config(file, key, msg));
        for (key, v) in [
            ("head_dim", self.head_dim),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("latent_channel", self.latent_channel),
            ("latent_patch_size", self.latent_patch_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_key_value_heads", self.num_key_value_heads),
            ("vocab_size", self.vocab_size),
        ] {
            if v == 0 {
                return bad(key, "must be positive".into());
            }
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad("head_dim", format!("{} is not even", self.head_dim));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return bad(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            );
        }
        let p = self.latent_patch_size;
        if self.patch_latent_dim != p * p * self.latent_channel {
            return bad(
                "patch_latent_dim",
                format!(
                    "{} != latent_patch_size² · latent_channel = {}",
                    self.patch_latent_dim,
                    p * p * self.latent_channel
                ),
            );
        }
        let section = self.mrope_section();
        let key = if self.rope_axes_dim.is_some() {
            "rope_axes_dim"
        } else {
            "rope_scaling.mrope_section"
        };
        if section.len() != 3 {
            return bad(key, format!("{section:?} must have 3 entries (t, h, w)"));
        }
        if section.iter().sum::<usize>() != self.head_dim / 2 {
            return bad(
                key,
                format!(
                    "{section:?} sums to {}, expected head_dim/2 = {}",
                    section.iter().sum::<usize>(),
                    self.head_dim / 2
                ),
            );
        }
        if !positive(self.rope_theta) {
            return bad(
                "rope_theta",
                format!("{} must be positive", self.rope_theta),
            );
        }
        if !(positive(self.rms_norm_eps) || self.rms_norm_eps == 0.0) {
            return bad("rms_norm_eps", "must be non-negative".into());
        }
        if !positive(self.base_fps) {
            return bad("base_fps", format!("{} must be positive", self.base_fps));
        }
        if Activation::parse(&self.hidden_act).is_err() {
            return bad(
                "hidden_act",
                format!("{:?} (expected \"silu\" or \"relu2\")", self.hidden_act),
            );
        }
        if self.sound_gen {
            match self.sound_dim {
                None | Some(0) => {
                    return bad("sound_dim", "required when sound_gen is true".into())
                }
                Some(_) => {}
            }
            if !positive(self.sound_latent_fps) {
                return bad("sound_latent_fps", "must be positive".into());
            }
        }
        if self.action_gen && self.action_dim.is_none() {
            return bad("action_dim", "required when action_gen is true".into());
        }
        Ok(())
    }

    /// Number of parameters of the full module as the reference builds it (both experts,
    /// `lm_head`, the text final norm, optional sound/action heads).
    pub fn parameter_count(&self) -> u64 {
        let (h, d) = (self.hidden_size as u64, self.head_dim as u64);
        let (nq, nkv) = (
            self.num_attention_heads as u64,
            self.num_key_value_heads as u64,
        );
        let b = |n: u64| if self.attention_bias { n } else { 0 };
        let proj = h * nq * d + b(nq * d) + 2 * (h * nkv * d + b(nkv * d)) + nq * d * h + b(h);
        let mlp_mats = if self.hidden_act == "relu2" { 2 } else { 3 };
        let mlp = mlp_mats * h * self.intermediate_size as u64;
        let text_qk = if self.qk_norm_for_text { 2 * d } else { 0 };
        let und_k_for_gen = if self.use_und_k_norm_for_gen && !self.qk_norm_for_text {
            d
        } else {
            0
        };
        let layer = 2 * proj + text_qk + und_k_for_gen + 2 * d + 2 * mlp + 4 * h;
        let vocab = self.vocab_size as u64;
        let pd = self.patch_latent_dim as u64;
        let t = TIMESTEP_CHANNELS as u64;
        let mut total = self.num_hidden_layers as u64 * layer
            + 2 * vocab * h // embed_tokens, lm_head
            + 2 * h // norm, norm_moe_gen
            + (pd * h + h) + (h * pd + pd) // proj_in, proj_out
            + (t * h + h) + (h * h + h); // time_embedder
        if self.sound_gen {
            let s = self.sound_dim.unwrap_or(0) as u64;
            total += (s * h + h) + (h * s + s) + h;
        }
        if self.action_gen {
            let a = self.action_dim.unwrap_or(0) as u64;
            let n = self.num_embodiment_domains as u64;
            total += n * (a * h + h) + n * (h * a + a) + h;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nano_defaults_have_the_reference_parameter_count() {
        let c = TransformerConfig::default();
        assert_eq!(c.parameter_count(), 15_156_222_144);
        assert_eq!(c.mrope_section(), vec![24, 20, 20]);
        c.validate(Path::new("config.json")).unwrap();
    }

    #[test]
    fn nested_mrope_section_and_validation_errors() {
        let c: TransformerConfig = serde_json::from_str(
            r#"{"head_dim": 16, "rope_scaling": {"mrope_section": [4, 2, 2], "type": "default"},
                "unknown_key": 1}"#,
        )
        .unwrap();
        assert_eq!(c.mrope_section(), vec![4, 2, 2]);
        c.validate(Path::new("c.json")).unwrap();
        let c: TransformerConfig =
            serde_json::from_str(r#"{"rope_scaling": {"mrope_section": [24, 20, 21]}}"#).unwrap();
        let e = c.validate(Path::new("c.json")).unwrap_err().to_string();
        assert!(e.contains("mrope_section"), "{e}");
        let c: TransformerConfig = serde_json::from_str(r#"{"sound_gen": true}"#).unwrap();
        assert!(c.validate(Path::new("c.json")).is_err());
        // Sound heads add their parameters.
        let c: TransformerConfig =
            serde_json::from_str(r#"{"sound_gen": true, "sound_dim": 64}"#).unwrap();
        assert_eq!(
            c.parameter_count(),
            15_156_222_144 + (64 * 4096 + 4096) + (4096 * 64 + 64) + 4096
        );
    }
}
