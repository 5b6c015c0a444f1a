//! One whole generation at real size: the Nano transformer and the Wan2.2 VAE with random
//! weights drawn on the device, run through the engine's own request path (text tower
//! once per branch, the guided denoising loop, the video decode), timed end to end with
//! the whole run's peak memory and a sanity check of the video (and sound) it produces.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::{peak_memory, reset_peak_memory, wan22_vae_config, GenSpec};
use crate::engine::{Plugin, Silent};
use crate::io::weights::{WeightStore, Weights};
use crate::layers::profile::StageTime;
use crate::models::cosmos3::continuation::VideoCondition;
use crate::models::cosmos3::plugin::Cosmos3Plugin;
use crate::models::cosmos3::transformer::{Cosmos3Transformer, TransformerConfig};
use crate::models::cosmos3::vae::{AudioDecoder, AudioVaeConfig, WanDecoder, WanEncoder, WanVae};
use crate::models::cosmos3::{Cosmos3Request, Prompt, VideoInput};
use crate::Result;

#[derive(Debug, Clone)]
pub struct E2eReport {
    pub layers: usize,
    pub steps: usize,
    pub guidance: f64,
    /// Wall time of the request, from submission to pixels on the host.
    pub total_ms: f64,
    /// Wall time of the warm-up request (its steps in `E2eOptions::warmup_steps`), if any.
    pub warmup_ms: Option<f64>,
    /// The engine's own stage timings (text, denoise, decode), host clock.
    pub stages: Vec<(String, f64)>,
    /// Peak device memory during the request, resident weights included.
    pub peak_bytes: Option<usize>,
    /// Output `[1, 3, T, H, W]`.
    pub video: Vec<usize>,
    pub min: f32,
    pub max: f32,
    pub mean: f32,
    /// NaN or infinite pixels.
    pub non_finite: usize,
    /// With sound: the waveform `[1, 2, N]`, its largest magnitude and non-finite samples.
    pub audio: Option<(Vec<usize>, f32, usize)>,
    /// The video itself, on the host (for comparing precisions).
    pub pixels: Tensor,
    /// Device time per stage of the timed request, with `E2eOptions::profile`.
    pub profile: Option<Vec<StageTime>>,
}

/// What one end-to-end run does besides the model and preset.
#[derive(Debug, Clone, Copy)]
pub struct E2eOptions {
    pub steps: usize,
    /// Classifier-free guidance scale (two branches per step when above 1).
    pub guidance: f64,
    /// Build only this many of the config's layers.
    pub layers: Option<usize>,
    pub dtype: DType,
    /// Text to audio and video.
    pub sound: bool,
    /// Quantize the transformer at load (`--quantize fp8`).
    pub quantize: Option<crate::layers::fp8::Quantize>,
    /// FP8 attention in the W8A8 steps (`--fp8-attention`; needs `quantize`).
    pub fp8_attention: bool,
    /// Seed the device generator before drawing the weights (`None`: as it stands), so
    /// two runs can share their random weights.
    pub weight_seed: Option<u64>,
    /// Clean pixels the request is conditioned on (random, at the request size).
    pub conditioning: Conditioning,
    /// Steps of an untimed warm-up request at the same shapes before the timed one (0:
    /// none, the timed request pays every first use); see [`warmup_steps`].
    pub warmup_steps: usize,
    /// Profile the timed request stage by stage ([`crate::layers::profile`]).
    pub profile: bool,
}

/// Steps of the warm-up request that loads every kernel, library handle, plan and memory
/// pool the timed request uses: one step in bf16; with FP8 layers, enough steps for the
/// published step policy to run both activation precisions (3 + 1 + 3).
pub fn warmup_steps(steps: usize, quantized: bool) -> usize {
    let p = crate::layers::fp8::StepPolicy::PUBLISHED;
    if quantized {
        steps.min(p.first_steps + p.last_steps + 1)
    } else {
        steps.min(1)
    }
}

/// What an end-to-end request is conditioned on besides the text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Conditioning {
    #[default]
    Text,
    /// Image-to-video: a first frame, encoded by the VAE encoder.
    Image,
    /// Video continuation: a whole clip whose leading latent frames are kept.
    Video,
}

