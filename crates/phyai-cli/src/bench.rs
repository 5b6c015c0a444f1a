//! `phyai bench`: the attention kernel at the generation shape, the generation-tower
//! forward of a transformer config (the Nano architecture, or a checkpoint's
//! `transformer/config.json` with `--config`; random weights) at the W480 and W720 token
//! counts, the VAE, the audio VAE, and one whole request end to end.
//!
//! `--json` prints one object per measurement, written by serde: numbers that are not
//! finite (a NaN error or mean, an infinite rate) come out as `null`, and absent values
//! (peak memory on the CPU, no sound) as `null` too.

use std::path::PathBuf;

use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use phyai::bench::{self, AttentionSpec, GenSpec};
use phyai::models::cosmos3::transformer::TransformerConfig;
use serde_json::{json, Value};

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchPart {
    /// Attention alone at the generation shape (and the causal text pass).
    Attention,
    /// Text tower and one generation-tower forward of the config.
    Gen,
    /// The pieces of one generation layer, timed alone.
    Ops,
    /// Wan2.2 VAE decode of the preset's latent (random weights).
    Vae,
    /// The pieces of one 720p VAE decoder stage, timed alone.
    VaeOps,
    /// The tiled decode (2, 4, 8 tiles, as that many ranks make it) against the full
    /// decode of the preset's latent: PSNR and time.
    VaeTiles,
    /// Audio VAE decode of the sound latent of the preset's duration (random weights).
    Audio,
    /// The up-blocks and pieces of the 720p audio decode, timed alone.
    AudioOps,
    /// Time to load (compile) every GPU kernel module, as a first run on a machine does.
    Jit,
    /// One whole request at the preset (text, guided denoising loop, VAE decode) with the
    /// full model resident: wall time, peak memory and a check of the video.
    E2e,
    /// The linear layers of one generation layer, bf16 against FP8 (quantize + GEMM, and
    /// the GEMM alone on CUDA), with a square GEMM as the ceiling of both.
    Fp8Gemm,
    /// FP8 against bf16 on the same random weights: one forward's velocity error and the
    /// PSNR of one whole request's video (--steps, --guidance), with both requests timed.
    Fp8Quality,
    /// Reading --weights' files into host memory: positioned reads, copies from the memory
    /// map and O_DIRECT reads, each pass on a fresh map (not per preset).
    Read,
    /// One whole edge transfer at the preset (the control clip as long as the video; text
    /// and control guidance, chunking from --guidance, --control-guidance, --chunk-frames).
    Transfer,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    W480,
    W720,
    /// One 1280×720 frame: text-to-image.
    I720,
    /// 5 frames at 96×64 and 16 text tokens: for checking the command on the CPU with a
    /// small `--config`.
    Tiny,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What to measure (repeatable; default: all).
    #[arg(long = "part", value_enum)]
    pub parts: Vec<BenchPart>,
    /// Workloads (repeatable; default: W480 and W720).
    #[arg(long = "preset", value_enum)]
    pub presets: Vec<Preset>,
    /// A transformer `config.json` (e.g. a checkpoint's `transformer/config.json`) whose
    /// dimensions and base frame rate are measured; default: the Nano architecture.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Build only this many of the config's layers and scale the forward time
    /// (memory-limited runs).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Timed runs per measurement (after warm-up).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Run on the CPU instead of CUDA device 0 (slow; for checking the command).
    #[arg(long)]
    pub cpu: bool,
    /// End to end: denoising steps.
    #[arg(long, default_value_t = 35)]
    pub steps: usize,
    /// End to end: classifier-free guidance scale (two branches per step above 1).
    #[arg(long, default_value_t = 6.0)]
    pub guidance: f64,
    /// End to end: text to audio and video (sound tokens in the generation tower, the
    /// shipped audio decoder at the end).
    #[arg(long)]
    pub sound: bool,
    /// Transfer: control guidance scale (1 runs no control-free branch).
    #[arg(long, default_value_t = 1.0)]
    pub control_guidance: f64,
    /// Transfer: frames per chunk [default: the whole clip in one chunk].
    #[arg(long)]
    pub chunk_frames: Option<usize>,
    /// Transfer: frames each chunk reuses from the previous one.
    #[arg(long, default_value_t = 1)]
    pub conditional_frames: usize,
    /// VAE decode: spatial tiles decoded in sequence (1 = whole frames).
    #[arg(long, default_value_t = 1)]
    pub tiles: usize,
    /// A published workload (with --resolution, --precision): the whole request at NVIDIA's
    /// published settings on the full-size model, beside NVIDIA's published seconds, the
    /// ratio, peak memory and the FLOP floor. Replaces --part.
    #[arg(long, value_enum)]
    pub workload: Option<crate::bench_cell::WorkloadArg>,
    /// Resolution of --workload (repeatable; default 720p).
    #[arg(long = "resolution", value_enum)]
    pub resolutions: Vec<crate::bench_cell::ResolutionArg>,
    /// Precision of --workload: bf16, or fp8 (= --quantize fp8).
    #[arg(long, value_enum, default_value = "bf16")]
    pub precision: crate::bench_cell::PrecisionArg,
    /// Quantize the transformer at load (gen, e2e): fp8 = E4M3 weights and activations with
    /// per-tensor scales, as `phyai generate --quantize fp8`.
    #[arg(long, value_enum)]
    pub quantize: Option<crate::args::QuantizeArg>,
    /// With FP8 linear layers (--quantize fp8 or --precision fp8): run the video tower's
    /// attention in FP8 too (Hopper; gen, e2e, transfer, fp8-quality, --workload); with
    /// --part attention, time the FP8 kernel alone.
    #[arg(long)]
    pub fp8_attention: bool,
    /// Read: a weight folder (a checkpoint's `transformer/`) or a whole checkpoint.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// e2e, --workload: time the process's first request, first-use costs included (cuBLAS
    /// and cuDNN handles and plans, the memory pool), instead of a request after a short
    /// warm-up request at the same shapes.
    #[arg(long)]
    pub no_warmup: bool,
    /// gen, e2e, --workload: also report where the device time goes, stage by stage of
    /// the video tower's layers (gen: one more forward after the timed ones; e2e and
    /// --workload: the timed request itself, one CUDA event per stage boundary).
    #[arg(long)]
    pub profile: bool,
    /// Print one JSON object per measurement instead of text.
    #[arg(long)]
    pub json: bool,
}

