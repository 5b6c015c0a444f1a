//! Configs of the two decoders: `vae/config.json` (the Wan video VAE, diffusers
//! `AutoencoderKLWan` arguments, spelling included: `temperal_downsample`) and
//! `sound_tokenizer/config.json` (the Cosmos3 audio VAE). Unknown keys are tolerated; the
//! defaults are diffusers' so a sparse config means what it means there.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

fn default_base_dim() -> usize {
    96
}
fn default_z_dim() -> usize {
    16
}
fn default_dim_mult() -> Vec<usize> {
    vec![1, 2, 4, 4]
}
fn default_num_res_blocks() -> usize {
    2
}
fn default_temperal_downsample() -> Vec<bool> {
    vec![false, true, true]
}
fn default_rgb() -> usize {
    3
}
fn default_scale_t() -> Option<usize> {
    Some(4)
}
fn default_scale_s() -> Option<usize> {
    Some(8)
}

/// The Wan video VAE. Only the Wan2.2 residual variant (`is_residual: true`, attention in the
/// mid block only) is implemented; `validate` rejects the rest instead of decoding garbage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "default_base_dim")]
    pub base_dim: usize,
    /// Decoder width; `None` means `base_dim`.
    #[serde(default)]
    pub decoder_base_dim: Option<usize>,
    #[serde(default = "default_z_dim")]
    pub z_dim: usize,
    #[serde(default = "default_dim_mult")]
    pub dim_mult: Vec<usize>,
    #[serde(default = "default_num_res_blocks")]
    pub num_res_blocks: usize,
    #[serde(default)]
    pub attn_scales: Vec<f64>,
    /// Per encoder stage: halve time there. The decoder uses it reversed.
    #[serde(default = "default_temperal_downsample")]
    pub temperal_downsample: Vec<bool>,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default)]
    pub latents_mean: Vec<f64>,
    #[serde(default)]
    pub latents_std: Vec<f64>,
    #[serde(default)]
    pub is_residual: bool,
    /// Pixel channels after patchify (3·p² for patch size p).
    #[serde(default = "default_rgb")]
    pub in_channels: usize,
    #[serde(default = "default_rgb")]
    pub out_channels: usize,
    #[serde(default)]
    pub patch_size: Option<usize>,
    #[serde(default = "default_scale_t")]
    pub scale_factor_temporal: Option<usize>,
    #[serde(default = "default_scale_s")]
    pub scale_factor_spatial: Option<usize>,
}

impl VaeConfig {
    pub fn decoder_dim(&self) -> usize {
        self.decoder_base_dim.unwrap_or(self.base_dim)
    }

    pub fn patch(&self) -> usize {
        self.patch_size.unwrap_or(1)
    }

    /// Pixels per latent pixel along H and W: 2 per down stage times the patch size.
    pub fn spatial_scale(&self) -> usize {
        (1usize << (self.dim_mult.len().saturating_sub(1))) * self.patch()
    }

    pub fn temporal_scale(&self) -> usize {
        1usize << self.temperal_downsample.iter().filter(|&&t| t).count()
    }

