//! FP8 measurements: the linear layers of one generation layer at a preset's token count,
//! bf16 against FP8, and one square GEMM as the ceiling of both formats on this device.
//!
//! The FP8 layer time is what the model pays per product with `--quantize fp8`: the
//! activation's absolute maximum, its quantization and the GEMM. On CUDA the GEMM alone on
//! already quantized operands is timed too (the cuBLASLt figure to compare with the
//! ceiling). The relative error of each FP8 product against the bf16 one is reported with
//! its time, so a fast wrong kernel cannot pass unnoticed.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::e2e::{e2e_bench, E2eOptions, E2eReport};
use super::{rel_err, time_runs, GenSpec, Timing};
use crate::io::weights::{WeightStore, Weights};
use crate::layers::fp8::{ActivationPrecision, Fp8Weight, Quantize};
use crate::models::cosmos3::transformer::{Cosmos3Transformer, GenInputs, TransformerConfig};
use crate::parallel::Group;
use crate::Result;

/// One product `[m, k] · [n, k]ᵀ` timed in both formats.
#[derive(Debug, Clone)]
pub struct GemmRow {
    pub name: String,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub bf16: Timing,
    /// Quantize the activation (dynamic scale) and multiply.
    pub fp8_layer: Timing,
    /// The FP8 GEMM alone, both accumulations (CUDA only).
    pub fp8_gemm: Option<GemmAlone>,
    /// `‖y_fp8 − y_bf16‖ / ‖y_bf16‖` of the layer as the model runs it.
    pub rel_err: f32,
}

/// cuBLASLt alone on already quantized operands, in each [`crate::layers::fp8::Accumulation`].
#[derive(Debug, Clone)]
pub struct GemmAlone {
    pub exact: Timing,
    pub fast: Timing,
    /// `‖y_fast − y_bf16‖ / ‖y_bf16‖` and `‖y_exact − y_bf16‖ / ‖y_bf16‖`.
    pub fast_rel_err: f32,
    pub exact_rel_err: f32,
}

impl GemmRow {
    pub fn flops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k) as f64
    }

    /// TFLOP/s of a timing of this product.
    pub fn tflops(&self, t: &Timing) -> f64 {
        self.flops() / (t.median_ms * 1e-3) / 1e12
    }
}

/// The products of one generation layer of `cfg` at `spec`'s token count, then the
/// `square`³ ceiling (`None`: 8192, or the preset's token count when smaller).
pub fn fp8_gemm_bench(
    device: &Device,
    cfg: &TransformerConfig,
    spec: GenSpec,
    runs: usize,
) -> Result<Vec<GemmRow>> {
    let m = spec.tokens(cfg);
    let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let square = m.clamp(16, 8192).next_multiple_of(16);
    let shapes = [
        ("qkv".to_string(), m, q + 2 * kv, h),
        ("out".to_string(), m, h, q),
        ("gate|up".to_string(), m, 2 * inter, h),
        ("down".to_string(), m, h, inter),
        (format!("square {square}"), square, square, square),
    ];
    shapes
        .into_iter()
        .map(|(name, m, n, k)| gemm_row(device, name, m, n, k, runs))
        .collect()
}

fn gemm_row(
    device: &Device,
    name: String,
    m: usize,
    n: usize,
    k: usize,
    runs: usize,
) -> Result<GemmRow> {
    let dt = DType::BF16;
    let x = Tensor::randn(0f32, 1.0, (m, k), device)?.to_dtype(dt)?;
    let w = Tensor::randn(0f32, 0.02, (n, k), device)?.to_dtype(dt)?;
    let f = Fp8Weight::quantize(&w, ActivationPrecision::W8A8)?;
    let wt = w.t()?;
    let bf16 = time_runs(device, 2, runs, || {
        x.matmul(&wt).map(drop).map_err(Into::into)
    })?;
    let fp8_layer = time_runs(device, 2, runs, || f.matmul_t(&x, None).map(drop))?;
    let reference = x.matmul(&wt)?.to_dtype(DType::F32)?;
    let rel = rel_err(&f.matmul_t(&x, None)?.to_dtype(DType::F32)?, &reference)?;
    Ok(GemmRow {
        name,
        m,
        n,
        k,
        bf16,
        fp8_layer,
        fp8_gemm: gemm_alone(device, &f, &x, &reference, runs)?,
        rel_err: rel,
    })
}