fn quantize(a: &BenchArgs) -> Option<phyai::layers::fp8::Quantize> {
    a.quantize.map(Into::into)
}

/// The precision label of the transformer's linear layers (and attention).
fn precision(a: &BenchArgs) -> &'static str {
    precision_label(a.quantize.is_some(), a.fp8_attention)
}

/// `bf16`, `fp8` (FP8 linear layers) or `fp8+fp8-attention`; `exact-accum` is added where
/// the FP8 GEMMs promote their sums to f32 (`PHYAI_FP8_ACCUMULATION=exact`).
pub(crate) fn precision_label(fp8: bool, fp8_attention: bool) -> &'static str {
    use phyai::layers::fp8::Accumulation;
    let exact = Accumulation::from_env() == Accumulation::Exact;
    match (fp8, fp8_attention, exact) {
        (true, true, false) => "fp8+fp8-attention",
        (true, true, true) => "fp8+fp8-attention+exact-accum",
        (true, false, false) => "fp8",
        (true, false, true) => "fp8+exact-accum",
        _ => "bf16",
    }
}

fn spec(p: Preset) -> GenSpec {
    match p {
        Preset::W480 => bench::W480,
        Preset::W720 => bench::W720,
        Preset::I720 => bench::I720,
        Preset::Tiny => bench::TINY,
    }
}

/// The config the transformer parts measure: `--config` (validated) or Nano.
fn transformer_config(a: &BenchArgs) -> phyai::Result<TransformerConfig> {
    match &a.config {
        Some(path) => {
            let cfg: TransformerConfig = phyai::io::json::read_json(path)?;
            cfg.validate(path)?;
            Ok(cfg)
        }
        None => Ok(TransformerConfig::nano()),
    }
}

/// The CPU with --cpu, else CUDA device 0.
fn device(a: &BenchArgs) -> phyai::Result<Device> {
    if a.cpu {
        return Ok(Device::Cpu);
    }
    Device::new_cuda(0).map_err(|e| {
        phyai::Error::msg(format!(
            "--cpu not given and no CUDA device: {e} (this binary needs the `cuda` feature)"
        ))
    })
}

