//! How far the tiled video decode (one spatial tile per rank, blended) is from the full
//! decode at real sizes: PSNR of the tiled clip against the full one, and the time of each,
//! on the Wan2.2 VAE with random weights. The tiles are decoded in sequence on one device,
//! which gives exactly what that many ranks produce (see `vae::decode_tiled`).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::{wan22_vae_config, GenSpec};
use crate::io::weights::{WeightStore, Weights};
use crate::models::cosmos3::vae::{decode_tiled, WanDecoder};
use crate::Result;

#[derive(Debug, Clone, Serialize)]
pub struct TileReport {
    /// Tiles (ranks) of the decode; 1 is the full decode.
    pub tiles: usize,
    pub ms: f64,
    /// PSNR of the tiled clip against the full one, pixels in [0, 1] (∞ for 1 tile).
    pub psnr_db: f64,
    /// Largest pixel difference, in [0, 1] units.
    pub max_abs: f64,
}

/// Pixels `[1, 3, T, H, W]` in the decoder's [−1, 1] → [0, 1] as the post-processor maps
/// them, f32 on the host.
fn to_unit(v: &Tensor) -> Result<Tensor> {
    Ok(((v.to_dtype(DType::F32)? + 1.0)? * 0.5)?
        .clamp(0f32, 1f32)?
        .to_device(&Device::Cpu)?)
}

/// PSNR (peak 1) and max |a − b| of two clips in [0, 1].
pub fn psnr(a: &Tensor, b: &Tensor) -> Result<(f64, f64)> {
    let d = (a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?;
    let mse = d.sqr()?.mean_all()?.to_scalar::<f64>()?;
    let max = d.abs()?.max_all()?.to_scalar::<f64>()?;
    let db = if mse == 0.0 {
        f64::INFINITY
    } else {
        -10.0 * mse.log10()
    };
    Ok((db, max))
}

/// Decodes one random latent of `spec`'s grid whole and in each tile count of `tiles`.
pub fn vae_tiles_bench(
    device: &Device,
    spec: GenSpec,
    dtype: DType,
    tiles: &[usize],
) -> Result<Vec<TileReport>> {
    let cfg = wan22_vae_config();
    let store = Arc::new(WeightStore::random_on_device(Path::new("bench-vae")));
    let decoder = WanDecoder::new(&cfg, &Weights::new(store, dtype, device))?;
    let [t, h, w] = spec.latent;
    let lat = Tensor::randn(0f32, 1.0, (1, cfg.z_dim, t, h, w), device)?.to_dtype(dtype)?;
    let timed = |n: usize| -> Result<(Tensor, f64)> {
        // A first decode of each shape set times cuDNN's algorithms; time the second.
        let decode = || -> Result<Tensor> {
            let v = if n > 1 {
                decode_tiled(&decoder, &lat, n)?
            } else {
                decoder.decode(&lat)?
            };
            device.synchronize()?;
            Ok(v)
        };
        decode()?;
        let start = Instant::now();
        let v = decode()?;
        Ok((to_unit(&v)?, start.elapsed().as_secs_f64() * 1e3))
    };
    let (full, full_ms) = timed(1)?;
    let mut out = vec![TileReport {
        tiles: 1,
        ms: full_ms,
        psnr_db: f64::INFINITY,
        max_abs: 0.0,
    }];
    for &n in tiles.iter().filter(|&&n| n > 1) {
        let (v, ms) = timed(n)?;
        let (psnr_db, max_abs) = psnr(&v, &full)?;
        out.push(TileReport {
            tiles: n,
            ms,
            psnr_db,
            max_abs,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_of_a_known_difference() {
        let a = Tensor::new(&[0.5f32, 0.5, 0.5, 0.5], &Device::Cpu).unwrap();
        let b = Tensor::new(&[0.6f32, 0.4, 0.5, 0.5], &Device::Cpu).unwrap();
        // mse = (0.01 + 0.01) / 4 = 0.005 → 23.01 dB.
        let (db, max) = psnr(&a, &b).unwrap();
        assert!((db - 23.0103).abs() < 1e-3, "{db}");
        assert!((max - 0.1).abs() < 1e-6, "{max}");
        assert!(psnr(&a, &a).unwrap().0.is_infinite());
    }
}