#[cfg(feature = "cuda")]
fn gemm_alone(
    device: &Device,
    f: &Fp8Weight,
    x: &Tensor,
    reference: &Tensor,
    runs: usize,
) -> Result<Option<GemmAlone>> {
    let Some(op) = f.cuda_operand() else {
        return Ok(None);
    };
    let parts = f.parts();
    let (xc, xs) = op.quantize_input(x, 0, None)?;
    let product = |fast| op.gemm(&xc, &xs, parts, 0..parts.len(), None, x.dtype(), fast);
    let exact = time_runs(device, 2, runs, || product(false).map(drop))?;
    let fast = time_runs(device, 2, runs, || product(true).map(drop))?;
    let err = |fast| -> Result<f32> { rel_err(&product(fast)?.to_dtype(DType::F32)?, reference) };
    Ok(Some(GemmAlone {
        exact,
        fast,
        fast_rel_err: err(true)?,
        exact_rel_err: err(false)?,
    }))
}

#[cfg(not(feature = "cuda"))]
fn gemm_alone(
    _: &Device,
    _: &Fp8Weight,
    _: &Tensor,
    _: &Tensor,
    _: usize,
) -> Result<Option<GemmAlone>> {
    Ok(None)
}

/// FP8 against bf16 on the same random full-size weights.
#[derive(Debug, Clone)]
pub struct Fp8Quality {
    /// One generation forward (W8A8) at the preset: `‖v_fp8 − v_bf16‖ / ‖v_bf16‖`.
    pub velocity_rel_err: f32,
    /// The same request decoded by both: PSNR of the FP8 video against the bf16 one (dB,
    /// pixels in [0, 1]).
    pub psnr_db: f64,
    pub bf16: E2eReport,
    pub fp8: E2eReport,
}

const WEIGHT_SEED: u64 = 20_261_204;

/// The generation forward of `cfg` (random weights drawn from `WEIGHT_SEED`) on seeded
/// inputs at `spec`, on the host in f32.
fn seeded_velocity(
    device: &Device,
    cfg: &TransformerConfig,
    spec: GenSpec,
    quantize: Option<Quantize>,
    fp8_attention: bool,
) -> Result<Tensor> {
    device.set_seed(WEIGHT_SEED)?;
    let store = Arc::new(WeightStore::random_on_device(std::path::Path::new("bench")));
    let single = Group::single();
    let w = Weights::new(store, DType::BF16, device);
    let mut model = Cosmos3Transformer::new_quantized(cfg, w, &single, single.clone(), quantize)?;
    if fp8_attention {
        model.enable_fp8_attention()?;
    }
    model.set_activation_precision(ActivationPrecision::W8A8);
    device.set_seed(WEIGHT_SEED + 1)?;
    let [t, h, w] = spec.latent;
    let video = Tensor::randn(0f32, 1.0, (1, cfg.latent_channel, t, h, w), device)?
        .to_dtype(DType::BF16)?;
    let und = model.und(&spec.text_ids(cfg, 0))?;
    let v = model.velocity(
        &und,
        &GenInputs {
            video: &video,
            sound: None,
            timestep: 999.0,
            noisy_frames: &vec![true; t],
            fps: cfg.base_fps,
        },
    )?;
    Ok(v.video.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
}

/// The quality guard of FP8 on the full-size random model of `config` at `spec`: one
/// forward's velocity error, and the decoded video of one whole request (`opts`, whose
/// `quantize` and `weight_seed` are set here) in both precisions. With
/// `opts.fp8_attention` the FP8 side runs its attention in FP8 too.
pub fn fp8_quality_bench(
    device: &Device,
    config: &TransformerConfig,
    spec: GenSpec,
    opts: E2eOptions,
) -> Result<Fp8Quality> {
    let mut cfg = config.clone();
    let full = cfg.num_hidden_layers;
    cfg.num_hidden_layers = opts.layers.unwrap_or(full).clamp(1, full);
    let v16 = seeded_velocity(device, &cfg, spec, None, false)?;
    let v8 = seeded_velocity(device, &cfg, spec, Some(Quantize::Fp8), opts.fp8_attention)?;
    let velocity_rel_err = rel_err(&v8, &v16)?;
    let run = |quantize: Option<Quantize>| {
        e2e_bench(
            device,
            config,
            spec,
            E2eOptions {
                quantize,
                fp8_attention: quantize.is_some() && opts.fp8_attention,
                weight_seed: Some(WEIGHT_SEED),
                ..opts
            },
        )
    };
    let bf16 = run(None)?;
    let fp8 = run(Some(Quantize::Fp8))?;
    let mse = (&fp8.pixels - &bf16.pixels)?
        .sqr()?
        .mean_all()?
        .to_scalar::<f32>()? as f64;
    Ok(Fp8Quality {
        velocity_rel_err,
        psnr_db: 10.0 * (1.0 / mse.max(1e-20)).log10(),
        bf16,
        fp8,
    })
}