    pub fn validate(&self, file: &Path) -> Result<()> {
        let err = |key: &str, msg: String| Err(Error::config(file, key, msg));
        if !self.is_residual {
            return err(
                "is_residual",
                "only the Wan2.2 residual VAE (is_residual: true) is supported".into(),
            );
        }
        if !self.attn_scales.is_empty() {
            return err(
                "attn_scales",
                "attention outside the mid block is not supported".into(),
            );
        }
        if self.base_dim == 0 || self.decoder_dim() == 0 || self.z_dim == 0 {
            return err("base_dim", "widths must be positive".into());
        }
        if self.dim_mult.len() < 2 || self.dim_mult.contains(&0) {
            return err(
                "dim_mult",
                format!("need ≥ 2 positive stages, got {:?}", self.dim_mult),
            );
        }
        if self.temperal_downsample.len() != self.dim_mult.len() - 1 {
            return err(
                "temperal_downsample",
                format!(
                    "needs one entry per down stage ({}), got {}",
                    self.dim_mult.len() - 1,
                    self.temperal_downsample.len()
                ),
            );
        }
        let p = self.patch();
        if p == 0 {
            return err("patch_size", "must be ≥ 1".into());
        }
        for (key, ch) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
        ] {
            if ch != 3 * p * p {
                return err(key, format!("expected 3·patch² = {}, got {ch}", 3 * p * p));
            }
        }
        for (key, v) in [
            ("latents_mean", &self.latents_mean),
            ("latents_std", &self.latents_std),
        ] {
            if v.len() != self.z_dim {
                return err(
                    key,
                    format!("needs z_dim = {} values, got {}", self.z_dim, v.len()),
                );
            }
        }
        if self.latents_std.iter().any(|s| !s.is_finite() || *s == 0.0) {
            return err("latents_std", "values must be finite and non-zero".into());
        }
        if let Some(s) = self.scale_factor_spatial {
            if s != self.spatial_scale() {
                return err(
                    "scale_factor_spatial",
                    format!(
                        "{s} disagrees with the architecture ({})",
                        self.spatial_scale()
                    ),
                );
            }
        }
        if let Some(t) = self.scale_factor_temporal {
            if t != self.temporal_scale() {
                return err(
                    "scale_factor_temporal",
                    format!(
                        "{t} disagrees with the architecture ({})",
                        self.temporal_scale()
                    ),
                );
            }
        }
        Ok(())
    }
}

fn default_sampling_rate() -> usize {
    48000
}
fn default_vocoder_input_dim() -> usize {
    64
}
fn default_dec_dim() -> usize {
    320
}
fn default_dec_c_mults() -> Vec<usize> {
    vec![1, 2, 4, 8, 16]
}
fn default_dec_strides() -> Vec<usize> {
    vec![2, 4, 5, 6, 8]
}
fn default_dec_out_channels() -> usize {
    2
}
fn default_true() -> bool {
    true
}
fn default_oobleck() -> String {
    "oobleck".into()
}
fn default_snakebeta() -> String {
    "snakebeta".into()
}

/// The Cosmos3 audio VAE (`sound_tokenizer`). Only the decoder half is used at inference:
/// latent `[B, vocoder_input_dim, T]` → waveform `[B, dec_out_channels, T·∏dec_strides]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AudioVaeConfig {
    #[serde(default = "default_sampling_rate")]
    pub sampling_rate: usize,
    #[serde(default = "default_vocoder_input_dim")]
    pub vocoder_input_dim: usize,
    #[serde(default = "default_dec_dim")]
    pub dec_dim: usize,
    #[serde(default = "default_dec_c_mults")]
    pub dec_c_mults: Vec<usize>,
    #[serde(default = "default_dec_strides")]
    pub dec_strides: Vec<usize>,
    #[serde(default = "default_dec_out_channels")]
    pub dec_out_channels: usize,
    /// Latent frames per sample; `None` means `∏dec_strides`.
    #[serde(default)]
    pub hop_size: Option<usize>,
    #[serde(default = "default_oobleck")]
    pub dec_type: String,
    #[serde(default = "default_true")]
    pub dec_use_snake: bool,
    #[serde(default)]
    pub dec_final_tanh: bool,
    #[serde(default)]
    pub dec_anti_aliasing: bool,
    #[serde(default)]
    pub dec_use_nearest_upsample: bool,
    #[serde(default)]
    pub dec_use_tanh_at_final: bool,
    #[serde(default = "default_snakebeta")]
    pub activation: String,
    #[serde(default = "default_true")]
    pub snake_logscale: bool,
    #[serde(default)]
    pub anti_aliasing: bool,
}

impl Default for AudioVaeConfig {
    /// The shipped sound tokenizer's decoder (every field at its default).
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

impl AudioVaeConfig {
    /// Waveform samples per latent frame (1920 for the shipped model: 2·4·5·6·8).
    pub fn upsampling(&self) -> usize {
        self.dec_strides.iter().product()
    }