/// Prints one measurement as a JSON line.
pub(crate) fn emit(v: Value) {
    println!("{v}");
}

pub fn run(a: &BenchArgs) -> phyai::Result<()> {
    let cfg = transformer_config(a)?;
    if let Some(w) = a.workload {
        return crate::bench_cell::run(a, w, &cfg, &device(a)?);
    }
    if a.parts == [BenchPart::Read] {
        // Host-side only: needs no device.
        return crate::bench_read::run(a);
    }
    let device = device(a)?;
    let parts = if a.parts.is_empty() {
        vec![BenchPart::Attention, BenchPart::Gen]
    } else {
        a.parts.clone()
    };
    let presets = if a.presets.is_empty() {
        vec![Preset::W480, Preset::W720]
    } else {
        a.presets.clone()
    };
    for part in parts {
        for &p in &presets {
            let g = spec(p);
            match part {
                BenchPart::Attention => attention(&device, &cfg, g, a)?,
                BenchPart::Gen => gen(&device, &cfg, g, a)?,
                BenchPart::Ops => ops(&device, &cfg, g, a)?,
                BenchPart::Vae => vae(&device, g, a)?,
                BenchPart::VaeTiles => {
                    for r in bench::vae_tiles_bench(&device, g, DType::BF16, &[2, 4, 8])? {
                        println!(
                            "vae-tiles {}: {}",
                            g.name,
                            serde_json::to_string(&r)
                                .map_err(|e| phyai::Error::msg(e.to_string()))?
                        );
                    }
                }
                BenchPart::Audio => audio(&device, &cfg, g, a)?,
                BenchPart::E2e => e2e(&device, &cfg, g, a)?,
                BenchPart::Fp8Gemm => fp8_gemm(&device, &cfg, g, a)?,
                BenchPart::Fp8Quality => fp8_quality(&device, &cfg, g, a)?,
                BenchPart::Transfer => transfer(&device, &cfg, g, a)?,
                BenchPart::Jit => {
                    for l in bench::jit_bench(&device)? {
                        let how = if l.compiled { "compiled image" } else { "PTX" };
                        if a.json {
                            emit(json!({"part": "jit", "module": l.module, "load_ms": l.ms,
                                "compiled": l.compiled, "ptx_kib": l.ptx_kib}));
                        } else {
                            println!(
                                "jit: {} ({how}; {} KiB of PTX): {:.1} ms",
                                l.module, l.ptx_kib, l.ms
                            );
                        }
                    }
                    break;
                }
                BenchPart::AudioOps => {
                    let ops = bench::audio_ops_bench(&device, cfg.base_fps, a.runs)?;
                    print_ops("audio-ops", &ops, a.json);
                    break;
                }
                BenchPart::Read => {
                    crate::bench_read::run(a)?;
                    break;
                }
                BenchPart::VaeOps => {
                    // One fixed shape (the 720p decoder's last stage): not per preset.
                    print_ops("vae-ops", &bench::vae_ops_bench(&device, a.runs)?, a.json);
                    break;
                }
            }
        }
        if part == BenchPart::Attention {
            // The text tower's causal pass, once per request and branch, over a long prompt
            // (at most the largest preset's video token count).
            let longest = presets
                .iter()
                .map(|&p| spec(p).tokens(&cfg))
                .max()
                .unwrap_or(0);
            let s = AttentionSpec::text(&cfg, TEXT_CAUSAL_TOKENS.min(longest), DType::BF16);
            report_attention(&format!("text-causal-{}", s.queries), s, &device, a)?;
        }
    }
    Ok(())
}

/// Text tokens of the causal text-tower attention measurement.
const TEXT_CAUSAL_TOKENS: usize = 4096;

fn attention(
    device: &Device,
    cfg: &TransformerConfig,
    g: GenSpec,
    a: &BenchArgs,
) -> phyai::Result<()> {
    let s = AttentionSpec::generation(cfg, g, DType::BF16);
    report_attention(g.name, s, device, a)
}

