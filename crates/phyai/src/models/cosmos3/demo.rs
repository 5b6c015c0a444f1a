//! The built-in demo checkpoint: the published Cosmos3 layout with tiny RANDOM weights and
//! the real Qwen tokenizer, so the whole pipeline runs on a fresh machine with no download.
//! Its videos are noise-like; real output needs the real weights.
//!
//! The weights are made by building each model against a synthetic weight store (seeded
//! draws recorded on first use) and saving what it asked for, so the files always match
//! the loader's key names and shapes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};

use super::processor::write_qwen_tokenizer;
use super::transformer::{Cosmos3Transformer, TransformerConfig};
use super::vae::{AudioDecoder, AudioVaeConfig, VaeConfig, WanDecoder, WanEncoder};
use crate::io::json::parse_json;
use crate::io::weights::{WeightStore, Weights};
use crate::{Error, Result};

/// Bumped whenever the demo's configs or weight recipe change, so caches are rebuilt.
const DEMO_VERSION: &str = "demo-v1";
const SEED: u64 = 20_251_124;

pub(crate) const MODEL_INDEX: &str = r#"{
  "_class_name": "Cosmos3OmniPipeline",
  "_diffusers_version": "0.42.1",
  "default_use_system_prompt": true,
  "enable_safety_checker": false,
  "safety_checker": [null, null],
  "scheduler": ["diffusers", "UniPCMultistepScheduler"],
  "sound_tokenizer": ["diffusers", "Cosmos3AVAEAudioTokenizer"],
  "text_tokenizer": ["transformers", "PreTrainedTokenizerFast"],
  "transformer": ["diffusers", "Cosmos3OmniTransformer"],
  "use_native_flow_schedule": false,
  "vae": ["diffusers", "AutoencoderKLWan"]
}
"#;

/// Nano's architecture shrunk (64 wide, 2 layers, 8 query / 4 key-value heads so tensor
/// parallelism up to 4 can be tried) with the real 151,936-token vocabulary.
pub(crate) const TRANSFORMER: &str = r#"{
  "_class_name": "Cosmos3OmniTransformer",
  "_diffusers_version": "0.42.1",
  "attention_bias": false,
  "attention_dropout": 0.0,
  "base_fps": 24,
  "enable_fps_modulation": true,
  "head_dim": 16,
  "hidden_act": "silu",
  "hidden_size": 64,
  "intermediate_size": 128,
  "latent_channel": 48,
  "latent_patch_size": 2,
  "num_attention_heads": 8,
  "num_hidden_layers": 2,
  "num_key_value_heads": 4,
  "patch_latent_dim": 192,
  "qk_norm_for_text": true,
  "rms_norm_eps": 1e-06,
  "rope_scaling": {"mrope_section": [4, 2, 2], "rope_type": "default"},
  "rope_theta": 5000000.0,
  "sound_dim": 64,
  "sound_gen": true,
  "sound_latent_fps": 25.0,
  "timestep_scale": 0.001,
  "unified_3d_mrope_reset_spatial_ids": true,
  "unified_3d_mrope_temporal_modality_margin": 15000,
  "use_und_k_norm_for_gen": false,
  "vocab_size": 151936
}
"#;

/// Wan2.2's 48-channel residual VAE with narrow layers.
const VAE: &str = r#"{
  "_class_name": "AutoencoderKLWan",
  "_diffusers_version": "0.42.1",
  "attn_scales": [],
  "base_dim": 8,
  "decoder_base_dim": 12,
  "dim_mult": [1, 2, 4, 4],
  "dropout": 0.0,
  "in_channels": 12,
  "is_residual": true,
  "num_res_blocks": 2,
  "out_channels": 12,
  "patch_size": 2,
  "scale_factor_spatial": 16,
  "scale_factor_temporal": 4,
  "temperal_downsample": [false, true, true],
  "z_dim": 48,
  "latents_mean": [LATENTS_MEAN],
  "latents_std": [LATENTS_STD]
}
"#;

pub(crate) const SOUND_TOKENIZER: &str = r#"{
  "_class_name": "Cosmos3AVAEAudioTokenizer",
  "_diffusers_version": "0.42.1",
  "dec_dim": 2,
  "encoder_enabled": false
}
"#;