    pub fn hop(&self) -> usize {
        self.hop_size.unwrap_or_else(|| self.upsampling())
    }

    pub fn validate(&self, file: &Path) -> Result<()> {
        let err = |key: &str, msg: String| Err(Error::config(file, key, msg));
        if self.dec_type != "oobleck" {
            return err(
                "dec_type",
                format!("only \"oobleck\" is supported, got {:?}", self.dec_type),
            );
        }
        if self.activation != "snakebeta" || !self.snake_logscale || !self.dec_use_snake {
            return err(
                "activation",
                "only the log-scale SnakeBeta decoder is supported".into(),
            );
        }
        if self.dec_final_tanh
            || self.dec_anti_aliasing
            || self.dec_use_nearest_upsample
            || self.dec_use_tanh_at_final
            || self.anti_aliasing
        {
            return err(
                "dec_final_tanh",
                "only the shipped Oobleck decoder (no tanh, no anti-aliasing, transposed-conv upsampling) is supported"
                    .into(),
            );
        }
        if self.dec_strides.is_empty() || self.dec_strides.contains(&0) {
            return err(
                "dec_strides",
                format!("need positive strides, got {:?}", self.dec_strides),
            );
        }
        if self.dec_c_mults.len() != self.dec_strides.len() || self.dec_c_mults.contains(&0) {
            return err(
                "dec_c_mults",
                format!(
                    "needs one positive multiplier per stride ({}), got {:?}",
                    self.dec_strides.len(),
                    self.dec_c_mults
                ),
            );
        }
        if self.dec_dim == 0 || self.vocoder_input_dim == 0 || self.dec_out_channels == 0 {
            return err("dec_dim", "widths must be positive".into());
        }
        if self.sampling_rate == 0 {
            return err("sampling_rate", "must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wan22(extra: serde_json::Value) -> VaeConfig {
        let mut v = serde_json::json!({
            "base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "is_residual": true,
            "in_channels": 12, "out_channels": 12, "patch_size": 2,
            "scale_factor_spatial": 16, "scale_factor_temporal": 4,
            "latents_mean": vec![0.0; 48], "latents_std": vec![1.0; 48],
            "some_future_key": 1,
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn wan22_config_validates_and_derives_scales() {
        let c = wan22(serde_json::json!({}));
        c.validate(Path::new("vae/config.json")).unwrap();
        assert_eq!((c.spatial_scale(), c.temporal_scale()), (16, 4));
        assert_eq!(c.temperal_downsample, vec![false, true, true]);
        assert_eq!(c.decoder_dim(), 256);
    }

    #[test]
    fn bad_vae_configs_name_the_key() {
        let f = Path::new("vae/config.json");
        for (extra, key) in [
            (serde_json::json!({"is_residual": false}), "is_residual"),
            (
                serde_json::json!({"latents_std": [1.0, 1.0, 1.0]}),
                "latents_std",
            ),
            (
                serde_json::json!({"scale_factor_spatial": 8}),
                "scale_factor_spatial",
            ),
            (
                serde_json::json!({"temperal_downsample": [true]}),
                "temperal_downsample",
            ),
            (serde_json::json!({"in_channels": 3}), "in_channels"),
        ] {
            match wan22(extra).validate(f) {
                Err(Error::Config { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn audio_defaults_are_the_shipped_decoder() {
        let c: AudioVaeConfig = serde_json::from_str("{}").unwrap();
        c.validate(Path::new("sound_tokenizer/config.json"))
            .unwrap();
        assert_eq!(
            (c.upsampling(), c.hop(), c.sampling_rate),
            (1920, 1920, 48000)
        );
        let bad: AudioVaeConfig = serde_json::from_str(r#"{"dec_final_tanh": true}"#).unwrap();
        assert!(bad.validate(Path::new("x")).is_err());
    }
}