fn report_attention(
    name: &str,
    s: AttentionSpec,
    device: &Device,
    a: &BenchArgs,
) -> phyai::Result<()> {
    // FP8 runs the unmasked generation attention only; the causal text pass stays bf16.
    let fp8 = a.fp8_attention && !s.causal;
    let r = bench::attention_bench(device, s, a.runs, fp8)?;
    if a.json {
        let mut v = attention_json(name, &s, &r);
        v["precision"] = json!(if fp8 { "fp8" } else { "bf16" });
        emit(v);
    } else {
        println!(
            "attention {name}: {} queries × {} keys, {}/{} heads of {}, {}{}: median {:.2} ms \
             (min {:.2}, max {:.2}, {} runs) = {:.0} TFLOP/s; vs f32 reference {:.1e}",
            s.queries,
            s.keys,
            s.heads,
            s.kv_heads,
            s.head_dim,
            if fp8 { "fp8" } else { "bf16" },
            if s.causal { ", causal" } else { "" },
            r.timing.median_ms,
            r.timing.min_ms,
            r.timing.max_ms,
            r.timing.runs,
            r.tflops,
            r.check_rel_err
        );
    }
    Ok(())
}

/// The JSON line of one attention measurement; `check_rel_err` and `tflops` are `null`
/// when not finite.
fn attention_json(name: &str, s: &AttentionSpec, r: &bench::AttentionReport) -> Value {
    json!({
        "part": "attention",
        "preset": name,
        "heads": s.heads,
        "kv_heads": s.kv_heads,
        "head_dim": s.head_dim,
        "queries": s.queries,
        "keys": s.keys,
        "causal": s.causal,
        "median_ms": r.timing.median_ms,
        "min_ms": r.timing.min_ms,
        "max_ms": r.timing.max_ms,
        "runs": r.timing.runs,
        "tflops": r.tflops,
        "check_rel_err": r.check_rel_err,
    })
}

fn ops(device: &Device, cfg: &TransformerConfig, g: GenSpec, a: &BenchArgs) -> phyai::Result<()> {
    let n = g.tokens(cfg);
    let label = format!("ops {} ({n} tokens)", g.name);
    print_ops(
        &label,
        &bench::layer_ops_bench(device, cfg, n, a.runs)?,
        a.json,
    );
    Ok(())
}

fn print_ops(label: &str, ops: &[(String, bench::Timing)], as_json: bool) {
    for (name, tm) in ops {
        if as_json {
            emit(json!({
                "part": label,
                "op": name,
                "median_ms": tm.median_ms,
                "min_ms": tm.min_ms,
                "max_ms": tm.max_ms,
                "runs": tm.runs,
            }));
        } else {
            println!(
                "{label}: {name}: median {:.3} ms (min {:.3}, max {:.3})",
                tm.median_ms, tm.min_ms, tm.max_ms
            );
        }
    }
}

pub(crate) fn gib(b: Option<usize>) -> String {
    b.map_or("n/a".into(), |b| {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    })
}

fn vae(device: &Device, g: GenSpec, a: &BenchArgs) -> phyai::Result<()> {
    let r = bench::vae_bench(device, g, DType::BF16, a.tiles, a.runs)?;
    let [t, h, w] = r.latent;
    if a.json {
        emit(json!({
            "part": "vae",
            "preset": g.name,
            "latent": r.latent,
            "video": [r.frames, r.height, r.width],
            "tiles": a.tiles,
            "median_ms": r.decode.median_ms,
            "min_ms": r.decode.min_ms,
            "max_ms": r.decode.max_ms,
            "runs": r.decode.runs,
            "peak_bytes": r.peak_bytes,
            "steady_peak_bytes": r.steady_peak_bytes,
        }));
    } else {
        println!(
            "vae {}: latent {t}x{h}x{w} → {}x{}x{} frames, {} tile(s), bf16: decode median {:.0} ms \
             (min {:.0}, max {:.0}, {} runs); peak {} (after the first decode: {})",
            g.name,
            r.frames,
            r.height,
            r.width,
            a.tiles,
            r.decode.median_ms,
            r.decode.min_ms,
            r.decode.max_ms,
            r.decode.runs,
            gib(r.peak_bytes),
            gib(r.steady_peak_bytes)
        );
    }
    Ok(())
}

