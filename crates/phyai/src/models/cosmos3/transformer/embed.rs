//! Entry and exit of the generation tokens: the f32 timestep embedder, video patchify /
//! unpatchify (with padding of odd latent sizes) and the sound token projections.

use candle_core::{DType, Device, Tensor};

use super::config::TIMESTEP_CHANNELS;
use crate::io::weights::Weights;
use crate::layers::linear::Linear;
use crate::{Error, Result};

/// Sinusoidal features of a (scaled) timestep followed by `linear_2(silu(linear_1(·)))`.
/// Weights and arithmetic stay in f32 whatever the model dtype.
#[derive(Clone, Debug)]
pub struct TimestepEmbedder {
    linear_1: Linear,
    linear_2: Linear,
    device: Device,
}

/// `[cos(t·f_j) | sin(t·f_j)]`, `f_j = exp(−ln(10⁴)·j/128)`, `j < 128` (f32).
pub fn timestep_features(t: f32) -> Vec<f32> {
    let half = TIMESTEP_CHANNELS / 2;
    let ln = -(10_000f64.ln() as f32);
    let mut out = vec![0f32; TIMESTEP_CHANNELS];
    for j in 0..half {
        let exponent = (ln * j as f32) / half as f32;
        let freq = (exponent as f64).exp() as f32;
        let arg = t * freq;
        out[j] = (arg as f64).cos() as f32;
        out[half + j] = (arg as f64).sin() as f32;
    }
    out
}

impl TimestepEmbedder {
    /// Loads `linear_1` `[hidden, 256]` and `linear_2` `[hidden, hidden]` (with biases) in f32.
    pub fn load(w: &Weights, hidden: usize) -> Result<Self> {
        let w = w.with_dtype(DType::F32);
        Ok(Self {
            linear_1: Linear::load(&w.pp("linear_1"), TIMESTEP_CHANNELS, hidden, true)?,
            linear_2: Linear::load(&w.pp("linear_2"), hidden, hidden, true)?,
            device: w.device().clone(),
        })
    }

    /// Embedding `[1, hidden]` (f32) of the model-facing timestep (e.g. 999), scaled by
    /// `scale` in f32 first.
    pub fn forward(&self, timestep: f64, scale: f64) -> Result<Tensor> {
        let t = timestep as f32 * scale as f32;
        let f = Tensor::from_vec(timestep_features(t), (1, TIMESTEP_CHANNELS), &self.device)?;
        let h = candle_nn::ops::silu(&self.linear_1.forward(&f)?)?;
        self.linear_2.forward(&h)
    }
}

/// The token grid of a video latent: latent frames and patch rows/columns after padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchGrid {
    pub t: usize,
    pub h: usize,
    pub w: usize,
    /// Unpadded latent height and width.
    pub latent_h: usize,
    pub latent_w: usize,
}

impl PatchGrid {
    pub fn new(t: usize, latent_h: usize, latent_w: usize, p: usize) -> Self {
        Self {
            t,
            h: latent_h.div_ceil(p),
            w: latent_w.div_ceil(p),
            latent_h,
            latent_w,
        }
    }

    pub fn tokens_per_frame(&self) -> usize {
        self.h * self.w
    }

    pub fn tokens(&self) -> usize {
        self.t * self.h * self.w
    }
}

/// `[1, C, t, h, w]` → tokens `[t·h'·w', p·p·C]` ordered (frame, patch row, patch column),
/// features ordered (row in patch, column in patch, channel); `h`, `w` zero-padded to
/// multiples of `p`.
pub fn patchify(latent: &Tensor, p: usize) -> Result<(Tensor, PatchGrid)> {
    let (b, c, t, h, w) = latent.dims5()?;
    if b != 1 {
        return Err(Error::invalid(
            "video latent",
            format!("batch {b}: one request at a time"),
        ));
    }
    let grid = PatchGrid::new(t, h, w, p);
    let mut x = latent.squeeze(0)?;
    if grid.h * p != h {
        x = x.pad_with_zeros(2, 0, grid.h * p - h)?;
    }
    if grid.w * p != w {
        x = x.pad_with_zeros(3, 0, grid.w * p - w)?;
    }
    let x = x
        .reshape((c, t, grid.h, p, grid.w, p))?
        .permute((1, 2, 4, 3, 5, 0))?
        .contiguous()?
        .reshape((grid.tokens(), p * p * c))?;
    Ok((x, grid))
}

