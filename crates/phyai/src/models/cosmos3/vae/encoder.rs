//! Wan2.2 video encoder, as the image/video-conditioned path uses it: pixels
//! `[B, 3, T, H, W]` in [−1, 1] (`T = 1 + 4k`, `H, W` multiples of 16) → normalised latent
//! `[B, z, 1 + k, H/16, W/16]`, the posterior mode (mean), `(μ − mean)/std`.
//!
//! Streamed like the decoder: frame 0 alone, then chunks of `temporal_scale` frames, the
//! causal convs carrying history in a [`FrameCache`].

use candle_core::Tensor;

use super::blocks::{Downsample, MidBlock, ResidualBlock};
use super::causal_conv::{CausalConv3d, ChannelRmsNorm, FrameCache, VaeBuild};
use super::config::VaeConfig;
use super::decoder::{latent_stats, patchify};
use crate::io::weights::Weights;
use crate::layers::frames::Layout;
use crate::layers::video::avg_down;
use crate::{Error, Result};

/// Down block of the residual encoder: residual blocks, optional downsampler, and the
/// `avg_down` shortcut around both.
#[derive(Debug, Clone)]
struct DownBlock {
    resnets: Vec<ResidualBlock>,
    downsample: Option<Downsample>,
    /// `(out_ch, ft, fs)` of the `avg_down` shortcut.
    shortcut: (usize, usize, usize),
    layout: Layout,
}

impl DownBlock {
    fn forward(&self, x: &Tensor, cache: &mut FrameCache, first_chunk: bool) -> Result<Tensor> {
        let mut y = x.clone();
        for r in &self.resnets {
            y = r.forward(y, cache)?;
        }
        if let Some(d) = &self.downsample {
            y = d.forward(&y, cache, first_chunk)?;
        }
        let (out_ch, ft, fs) = self.shortcut;
        let l = self.layout;
        let short = avg_down(&l.to_frame_major(x)?, out_ch, ft, fs)?;
        Ok((y + l.from_frame_major(&short)?)?)
    }
}

/// The encoder half of the video VAE plus `quant_conv` and the latent normalisation.
#[derive(Debug, Clone)]
pub struct WanEncoder {
    conv_in: CausalConv3d,
    downs: Vec<DownBlock>,
    mid: MidBlock,
    norm_out: ChannelRmsNorm,
    conv_out: CausalConv3d,
    quant: CausalConv3d,
    n_slots: usize,
    layout: Layout,
    mean: Tensor,
    inv_std: Tensor,
    patch: usize,
    z_dim: usize,
    t_scale: usize,
    s_scale: usize,
}

impl WanEncoder {
    /// `w` is rooted at the VAE component (keys `encoder.*`, `quant_conv.*`); the
    /// activations take the layout that suits the weights' device.
    pub fn new(cfg: &VaeConfig, w: &Weights) -> Result<Self> {
        Self::with_layout(cfg, w, Layout::for_device(w.device()))
    }