fn audio(device: &Device, cfg: &TransformerConfig, g: GenSpec, a: &BenchArgs) -> phyai::Result<()> {
    let r = bench::audio_bench(device, g, cfg.base_fps, DType::BF16, a.runs)?;
    if a.json {
        emit(json!({
            "part": "audio",
            "preset": g.name,
            "steps": r.steps,
            "channels": r.channels,
            "samples": r.samples,
            "median_ms": r.decode.median_ms,
            "min_ms": r.decode.min_ms,
            "max_ms": r.decode.max_ms,
            "runs": r.decode.runs,
            "peak_bytes": r.peak_bytes,
        }));
    } else {
        println!(
            "audio {}: latent 64x{} → {}x{} samples, bf16: decode median {:.1} ms \
             (min {:.1}, max {:.1}, {} runs); peak {}",
            g.name,
            r.steps,
            r.channels,
            r.samples,
            r.decode.median_ms,
            r.decode.min_ms,
            r.decode.max_ms,
            r.decode.runs,
            gib(r.peak_bytes)
        );
    }
    Ok(())
}

fn e2e(device: &Device, cfg: &TransformerConfig, g: GenSpec, a: &BenchArgs) -> phyai::Result<()> {
    let opts = bench::E2eOptions {
        steps: a.steps,
        guidance: a.guidance,
        layers: a.layers,
        dtype: DType::BF16,
        sound: a.sound,
        quantize: quantize(a),
        fp8_attention: a.fp8_attention,
        weight_seed: None,
        conditioning: bench::Conditioning::Text,
        warmup_steps: if a.no_warmup {
            0
        } else {
            bench::e2e::warmup_steps(a.steps, a.quantize.is_some())
        },
        profile: a.profile,
    };
    let r = bench::e2e_bench(device, cfg, g, opts)?;
    if let Some(p) = &r.profile {
        print_profile(g.name, p, a.json);
    }
    let stage = |name: &str| {
        r.stages
            .iter()
            .find(|(k, _)| k == name)
            .map_or(0.0, |s| s.1)
    };
    if a.json {
        let mut v = e2e_json(g.name, &r);
        v["precision"] = json!(precision(a));
        emit(v);
    } else {
        println!(
            "e2e {}: {} layers, {} steps, guidance {}, {}: total {:.2} s (text {:.2} s, denoise \
             {:.2} s = {:.0} ms/step, decode {:.2} s); peak {}; video {:?} in [{:.3}, {:.3}], \
             mean {:.3}, {} non-finite",
            g.name,
            r.layers,
            r.steps,
            r.guidance,
            precision(a),
            r.total_ms / 1e3,
            stage("text") / 1e3,
            stage("denoise") / 1e3,
            stage("denoise") / r.steps.max(1) as f64,
            stage("decode") / 1e3,
            gib(r.peak_bytes),
            r.video,
            r.min,
            r.max,
            r.mean,
            r.non_finite
        );
        if let Some((dims, peak, bad)) = &r.audio {
            println!(
                "e2e {}: sound {dims:?}, |x| ≤ {peak:.3}, {bad} non-finite (sound decode {:.2} s)",
                g.name,
                stage("audio") / 1e3
            );
        }
    }
    Ok(())
}