/// Inverse of [`patchify`] for `frames` consecutive frames of `grid`: tokens
/// `[frames·h'·w', p·p·C]` → `[C, frames, latent_h, latent_w]` (padding cropped).
pub fn unpatchify(tokens: &Tensor, grid: &PatchGrid, frames: usize, p: usize) -> Result<Tensor> {
    let c = tokens.dim(1)? / (p * p);
    let x = tokens
        .reshape((frames, grid.h, grid.w, p, p, c))?
        .permute((5, 0, 1, 3, 2, 4))?
        .contiguous()?
        .reshape((c, frames, grid.h * p, grid.w * p))?;
    Ok(x.narrow(2, 0, grid.latent_h)?
        .narrow(3, 0, grid.latent_w)?
        .contiguous()?)
}

/// Sound latent `[1, C, T]` in and out of the token stream.
#[derive(Clone, Debug)]
pub struct SoundHeads {
    proj_in: Linear,
    proj_out: Linear,
    modality: Tensor,
    channels: usize,
}

impl SoundHeads {
    /// Loads `audio_proj_in`, `audio_proj_out` and `audio_modality_embed` from the top level.
    pub fn load(w: &Weights, channels: usize, hidden: usize) -> Result<Self> {
        Ok(Self {
            proj_in: Linear::load(&w.pp("audio_proj_in"), channels, hidden, true)?,
            proj_out: Linear::load(&w.pp("audio_proj_out"), hidden, channels, true)?,
            modality: w.get(hidden, "audio_modality_embed")?,
            channels,
        })
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    /// `[1, C, T]` → tokens `[T, hidden]` (projection plus the modality embedding).
    pub fn embed(&self, sound: &Tensor) -> Result<Tensor> {
        let x = sound.squeeze(0)?.t()?.contiguous()?;
        Ok(self.proj_in.forward(&x)?.broadcast_add(&self.modality)?)
    }

    /// Tokens `[T, hidden]` → `[1, C, T]`.
    pub fn project_out(&self, tokens: &Tensor) -> Result<Tensor> {
        Ok(self
            .proj_out
            .forward(tokens)?
            .t()?
            .contiguous()?
            .unsqueeze(0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patchify_round_trip_with_padding() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (1, 3, 2, 5, 3), &dev).unwrap();
        let (tok, grid) = patchify(&x, 2).unwrap();
        assert_eq!((grid.t, grid.h, grid.w), (2, 3, 2));
        assert_eq!(tok.dims(), &[12, 12]);
        // Token (f=1, row=2, col=0), feature (p=0, q=1, c=2) = x[c=2, f=1, y=4, x=1].
        let v = tok.get(6 + 4).unwrap().get(3 + 2).unwrap();
        let want = x
            .get(0)
            .unwrap()
            .get(2)
            .unwrap()
            .get(1)
            .unwrap()
            .get(4)
            .unwrap()
            .get(1)
            .unwrap();
        assert_eq!(
            v.to_scalar::<f32>().unwrap(),
            want.to_scalar::<f32>().unwrap()
        );
        // Padding is zero: token (f=0, row=2, col=0) has y=5 in its second patch row.
        let pad = tok.get(4).unwrap().narrow(0, 6, 6).unwrap();
        assert_eq!(
            pad.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        let back = unpatchify(&tok, &grid, 2, 2).unwrap();
        let d = (back - x.squeeze(0).unwrap()).unwrap().abs().unwrap();
        assert_eq!(d.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn timestep_features_are_cos_then_sin() {
        let f = timestep_features(0.5);
        assert!((f[0] - 0.5f32.cos()).abs() < 1e-7 && (f[128] - 0.5f32.sin()).abs() < 1e-7);
        let f = timestep_features(0.0);
        assert_eq!((f[5], f[200]), (1.0, 0.0));
    }
}
