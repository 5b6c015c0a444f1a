//! Measurements behind `phyai bench`: timing with CUDA events (wall clock plus a device
//! synchronisation on CPU), the attention kernel at the generation shape, and one
//! generation-tower forward of a transformer config (the Nano architecture unless a
//! checkpoint's config is given) with random weights at the W480/W720 token counts, the VAE
//! decode, and a whole generation at real size ([`e2e`]). Every model dimension and the
//! request frame rate come from that config. Every figure is a median after warm-up runs,
//! except the end-to-end run, which is one request.

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::io::weights::{WeightStore, Weights};
use crate::layers::attention;
use crate::layers::fp8::Quantize;
use crate::models::cosmos3::transformer::{Cosmos3Transformer, GenInputs, TransformerConfig};
use crate::Result;

pub mod audio;
pub mod checkpoint;
pub mod e2e;
pub mod fp8;
pub mod jit;
pub mod published;
pub mod read;
pub mod transfer;
pub mod vae_tiles;
/// The benchmarks' memory figures (kept here so callers of `bench` need no other path).
pub use crate::layers::memory::{peak_memory, reset_peak_memory};
pub use audio::{audio_bench, audio_ops_bench, AudioReport};
pub use e2e::{e2e_bench, Conditioning, E2eOptions, E2eReport};
pub use fp8::{fp8_gemm_bench, fp8_quality_bench, Fp8Quality, GemmRow};
pub use jit::jit_bench;
pub use read::{read_bench, ReadPass};
pub use transfer::{transfer_bench, TransferOptions};
pub use vae_tiles::{vae_tiles_bench, TileReport};

/// Median, min and max of timed runs, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub runs: usize,
}

/// Runs `f` `warmup` times untimed, then `runs` times timed (CUDA events on a GPU).
pub fn time_runs(
    device: &Device,
    warmup: usize,
    runs: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Timing> {
    for _ in 0..warmup {
        f()?;
    }
    device.synchronize()?;
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        ms.push(time_once(device, &mut f)?);
    }
    ms.sort_by(f64::total_cmp);
    Ok(Timing {
        median_ms: ms[ms.len() / 2],
        min_ms: ms[0],
        max_ms: ms[ms.len() - 1],
        runs: ms.len(),
    })
}

fn time_once(device: &Device, f: &mut impl FnMut() -> Result<()>) -> Result<f64> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        use cudarc::driver::sys::CUevent_flags;
        let stream = dev.cuda_stream();
        let ev = |s: &Arc<cudarc::driver::CudaStream>| {
            s.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| crate::Error::msg(format!("CUDA event: {e}")))
        };
        let start = ev(&stream)?;
        f()?;
        let end = ev(&stream)?;
        end.synchronize()
            .map_err(|e| crate::Error::msg(format!("CUDA event: {e}")))?;
        let ms = start
            .elapsed_ms(&end)
            .map_err(|e| crate::Error::msg(format!("CUDA event: {e}")))?;
        return Ok(ms as f64);
    }
    let t = Instant::now();
    f()?;
    device.synchronize()?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// One attention call: `heads` query heads over `kv_heads` key/value heads of `head_dim`,
/// `queries` queries attending to `keys` keys.
#[derive(Debug, Clone, Copy)]
pub struct AttentionSpec {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub queries: usize,
    pub keys: usize,
    pub causal: bool,
    pub dtype: DType,
}

impl AttentionSpec {
    /// The generation tower's attention at `spec`: every video token over the video and
    /// text keys, with `cfg`'s heads.
    pub fn generation(cfg: &TransformerConfig, spec: GenSpec, dtype: DType) -> Self {
        let queries = spec.tokens(cfg);
        Self {
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            queries,
            keys: queries + spec.text_tokens,
            causal: false,
            dtype,
        }
    }

    /// The text tower's causal pass over `tokens` text tokens, with `cfg`'s heads.
    pub fn text(cfg: &TransformerConfig, tokens: usize, dtype: DType) -> Self {
        Self {
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            queries: tokens,
            keys: tokens,
            causal: true,
            dtype,
        }
    }

