//! One whole transfer request at real size: the random-weight Nano transformer and Wan2.2
//! VAE (encoder and decoder), an edge control clip as long as the preset's video, run
//! through the plugin's transfer path (controls encoded per chunk, three-branch guidance,
//! chunks decoded, re-encoded and stitched) and timed end to end like [`super::e2e`].

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::{peak_memory, reset_peak_memory, wan22_vae_config, E2eReport, GenSpec};
use crate::engine::{Plugin, Silent};
use crate::io::weights::{WeightStore, Weights};
use crate::models::cosmos3::plugin::Cosmos3Plugin;
use crate::models::cosmos3::transformer::{Cosmos3Transformer, TransformerConfig};
use crate::models::cosmos3::vae::{WanDecoder, WanEncoder, WanVae};
use crate::models::cosmos3::{Control, Cosmos3Request, Hint, Prompt, TransferInput};
use crate::Result;

/// What one transfer run does besides the model and preset.
#[derive(Debug, Clone, Copy)]
pub struct TransferOptions {
    pub steps: usize,
    /// Text guidance scale (the unconditional branch runs above 1).
    pub guidance: f64,
    /// Control guidance scale (the control-free branch runs when it is not 1).
    pub control_guidance: f64,
    /// Frames per chunk (`None`: the whole clip in one chunk, the reference's default).
    pub chunk_frames: Option<usize>,
    pub conditional_frames: usize,
    /// Build only this many of the config's layers.
    pub layers: Option<usize>,
    pub dtype: DType,
    /// Quantize the transformer at load (`--quantize fp8`).
    pub quantize: Option<crate::layers::fp8::Quantize>,
    /// FP8 attention in the W8A8 steps (`--fp8-attention`; needs `quantize`).
    pub fp8_attention: bool,
}

/// A synthetic edge map `[1, 3, F, H, W]` in {−1, 1}: diagonal stripes drifting by two
/// pixels a frame (its content does not change the cost; it keeps the encoder's input
/// realistic).
pub fn edge_clip(frames: usize, height: usize, width: usize) -> Result<Tensor> {
    let plane = height * width;
    let mut v = vec![0f32; 3 * frames * plane];
    for f in 0..frames {
        for y in 0..height {
            for x in 0..width {
                let on = ((x + y + 2 * f) / 8) % 6 == 0;
                let level = if on { 1.0 } else { -1.0 };
                for c in 0..3 {
                    v[(c * frames + f) * plane + y * width + x] = level;
                }
            }
        }
    }
    Ok(Tensor::from_vec(
        v,
        (1, 3, frames, height, width),
        &Device::Cpu,
    )?)
}

/// Builds the model of `config` (all its layers unless `opts.layers` says fewer) with the
/// full VAE, then times one edge transfer of the preset's length and size.
pub fn transfer_bench(
    device: &Device,
    config: &TransformerConfig,
    spec: GenSpec,
    opts: TransferOptions,
) -> Result<E2eReport> {
    let mut cfg = config.clone();
    let full = cfg.num_hidden_layers;
    cfg.num_hidden_layers = opts.layers.unwrap_or(full).clamp(1, full);
    let store = Arc::new(WeightStore::random_on_device(Path::new("bench-transfer")));
    let w = Weights::new(store, opts.dtype, device);
    let single = crate::parallel::Group::single();
    let mut transformer =
        Cosmos3Transformer::new_quantized(&cfg, w.clone(), &single, single.clone(), opts.quantize)?;
    if opts.fp8_attention {
        transformer.enable_fp8_attention()?;
    }
    let vcfg = wan22_vae_config();
    let decoder = WanDecoder::new(&vcfg, &w.pp("vae"))?;
    let encoder = WanEncoder::new(&vcfg, &w.pp("vae_encoder"))?;
    let vae = WanVae {
        config: vcfg,
        decoder,
        encoder: Some(encoder),
    };
    let mut plugin = Cosmos3Plugin::from_parts(transformer, vae, device.clone(), opts.dtype)?;
    let [_, h, wd] = spec.latent;
    let (height, width) = (h * 16, wd * 16);
    let mut transfer = TransferInput::new(vec![Control {
        hint: Hint::Edge,
        frames: edge_clip(spec.frames(), height, width)?,
    }]);
    transfer.chunk_frames = opts.chunk_frames;
    transfer.conditional_frames = opts.conditional_frames;
    transfer.control_guidance = opts.control_guidance;
    let mut request = Cosmos3Request::new(
        Prompt::Tokens {
            pos: spec.text_ids(&cfg, 0),
            neg: spec.text_ids(&cfg, 17),
        },
        spec.frames(),
        height,
        width,
    );
    request.fps = cfg.base_fps;
    request.steps = opts.steps;
    request.guidance_scale = opts.guidance;
    request.seed = 0;
    request.transfer = Some(transfer);
    reset_peak_memory(device); // waits for the model build to finish
    let start = Instant::now();
    let out = plugin.step(&request, &Silent)?;
    let video = out.video.to_device(&Device::Cpu)?;
    let total_ms = start.elapsed().as_secs_f64() * 1e3;
    let peak_bytes = peak_memory(device);
    let v: Vec<f32> = video.flatten_all()?.to_vec1()?;
    let finite: Vec<f32> = v.iter().copied().filter(|x| x.is_finite()).collect();
    let mean = finite.iter().map(|&x| x as f64).sum::<f64>() / finite.len().max(1) as f64;
    Ok(E2eReport {
        layers: cfg.num_hidden_layers,
        steps: opts.steps,
        guidance: opts.guidance,
        total_ms,
        // A transfer run is minutes long; its first-use costs are noise in it.
        warmup_ms: None,
        stages: out
            .timings
            .iter()
            .map(|(k, d)| (k.clone(), d.as_secs_f64() * 1e3))
            .collect(),
        peak_bytes,
        video: video.dims().to_vec(),
        min: finite.iter().copied().fold(f32::INFINITY, f32::min),
        max: finite.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        mean: mean as f32,
        non_finite: v.len() - finite.len(),
        audio: None,
        pixels: video,
        profile: None,
    })
}
