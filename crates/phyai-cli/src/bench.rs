//! `phyai bench`: the attention kernel at the generation shape, the generation-tower
//! forward of the Nano config (random weights) at the W480 and W720 token counts, the VAE,
//! the audio VAE, and one whole request end to end.

use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use phyai::bench::{self, AttentionSpec, GenSpec};

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchPart {
    /// Attention alone at the generation shape (and the causal text pass).
    Attention,
    /// Text tower and one generation-tower forward of the Nano config.
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
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    W480,
    W720,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What to measure (repeatable; default: all).
    #[arg(long = "part", value_enum)]
    pub parts: Vec<BenchPart>,
    /// Workloads (repeatable; default: W480 and W720).
    #[arg(long = "preset", value_enum)]
    pub presets: Vec<Preset>,
    /// Build only this many of the 36 layers and scale the forward time (memory-limited runs).
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
    /// VAE decode: spatial tiles decoded in sequence (1 = whole frames).
    #[arg(long, default_value_t = 1)]
    pub tiles: usize,
    /// Print one JSON object per measurement instead of text.
    #[arg(long)]
    pub json: bool,
}

fn spec(p: Preset) -> GenSpec {
    match p {
        Preset::W480 => bench::W480,
        Preset::W720 => bench::W720,
    }
}

pub fn run(a: &BenchArgs) -> phyai::Result<()> {
    let device = if a.cpu {
        Device::Cpu
    } else {
        Device::new_cuda(0).map_err(|e| {
            phyai::Error::msg(format!(
                "--cpu not given and no CUDA device: {e} (this binary needs the `cuda` feature)"
            ))
        })?
    };
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
                BenchPart::Attention => attention(&device, g, a)?,
                BenchPart::Gen => gen(&device, g, a)?,
                BenchPart::Ops => ops(&device, g, a)?,
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
                BenchPart::Audio => audio(&device, g, a)?,
                BenchPart::E2e => e2e(&device, g, a)?,
                BenchPart::Jit => {
                    for (name, ms) in bench::jit_bench(&device)? {
                        println!("jit: {name}: {ms:.0} ms");
                    }
                    break;
                }
                BenchPart::AudioOps => {
                    print_ops("audio-ops", &bench::audio_ops_bench(&device, a.runs)?);
                    break;
                }
                BenchPart::VaeOps => {
                    // One fixed shape (the 720p decoder's last stage): not per preset.
                    print_ops("vae-ops", &bench::vae_ops_bench(&device, a.runs)?);
                    break;
                }
            }
        }
        if part == BenchPart::Attention {
            // The text tower's causal pass, once per request and branch.
            let s = AttentionSpec {
                heads: 32,
                kv_heads: 8,
                head_dim: 128,
                queries: 4096,
                keys: 4096,
                causal: true,
                dtype: DType::BF16,
            };
            report_attention("text-causal-4096", s, &device, a)?;
        }
    }
    Ok(())
}

fn attention(device: &Device, g: GenSpec, a: &BenchArgs) -> phyai::Result<()> {
    let [t, h, w] = g.latent;
    let n = t * h.div_ceil(2) * w.div_ceil(2);
    let s = AttentionSpec {
        heads: 32,
        kv_heads: 8,
        head_dim: 128,
        queries: n,
        keys: n + g.text_tokens,
        causal: false,
        dtype: DType::BF16,
    };
    report_attention(g.name, s, device, a)
}

