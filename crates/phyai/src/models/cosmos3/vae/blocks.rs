//! Building blocks of the Wan2.2 (residual) VAE, on chunks of frames in either [`Layout`]:
//! residual block, mid-block attention and spatial/temporal resampling. The parameter-free
//! shortcuts (`avg_down` / `dup_up`) that the Wan2.2 up/down blocks add around their
//! resampling path are in `layers::video`, next to their kernel.
//!
//! Every block forward takes the [`FrameCache`] of the whole stream and a `first_chunk` flag:
//! the first chunk is special in the temporal resamplers (no temporal up/down-sampling of
//! the first frame, as Wan encodes frame 0 alone).

use candle_core::Tensor;

use super::causal_conv::{
    last_frames, CausalConv3d, ChannelRmsNorm, FrameCache, FrameConv2d, VaeBuild,
};
use crate::io::weights::Weights;
use crate::layers::frames::Layout;
use crate::layers::video::upsample;
use crate::Result;

/// Norm → silu → causal conv, twice, plus a (1×1×1 conv) shortcut when widths differ.
#[derive(Debug, Clone)]
pub struct ResidualBlock {
    norm1: ChannelRmsNorm,
    conv1: CausalConv3d,
    norm2: ChannelRmsNorm,
    conv2: CausalConv3d,
    shortcut: Option<CausalConv3d>,
}

impl ResidualBlock {
    pub fn new(w: &Weights, in_ch: usize, out_ch: usize, build: &mut VaeBuild) -> Result<Self> {
        let shortcut = if in_ch != out_ch {
            Some(CausalConv3d::new(
                &w.pp("conv_shortcut"),
                in_ch,
                out_ch,
                (1, 1),
                (0, 0),
                1,
                build,
            )?)
        } else {
            None
        };
        let layout = build.layout;
        Ok(Self {
            norm1: ChannelRmsNorm::new(&w.pp("norm1"), in_ch, false, layout)?,
            conv1: CausalConv3d::new(&w.pp("conv1"), in_ch, out_ch, (3, 3), (1, 1), 1, build)?,
            norm2: ChannelRmsNorm::new(&w.pp("norm2"), out_ch, false, layout)?,
            conv2: CausalConv3d::new(&w.pp("conv2"), out_ch, out_ch, (3, 3), (1, 1), 1, build)?,
            shortcut,
        })
    }

    /// Takes `x` by value so that, with a conv shortcut, its buffer is freed as soon as
    /// the first norm has read it (the block's peak memory at 720p).
    pub fn forward(&self, x: Tensor, cache: &mut FrameCache) -> Result<Tensor> {
        let h = match &self.shortcut {
            Some(s) => s.forward(&x, cache)?,
            None => x.clone(),
        };
        let y = self
            .conv1
            .forward_fused(x, Some(&self.norm1), None, cache)?;
        self.conv2
            .forward_fused(y, Some(&self.norm2), Some(&h), cache)
    }
}

/// Single-head self-attention over the pixels of each frame separately (no time mixing).
#[derive(Debug, Clone)]
pub struct FrameAttention {
    norm: ChannelRmsNorm,
    to_qkv: FrameConv2d,
    proj: FrameConv2d,
    dim: usize,
    layout: Layout,
}

impl FrameAttention {
    pub fn new(w: &Weights, dim: usize, layout: Layout) -> Result<Self> {
        Ok(Self {
            norm: ChannelRmsNorm::new(&w.pp("norm"), dim, true, layout)?,
            to_qkv: FrameConv2d::new(&w.pp("to_qkv"), dim, 3 * dim, 1, 0, 1, layout)?,
            proj: FrameConv2d::new(&w.pp("proj"), dim, dim, 1, 0, 1, layout)?,
            dim,
            layout,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (t, c, h, w) = self.layout.dims(x)?;
        let qkv = self.to_qkv.forward(&self.norm.forward(x)?)?;
        // [T, HW, 3C]: pixels are the sequence, channels the head dim.
        let qkv = match self.layout {
            Layout::FrameMajor => qkv.reshape((t, 3 * c, h * w))?.transpose(1, 2)?,
            Layout::ChannelsLast => qkv.reshape((t, h * w, 3 * c))?,
        };
        let q = qkv.narrow(2, 0, c)?.contiguous()?;
        let k = qkv.narrow(2, c, c)?.contiguous()?;
        let v = qkv.narrow(2, 2 * c, c)?.contiguous()?;
        let scale = 1.0 / (self.dim as f64).sqrt();
        let scores = (q.matmul(&k.transpose(1, 2)?)? * scale)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&v)?; // [T, HW, C]
        let out = match self.layout {
            Layout::FrameMajor => out.transpose(1, 2)?.reshape((t, c, h, w))?,
            Layout::ChannelsLast => out.reshape((t, h, w, c))?,
        };
        Ok((self.proj.forward(&out)? + x)?)
    }
}

/// Residual → attention → residual at the lowest resolution.
#[derive(Debug, Clone)]
pub struct MidBlock {
    res0: ResidualBlock,
    attn: FrameAttention,
    res1: ResidualBlock,
}

impl MidBlock {
    pub fn new(w: &Weights, dim: usize, build: &mut VaeBuild) -> Result<Self> {
        let res0 = ResidualBlock::new(&w.pp("resnets").pp(0), dim, dim, build)?;
        let attn = FrameAttention::new(&w.pp("attentions").pp(0), dim, build.layout)?;
        let res1 = ResidualBlock::new(&w.pp("resnets").pp(1), dim, dim, build)?;
        Ok(Self { res0, attn, res1 })
    }

