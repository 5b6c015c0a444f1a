//! Wan2.2 video decoder: normalised latent `[B, z, t, h, w]` → pixels `[B, 3, T, H, W]` in
//! [0, 1] with `T = 1 + 4(t − 1)`, `H = 16h`, `W = 16w` (for the shipped config).
//!
//! The latent is decoded one latent frame at a time; the causal convs carry their history in
//! a [`FrameCache`], so memory is bounded by a few frames at the largest resolution rather
//! than by the video length. Latent frame 0 yields one video frame, each later one yields
//! `temporal_scale` frames.

use candle_core::{DType, Tensor};

use super::blocks::{MidBlock, ResidualBlock, Upsample};
use super::causal_conv::{CausalConv3d, ChannelRmsNorm, FrameCache, VaeBuild};
use super::config::VaeConfig;
use crate::io::weights::Weights;
use crate::layers::frames::Layout;
use crate::layers::video::add_dup_up;
use crate::{Error, Result};

/// Up block of the residual decoder: `num_res_blocks + 1` residual blocks, an optional
/// upsampler, and the `dup_up` shortcut around both when upsampling.
#[derive(Debug, Clone)]
struct UpBlock {
    resnets: Vec<ResidualBlock>,
    upsample: Option<Upsample>,
    /// `(out_ch, ft)` of the `dup_up` shortcut (spatial factor 2).
    shortcut: Option<(usize, usize)>,
    layout: Layout,
}

impl UpBlock {
    /// Takes `x` by value: without a shortcut it is not needed after the first block.
    fn forward(&self, x: Tensor, cache: &mut FrameCache, first_chunk: bool) -> Result<Tensor> {
        let (mut y, x) = match self.shortcut {
            Some(_) => (x.clone(), Some(x)),
            None => (x, None),
        };
        for r in &self.resnets {
            y = r.forward(y, cache)?;
        }
        if let Some(up) = &self.upsample {
            y = up.forward(y, cache, first_chunk)?;
        }
        if let (Some((out_ch, ft)), Some(x)) = (self.shortcut, x) {
            y = add_dup_up(&y, &x, self.layout, out_ch, ft, 2, first_chunk)?;
        }
        Ok(y)
    }
}

/// The decoder half of the video VAE plus the latent de-normalisation.
#[derive(Debug, Clone)]
pub struct WanDecoder {
    post_quant: CausalConv3d,
    conv_in: CausalConv3d,
    mid: MidBlock,
    ups: Vec<UpBlock>,
    norm_out: ChannelRmsNorm,
    conv_out: CausalConv3d,
    n_slots: usize,
    layout: Layout,
    /// `[1, z, 1, 1]` latents_mean and 1/latents_std (frame-major broadcast).
    mean: Tensor,
    inv_std: Tensor,
    patch: usize,
    z_dim: usize,
    s_scale: usize,
}

impl WanDecoder {
    /// `w` is rooted at the VAE component (keys `decoder.*`, `post_quant_conv.*`); the
    /// activations take the layout that suits the weights' device.
    pub fn new(cfg: &VaeConfig, w: &Weights) -> Result<Self> {
        Self::with_layout(cfg, w, Layout::for_device(w.device()))
    }

    /// As [`Self::new`] with the activations in `layout` (for checking one layout against
    /// the other; channels-last on the CPU is correct but slow).
    pub fn with_layout(cfg: &VaeConfig, w: &Weights, layout: Layout) -> Result<Self> {
        let dim = cfg.decoder_dim();
        let n_stages = cfg.dim_mult.len();
        let mut mults = vec![*cfg.dim_mult.last().expect("validated non-empty")];
        mults.extend(cfg.dim_mult.iter().rev());
        let dims: Vec<usize> = mults.iter().map(|m| m * dim).collect();
        let t_up: Vec<bool> = cfg.temperal_downsample.iter().rev().copied().collect();

        let mut build = VaeBuild::new(layout);
        let z = cfg.z_dim;
        let post_quant = CausalConv3d::new(
            &w.pp("post_quant_conv"),
            z,
            z,
            (1, 1),
            (0, 0),
            1,
            &mut build,
        )?;
        let d = w.pp("decoder");
        let conv_in =
            CausalConv3d::new(&d.pp("conv_in"), z, dims[0], (3, 3), (1, 1), 1, &mut build)?;
        let mid = MidBlock::new(&d.pp("mid_block"), dims[0], &mut build)?;
        let mut ups = Vec::with_capacity(n_stages);
        for i in 0..n_stages {
            let (in_dim, out_dim) = (dims[i], dims[i + 1]);
            let bw = d.pp("up_blocks").pp(i);
            let up_flag = i != n_stages - 1;
            let temporal = up_flag && t_up[i];
            let mut resnets = Vec::with_capacity(cfg.num_res_blocks + 1);
            let mut cur = in_dim;
            for j in 0..=cfg.num_res_blocks {
                resnets.push(ResidualBlock::new(
                    &bw.pp("resnets").pp(j),
                    cur,
                    out_dim,
                    &mut build,
                )?);
                cur = out_dim;
            }
            let upsample = if up_flag {
                Some(Upsample::new(
                    &bw.pp("upsampler"),
                    out_dim,
                    out_dim,
                    temporal,
                    &mut build,
                )?)
            } else {
                None
            };
            let ft = if temporal { 2 } else { 1 };
            let shortcut = up_flag.then_some((out_dim, ft));
            ups.push(UpBlock {
                resnets,
                upsample,
                shortcut,
                layout,
            });
        }
        let last = *dims.last().expect("non-empty");
        let norm_out = ChannelRmsNorm::new(&d.pp("norm_out"), last, false, layout)?;
        let conv_out = CausalConv3d::new(
            &d.pp("conv_out"),
            last,
            cfg.out_channels,
            (3, 3),
            (1, 1),
            1,
            &mut build,
        )?;
        let (mean, inv_std) = latent_stats(cfg, w)?;
        Ok(Self {
            post_quant,
            conv_in,
            mid,
            ups,
            norm_out,
            conv_out,
            n_slots: build.slots(),
            layout,
            mean,
            inv_std,
            patch: cfg.patch(),
            z_dim: z,
            s_scale: cfg.spatial_scale(),
        })
    }