    /// Multiply-adds ×2 of both products; a causal square pass does about half.
    pub fn flops(&self) -> f64 {
        let full = 4.0 * (self.heads * self.queries * self.keys * self.head_dim) as f64;
        if self.causal {
            full / 2.0
        } else {
            full
        }
    }
}

#[derive(Debug, Clone)]
pub struct AttentionReport {
    pub timing: Timing,
    pub tflops: f64,
    /// Relative L2 error of the engine's attention against the f32 tiled reference on a
    /// cut-down shape (same heads, fewer tokens).
    pub check_rel_err: f32,
}

/// Times the engine's attention entry point (fused on CUDA for bf16/f16) at `spec`.
/// With `fp8` the FP8 kernel runs instead (unmasked attention only; an error where it
/// cannot run).
pub fn attention_bench(
    device: &Device,
    spec: AttentionSpec,
    runs: usize,
    fp8: bool,
) -> Result<AttentionReport> {
    let run = |q: &Tensor, k: &Tensor, v: &Tensor| {
        if fp8 && !spec.causal {
            attention::try_attention_fp8(q, k, v)
        } else {
            attention::attention(q, k, v, spec.causal)
        }
    };
    let make = |h: usize, s: usize| -> Result<Tensor> {
        Ok(Tensor::randn(0f32, 1.0, (h, s, spec.head_dim), device)?.to_dtype(spec.dtype)?)
    };
    // Agreement first, on a shape whose lengths are not multiples of the kernel's tiles
    // (no larger than the measured shape).
    let cq = spec.queries.min(1000);
    let ck = if spec.causal { cq } else { spec.keys.min(1237) };
    let (q, k, v) = (
        make(spec.heads, cq)?,
        make(spec.kv_heads, ck)?,
        make(spec.kv_heads, ck)?,
    );
    let got = run(&q, &k, &v)?.to_dtype(DType::F32)?;
    let f = |t: &Tensor| t.to_dtype(DType::F32);
    let want = attention::tiled(&f(&q)?, &f(&k)?, &f(&v)?, spec.causal, 256, 1024)?;
    let check_rel_err = rel_err(&got, &want)?;

    let (q, k, v) = (
        make(spec.heads, spec.queries)?,
        make(spec.kv_heads, spec.keys)?,
        make(spec.kv_heads, spec.keys)?,
    );
    let timing = time_runs(device, 2, runs, || run(&q, &k, &v).map(drop))?;
    Ok(AttentionReport {
        tflops: spec.flops() / (timing.median_ms * 1e-3) / 1e12,
        timing,
        check_rel_err,
    })
}

fn rel_err(a: &Tensor, b: &Tensor) -> Result<f32> {
    let d = (a - b)?.sqr()?.sum_all()?.to_scalar::<f32>()?;
    let n = b.sqr()?.sum_all()?.to_scalar::<f32>()?;
    Ok((d / n.max(f32::MIN_POSITIVE)).sqrt())
}

/// A generation-tower workload: the latent grid `[frames, height, width]` (before the 2×2
/// patch) and the text length.
#[derive(Debug, Clone, Copy)]
pub struct GenSpec {
    pub name: &'static str,
    pub latent: [usize; 3],
    pub text_tokens: usize,
}

impl GenSpec {
    /// Video frames of the preset: 4 per latent frame after the first.
    pub fn frames(&self) -> usize {
        (self.latent[0] - 1) * 4 + 1
    }

    /// Video tokens of the preset after `cfg`'s spatial patch.
    pub fn tokens(&self, cfg: &TransformerConfig) -> usize {
        let [t, h, w] = self.latent;
        let p = cfg.latent_patch_size;
        t * h.div_ceil(p) * w.div_ceil(p)
    }

    /// Sound latent steps a text-to-audio-video request of this preset gets at `fps`.
    pub fn sound_steps(
        &self,
        audio: &crate::models::cosmos3::vae::AudioVaeConfig,
        fps: f64,
    ) -> usize {
        crate::models::cosmos3::sound_latent_frames(
            self.frames(),
            fps,
            audio.sampling_rate as u32,
            audio.hop(),
        )
    }

