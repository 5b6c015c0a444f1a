//! NVIDIA's published Cosmos3-Nano latencies on one H200 (the table users compare engines
//! with), the workloads behind them, and the FLOP floor of each: `phyai bench --workload`.
//!
//! The cells live in `assets/benchmarks/cosmos3_nano_h200.json`, which names its source.
//! A workload runs the whole request path at the published settings (189 frames at 24 fps,
//! or one frame for text-to-image; 35 steps; guidance 6) on the full-size Nano-shaped model
//! with random weights.

use candle_core::{DType, Device};
use serde::Deserialize;

use super::e2e::{e2e_bench, Conditioning, E2eOptions, E2eReport};
use super::GenSpec;
use crate::layers::fp8::Quantize;
use crate::models::cosmos3::transformer::TransformerConfig;
use crate::{Error, Result};

const CELLS_JSON: &str = include_str!("../../assets/benchmarks/cosmos3_nano_h200.json");

/// Published seconds per generation of one workload at one resolution (`None`: not
/// published).
#[derive(Debug, Clone, Deserialize)]
pub struct PublishedCell {
    pub workload: String,
    pub resolution: String,
    pub nvidia_pytorch_fp8: Option<f64>,
    pub vllm_omni_bf16: Option<f64>,
    pub nim_fp8: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PublishedTable {
    pub source: String,
    pub device: String,
    pub settings: String,
    pub cells: Vec<PublishedCell>,
}

impl PublishedTable {
    /// The table shipped with the binary.
    pub fn load() -> Result<Self> {
        serde_json::from_str(CELLS_JSON)
            .map_err(|e| Error::msg(format!("published latency table: {e}")))
    }

    pub fn cell(&self, w: Workload, r: Resolution) -> Option<&PublishedCell> {
        self.cells
            .iter()
            .find(|c| c.workload == w.name() && c.resolution == r.name())
    }
}

/// The request kinds of the published table (and video continuation, which it lacks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    T2v,
    I2v,
    T2i,
    T2av,
    V2v,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Self::T2v => "t2v",
            Self::I2v => "i2v",
            Self::T2i => "t2i",
            Self::T2av => "t2av",
            Self::V2v => "v2v",
        }
    }
}

/// The published resolutions: 1280×720, 832×480, 320×192; and a tiny one (96×64, 5
/// frames) that checks the command on a CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    P256,
    P480,
    P720,
    Tiny,
}

impl Resolution {
    pub fn name(self) -> &'static str {
        match self {
            Self::P256 => "256p",
            Self::P480 => "480p",
            Self::P720 => "720p",
            Self::Tiny => "tiny",
        }
    }

    /// Latent height and width (pixels / 16).
    fn latent_hw(self) -> [usize; 2] {
        match self {
            Self::P256 => [12, 20],
            Self::P480 => [30, 52],
            Self::P720 => [45, 80],
            Self::Tiny => [4, 6],
        }
    }
}

/// Latent frames of the published 189-frame clip: (189 − 1) / 4 + 1.
const CLIP_LATENT_FRAMES: usize = 48;
/// Text tokens the bench's prompts have.
const TEXT_TOKENS: usize = 512;

/// The generation workload of `w` at `r`: 189 frames, or one for text-to-image.
pub fn workload_spec(w: Workload, r: Resolution) -> GenSpec {
    let [h, wd] = r.latent_hw();
    let t = match (w, r) {
        (Workload::T2i, _) => 1,
        (_, Resolution::Tiny) => 2,
        _ => CLIP_LATENT_FRAMES,
    };
    GenSpec {
        name: r.name(),
        latent: [t, h, wd],
        text_tokens: if r == Resolution::Tiny {
            16
        } else {
            TEXT_TOKENS
        },
    }
}

/// Dense peak of one H200 (SXM) in TFLOP/s: bf16 and FP8 tensor cores.
pub const H200_PEAK_TFLOPS: (f64, f64) = (989.4, 1978.9);

/// The FLOP floor of a request: `steps · branches` generation forwards at `spec` (video
/// tokens plus `extra_tokens`, e.g. sound), at the dense peak `peak_tflops`. Counts the
/// transformer's products and attention only (no VAE, no glue), so real time is above it.
pub fn flop_floor_s(
    cfg: &TransformerConfig,
    spec: GenSpec,
    extra_tokens: usize,
    steps: usize,
    branches: usize,
    peak_tflops: f64,
) -> (f64, f64) {
    let per_forward = super::gen_flops(cfg, spec.tokens(cfg) + extra_tokens, spec.text_tokens);
    let flops = per_forward * (steps * branches) as f64;
    (flops, flops / (peak_tflops * 1e12))
}

/// The average throughput a published time implies for `flops` of transformer work
/// (TFLOP/s), and its fraction of the H200's dense FP8 peak: how fast every kernel of a
/// request would have to run, on average, to do the whole workload exactly in that time.
pub fn implied_tflops(flops: f64, seconds: f64) -> (f64, f64) {
    let t = flops / seconds / 1e12;
    (t, t / H200_PEAK_TFLOPS.1)
}