/// The real Cosmos3 scheduler settings.
pub(crate) const SCHEDULER: &str = r#"{
  "_class_name": "UniPCMultistepScheduler",
  "_diffusers_version": "0.42.1",
  "final_sigmas_type": "zero",
  "flow_shift": 1.0,
  "lower_order_final": true,
  "num_train_timesteps": 1000,
  "prediction_type": "flow_prediction",
  "sigma_max": 200.0,
  "sigma_min": 0.147,
  "solver_order": 2,
  "solver_type": "bh2",
  "timestep_spacing": "linspace",
  "use_flow_sigmas": true,
  "use_karras_sigmas": true
}
"#;

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

fn mkdir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))
}

/// Builds a component against a synthetic store and saves the weights it asked for.
fn save_component(
    dir: &Path,
    config_text: &str,
    seed: u64,
    build: impl FnOnce(&Path, &str, &Weights) -> Result<()>,
) -> Result<()> {
    mkdir(dir)?;
    let cfg_file = dir.join("config.json");
    write(&cfg_file, config_text)?;
    let store = Arc::new(WeightStore::synthetic(dir, seed));
    let w = Weights::new(store.clone(), DType::F32, &Device::Cpu);
    build(&cfg_file, config_text, &w)?;
    store.save_synthetic(
        &dir.join("diffusion_pytorch_model.safetensors"),
        DType::BF16,
    )
}

/// The demo VAE's config.json, with per-channel latent statistics of a plausible spread
/// (the real ones are learnt).
pub(crate) fn vae_config_text() -> String {
    let mean: Vec<String> = (0..48)
        .map(|i| format!("{:.4}", ((i * 37 % 17) as f64 - 8.0) / 10.0))
        .collect();
    let std: Vec<String> = (0..48)
        .map(|i| format!("{:.4}", 1.0 + (i * 13 % 11) as f64 / 10.0))
        .collect();
    VAE.replace("LATENTS_MEAN", &mean.join(", "))
        .replace("LATENTS_STD", &std.join(", "))
}

/// Writes the demo checkpoint into `dir` (created; must be absent or empty).
pub fn write_demo_checkpoint(dir: &Path) -> Result<()> {
    if dir.exists()
        && std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .next()
            .is_some()
    {
        return Err(Error::invalid(
            "demo-checkpoint",
            format!("{} exists and is not empty", dir.display()),
        ));
    }
    mkdir(dir)?;
    write(&dir.join("model_index.json"), MODEL_INDEX)?;

    save_component(
        &dir.join("transformer"),
        TRANSFORMER,
        SEED,
        |file, text, w| {
            let cfg: TransformerConfig = parse_json(file, text)?;
            cfg.validate(file)?;
            Cosmos3Transformer::new(&cfg, w.clone())?;
            Ok(())
        },
    )?;

    let vae_text = vae_config_text();
    save_component(&dir.join("vae"), &vae_text, SEED + 1, |file, text, w| {
        let cfg: VaeConfig = parse_json(file, text)?;
        cfg.validate(file)?;
        WanDecoder::new(&cfg, w)?;
        WanEncoder::new(&cfg, w)?;
        Ok(())
    })?;

    save_component(
        &dir.join("sound_tokenizer"),
        SOUND_TOKENIZER,
        SEED + 2,
        |file, text, w| {
            let cfg: AudioVaeConfig = parse_json(file, text)?;
            cfg.validate(file)?;
            AudioDecoder::new(&cfg, w)?;
            Ok(())
        },
    )?;

    let sched = dir.join("scheduler");
    mkdir(&sched)?;
    write(&sched.join("scheduler_config.json"), SCHEDULER)?;
    write_qwen_tokenizer(&dir.join("text_tokenizer"))?;
    Ok(())
}

/// Where the demo checkpoint is cached: `$PHYAI_CACHE`, else `$XDG_CACHE_HOME/phyai`, else
/// `~/.cache/phyai`, else a folder in the system temp dir.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PHYAI_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("phyai");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".cache").join("phyai");
    }
    std::env::temp_dir().join("phyai-cache")
}

/// The cached demo checkpoint, made on first use (written aside, then renamed into place,
/// so an interrupted run never leaves a half-written checkpoint behind).
pub fn ensure_demo_checkpoint() -> Result<PathBuf> {
    let root = cache_dir();
    let dir = root.join(DEMO_VERSION);
    if dir.join("model_index.json").is_file() {
        return Ok(dir);
    }
    mkdir(&root)?;
    let tmp = root.join(format!("{DEMO_VERSION}.partial-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    write_demo_checkpoint(&tmp)?;
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(dir),
        // Another process finished first: use theirs.
        Err(_) if dir.join("model_index.json").is_file() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(dir)
        }
        Err(e) => Err(Error::io(&dir, e)),
    }
}