    /// Text token ids of the preset's length for `cfg`'s vocabulary (deterministic; `salt`
    /// tells the branches apart).
    pub fn text_ids(&self, cfg: &TransformerConfig, salt: u32) -> Vec<u32> {
        let vocab = cfg.vocab_size as u64;
        (0..self.text_tokens as u64)
            .map(|i| ((i * 7919 + salt as u64) % vocab) as u32)
            .collect()
    }
}

/// 832×480, 93 frames: 24×30×52 latents, 9,360 tokens.
pub const W480: GenSpec = GenSpec {
    name: "W480",
    latent: [24, 30, 52],
    text_tokens: 512,
};
/// 1280×720, 189 frames: 48×45×80 latents, 44,160 tokens.
pub const W720: GenSpec = GenSpec {
    name: "W720",
    latent: [48, 45, 80],
    text_tokens: 512,
};
/// 1280×720, one frame (text-to-image): 1×45×80 latents, 3,600 tokens.
pub const I720: GenSpec = GenSpec {
    name: "I720",
    latent: [1, 45, 80],
    text_tokens: 512,
};
/// 96×64, 5 frames: 2×4×6 latents, 12 tokens; for checking the command on a CPU with a
/// small config.
pub const TINY: GenSpec = GenSpec {
    name: "tiny",
    latent: [2, 4, 6],
    text_tokens: 16,
};

#[derive(Debug, Clone)]
pub struct GenReport {
    pub layers: usize,
    pub tokens: usize,
    pub und: Timing,
    pub gen: Timing,
    /// The forward time scaled from `layers` to the full depth of the config.
    pub gen_full_ms: f64,
    pub tflops: f64,
    pub peak_bytes: Option<usize>,
    /// Device time per stage of one more forward, when asked for.
    pub profile: Option<Vec<crate::layers::profile::StageTime>>,
}

/// Builds the transformer of `config` (optionally fewer layers) with random weights on
/// `device`, quantized at load with `quantize` (FP8 forwards run W8A8; `fp8_attention`
/// runs their attention in FP8 too), and times the text
/// tower and one generation-tower forward at `spec`, at the config's base frame rate.
#[allow(clippy::too_many_arguments)]
pub fn gen_bench(
    device: &Device,
    config: &TransformerConfig,
    spec: GenSpec,
    layers: Option<usize>,
    dtype: DType,
    quantize: Option<Quantize>,
    fp8_attention: bool,
    runs: usize,
    profile: bool,
) -> Result<GenReport> {
    let full_layers = config.num_hidden_layers;
    let layers = layers.unwrap_or(full_layers).clamp(1, full_layers);
    let mut cfg = config.clone();
    cfg.num_hidden_layers = layers;
    let store = Arc::new(WeightStore::random_on_device(std::path::Path::new("bench")));
    let single = crate::parallel::Group::single();
    let w = Weights::new(store, dtype, device);
    let mut model = Cosmos3Transformer::new_quantized(&cfg, w, &single, single.clone(), quantize)?;
    if fp8_attention {
        model.enable_fp8_attention()?;
    }
    model.set_activation_precision(crate::layers::fp8::ActivationPrecision::W8A8);
    let ids = spec.text_ids(&cfg, 0);
    let und_timing = time_runs(device, 1, runs, || model.und(&ids).map(drop))?;
    let und = model.und(&ids)?;
    let [t, h, w] = spec.latent;
    let c = cfg.latent_channel;
    let video = Tensor::randn(0f32, 1.0, (1, c, t, h, w), device)?.to_dtype(dtype)?;
    let noisy = vec![true; t];
    let inputs = GenInputs {
        video: &video,
        sound: None,
        timestep: 999.0,
        noisy_frames: &noisy,
        fps: cfg.base_fps,
    };
    reset_peak_memory(device);
    let gen = time_runs(device, 1, runs, || model.velocity(&und, &inputs).map(drop))?;
    let peak_bytes = peak_memory(device);
    let profile = if profile {
        crate::layers::profile::start();
        let v = model.velocity(&und, &inputs);
        crate::layers::profile::mark(device, "after the tower");
        let stages = crate::layers::profile::stop()?;
        v?;
        Some(stages)
    } else {
        None
    };
    let tokens = spec.tokens(&cfg);
    let full = gen.median_ms * full_layers as f64 / layers as f64;
    Ok(GenReport {
        layers,
        tokens,
        und: und_timing,
        gen_full_ms: full,
        tflops: gen_flops(&cfg, tokens, spec.text_tokens) / (gen.median_ms * 1e-3) / 1e12,
        gen,
        peak_bytes,
        profile,
    })
}

