//! A random-weights Cosmos3 checkpoint on disk in the published layout, to measure loading
//! a real checkpoint from files: `model_index.json`, `transformer/` in 5 GB
//! `diffusion_pytorch_model-0000i-of-0000n.safetensors` shards with their
//! `diffusion_pytorch_model.safetensors.index.json`, `vae/`, `sound_tokenizer/`,
//! `text_tokenizer/` (the bundled Qwen tokenizer, as the demo checkpoint has it) and
//! `scheduler/scheduler_config.json`, every weight bf16.
//!
//! The tensor list comes from building each model against a shapes-only store (nothing is
//! allocated), so the files hold exactly the keys and shapes the loader reads. Values follow
//! the synthetic-weight rule (norm weights ones, biases zeros, the rest of variance
//! 1/fan_in, here uniform) and are drawn while writing, one tensor in memory at a time.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use half::bf16;
use rayon::prelude::*;

use crate::io::json::parse_json;
use crate::io::shards::{write_sharded, TensorSpec, PUBLISHED_SHARD_BYTES};
use crate::io::weights::{Init, WeightStore, Weights};
use crate::models::cosmos3::demo;
use crate::models::cosmos3::processor::write_qwen_tokenizer;
use crate::models::cosmos3::transformer::{Cosmos3Transformer, TransformerConfig};
use crate::models::cosmos3::vae::{
    AudioDecoder, AudioVaeConfig, VaeConfig, WanDecoder, WanEncoder,
};
use crate::{Error, Result};

/// Which architecture the checkpoint has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointSize {
    /// The demo checkpoint's tiny models (a few MB; for tests).
    Tiny,
    /// Cosmos3-Nano: the Nano transformer (15.2 B parameters, about 30 GB in bf16), the
    /// Wan2.2 VAE and the shipped sound tokenizer.
    Nano,
}

#[derive(Debug, Clone)]
pub struct CheckpointOptions {
    pub size: CheckpointSize,
    /// Largest shard; the published checkpoints use [`PUBLISHED_SHARD_BYTES`].
    pub max_shard_bytes: u64,
    pub seed: u64,
}

impl CheckpointOptions {
    pub fn new(size: CheckpointSize) -> Self {
        Self {
            size,
            max_shard_bytes: PUBLISHED_SHARD_BYTES,
            seed: 0,
        }
    }
}

/// One weight folder: its name, config.json text and the tensors its model reads.
struct Component {
    name: &'static str,
    config: String,
    tensors: Vec<TensorSpec>,
}

/// A diffusers config.json: the config's fields plus the class that reads it.
fn config_json<T: serde::Serialize>(class: &str, cfg: &T) -> Result<String> {
    let mut v = serde_json::to_value(cfg).map_err(|e| Error::msg(e.to_string()))?;
    if let Some(o) = v.as_object_mut() {
        o.insert("_class_name".into(), class.into());
        o.insert("_diffusers_version".into(), "0.42.1".into());
    }
    serde_json::to_string_pretty(&v).map_err(|e| Error::msg(e.to_string()))
}

/// The tensors `build` asks for, all bf16.
fn requested(build: impl FnOnce(&Weights) -> Result<()>) -> Result<Vec<TensorSpec>> {
    let store = Arc::new(WeightStore::shapes_only(Path::new("(shapes)")));
    build(&Weights::new(store.clone(), DType::BF16, &Device::Cpu))?;
    Ok(store
        .requested()
        .into_iter()
        .map(|(name, shape)| TensorSpec {
            name,
            dtype: DType::BF16,
            shape,
        })
        .collect())
}

fn components(size: CheckpointSize) -> Result<Vec<Component>> {
    let (transformer, vae, audio) = match size {
        CheckpointSize::Tiny => {
            let file = Path::new("transformer/config.json");
            let t: TransformerConfig = parse_json(file, demo::TRANSFORMER)?;
            let text = demo::vae_config_text();
            let v: VaeConfig = parse_json(Path::new("vae/config.json"), &text)?;
            let a: AudioVaeConfig = parse_json(
                Path::new("sound_tokenizer/config.json"),
                demo::SOUND_TOKENIZER,
            )?;
            (
                (t, demo::TRANSFORMER.to_string()),
                (v, text),
                (a, demo::SOUND_TOKENIZER.to_string()),
            )
        }
        CheckpointSize::Nano => {
            let t = TransformerConfig::nano();
            let v = super::wan22_vae_config();
            let a = AudioVaeConfig::default();
            let texts = (
                config_json("Cosmos3OmniTransformer", &t)?,
                config_json("AutoencoderKLWan", &v)?,
                config_json("Cosmos3AVAEAudioTokenizer", &a)?,
            );
            ((t, texts.0), (v, texts.1), (a, texts.2))
        }
    };
    Ok(vec![
        Component {
            name: "transformer",
            tensors: transformer_tensors(&transformer.0)?,
            config: transformer.1,
        },
        Component {
            name: "vae",
            tensors: requested(|w| {
                WanDecoder::new(&vae.0, w)?;
                WanEncoder::new(&vae.0, w).map(drop)
            })?,
            config: vae.1,
        },
        Component {
            name: "sound_tokenizer",
            tensors: requested(|w| AudioDecoder::new(&audio.0, w).map(drop))?,
            config: audio.1,
        },
    ])
}