fn report_attention(
    name: &str,
    s: AttentionSpec,
    device: &Device,
    a: &BenchArgs,
) -> phyai::Result<()> {
    let r = bench::attention_bench(device, s, a.runs)?;
    if a.json {
        println!(
            "{{\"part\":\"attention\",\"preset\":\"{name}\",\"queries\":{},\"keys\":{},\
             \"causal\":{},\"median_ms\":{:.3},\"min_ms\":{:.3},\"max_ms\":{:.3},\
             \"tflops\":{:.1},\"check_rel_err\":{:.3e}}}",
            s.queries,
            s.keys,
            s.causal,
            r.timing.median_ms,
            r.timing.min_ms,
            r.timing.max_ms,
            r.tflops,
            r.check_rel_err
        );
    } else {
        println!(
            "attention {name}: {} queries × {} keys, 32/8 heads of 128, bf16{}: median {:.2} ms \
             (min {:.2}, max {:.2}, {} runs) = {:.0} TFLOP/s; vs f32 reference {:.1e}",
            s.queries,
            s.keys,
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

fn ops(device: &Device, g: GenSpec, a: &BenchArgs) -> phyai::Result<()> {
    let [t, h, w] = g.latent;
    let n = t * h.div_ceil(2) * w.div_ceil(2);
    let label = format!("ops {} ({n} tokens)", g.name);
    print_ops(&label, &bench::layer_ops_bench(device, n, a.runs)?);
    Ok(())
}

fn print_ops(label: &str, ops: &[(String, bench::Timing)]) {
    for (name, tm) in ops {
        println!(
            "{label}: {name}: median {:.3} ms (min {:.3}, max {:.3})",
            tm.median_ms, tm.min_ms, tm.max_ms
        );
    }
}

fn gib(b: Option<usize>) -> String {
    b.map_or("n/a".into(), |b| {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    })
}

fn vae(device: &Device, g: GenSpec, a: &BenchArgs) -> phyai::Result<()> {
    let r = bench::vae_bench(device, g, DType::BF16, a.tiles, a.runs)?;
    let [t, h, w] = r.latent;
    if a.json {
        println!(
            "{{\"part\":\"vae\",\"preset\":\"{}\",\"tiles\":{},\"median_ms\":{:.1},\
             \"min_ms\":{:.1},\"max_ms\":{:.1},\"peak_bytes\":{}}}",
            g.name,
            a.tiles,
            r.decode.median_ms,
            r.decode.min_ms,
            r.decode.max_ms,
            r.peak_bytes.map_or("null".into(), |b| b.to_string())
        );
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

fn audio(device: &Device, g: GenSpec, a: &BenchArgs) -> phyai::Result<()> {
    let r = bench::audio_bench(device, g, DType::BF16, a.runs)?;
    if a.json {
        println!(
            "{{\"part\":\"audio\",\"preset\":\"{}\",\"steps\":{},\"samples\":{},\
             \"median_ms\":{:.1},\"min_ms\":{:.1},\"max_ms\":{:.1},\"peak_bytes\":{}}}",
            g.name,
            r.steps,
            r.samples,
            r.decode.median_ms,
            r.decode.min_ms,
            r.decode.max_ms,
            r.peak_bytes.map_or("null".into(), |b| b.to_string())
        );
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

fn e2e(device: &Device, g: GenSpec, a: &BenchArgs) -> phyai::Result<()> {
    let r = bench::e2e_bench(
        device,
        g,
        a.steps,
        a.guidance,
        a.layers,
        DType::BF16,
        a.sound,
    )?;
    let stage = |name: &str| {
        r.stages
            .iter()
            .find(|(k, _)| k == name)
            .map_or(0.0, |s| s.1)
    };
    if a.json {
        let stages: Vec<String> = r
            .stages
            .iter()
            .map(|(k, v)| format!("\"{k}_ms\":{v:.1}"))
            .collect();
        println!(
            "{{\"part\":\"e2e\",\"preset\":\"{}\",\"layers\":{},\"steps\":{},\"guidance\":{},\
             \"total_ms\":{:.1},{},\"peak_bytes\":{},\"video\":{:?},\"min\":{},\"max\":{},\
             \"mean\":{},\"non_finite\":{},\"audio\":{}}}",
            g.name,
            r.layers,
            r.steps,
            r.guidance,
            r.total_ms,
            stages.join(","),
            r.peak_bytes.map_or("null".into(), |b| b.to_string()),
            r.video,
            r.min,
            r.max,
            r.mean,
            r.non_finite,
            r.audio
                .as_ref()
                .map_or("null".into(), |(d, peak, bad)| format!(
                    "{{\"dims\":{d:?},\"peak\":{peak},\"non_finite\":{bad}}}"
                ))
        );
    } else {
        println!(
            "e2e {}: {} layers, {} steps, guidance {}, bf16: total {:.2} s (text {:.2} s, denoise \
             {:.2} s = {:.0} ms/step, decode {:.2} s); peak {}; video {:?} in [{:.3}, {:.3}], \
             mean {:.3}, {} non-finite",
            g.name,
            r.layers,
            r.steps,
            r.guidance,
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

fn gen(device: &Device, g: GenSpec, a: &BenchArgs) -> phyai::Result<()> {
    let r = bench::gen_bench(device, g, a.layers, DType::BF16, a.runs)?;
    if a.json {
        println!(
            "{{\"part\":\"gen\",\"preset\":\"{}\",\"tokens\":{},\"layers\":{},\
             \"und_ms\":{:.2},\"gen_median_ms\":{:.2},\"gen_min_ms\":{:.2},\
             \"gen_max_ms\":{:.2},\"gen_36_layers_ms\":{:.1},\"tflops\":{:.1}}}",
            g.name,
            r.tokens,
            r.layers,
            r.und.median_ms,
            r.gen.median_ms,
            r.gen.min_ms,
            r.gen.max_ms,
            r.gen_full_ms,
            r.tflops
        );
    } else {
        println!(
            "gen {}: {} tokens, {} layers, bf16: text tower {:.1} ms; generation forward median \
             {:.1} ms (min {:.1}, max {:.1}) = {:.0} TFLOP/s; 36 layers ≈ {:.0} ms; peak {}",
            g.name,
            r.tokens,
            r.layers,
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
