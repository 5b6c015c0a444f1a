//! `phyai bench --workload W --resolution R --precision P`: one request of NVIDIA's
//! published Cosmos3-Nano latency table, run at its settings, printed beside the
//! published cells with the ratio, peak memory and the FLOP floor.

use candle_core::Device;
use clap::ValueEnum;
use phyai::bench::published::{cell_bench, implied_tflops, CellReport, Resolution, Workload};
use phyai::models::cosmos3::transformer::TransformerConfig;
use serde_json::json;

use crate::bench::{e2e_json, emit, gib, BenchArgs};

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadArg {
    T2v,
    I2v,
    T2i,
    T2av,
    V2v,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolutionArg {
    #[value(name = "256p")]
    P256,
    #[value(name = "480p")]
    P480,
    #[value(name = "720p")]
    P720,
    /// 96×64, 5 frames: checks the command on a CPU (with a small --config).
    Tiny,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrecisionArg {
    Bf16,
    Fp8,
}

pub fn run(
    a: &BenchArgs,
    w: WorkloadArg,
    cfg: &TransformerConfig,
    device: &Device,
) -> phyai::Result<()> {
    let workload = match w {
        WorkloadArg::T2v => Workload::T2v,
        WorkloadArg::I2v => Workload::I2v,
        WorkloadArg::T2i => Workload::T2i,
        WorkloadArg::T2av => Workload::T2av,
        WorkloadArg::V2v => Workload::V2v,
    };
    let resolutions = if a.resolutions.is_empty() {
        vec![ResolutionArg::P720]
    } else {
        a.resolutions.clone()
    };
    let fp8 = a.precision == PrecisionArg::Fp8 || a.quantize.is_some();
    let fp8_attention = fp8 && a.fp8_attention;
    for r in resolutions {
        let res = match r {
            ResolutionArg::P256 => Resolution::P256,
            ResolutionArg::P480 => Resolution::P480,
            ResolutionArg::P720 => Resolution::P720,
            ResolutionArg::Tiny => Resolution::Tiny,
        };
        let c = cell_bench(
            device,
            cfg,
            workload,
            res,
            fp8,
            fp8_attention,
            a.steps,
            a.guidance,
            a.layers,
            !a.no_warmup,
            a.profile,
        )?;
        report(&c, fp8_attention, a.json);
        if let Some(p) = &c.run.profile {
            let what = format!("{} {}", c.workload.name(), c.resolution.name());
            crate::bench::print_profile(&what, p, a.json);
        }
    }
    Ok(())
}

fn report(c: &CellReport, fp8_attention: bool, as_json: bool) {
    let p = c.published.as_ref();
    let ratio = |v: Option<f64>| v.map(|v| c.seconds / v);
    let precision = crate::bench::precision_label(c.fp8, fp8_attention);
    let scaled = c.layers < c.full_layers;
    if as_json {
        emit(json!({
            "part": "workload",
            "workload": c.workload.name(),
            "resolution": c.resolution.name(),
            "precision": precision,
            "seconds": c.seconds,
            "layers": c.layers,
            "full_layers": c.full_layers,
            "scaled_from_layers": scaled,
            "peak_bytes": c.run.peak_bytes,
            "flops": c.flops,
            "flop_floor_s": c.floor_s,
            "tflops": implied_tflops(c.flops, c.seconds).0,
            "published": p.map(|p| json!({
                "nvidia_pytorch_fp8": p.nvidia_pytorch_fp8,
                "vllm_omni_bf16": p.vllm_omni_bf16,
                "nim_fp8": p.nim_fp8,
            })),
            "ratio_to_nvidia_fp8": ratio(p.and_then(|p| p.nvidia_pytorch_fp8)),
            "nvidia_fp8_implied_tflops": p
                .and_then(|p| p.nvidia_pytorch_fp8)
                .map(|s| implied_tflops(c.flops, s).0),
            "ratio_to_vllm_omni_bf16": ratio(p.and_then(|p| p.vllm_omni_bf16)),
            "run": e2e_json(c.resolution.name(), &c.run),
        }));
        return;
    }
    let cell = |v: Option<f64>| match v {
        Some(v) => format!("{v:.2} s (ours ×{:.2})", c.seconds / v),
        None => "-".into(),
    };
    let published = match p {
        Some(p) => format!(
            "published: NVIDIA PyTorch FP8 {}, vLLM-Omni bf16 {}, NIM FP8 {}",
            cell(p.nvidia_pytorch_fp8),
            cell(p.vllm_omni_bf16),
            cell(p.nim_fp8)
        ),
        None => "no published cell".into(),
    };
    let ours = implied_tflops(c.flops, c.seconds).0;
    let implied = match p.and_then(|p| p.nvidia_pytorch_fp8) {
        Some(s) => {
            let (t, frac) = implied_tflops(c.flops, s);
            format!(
                "; over the whole request ours runs {ours:.0} TFLOP/s, NVIDIA's FP8 time implies \
                 {t:.0} ({:.0}% of the dense FP8 peak)",
                100.0 * frac
            )
        }
        None => String::new(),
    };
    println!(
        "{} {} {precision}: {:.2} s{}; peak {}; FLOP floor {:.2} s ({:.0} PFLOP of transformer \
         forwards at the H200's dense {precision} peak); {published}{implied}",
        c.workload.name(),
        c.resolution.name(),
        c.seconds,
        if scaled {
            format!(
                " (denoising scaled from {} of {} layers)",
                c.layers, c.full_layers
            )
        } else {
            String::new()
        },
        gib(c.run.peak_bytes),
        c.floor_s,
        c.flops / 1e15
    );
}