/// FLOPs of one generation-tower forward: per layer the Q/K/V, output and MLP products
/// (2 per multiply-add) and attention over text + video keys (4·N·(N+text)·hidden).
pub fn gen_flops(cfg: &TransformerConfig, tokens: usize, text: usize) -> f64 {
    let n = tokens as f64;
    let hid = cfg.hidden_size as f64;
    let hd = cfg.head_dim as f64;
    let q = cfg.num_attention_heads as f64 * hd;
    let kv = cfg.num_key_value_heads as f64 * hd;
    let mlp = cfg.intermediate_size as f64;
    let per_layer = 2.0 * n * (hid * (q + 2.0 * kv) + q * hid + 3.0 * hid * mlp)
        + 4.0 * n * (n + text as f64) * q;
    per_layer * cfg.num_hidden_layers as f64
}

/// The pieces of one generation layer of `cfg` at `tokens` tokens, timed alone (bf16):
/// which part of the layer time is matrix products, attention, and memory-bound glue.
pub fn layer_ops_bench(
    device: &Device,
    cfg: &TransformerConfig,
    tokens: usize,
    runs: usize,
) -> Result<Vec<(String, Timing)>> {
    let (n, h, inter) = (tokens, cfg.hidden_size, cfg.intermediate_size);
    let (heads, kv_heads, hd) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let q_dim = heads * hd;
    let eps = cfg.rms_norm_eps;
    let qkv_heads = heads + 2 * kv_heads;
    let dt = DType::BF16;
    let r = |shape: &[usize]| -> Result<Tensor> {
        Ok(Tensor::randn(0f32, 0.02, shape, device)?.to_dtype(dt)?)
    };
    let x = r(&[n, h])?;
    let w_qkv = r(&[qkv_heads * hd, h])?;
    let w_out = r(&[h, q_dim])?;
    let w_gu = r(&[2 * inter, h])?;
    let w_down = r(&[h, inter])?;
    let gu = r(&[n, 2 * inter])?;
    let act = r(&[n, inter])?;
    let attn = r(&[n, q_dim])?;
    let norm_w = r(&[h])?;
    let q = r(&[n, heads, hd])?;
    let (cos, sin) = (r(&[n, hd / 2])?, r(&[n, hd / 2])?);
    let mut out = Vec::new();
    let mut time = |name: &str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        out.push((name.to_string(), time_runs(device, 2, runs, f)?));
        Ok(())
    };
    time(
        &format!("gemm qkv [N,{h}]x[{h},{}]", qkv_heads * hd),
        &mut || {
            x.broadcast_matmul(&w_qkv.t()?)
                .map(drop)
                .map_err(Into::into)
        },
    )?;
    time(&format!("gemm out [N,{q_dim}]x[{q_dim},{h}]"), &mut || {
        attn.broadcast_matmul(&w_out.t()?)
            .map(drop)
            .map_err(Into::into)
    })?;
    time(
        &format!("gemm gate|up [N,{h}]x[{h},{}]", 2 * inter),
        &mut || x.broadcast_matmul(&w_gu.t()?).map(drop).map_err(Into::into),
    )?;
    time(&format!("gemm down [N,{inter}]x[{inter},{h}]"), &mut || {
        act.broadcast_matmul(&w_down.t()?)
            .map(drop)
            .map_err(Into::into)
    })?;
    time(
        &format!("silu(gate)*up, halves of [N,{}]", 2 * inter),
        &mut || {
            let g = gu.narrow(1, 0, inter)?;
            let u = gu.narrow(1, inter, inter)?;
            (candle_nn::ops::silu(&g)? * u)
                .map(drop)
                .map_err(Into::into)
        },
    )?;
    time(&format!("rmsnorm [N,{h}]"), &mut || {
        candle_nn::ops::rms_norm(&x, &norm_w, eps as f32)
            .map(drop)
            .map_err(Into::into)
    })?;
    time(&format!("residual add [N,{h}]"), &mut || {
        (&x + &x).map(drop).map_err(Into::into)
    })?;
    time(&format!("rope q [N,{heads},{hd}] token-major"), &mut || {
        candle_nn::rotary_emb::rope_thd(&q.unsqueeze(0)?, &cos, &sin)
            .map(drop)
            .map_err(Into::into)
    })?;
    let qkv = r(&[n, qkv_heads, hd])?;
    time(&format!("copy q out of [N,{qkv_heads},{hd}]"), &mut || {
        qkv.narrow(1, 0, heads)?
            .contiguous()
            .map(drop)
            .map_err(Into::into)
    })?;
    // The fused replacements (`layers::glue`).
    let norm = crate::layers::norm::RmsNorm::new(
        norm_w.clone(),
        eps,
        crate::layers::norm::RmsScale::AfterCast,
    );
    let head_norm =
        crate::layers::norm::RmsNorm::new(r(&[hd])?, eps, crate::layers::norm::RmsScale::AfterCast);
    time(
        &format!("fused silu·mul of [N,{}]", 2 * inter),
        &mut || crate::layers::glue::silu_mul(&gu).map(drop),
    )?;
    time(
        &format!("fused residual add + rmsnorm [N,{h}]"),
        &mut || crate::layers::glue::add_rms_norm(&x, &x, &norm).map(drop),
    )?;
    time(&format!("fused rmsnorm [N,{h}]"), &mut || {
        crate::layers::glue::rms_norm(&x, &norm).map(drop)
    })?;
    time(
        &format!("fused qk norm + rope of [N,{qkv_heads},{hd}]"),
        &mut || {
            crate::layers::glue::qk_norm_rope(
                &qkv,
                (heads, kv_heads),
                Some((&head_norm, &head_norm)),
                &cos,
                &sin,
            )
            .map(drop)
        },
    )?;
    Ok(out)
}