    /// As [`Self::new`] with the activations in `layout`.
    pub fn with_layout(cfg: &VaeConfig, w: &Weights, layout: Layout) -> Result<Self> {
        let dim = cfg.base_dim;
        let n_stages = cfg.dim_mult.len();
        let mut mults = vec![1];
        mults.extend(cfg.dim_mult.iter());
        let dims: Vec<usize> = mults.iter().map(|m| m * dim).collect();
        let mut build = VaeBuild::new(layout);
        let e = w.pp("encoder");
        let conv_in = CausalConv3d::new(
            &e.pp("conv_in"),
            cfg.in_channels,
            dims[0],
            (3, 3),
            (1, 1),
            1,
            &mut build,
        )?;
        let mut downs = Vec::with_capacity(n_stages);
        for i in 0..n_stages {
            let (in_dim, out_dim) = (dims[i], dims[i + 1]);
            let bw = e.pp("down_blocks").pp(i);
            let down_flag = i != n_stages - 1;
            let temporal = down_flag && cfg.temperal_downsample[i];
            let mut resnets = Vec::with_capacity(cfg.num_res_blocks);
            let mut cur = in_dim;
            for j in 0..cfg.num_res_blocks {
                resnets.push(ResidualBlock::new(
                    &bw.pp("resnets").pp(j),
                    cur,
                    out_dim,
                    &mut build,
                )?);
                cur = out_dim;
            }
            let downsample = if down_flag {
                Some(Downsample::new(
                    &bw.pp("downsampler"),
                    out_dim,
                    temporal,
                    &mut build,
                )?)
            } else {
                None
            };
            let ft = if temporal { 2 } else { 1 };
            let fs = if down_flag { 2 } else { 1 };
            downs.push(DownBlock {
                resnets,
                downsample,
                shortcut: (out_dim, ft, fs),
                layout,
            });
        }
        let last = *dims.last().expect("non-empty");
        let mid = MidBlock::new(&e.pp("mid_block"), last, &mut build)?;
        let norm_out = ChannelRmsNorm::new(&e.pp("norm_out"), last, false, layout)?;
        let z2 = 2 * cfg.z_dim;
        let conv_out =
            CausalConv3d::new(&e.pp("conv_out"), last, z2, (3, 3), (1, 1), 1, &mut build)?;
        let quant = CausalConv3d::new(&w.pp("quant_conv"), z2, z2, (1, 1), (0, 0), 1, &mut build)?;
        let (mean, inv_std) = latent_stats(cfg, w)?;
        Ok(Self {
            conv_in,
            downs,
            mid,
            norm_out,
            conv_out,
            quant,
            n_slots: build.slots(),
            layout,
            mean,
            inv_std,
            patch: cfg.patch(),
            z_dim: cfg.z_dim,
            t_scale: cfg.temporal_scale(),
            s_scale: cfg.spatial_scale(),
        })
    }

    /// Pixels `[B, 3, T, H, W]` in [−1, 1] → normalised latent `[B, z, t, h, w]`, in the
    /// pixels' dtype. A single image is `T = 1`.
    pub fn encode(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, t, h, w) = pixels.dims5()?;
        let s = self.s_scale;
        if c != 3
            || t == 0
            || (t - 1) % self.t_scale != 0
            || h % s != 0
            || w % s != 0
            || h == 0
            || w == 0
        {
            return Err(Error::invalid(
                "pixels",
                format!(
                    "expected [B, 3, 1+{}k, H, W] with H, W positive multiples of {s}, got {:?}",
                    self.t_scale,
                    pixels.dims()
                ),
            ));
        }
        let mut out = Vec::with_capacity(b);
        for i in 0..b {
            let frames = pixels.get(i)?.transpose(0, 1)?.contiguous()?; // [T, 3, H, W]
            let lat = self.encode_frames(&frames)?; // [t, z, h, w]
            out.push(lat.transpose(0, 1)?.unsqueeze(0)?);
        }
        Ok(Tensor::cat(&out, 0)?.contiguous()?)
    }

    fn encode_frames(&self, frames: &Tensor) -> Result<Tensor> {
        let x = self
            .layout
            .from_frame_major(&patchify(frames, self.patch)?)?;
        let t = x.dim(0)?;
        let mut cache = FrameCache::new(self.n_slots);
        let mut chunks = Vec::new();
        let mut start = 0;
        while start < t {
            let len = if start == 0 { 1 } else { self.t_scale };
            let chunk = x.narrow(0, start, len)?;
            chunks.push(self.encode_chunk(&chunk, &mut cache, start == 0)?);
            start += len;
        }
        let moments = self.quant.forward(&Tensor::cat(&chunks, 0)?, &mut cache)?;
        let moments = self.layout.to_frame_major(&moments)?;
        let dtype = moments.dtype();
        let mu = moments.narrow(1, 0, self.z_dim)?;
        Ok(mu
            .broadcast_sub(&self.mean.to_dtype(dtype)?)?
            .broadcast_mul(&self.inv_std.to_dtype(dtype)?)?)
    }

    fn encode_chunk(&self, x: &Tensor, cache: &mut FrameCache, first: bool) -> Result<Tensor> {
        let mut x = self.conv_in.forward(x, cache)?;
        for d in &self.downs {
            x = d.forward(&x, cache, first)?;
        }
        x = self.mid.forward(x, cache)?;
        self.conv_out
            .forward_fused(x, Some(&self.norm_out), None, cache)
    }
}