    /// Pixels per latent pixel along H and W.
    pub fn spatial_scale(&self) -> usize {
        self.s_scale
    }

    /// Normalised latent `[B, z, t, h, w]` → pixels `[B, 3, T, H, W]` in [0, 1], in the
    /// latent's dtype.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let (b, z, t, h, w) = latents.dims5()?;
        if z != self.z_dim || t == 0 || h == 0 || w == 0 {
            return Err(Error::invalid(
                "latents",
                format!(
                    "expected [B, {}, t≥1, h≥1, w≥1], got {:?}",
                    self.z_dim,
                    latents.dims()
                ),
            ));
        }
        let mut videos = Vec::with_capacity(b);
        for i in 0..b {
            // Frame-major [t, z, h, w] for one video.
            let lat = latents.get(i)?.transpose(0, 1)?.contiguous()?;
            videos.push(self.decode_frames(&lat)?.unsqueeze(0)?);
        }
        Ok(Tensor::cat(&videos, 0)?)
    }

    /// One video, frame-major latent `[t, z, h, w]` → `[3, T, H, W]` in [0, 1].
    fn decode_frames(&self, lat: &Tensor) -> Result<Tensor> {
        let dtype = lat.dtype();
        let raw = lat
            .broadcast_div(&self.inv_std.to_dtype(dtype)?)?
            .broadcast_add(&self.mean.to_dtype(dtype)?)?;
        let raw = self.layout.from_frame_major(&raw)?;
        let raw = self.post_quant.forward(&raw, &mut FrameCache::default())?;
        let mut cache = FrameCache::new(self.n_slots);
        let mut frames = Vec::with_capacity(raw.dim(0)?);
        for i in 0..raw.dim(0)? {
            let chunk = raw.narrow(0, i, 1)?;
            let out = self.decode_chunk(&chunk, &mut cache, i == 0)?;
            let out = self.layout.to_frame_major(&out)?;
            let px = unpatchify(&out, self.patch)?.clamp(-1f32, 1f32)?;
            frames.push(((px + 1.0)? * 0.5)?);
        }
        let video = Tensor::cat(&frames, 0)?; // [T, 3, H, W]
        Ok(video.transpose(0, 1)?.contiguous()?)
    }

    fn decode_chunk(&self, x: &Tensor, cache: &mut FrameCache, first: bool) -> Result<Tensor> {
        let mut x = self.conv_in.forward(x, cache)?;
        x = self.mid.forward(x, cache)?;
        for up in &self.ups {
            x = up.forward(x, cache, first)?;
        }
        self.conv_out
            .forward_fused(x, Some(&self.norm_out), None, cache)
    }
}

/// `latents_mean` and `1/latents_std` as `[1, z, 1, 1]` f32 tensors (the pipeline divides by
/// the reciprocal it stores, so we do too).
pub(crate) fn latent_stats(cfg: &VaeConfig, w: &Weights) -> Result<(Tensor, Tensor)> {
    let z = cfg.z_dim;
    let mean: Vec<f32> = cfg.latents_mean.iter().map(|&v| v as f32).collect();
    let inv: Vec<f32> = cfg.latents_std.iter().map(|&v| 1.0 / (v as f32)).collect();
    let dev = w.device();
    Ok((
        Tensor::from_vec(mean, (1, z, 1, 1), dev)?.to_dtype(DType::F32)?,
        Tensor::from_vec(inv, (1, z, 1, 1), dev)?,
    ))
}

/// Frame-major `[T, 3p², h, w]` → `[T, 3, hp, wp]`. Channel `c·p² + a·p + b` holds the pixel
/// at row offset `b`, column offset `a` (diffusers' patch order).
pub(crate) fn unpatchify(x: &Tensor, p: usize) -> Result<Tensor> {
    if p == 1 {
        return Ok(x.clone());
    }
    let (t, cp, h, w) = x.dims4()?;
    let c = cp / (p * p);
    Ok(x.reshape(vec![t, c, p, p, h, w])?
        .permute(vec![0, 1, 4, 3, 5, 2])?
        .contiguous()?
        .reshape((t, c, h * p, w * p))?)
}

/// Frame-major `[T, 3, hp, wp]` → `[T, 3p², h, w]`, the inverse of [`unpatchify`].
pub(crate) fn patchify(x: &Tensor, p: usize) -> Result<Tensor> {
    if p == 1 {
        return Ok(x.clone());
    }
    let (t, c, hp, wp) = x.dims4()?;
    let (h, w) = (hp / p, wp / p);
    Ok(x.reshape(vec![t, c, h, p, w, p])?
        .permute(vec![0, 1, 5, 3, 2, 4])?
        .contiguous()?
        .reshape((t, c * p * p, h, w))?)
}