/// The Wan2.2 video VAE of the Cosmos3 checkpoints (48-channel latent, decoder width 256).
pub fn wan22_vae_config() -> crate::models::cosmos3::vae::VaeConfig {
    serde_json::from_value(serde_json::json!({
        "base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "dim_mult": [1, 2, 4, 4],
        "num_res_blocks": 2, "attn_scales": [], "temperal_downsample": [false, true, true],
        "dropout": 0.0, "is_residual": true, "in_channels": 12, "out_channels": 12,
        "patch_size": 2, "scale_factor_spatial": 16, "scale_factor_temporal": 4,
        "latents_mean": vec![0.0; 48], "latents_std": vec![1.0; 48],
    }))
    .expect("the built-in VAE config parses")
}

#[derive(Debug, Clone)]
pub struct VaeReport {
    /// Latent `[t, h, w]` decoded.
    pub latent: [usize; 3],
    pub decode: Timing,
    /// Output video `[3, T, H, W]`.
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    /// Peak device memory over the first decode and the timed ones (weights included).
    pub peak_bytes: Option<usize>,
    /// Peak over the timed decodes alone: without the first use's algorithm search.
    pub steady_peak_bytes: Option<usize>,
}

/// Decodes a random latent of `spec`'s grid with the Wan2.2 VAE (random weights) in
/// `tiles` spatial tiles decoded in sequence (1 = whole frame).
pub fn vae_bench(
    device: &Device,
    spec: GenSpec,
    dtype: DType,
    tiles: usize,
    runs: usize,
) -> Result<VaeReport> {
    use crate::models::cosmos3::vae::{decode_tiled, WanDecoder};
    let cfg = wan22_vae_config();
    let store = Arc::new(WeightStore::random_on_device(std::path::Path::new(
        "bench-vae",
    )));
    let decoder = WanDecoder::new(&cfg, &Weights::new(store, dtype, device))?;
    let [t, h, w] = spec.latent;
    let lat = Tensor::randn(0f32, 1.0, (1, cfg.z_dim, t, h, w), device)?.to_dtype(dtype)?;
    let mut dims = Vec::new();
    let mut run = || -> Result<()> {
        let v = if tiles > 1 {
            decode_tiled(&decoder, &lat, tiles)?
        } else {
            decoder.decode(&lat)?
        };
        dims = v.dims().to_vec();
        Ok(())
    };
    reset_peak_memory(device);
    run()?; // first use: cuDNN times its algorithms for every conv shape
    let first_peak = peak_memory(device);
    reset_peak_memory(device);
    let decode = time_runs(device, 0, runs, &mut run)?;
    let steady_peak_bytes = peak_memory(device);
    Ok(VaeReport {
        latent: spec.latent,
        decode,
        frames: dims.get(2).copied().unwrap_or(0),
        height: dims.get(3).copied().unwrap_or(0),
        width: dims.get(4).copied().unwrap_or(0),
        peak_bytes: first_peak.max(steady_peak_bytes),
        steady_peak_bytes,
    })
}

