//! Cosmos3 audio VAE decoder (Oobleck style): latent `[B, C, T]` → waveform
//! `[B, channels, T·∏strides]` in [−1, 1] (48 kHz stereo, ×1920 for the shipped model).
//!
//! conv(k7) → per stride: snake, transposed conv (×stride), three dilated residual units →
//! snake → conv(k7) → clamp. Convs are stored weight-normalised (`weight_g`, `weight_v`) or
//! plain (`weight`); the effective kernel `g·v/‖v‖` (norm per output slice, dim 0) is folded
//! once at load, in f32 (f64 when computing in f64).

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::config::AudioVaeConfig;
use crate::io::json::read_json;
use crate::io::weights::{WeightStore, Weights};
use crate::layers::audio::{conv1d, snake};
use crate::{Error, Result};

/// Precision for folding parameters at load: f32, or f64 when computing in f64.
fn fold_dtype(w: &Weights) -> DType {
    if w.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Loads a conv kernel of `shape`, folding weight norm when the checkpoint stores it split.
fn conv_kernel(w: &Weights, shape: (usize, usize, usize)) -> Result<Tensor> {
    if w.contains("weight") {
        return w.get(shape, "weight");
    }
    let f = w.with_dtype(fold_dtype(w));
    let v = f.get(shape, "weight_v")?;
    let g = f.get((shape.0, 1, 1), "weight_g")?;
    let norm = v.sqr()?.sum_keepdim(2)?.sum_keepdim(1)?.sqrt()?;
    let k = v.broadcast_mul(&g.broadcast_div(&norm)?)?;
    Ok(k.to_dtype(w.dtype())?)
}

/// Snake activation with log-scale parameters: `x + sin²(eᵅ·x) / (eᵝ + 1e-9)`.
#[derive(Debug, Clone)]
pub(crate) struct Snake {
    /// `[1, C, 1]` eᵅ and 1/(eᵝ + 1e-9).
    alpha: Tensor,
    inv_beta: Tensor,
}

impl Snake {
    pub(crate) fn new(w: &Weights, ch: usize) -> Result<Self> {
        let f = w.with_dtype(fold_dtype(w));
        let alpha = f.get((1, ch, 1), "alpha")?.exp()?;
        let inv_beta = (f.get((1, ch, 1), "beta")?.exp()? + 1e-9)?.recip()?;
        Ok(Self {
            alpha: alpha.to_dtype(w.dtype())?,
            inv_beta: inv_beta.to_dtype(w.dtype())?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        snake(x, &self.alpha, &self.inv_beta)
    }
}

/// Conv1d with optional bias (evaluated by `layers::audio::conv1d`: cuDNN on a GPU).
#[derive(Debug, Clone)]
pub(crate) struct Conv1d {
    kernel: Tensor,
    bias: Option<Tensor>,
    pad: usize,
    dilation: usize,
}

impl Conv1d {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        w: &Weights,
        in_ch: usize,
        out_ch: usize,
        k: usize,
        pad: usize,
        dilation: usize,
        bias: bool,
    ) -> Result<Self> {
        Ok(Self {
            kernel: conv_kernel(w, (out_ch, in_ch, k))?,
            bias: if bias {
                Some(w.get(out_ch, "bias")?)
            } else {
                None
            },
            pad,
            dilation,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv1d(x, &self.kernel, self.bias.as_ref(), self.pad, self.dilation)
    }
}

/// snake → dilated k7 conv → snake → k1 conv, plus the input.
#[derive(Debug, Clone)]
struct ResidualUnit {
    snake1: Snake,
    conv1: Conv1d,
    snake2: Snake,
    conv2: Conv1d,
}

impl ResidualUnit {
    fn new(w: &Weights, dim: usize, dilation: usize) -> Result<Self> {
        Ok(Self {
            snake1: Snake::new(&w.pp("snake1"), dim)?,
            conv1: Conv1d::new(&w.pp("conv1"), dim, dim, 7, 3 * dilation, dilation, true)?,
            snake2: Snake::new(&w.pp("snake2"), dim)?,
            conv2: Conv1d::new(&w.pp("conv2"), dim, dim, 1, 0, 1, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.conv1.forward(&self.snake1.forward(x)?)?;
        let y = self.conv2.forward(&self.snake2.forward(&y)?)?;
        Ok((x + y)?)
    }
}

/// snake → transposed conv upsampling by `stride` (kernel 2·stride) → residual units with
/// dilations 1, 3, 9. Output length is exactly `stride ×` the input length.
#[derive(Debug, Clone)]
pub(crate) struct UpBlock {
    snake: Snake,
    kernel: Tensor,
    bias: Tensor,
    stride: usize,
    units: [ResidualUnit; 3],
}

impl UpBlock {
    pub(crate) fn new(w: &Weights, in_dim: usize, out_dim: usize, stride: usize) -> Result<Self> {
        let t = w.pp("conv_t1");
        Ok(Self {
            snake: Snake::new(&w.pp("snake1"), in_dim)?,
            kernel: conv_kernel(&t, (in_dim, out_dim, 2 * stride))?,
            bias: t.get(out_dim, "bias")?,
            stride,
            units: [
                ResidualUnit::new(&w.pp("res_unit1"), out_dim, 1)?,
                ResidualUnit::new(&w.pp("res_unit2"), out_dim, 3)?,
                ResidualUnit::new(&w.pp("res_unit3"), out_dim, 9)?,
            ],
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = self.stride;
        let y = self.snake.forward(x)?;
        // Unpadded transposed conv (candle's fast col2im path), then the crop that padding
        // `⌈s/2⌉` and output padding `s mod 2` describe: length exactly `s ×` the input.
        let (pad, out_pad) = (s.div_ceil(2), s % 2);
        let full = y.conv_transpose1d(&self.kernel, 0, 0, s, 1, 1)?;
        let full_len = full.dim(2)?;
        let out_len = full_len + out_pad - 2 * pad;
        let avail = full_len - pad;
        let y = if out_len <= avail {
            full.narrow(2, pad, out_len)?
        } else {
            full.narrow(2, pad, avail)?
                .pad_with_zeros(2, 0, out_len - avail)?
        };
        let mut y = y.broadcast_add(&self.bias.reshape((1, (), 1))?)?;
        for u in &self.units {
            y = u.forward(&y)?;
        }
        Ok(y)
    }
}

/// The audio decoder (`sound_tokenizer` decoder half).
#[derive(Debug, Clone)]
pub struct AudioDecoder {
    conv_in: Conv1d,
    blocks: Vec<UpBlock>,
    snake_out: Snake,
    conv_out: Conv1d,
    latent_dim: usize,
    sample_rate: usize,
    hop: usize,
}

impl AudioDecoder {
    /// `w` is rooted at the component (keys `decoder.*`).
    pub fn new(cfg: &AudioVaeConfig, w: &Weights) -> Result<Self> {
        let d = w.pp("decoder");
        let ch = cfg.dec_dim;
        let mut mults = vec![1];
        mults.extend(cfg.dec_c_mults.iter());
        let n = cfg.dec_strides.len();
        let conv_in = Conv1d::new(
            &d.pp("conv1"),
            cfg.vocoder_input_dim,
            ch * mults[n],
            7,
            3,
            1,
            true,
        )?;
        let blocks = cfg
            .dec_strides
            .iter()
            .rev()
            .enumerate()
            .map(|(i, &s)| {
                UpBlock::new(
                    &d.pp("block").pp(i),
                    ch * mults[n - i],
                    ch * mults[n - i - 1],
                    s,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv_in,
            blocks,
            snake_out: Snake::new(&d.pp("snake1"), ch)?,
            conv_out: Conv1d::new(&d.pp("conv2"), ch, cfg.dec_out_channels, 7, 3, 1, false)?,
            latent_dim: cfg.vocoder_input_dim,
            sample_rate: cfg.sampling_rate,
            hop: cfg.hop(),
        })
    }

    /// Reads `config.json` and the weights of a `sound_tokenizer/` folder.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let file = dir.join("config.json");
        let cfg: AudioVaeConfig = read_json(&file)?;
        cfg.validate(&file)?;
        let store = Arc::new(WeightStore::open_dir(dir)?);
        Self::new(&cfg, &Weights::new(store, dtype, device))
    }

    pub fn sample_rate(&self) -> usize {
        self.sample_rate
    }

    /// Samples per latent step (the product of the decoder's strides, or the config's
    /// `hop_size`).
    pub fn hop(&self) -> usize {
        self.hop
    }

    /// Latent `[B, C, T]` → waveform `[B, channels, T·∏strides]` in [−1, 1].
    pub fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        let (_, c, t) = latent.dims3()?;
        if c != self.latent_dim || t == 0 {
            return Err(Error::invalid(
                "sound latent",
                format!(
                    "expected [B, {}, T≥1], got {:?}",
                    self.latent_dim,
                    latent.dims()
                ),
            ));
        }
        let mut x = self.conv_in.forward(latent)?;
        for b in &self.blocks {
            x = b.forward(&x)?;
        }
        let x = self.conv_out.forward(&self.snake_out.forward(&x)?)?;
        Ok(x.clamp(-1f32, 1f32)?)
    }
}