fn transfer(
    device: &Device,
    cfg: &TransformerConfig,
    g: GenSpec,
    a: &BenchArgs,
) -> phyai::Result<()> {
    let opts = bench::TransferOptions {
        steps: a.steps,
        guidance: a.guidance,
        control_guidance: a.control_guidance,
        chunk_frames: a.chunk_frames,
        conditional_frames: a.conditional_frames,
        layers: a.layers,
        // bf16 on the GPU; f32 on the CPU, whose matmuls have no bf16 (checking the command).
        dtype: if device.is_cpu() {
            DType::F32
        } else {
            DType::BF16
        },
        quantize: quantize(a),
        fp8_attention: a.fp8_attention,
    };
    let r = bench::transfer_bench(device, cfg, g, opts)?;
    // With fewer layers, the full model's time: the denoising stage scaled by the layer ratio.
    let full_layers = cfg.num_hidden_layers;
    let denoise_ms = r
        .stages
        .iter()
        .find(|(k, _)| k == "denoise")
        .map_or(0.0, |(_, ms)| *ms);
    let scale = full_layers as f64 / r.layers.max(1) as f64;
    let full_model_s = (r.total_ms + denoise_ms * (scale - 1.0)) / 1e3;
    let scaled = r.layers < full_layers;
    if a.json {
        let mut v = e2e_json(g.name, &r);
        v["part"] = json!("transfer");
        v["full_layers"] = json!(full_layers);
        v["scaled_from_layers"] = json!(scaled);
        v["full_model_seconds"] = json!(full_model_s);
        v["precision"] = json!(precision(a));
        v["control_guidance"] = json!(a.control_guidance);
        v["chunk_frames"] = json!(a.chunk_frames);
        emit(v);
    } else {
        let stages: Vec<String> = r
            .stages
            .iter()
            .map(|(k, ms)| format!("{k} {:.2} s", ms / 1e3))
            .collect();
        println!(
            "transfer {} (edge): {} layers, {} steps, guidance {}, control guidance {}, {:?} \
             ({}): total {:.2} s ({}); peak {}; video {:?} in [{:.3}, {:.3}], mean {:.3}, {} non-finite",
            g.name,
            r.layers,
            r.steps,
            r.guidance,
            a.control_guidance,
            opts.dtype,
            precision(a),
            r.total_ms / 1e3,
            stages.join(", "),
            gib(r.peak_bytes),
            r.video,
            r.min,
            r.max,
            r.mean,
            r.non_finite
        );
        if scaled {
            println!(
                "  full model ({full_layers} layers, denoising scaled from {}): {full_model_s:.1} s",
                r.layers
            );
        }
    }
    Ok(())
}

/// The JSON line of one end-to-end run: the engine's stages as `<stage>_ms`; `min`,
/// `max` and `mean` of the video (and the sound's `peak`) are `null` when not finite.
pub(crate) fn e2e_json(preset: &str, r: &bench::E2eReport) -> Value {
    let mut v = json!({
        "part": "e2e",
        "preset": preset,
        "layers": r.layers,
        "steps": r.steps,
        "guidance": r.guidance,
        "total_ms": r.total_ms,
        "warmup_ms": r.warmup_ms,
    });
    for (stage, ms) in &r.stages {
        v[format!("{stage}_ms")] = json!(ms);
    }
    v["peak_bytes"] = json!(r.peak_bytes);
    v["video"] = json!(r.video);
    v["min"] = json!(r.min);
    v["max"] = json!(r.max);
    v["mean"] = json!(r.mean);
    v["non_finite"] = json!(r.non_finite);
    v["audio"] = match &r.audio {
        Some((dims, peak, bad)) => json!({"dims": dims, "peak": peak, "non_finite": bad}),
        None => Value::Null,
    };
    v
}

fn gen(device: &Device, cfg: &TransformerConfig, g: GenSpec, a: &BenchArgs) -> phyai::Result<()> {
    let r = bench::gen_bench(
        device,
        cfg,
        g,
        a.layers,
        DType::BF16,
        quantize(a),
        a.fp8_attention,
        a.runs,
        a.profile,
    )?;
    if let Some(p) = &r.profile {
        print_profile(g.name, p, a.json);
    }
    let full_layers = cfg.num_hidden_layers;
    if a.json {
        emit(json!({
            "part": "gen",
            "preset": g.name,
            "precision": precision(a),
            "tokens": r.tokens,
            "layers": r.layers,
            "full_layers": full_layers,
            "und_ms": r.und.median_ms,
            "gen_median_ms": r.gen.median_ms,
            "gen_min_ms": r.gen.min_ms,
            "gen_max_ms": r.gen.max_ms,
            "gen_full_ms": r.gen_full_ms,
            "tflops": r.tflops,
            "peak_bytes": r.peak_bytes,
        }));
    } else {
        println!(
            "gen {}: {} tokens, {} layers, {}: text tower {:.1} ms; generation forward median \
             {:.1} ms (min {:.1}, max {:.1}) = {:.0} TFLOP/s; {full_layers} layers ≈ {:.0} ms; \
             peak {}",
            g.name,
            r.tokens,
            r.layers,
            precision(a),
            r.und.median_ms,
            r.gen.median_ms,
            r.gen.min_ms,
            r.gen.max_ms,
            r.tflops,
            r.gen_full_ms,
            gib(r.peak_bytes)
        );
    }
    Ok(())
}