/// The pieces of one decoder stage of the Wan2.2 VAE at 720p (the last stage: 256 channels
/// at 360×640, four frames a chunk), timed alone in bf16 in the device's VAE layout: where
/// decode time goes.
pub fn vae_ops_bench(device: &Device, runs: usize) -> Result<Vec<(String, Timing)>> {
    use crate::models::cosmos3::vae::blocks::ResidualBlock;
    use crate::models::cosmos3::vae::causal_conv::{ChannelRmsNorm, FrameCache, VaeBuild};
    use crate::models::cosmos3::vae::Layout;
    let dt = DType::BF16;
    let store = Arc::new(WeightStore::random_on_device(std::path::Path::new(
        "bench-vae-ops",
    )));
    let w = Weights::new(store, dt, device);
    let layout = Layout::for_device(device);
    let (c, h, wd) = (256usize, 360usize, 640usize);
    let frames = |t: usize, c: usize, h: usize, w: usize| -> Result<Tensor> {
        let x = Tensor::randn(0f32, 1.0, (t, c, h, w), device)?.to_dtype(dt)?;
        layout.from_frame_major(&x)
    };
    let x = frames(4, c, h, wd)?;
    let x6 = frames(6, c, h, wd)?;
    let low = frames(4, 2 * c, h / 2, wd / 2)?;
    #[cfg(feature = "cuda")]
    let k3cl = crate::layers::cuda::cudnn_conv::weight_channels_last(
        &Tensor::randn(0f32, 0.02, (c, c, 3, 3, 3), device)?.to_dtype(dt)?,
    )?;
    let norm = ChannelRmsNorm::new(&w.pp("norm"), c, false, layout)?;
    let mut build = VaeBuild::new(layout);
    let block = ResidualBlock::new(&w.pp("block"), c, c, &mut build)?;
    let mut cache = FrameCache::new(build.slots());
    block.forward(x.clone(), &mut cache)?;
    let mut out = Vec::new();
    let mut time = |name: &str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        out.push((name.to_string(), time_runs(device, 1, runs, f)?));
        Ok(())
    };
    time("residual block 256ch, 4 frames at 360x640", &mut || {
        block.forward(x.clone(), &mut cache).map(drop)
    })?;
    #[cfg(feature = "cuda")]
    if layout == Layout::ChannelsLast {
        time("conv3d 3x3x3 256->256 (cuDNN, one call)", &mut || {
            crate::layers::cuda::cudnn_conv::conv_frames(&x6, &k3cl, None, None, 1, [1, 1])
                .map(drop)
        })?;
    }
    time("channel rms norm + silu", &mut || {
        norm.forward_silu(&x).map(drop)
    })?;
    time("norm + silu after 2 history frames", &mut || {
        norm.forward_silu_after(&x, 0, Some(&x6.narrow(0, 0, 2)?))
            .map(drop)
    })?;
    time("residual add", &mut || {
        (&x + &x).map(drop).map_err(Into::into)
    })?;
    time("cat 2+4 frames", &mut || {
        Tensor::cat(&[&x6.narrow(0, 0, 2)?, &x], 0)
            .map(drop)
            .map_err(Into::into)
    })?;
    time("upsample nearest 2x of 512ch 180x320", &mut || {
        crate::layers::video::upsample(&low, layout, 1).map(drop)
    })?;
    time("y + dup_up(512ch 180x320 -> 256ch 360x640)", &mut || {
        crate::layers::video::add_dup_up(&x, &low, layout, c, 1, 2, false).map(drop)
    })?;
    Ok(out)
}