    pub fn forward(&self, x: Tensor, cache: &mut FrameCache) -> Result<Tensor> {
        let x = self.res0.forward(x, cache)?;
        let x = self.attn.forward(&x)?;
        self.res1.forward(x, cache)
    }
}

/// Decoder upsampler: optional temporal doubling (a causal conv to 2C channels whose two
/// halves become consecutive frames), then nearest ×2 and a 3×3 conv per frame.
#[derive(Debug, Clone)]
pub struct Upsample {
    time_conv: Option<CausalConv3d>,
    conv: FrameConv2d,
    layout: Layout,
}

impl Upsample {
    pub fn new(
        w: &Weights,
        dim: usize,
        out_dim: usize,
        temporal: bool,
        build: &mut VaeBuild,
    ) -> Result<Self> {
        let time_conv = if temporal {
            Some(CausalConv3d::new(
                &w.pp("time_conv"),
                dim,
                2 * dim,
                (3, 1),
                (1, 0),
                1,
                build,
            )?)
        } else {
            None
        };
        let layout = build.layout;
        Ok(Self {
            time_conv,
            conv: FrameConv2d::new(&w.pp("resample").pp(1), dim, out_dim, 3, 1, 1, layout)?,
            layout,
        })
    }

    /// Takes `x` by value: it is freed once upsampled, before the conv runs.
    pub fn forward(&self, x: Tensor, cache: &mut FrameCache, first_chunk: bool) -> Result<Tensor> {
        // The first chunk keeps its frame count: frame 0 of a Wan video is not doubled.
        let up = match &self.time_conv {
            Some(tc) if !first_chunk => upsample(&tc.forward(&x, cache)?, self.layout, 2)?,
            _ => upsample(&x, self.layout, 1)?,
        };
        drop(x);
        self.conv.forward(&up)
    }
}

/// Encoder downsampler: pad right/bottom by one, 3×3 stride-2 conv per frame, then optional
/// temporal halving by a stride-2 conv over (last frame of the previous chunk, this chunk).
#[derive(Debug, Clone)]
pub struct Downsample {
    conv: FrameConv2d,
    layout: Layout,
    /// Temporal conv and the cache slot holding the previous chunk's last frame.
    time: Option<(CausalConv3d, usize)>,
}

impl Downsample {
    pub fn new(w: &Weights, dim: usize, temporal: bool, build: &mut VaeBuild) -> Result<Self> {
        let time = if temporal {
            let conv = CausalConv3d::new(&w.pp("time_conv"), dim, dim, (3, 1), (0, 0), 2, build)?;
            Some((conv, build.take_slot()))
        } else {
            None
        };
        let layout = build.layout;
        Ok(Self {
            conv: FrameConv2d::new(&w.pp("resample").pp(1), dim, dim, 3, 0, 2, layout)?,
            layout,
            time,
        })
    }

    pub fn forward(&self, x: &Tensor, cache: &mut FrameCache, first_chunk: bool) -> Result<Tensor> {
        let x = self.layout.pad_bottom_right(x)?;
        let x = self.conv.forward(&x)?;
        let Some((tc, slot)) = &self.time else {
            return Ok(x);
        };
        let last = last_frames(&x, 1)?;
        let out = if first_chunk {
            x
        } else {
            let prev = cache.get(*slot).ok_or_else(|| {
                crate::Error::msg("temporal downsample: missing history of the previous chunk")
            })?;
            tc.conv_frames(&Tensor::cat(&[prev, &x], 0)?, None)?
        };
        cache.set(*slot, last);
        Ok(out)
    }
}