/// One workload run against its published cell.
#[derive(Debug, Clone)]
pub struct CellReport {
    pub workload: Workload,
    pub resolution: Resolution,
    pub fp8: bool,
    pub run: E2eReport,
    /// Layers built; when fewer than the config's, `seconds` scales the denoising stage.
    pub layers: usize,
    pub full_layers: usize,
    /// Our seconds per generation (scaled to the full depth when `layers` is smaller).
    pub seconds: f64,
    /// The FLOP count of the request's forwards and its floor at this precision's peak.
    pub flops: f64,
    pub floor_s: f64,
    pub published: Option<PublishedCell>,
}

/// Runs `w` at `r` on the Nano-shaped model of `cfg` (random weights), bf16 or `fp8`
/// (`--quantize fp8`), at the published settings: `steps` steps, guidance `guidance`. With
/// `warmup`, a short request at the same shapes runs first, so the timed one is a resident
/// engine's request (the published cells are averages over repeated requests).
#[allow(clippy::too_many_arguments)]
pub fn cell_bench(
    device: &Device,
    cfg: &TransformerConfig,
    w: Workload,
    r: Resolution,
    fp8: bool,
    fp8_attention: bool,
    steps: usize,
    guidance: f64,
    layers: Option<usize>,
    warmup: bool,
    profile: bool,
) -> Result<CellReport> {
    let spec = workload_spec(w, r);
    let opts = E2eOptions {
        steps,
        guidance,
        layers,
        // bf16 on accelerators; the CPU checks the command in f32 (not every CPU op has a
        // bf16 kernel).
        dtype: if device.is_cpu() {
            DType::F32
        } else {
            DType::BF16
        },
        sound: w == Workload::T2av,
        quantize: fp8.then_some(Quantize::Fp8),
        fp8_attention,
        weight_seed: None,
        conditioning: match w {
            Workload::I2v => Conditioning::Image,
            Workload::V2v => Conditioning::Video,
            _ => Conditioning::Text,
        },
        warmup_steps: if warmup {
            super::e2e::warmup_steps(steps, fp8)
        } else {
            0
        },
        profile,
    };
    let run = e2e_bench(device, cfg, spec, opts)?;
    let full_layers = cfg.num_hidden_layers;
    let denoise = run
        .stages
        .iter()
        .find(|(k, _)| k == "denoise")
        .map_or(0.0, |s| s.1);
    let scale = full_layers as f64 / run.layers.max(1) as f64;
    let seconds = (run.total_ms + denoise * (scale - 1.0)) / 1e3;
    let branches = if guidance > 1.0 { 2 } else { 1 };
    let sound_tokens = if w == Workload::T2av {
        spec.sound_steps(
            &crate::models::cosmos3::vae::AudioVaeConfig::default(),
            cfg.base_fps,
        )
    } else {
        0
    };
    let peak = if fp8 {
        H200_PEAK_TFLOPS.1
    } else {
        H200_PEAK_TFLOPS.0
    };
    let (flops, floor_s) = flop_floor_s(cfg, spec, sound_tokens, steps, branches, peak);
    Ok(CellReport {
        workload: w,
        resolution: r,
        fp8,
        layers: run.layers,
        full_layers,
        seconds,
        flops,
        floor_s,
        published: PublishedTable::load()?.cell(w, r).cloned(),
        run,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_every_published_cell() {
        let t = PublishedTable::load().unwrap();
        assert!(t.source.contains("cosmos3-nano-generator.md"));
        let c = t.cell(Workload::T2v, Resolution::P720).unwrap();
        assert_eq!(c.nvidia_pytorch_fp8, Some(94.57));
        assert_eq!(c.vllm_omni_bf16, Some(208.36));
        assert_eq!(
            t.cell(Workload::T2av, Resolution::P720).unwrap().nim_fp8,
            None
        );
        assert!(t.cell(Workload::V2v, Resolution::P720).is_none());
        assert_eq!(t.cells.len(), 6);
    }

    #[test]
    fn specs_and_floor_follow_the_published_sizes() {
        let cfg = TransformerConfig::nano();
        let s = workload_spec(Workload::T2v, Resolution::P720);
        assert_eq!((s.frames(), s.tokens(&cfg)), (189, 44_160));
        let s480 = workload_spec(Workload::T2v, Resolution::P480);
        assert_eq!(s480.tokens(&cfg), 48 * 15 * 26);
        let s256 = workload_spec(Workload::T2v, Resolution::P256);
        assert_eq!(s256.tokens(&cfg), 48 * 6 * 10);
        assert_eq!(workload_spec(Workload::T2i, Resolution::P720).frames(), 1);
        // 70 forwards of ~1.78 PFLOP at 720p: about 126 s at the bf16 peak, 63 s in FP8.
        let (flops, secs) = flop_floor_s(&cfg, s, 0, 35, 2, H200_PEAK_TFLOPS.0);
        assert!((flops / 70.0 - super::super::gen_flops(&cfg, 44_160, 512)).abs() < 1.0);
        assert!(secs > 120.0 && secs < 132.0, "{secs}");
        let (_, fp8) = flop_floor_s(&cfg, s, 0, 35, 2, H200_PEAK_TFLOPS.1);
        assert!((secs / fp8 - 2.0).abs() < 0.01);
        // NVIDIA's FP8 720p cell (94.57 s) implies 1.32 PFLOP/s averaged over the request,
        // two thirds of the dense FP8 peak, attention included.
        let (t, frac) = implied_tflops(flops, 94.57);
        assert!(
            (t - 1315.0).abs() < 5.0 && (frac - 0.665).abs() < 0.005,
            "{t} {frac}"
        );
    }
}
