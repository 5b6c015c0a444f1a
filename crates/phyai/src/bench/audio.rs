//! The sound decode of a T2AV request: the shipped audio VAE decoder (Oobleck, 320 base
//! channels, strides 8·6·5·4·2 applied in that order) with random weights, on the latent a
//! request of the preset's frame count gets at the model's frame rate (W720: 189 frames at
//! 24 fps → 197 steps → 378,240 samples per channel).

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::{peak_memory, reset_peak_memory, time_runs, GenSpec, Timing};
use crate::io::weights::{WeightStore, Weights};
use crate::models::cosmos3::vae::{AudioDecoder, AudioVaeConfig};
use crate::Result;

#[derive(Debug, Clone)]
pub struct AudioReport {
    /// Sound latent steps decoded.
    pub steps: usize,
    /// Output `[channels, samples]`.
    pub channels: usize,
    pub samples: usize,
    pub decode: Timing,
    pub peak_bytes: Option<usize>,
}

/// Decodes a random sound latent of `spec`'s duration at `fps` `runs` times after one
/// warm-up.
pub fn audio_bench(
    device: &Device,
    spec: GenSpec,
    fps: f64,
    dtype: DType,
    runs: usize,
) -> Result<AudioReport> {
    let cfg = AudioVaeConfig::default();
    let store = Arc::new(WeightStore::random_on_device(std::path::Path::new(
        "bench-audio",
    )));
    let decoder = AudioDecoder::new(&cfg, &Weights::new(store, dtype, device))?;
    let steps = spec.sound_steps(&cfg, fps);
    let latent =
        Tensor::randn(0f32, 1.0, (1, cfg.vocoder_input_dim, steps), device)?.to_dtype(dtype)?;
    let mut dims = Vec::new();
    reset_peak_memory(device);
    let decode = time_runs(device, 1, runs, || {
        dims = decoder.decode(&latent)?.dims().to_vec();
        Ok(())
    })?;
    Ok(AudioReport {
        steps,
        channels: dims.get(1).copied().unwrap_or(0),
        samples: dims.get(2).copied().unwrap_or(0),
        decode,
        peak_bytes: peak_memory(device),
    })
}

/// Where the W720 sound decode (at `fps`) goes: each up-block of the shipped decoder alone
/// at its input shape, then the pieces of the last block (320 channels, 378,240 samples).
pub fn audio_ops_bench(device: &Device, fps: f64, runs: usize) -> Result<Vec<(String, Timing)>> {
    use crate::models::cosmos3::vae::audio::{Conv1d, Snake, UpBlock};
    let dt = DType::BF16;
    let store = Arc::new(WeightStore::random_on_device(std::path::Path::new(
        "bench-audio-ops",
    )));
    let w = Weights::new(store, dt, device);
    let rand = |c: usize, t: usize| -> Result<Tensor> {
        Ok(Tensor::randn(0f32, 1.0, (1, c, t), device)?.to_dtype(dt)?)
    };
    let mut out = Vec::new();
    let mut time = |name: String, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        out.push((name, time_runs(device, 1, runs, f)?));
        Ok(())
    };
    let cfg = AudioVaeConfig::default();
    let mut mults = vec![1];
    mults.extend(cfg.dec_c_mults.iter());
    let n = cfg.dec_strides.len();
    let mut t = super::W720.sound_steps(&cfg, fps);
    let mut c = cfg.dec_dim * mults[n];
    for (i, &s) in cfg.dec_strides.iter().rev().enumerate() {
        let o = cfg.dec_dim * mults[n - i - 1];
        let block = UpBlock::new(&w.pp("block").pp(i), c, o, s)?;
        let x = rand(c, t)?;
        time(
            format!("up-block {i}: {c}->{o} ch, x{s}, {t} -> {} samples", t * s),
            &mut || block.forward(&x).map(drop),
        )?;
        (c, t) = (o, t * s);
    }
    let x = rand(c, t)?;
    let snake = Snake::new(&w.pp("snake"), c)?;
    time(format!("snake {c} ch x {t}"), &mut || {
        snake.forward(&x).map(drop)
    })?;
    for d in [1usize, 9] {
        let conv = Conv1d::new(&w.pp("conv7"), c, c, 7, 3 * d, d, true)?;
        time(format!("conv1d k7 dilation {d}, {c} ch x {t}"), &mut || {
            conv.forward(&x).map(drop)
        })?;
    }
    let conv = Conv1d::new(&w.pp("conv1"), c, c, 1, 0, 1, true)?;
    time(format!("conv1d k1, {c} ch x {t}"), &mut || {
        conv.forward(&x).map(drop)
    })?;
    let plain = Conv1d::new(&w.pp("conv1"), c, c, 1, 0, 1, false)?;
    time(format!("conv1d k1 without bias, {c} ch x {t}"), &mut || {
        plain.forward(&x).map(drop)
    })?;
    time(format!("conv1d k1 twice, {c} ch x {t}"), &mut || {
        conv.forward(&x)?;
        conv.forward(&x).map(drop)
    })?;
    let half = rand(c, t / 2)?;
    let k = Tensor::randn(0f32, 0.02, (c, c, 4), device)?.to_dtype(dt)?;
    time(
        format!("conv_transpose1d x2 k4, {c} ch x {}", t / 2),
        &mut || {
            half.conv_transpose1d(&k, 0, 0, 2, 1, 1)
                .map(drop)
                .map_err(Into::into)
        },
    )?;
    Ok(out)
}