/// Builds the transformer of `config` (all its layers unless `layers` says fewer) and
/// decodes with the full VAE, then (after the warm-up request, if any) times one
/// `steps`-step request at `spec` and the config's base frame rate with guidance
/// `guidance`. With `sound`, the request is text to audio and video: sound tokens for the clip's duration join the generation tower and the
/// shipped audio decoder makes the waveform.
pub fn e2e_bench(
    device: &Device,
    config: &TransformerConfig,
    spec: GenSpec,
    opts: E2eOptions,
) -> Result<E2eReport> {
    let E2eOptions {
        steps,
        guidance,
        layers,
        dtype,
        sound,
        quantize,
        fp8_attention,
        weight_seed,
        conditioning,
        warmup_steps,
        profile,
    } = opts;
    if let Some(s) = weight_seed {
        device.set_seed(s)?;
    }
    let mut cfg = config.clone();
    let full = cfg.num_hidden_layers;
    cfg.num_hidden_layers = layers.unwrap_or(full).clamp(1, full);
    let acfg = AudioVaeConfig::default();
    if sound {
        // The shipped checkpoints generate sound in the audio decoder's latent width.
        cfg.sound_gen = true;
        cfg.sound_dim = Some(acfg.vocoder_input_dim);
    }
    let store = Arc::new(WeightStore::random_on_device(Path::new("bench-e2e")));
    let w = Weights::new(store, dtype, device);
    let single = crate::parallel::Group::single();
    let mut transformer =
        Cosmos3Transformer::new_quantized(&cfg, w.clone(), &single, single.clone(), quantize)?;
    if fp8_attention {
        transformer.enable_fp8_attention()?;
    }
    let vcfg = wan22_vae_config();
    let decoder = WanDecoder::new(&vcfg, &w.pp("vae"))?;
    let encoder = match conditioning {
        Conditioning::Text => None,
        _ => Some(WanEncoder::new(&vcfg, &w.pp("vae"))?),
    };
    let vae = WanVae {
        config: vcfg,
        decoder,
        encoder,
    };
    let mut plugin = Cosmos3Plugin::from_parts(transformer, vae, device.clone(), dtype)?;
    let [_, h, wd] = spec.latent;
    if sound {
        plugin = plugin.with_audio(AudioDecoder::new(&acfg, &w.pp("sound"))?);
    }
    let mut request = Cosmos3Request::new(
        Prompt::Tokens {
            pos: spec.text_ids(&cfg, 0),
            neg: spec.text_ids(&cfg, 17),
        },
        spec.frames(),
        h * 16,
        wd * 16,
    );
    request.fps = cfg.base_fps;
    request.steps = steps;
    request.guidance_scale = guidance;
    request.seed = 0;
    request.sound = sound;
    let pixels = |frames: usize| -> Result<Tensor> {
        Ok(Tensor::rand(
            -1f32,
            1.0,
            (1, 3, frames, h * 16, wd * 16),
            device,
        )?)
    };
    match conditioning {
        Conditioning::Text => {}
        Conditioning::Image => request.image = Some(pixels(1)?.squeeze(2)?),
        Conditioning::Video => {
            request.video = Some(VideoInput {
                frames: pixels(spec.frames())?,
                condition: VideoCondition::default(),
            })
        }
    }
    let warmup_ms = if warmup_steps > 0 {
        let mut warm = request.clone();
        warm.steps = warmup_steps;
        let start = Instant::now();
        plugin.step(&warm, &Silent)?.video.to_device(&Device::Cpu)?;
        Some(start.elapsed().as_secs_f64() * 1e3)
    } else {
        None
    };
    reset_peak_memory(device); // waits for the model build to finish
    if profile {
        crate::layers::profile::start();
    }
    let start = Instant::now();
    let out = plugin.step(&request, &Silent);
    if profile {
        crate::layers::profile::mark(device, "after the last forward (decode)");
    }
    let out = out?;
    let video = out.video.to_device(&Device::Cpu)?;
    let total_ms = start.elapsed().as_secs_f64() * 1e3;
    let profile = if profile {
        Some(crate::layers::profile::stop()?)
    } else {
        None
    };
    let peak_bytes = peak_memory(device);
    let flat = video.flatten_all()?;
    // NaN fails both comparisons, ±inf one of them.
    let finite = (flat.ge(f32::MIN)?.to_dtype(DType::F32)?
        * flat.le(f32::MAX)?.to_dtype(DType::F32)?)?
    .sum_all()?;
    let n = flat.elem_count();
    let non_finite = n - finite.to_scalar::<f32>()? as usize;
    let stat = |t: Tensor| -> Result<f32> { Ok(t.to_scalar::<f32>()?) };
    let audio = match &out.audio {
        Some((wave, _)) => {
            let v: Vec<f32> = wave.flatten_all()?.to_vec1()?;
            let peak = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            let bad = v.iter().filter(|x| !x.is_finite()).count();
            Some((wave.dims().to_vec(), peak, bad))
        }
        None => None,
    };
    Ok(E2eReport {
        layers: cfg.num_hidden_layers,
        steps,
        guidance,
        total_ms,
        warmup_ms,
        stages: out
            .timings
            .iter()
            .map(|(k, d)| (k.clone(), d.as_secs_f64() * 1e3))
            .collect(),
        peak_bytes,
        video: video.dims().to_vec(),
        min: stat(flat.min(0)?)?,
        max: stat(flat.max(0)?)?,
        mean: stat(flat.mean(0)?)?,
        non_finite,
        audio,
        pixels: video,
        profile,
    })
}

#[cfg(test)]
mod tests {
    use super::warmup_steps;

    #[test]
    fn warmup_runs_every_activation_precision_of_the_step_policy() {
        // bf16: one step loads everything; FP8: the published policy's 3 W8A16 steps, one
        // W8A8 step and 3 W8A16 steps again, never more than the request has.
        assert_eq!(warmup_steps(35, false), 1);
        assert_eq!(warmup_steps(35, true), 7);
        assert_eq!(warmup_steps(4, true), 4);
        assert_eq!(warmup_steps(0, false), 0);
    }
}