/// Device time per stage (see `phyai::layers::profile`), largest first, with its share.
pub(crate) fn print_profile(
    what: &str,
    stages: &[phyai::layers::profile::StageTime],
    as_json: bool,
) {
    let total: f64 = stages.iter().map(|s| s.ms).sum();
    if as_json {
        emit(json!({"part": "profile", "of": what, "total_ms": total, "stages": stages}));
        return;
    }
    let mut sorted = stages.to_vec();
    sorted.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    println!("profile of {what}: {total:.1} ms of device time between the first and last mark");
    for s in &sorted {
        println!(
            "  {:<34} {:>10.2} ms {:>5.1}%  ({} calls, {:.3} ms each)",
            s.stage,
            s.ms,
            100.0 * s.ms / total.max(1e-9),
            s.calls,
            s.ms / s.calls.max(1) as f64
        );
    }
}

fn fp8_gemm(
    device: &Device,
    cfg: &TransformerConfig,
    g: GenSpec,
    a: &BenchArgs,
) -> phyai::Result<()> {
    for r in bench::fp8_gemm_bench(device, cfg, g, a.runs)? {
        let alone = r.fp8_gemm.as_ref();
        if a.json {
            emit(json!({
                "part": "fp8-gemm",
                "preset": g.name,
                "gemm": r.name,
                "m": r.m, "n": r.n, "k": r.k,
                "bf16_ms": r.bf16.median_ms,
                "bf16_tflops": r.tflops(&r.bf16),
                "fp8_layer_ms": r.fp8_layer.median_ms,
                "fp8_layer_tflops": r.tflops(&r.fp8_layer),
                "fp8_gemm_ms": alone.map(|t| t.exact.median_ms),
                "fp8_gemm_tflops": alone.map(|t| r.tflops(&t.exact)),
                "fp8_gemm_rel_err": alone.map(|t| t.exact_rel_err),
                "fp8_gemm_fast_ms": alone.map(|t| t.fast.median_ms),
                "fp8_gemm_fast_tflops": alone.map(|t| r.tflops(&t.fast)),
                "fp8_gemm_fast_rel_err": alone.map(|t| t.fast_rel_err),
                "rel_err": r.rel_err,
            }));
        } else {
            let alone = match alone {
                Some(t) => format!(
                    "; GEMM alone {:.3} ms = {:.0} TFLOP/s (fast accumulation {:.3} ms = {:.0} \
                     TFLOP/s, rel. err {:.2e} vs {:.2e})",
                    t.exact.median_ms,
                    r.tflops(&t.exact),
                    t.fast.median_ms,
                    r.tflops(&t.fast),
                    t.fast_rel_err,
                    t.exact_rel_err
                ),
                None => String::new(),
            };
            println!(
                "fp8-gemm {} {} [{}x{}]x[{}x{}]ᵀ: bf16 {:.3} ms = {:.0} TFLOP/s; fp8 (quantize + \
                 GEMM) {:.3} ms = {:.0} TFLOP/s{alone}; rel. err vs bf16 {:.2e}",
                g.name,
                r.name,
                r.m,
                r.k,
                r.n,
                r.k,
                r.bf16.median_ms,
                r.tflops(&r.bf16),
                r.fp8_layer.median_ms,
                r.tflops(&r.fp8_layer),
                r.rel_err
            );
        }
    }
    Ok(())
}

