//! Peak memory of one Wan2.2 VAE decode on the CPU at the shipped decoder widths (base 256,
//! 48 latent channels) with synthetic f32 weights: the resident set after building the
//! decoder and the peak during the decode (Linux `/proc/self/status`; 0 elsewhere).
//!
//! `cargo run --release -p phyai --example vae_memory_probe -- T,H,W` (latent size,
//! default 2,8,8).

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use phyai::bench::wan22_vae_config;
use phyai::io::weights::{WeightStore, Weights};
use phyai::models::cosmos3::vae::WanDecoder;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let size = std::env::args().nth(1).unwrap_or_else(|| "2,8,8".into());
    let dims = size
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("latent size {size:?}: {e} (expected T,H,W)"))?;
    let [t, h, w] = dims[..] else {
        return Err(format!("latent size {size:?}: expected T,H,W").into());
    };
    let cfg = wan22_vae_config();
    let store = Arc::new(WeightStore::synthetic(Path::new("probe"), 0));
    let dec = WanDecoder::new(&cfg, &Weights::new(store, DType::F32, &Device::Cpu))?;
    let latent = Tensor::randn(0f32, 1.0, (1, cfg.z_dim, t, h, w), &Device::Cpu)?;
    let loaded = proc_status_kb("VmRSS:");
    // Reset the peak-RSS mark so VmHWM reports the decode alone (Linux; ignored elsewhere).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let t0 = std::time::Instant::now();
    let out = dec.decode(&latent)?;
    let secs = t0.elapsed().as_secs_f64();
    let peak = proc_status_kb("VmHWM:");
    println!(
        "probe {:?} -> {:?} in {secs:.1}s; RSS after load {} MiB, peak {} MiB",
        latent.dims(),
        out.dims(),
        loaded / 1024,
        peak / 1024
    );
    Ok(())
}

/// A `/proc/self/status` field in KiB (0 where unavailable).
fn proc_status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