/// The transformer's tensors: one layer is built (the fused projections of a shapes-only
/// build still allocate) and its `layers.0.` names repeated for every layer; plus the
/// `lm_head` and final `norm` the published files carry and generation never reads.
fn transformer_tensors(cfg: &TransformerConfig) -> Result<Vec<TensorSpec>> {
    let mut one = cfg.clone();
    one.num_hidden_layers = 1;
    let built = requested(|w| Cosmos3Transformer::new(&one, w.clone()).map(drop))?;
    let mut out = Vec::new();
    for s in built {
        match s.name.strip_prefix("layers.0.") {
            Some(rest) => out.extend((0..cfg.num_hidden_layers).map(|i| TensorSpec {
                name: format!("layers.{i}.{rest}"),
                ..s.clone()
            })),
            None => out.push(s),
        }
    }
    let h = cfg.hidden_size;
    for (name, shape) in [
        ("lm_head.weight", vec![cfg.vocab_size, h]),
        ("norm.weight", vec![h]),
    ] {
        if !out.iter().any(|s| s.name == name) {
            out.push(TensorSpec {
                name: name.into(),
                dtype: DType::BF16,
                shape,
            });
        }
    }
    Ok(out)
}

/// splitmix64: a counter-based stream, so any chunk of a tensor is drawn independently.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One tensor's random bf16 bytes, drawn in parallel chunks keyed by seed, name and offset.
fn fill_random(seed: u64, spec: &TensorSpec, buf: &mut [u8]) -> Result<()> {
    let value = |bits: u64, half_width: f32| {
        let u = (bits >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
        bf16::from_f32((2.0 * u - 1.0) * half_width).to_le_bytes()
    };
    let constant = |buf: &mut [u8], v: f32| {
        let b = bf16::from_f32(v).to_le_bytes();
        buf.par_chunks_mut(2).for_each(|c| c.copy_from_slice(&b));
    };
    match Init::of(&spec.name, &spec.shape) {
        Init::Ones => constant(buf, 1.0),
        Init::Zeros => constant(buf, 0.0),
        Init::Normal(std) => {
            // Uniform on ±std·√3 has the variance of N(0, std²).
            let half_width = (std * 3f64.sqrt()) as f32;
            let key = spec
                .name
                .bytes()
                .fold(mix(seed ^ 0x5EED), |h, b| mix(h ^ b as u64));
            const CHUNK: usize = 1 << 16;
            buf.par_chunks_mut(2 * CHUNK)
                .enumerate()
                .for_each(|(c, chunk)| {
                    let mut state = mix(key ^ c as u64);
                    for v in chunk.chunks_mut(2) {
                        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                        v.copy_from_slice(&value(mix(state), half_width));
                    }
                });
        }
    }
    Ok(())
}

/// Writes the checkpoint into `dir` (created; must not exist or be empty), through a sibling
/// folder renamed into place at the end, so an interrupted run leaves nothing half-written
/// at `dir`. `progress(done, total)` is told the bytes of weights written.
pub fn write_random_checkpoint(
    dir: &Path,
    opts: &CheckpointOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<()> {
    let exists_nonempty = dir.exists()
        && std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .next()
            .is_some();
    if exists_nonempty {
        return Err(Error::invalid(
            "out",
            format!("{} exists and is not empty", dir.display()),
        ));
    }
    let name = dir
        .file_name()
        .ok_or_else(|| Error::invalid("out", "needs a folder name"))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = parent.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = write_into(&tmp, opts, progress);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        std::fs::remove_dir(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))
}

fn write_into(
    root: &Path,
    opts: &CheckpointOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<()> {
    let mkdir = |p: &Path| std::fs::create_dir_all(p).map_err(|e| Error::io(p, e));
    let write = |p: &Path, text: &str| std::fs::write(p, text).map_err(|e| Error::io(p, e));
    mkdir(root)?;
    let parts = components(opts.size)?;
    let total: u64 = parts
        .iter()
        .flat_map(|c| &c.tensors)
        .map(TensorSpec::bytes)
        .sum();
    let done = std::sync::atomic::AtomicU64::new(0);
    progress(0, total);
    write(&root.join("model_index.json"), demo::MODEL_INDEX)?;
    for (i, c) in parts.iter().enumerate() {
        let dir = root.join(c.name);
        mkdir(&dir)?;
        write(&dir.join("config.json"), &c.config)?;
        let seed = opts.seed.wrapping_add(i as u64);
        write_sharded(
            &dir,
            "diffusion_pytorch_model",
            &c.tensors,
            opts.max_shard_bytes,
            &|spec, buf| fill_random(seed, spec, buf),
            &|bytes| {
                let d = done.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed) + bytes;
                progress(d, total);
            },
        )?;
    }
    let sched = root.join("scheduler");
    mkdir(&sched)?;
    write(&sched.join("scheduler_config.json"), demo::SCHEDULER)?;
    write_qwen_tokenizer(&root.join("text_tokenizer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nano_transformer_is_the_published_fifteen_billion_in_seven_shards() {
        let parts = components(CheckpointSize::Nano).unwrap();
        let t = &parts[0];
        let params: u64 = t.tensors.iter().map(|s| s.bytes() / 2).sum();
        assert_eq!(params, TransformerConfig::nano().parameter_count());
        let plan = crate::io::shards::plan_shards(&t.tensors, PUBLISHED_SHARD_BYTES);
        assert_eq!(plan.len(), 7);
    }
}