fn fp8_quality(
    device: &Device,
    cfg: &TransformerConfig,
    g: GenSpec,
    a: &BenchArgs,
) -> phyai::Result<()> {
    let opts = bench::E2eOptions {
        steps: a.steps,
        guidance: a.guidance,
        layers: a.layers,
        dtype: DType::BF16,
        sound: false,
        quantize: None,
        fp8_attention: a.fp8_attention,
        weight_seed: None,
        conditioning: bench::Conditioning::Text,
        // Both requests are timed as they come: the quality is what this part measures.
        warmup_steps: 0,
        profile: false,
    };
    let q = bench::fp8_quality_bench(device, cfg, g, opts)?;
    if a.json {
        let mut b = e2e_json(g.name, &q.bf16);
        b["precision"] = json!("bf16");
        let mut f = e2e_json(g.name, &q.fp8);
        f["precision"] = json!("fp8");
        emit(json!({
            "part": "fp8-quality",
            "preset": g.name,
            "velocity_rel_err": q.velocity_rel_err,
            "psnr_db": q.psnr_db,
            "bf16": b,
            "fp8": f,
        }));
    } else {
        println!(
            "fp8-quality {}: velocity rel. err vs bf16 {:.2e}; video PSNR vs bf16 {:.1} dB \
             ({} steps, guidance {}); bf16 {:.2} s (peak {}), fp8 {:.2} s (peak {})",
            g.name,
            q.velocity_rel_err,
            q.psnr_db,
            a.steps,
            a.guidance,
            q.bf16.total_ms / 1e3,
            gib(q.bf16.peak_bytes),
            q.fp8.total_ms / 1e3,
            gib(q.fp8.peak_bytes)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(ms: f64) -> bench::Timing {
        bench::Timing {
            median_ms: ms,
            min_ms: ms,
            max_ms: ms,
            runs: 1,
        }
    }

    #[test]
    fn non_finite_numbers_are_valid_json_nulls() {
        let s = AttentionSpec::text(&TransformerConfig::nano(), 64, DType::BF16);
        let r = bench::AttentionReport {
            timing: timing(1.5),
            tflops: f64::INFINITY,
            check_rel_err: f32::NAN,
        };
        let line = attention_json("x", &s, &r).to_string();
        let back: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["check_rel_err"], Value::Null, "{line}");
        assert_eq!(back["tflops"], Value::Null, "{line}");
        assert_eq!(back["median_ms"], 1.5);
        assert_eq!(back["heads"], 32);
        assert_eq!(back["queries"], 64);

        let e = bench::E2eReport {
            layers: 2,
            steps: 3,
            guidance: 6.0,
            total_ms: 10.0,
            warmup_ms: None,
            stages: vec![("text".into(), 1.0), ("denoise".into(), 8.0)],
            peak_bytes: None,
            video: vec![1, 3, 5, 64, 96],
            min: f32::NAN,
            max: f32::INFINITY,
            mean: f32::NEG_INFINITY,
            non_finite: 7,
            audio: Some((vec![1, 2, 100], f32::NAN, 100)),
            pixels: candle_core::Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
            profile: None,
        };
        let line = e2e_json("tiny", &e).to_string();
        let back: Value = serde_json::from_str(&line).unwrap();
        for key in ["min", "max", "mean", "peak_bytes"] {
            assert_eq!(back[key], Value::Null, "{key} in {line}");
        }
        assert_eq!(back["audio"]["peak"], Value::Null, "{line}");
        assert_eq!(back["audio"]["non_finite"], 100);
        assert_eq!(back["denoise_ms"], 8.0);
        assert_eq!(back["non_finite"], 7);
        assert_eq!(back["video"], json!([1, 3, 5, 64, 96]));
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointSizeArg {
    /// The demo checkpoint's tiny models.
    Tiny,
    /// Cosmos3-Nano (15.2 B-parameter transformer, about 34 GB in all).
    Nano,
}

#[derive(Args, Debug)]
pub struct MakeCheckpointArgs {
    /// Output folder (created; must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = CheckpointSizeArg::Nano)]
    pub size: CheckpointSizeArg,
    /// Largest transformer shard in MB (10^6 bytes); the published checkpoints use 5000.
    #[arg(long, default_value_t = 5000)]
    pub shard_mb: u64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// `phyai make-checkpoint`: a random-weights checkpoint in the published layout.
pub fn make_checkpoint(a: &MakeCheckpointArgs) -> phyai::Result<()> {
    use phyai::bench::checkpoint::{write_random_checkpoint, CheckpointOptions, CheckpointSize};
    if a.shard_mb == 0 {
        return Err(phyai::Error::invalid("--shard-mb", "must be at least 1"));
    }
    let mut opts = CheckpointOptions::new(match a.size {
        CheckpointSizeArg::Tiny => CheckpointSize::Tiny,
        CheckpointSizeArg::Nano => CheckpointSize::Nano,
    });
    opts.max_shard_bytes = a.shard_mb * 1_000_000;
    opts.seed = a.seed;
    let bar = crate::progress::bytes_bar("write", a.quiet);
    let t = std::time::Instant::now();
    write_random_checkpoint(&a.out, &opts, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    if !a.quiet {
        eprintln!(
            "wrote a RANDOM-weights checkpoint to {} in {:.1} s",
            a.out.display(),
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
