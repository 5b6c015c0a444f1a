//! Causal 3-D convolution of the Wan VAE, streamed frame-chunk by frame-chunk.
//!
//! Frames are dim 0 of every activation (frame-major `[T, C, H, W]` on the CPU, channels-last
//! `[T, H, W, C]` on a GPU, see [`Layout`]). The convolution itself, and how the device
//! evaluates it, is `layers::frame_conv`; this file adds what makes it causal and streamed.
//!
//! Causality: the time axis is left-padded with `2·pad_t` frames. When a video is processed
//! in chunks, those frames come from [`FrameCache`] — the last `2·pad_t` input frames seen by
//! this conv — and are zeros only before the first frame, so chunked and whole-video
//! results are identical.

use candle_core::Tensor;

use crate::io::weights::Weights;
use crate::layers::frame_conv::{FrameKernel, FramesConv3d};
use crate::layers::frames::Layout;
use crate::layers::video::{channel_rms_norm, padded_norm_silu};
use crate::Result;

/// Per-conv history for streamed (chunked) processing; one slot per temporal conv,
/// indexed by the slot number handed out at construction.
#[derive(Debug, Default)]
pub struct FrameCache {
    slots: Vec<Option<Tensor>>,
}

impl FrameCache {
    pub fn new(n_slots: usize) -> Self {
        Self {
            slots: vec![None; n_slots],
        }
    }

    pub fn get(&self, slot: usize) -> Option<&Tensor> {
        self.slots.get(slot).and_then(|s| s.as_ref())
    }

    pub fn set(&mut self, slot: usize, frames: Tensor) {
        if slot >= self.slots.len() {
            self.slots.resize(slot + 1, None);
        }
        self.slots[slot] = Some(frames);
    }
}

/// What the parts of one encoder or decoder are built with: the activation layout, and the
/// cache slot numbers, handed out in construction order.
#[derive(Debug)]
pub struct VaeBuild {
    pub layout: Layout,
    slots: usize,
}

impl VaeBuild {
    pub fn new(layout: Layout) -> Self {
        Self { layout, slots: 0 }
    }

    /// A fresh cache slot.
    pub fn take_slot(&mut self) -> usize {
        self.slots += 1;
        self.slots - 1
    }

    /// Slots handed out so far.
    pub fn slots(&self) -> usize {
        self.slots
    }
}

/// Conv3d `[O, I, kt, kh, kw]` with causal time padding, symmetric spatial padding
/// (`kh == kw`, `pad_h == pad_w` in every Wan conv), spatial stride 1 and temporal stride `st`.
#[derive(Debug, Clone)]
pub struct CausalConv3d {
    conv: FramesConv3d,
    pad_t: usize,
    /// Cache slot for convs with a temporal extent; `None` for `kt == 1`.
    slot: Option<usize>,
}

impl CausalConv3d {
    /// `kernel = (kt, ks)` (spatial square), `pad = (pad_t, pad_s)`.
    pub fn new(
        w: &Weights,
        in_ch: usize,
        out_ch: usize,
        kernel: (usize, usize),
        pad: (usize, usize),
        t_stride: usize,
        build: &mut VaeBuild,
    ) -> Result<Self> {
        let (kt, ks) = kernel;
        let weight = w.get((out_ch, in_ch, kt, ks, ks), "weight")?;
        let bias = w.get(out_ch, "bias")?;
        let conv = FramesConv3d::new(&weight, bias, pad.1, t_stride, build.layout)?;
        let slot = (kt > 1 && pad.0 > 0).then(|| build.take_slot());
        Ok(Self {
            conv,
            pad_t: pad.0,
            slot,
        })
    }

    /// Number of history frames this conv pads with (`2·pad_t`).
    fn history(&self) -> usize {
        2 * self.pad_t
    }

    /// Causal forward of one chunk of `T` frames with `I` channels → `T'` frames with `O`
    /// channels, reading and updating this conv's history in `cache`.
    pub fn forward(&self, x: &Tensor, cache: &mut FrameCache) -> Result<Tensor> {
        self.forward_fused(x.clone(), None, None, cache)
    }

    /// [`Self::forward`] of `silu(norm(x))` when `norm` is given, plus `residual` (the
    /// output's shape) when given. On the GPU the norm writes its result straight after the
    /// history frames, so the padded input costs no concatenation, and the residual rides
    /// on the bias pass. `x` is dropped once read, before the conv runs.
    pub fn forward_fused(
        &self,
        x: Tensor,
        norm: Option<&ChannelRmsNorm>,
        residual: Option<&Tensor>,
        cache: &mut FrameCache,
    ) -> Result<Tensor> {
        let Some(slot) = self.slot else {
            let x = match norm {
                Some(n) => n.forward_silu(&x)?,
                None => x,
            };
            return self.conv_frames(&x, residual);
        };
        let need = self.history();
        // Only the last `need` frames of the history matter; zeros stand in for frames
        // before the start of the video.
        let prev = match cache.get(slot) {
            Some(p) => {
                let n = p.dim(0)?;
                let used = n.min(need);
                Some(p.narrow(0, n - used, used)?)
            }
            None => None,
        };
        let used_prev = prev.as_ref().map(|p| p.dim(0)).transpose()?.unwrap_or(0);
        let zeros = need - used_prev;
        let input = match norm {
            Some(n) => n.forward_silu_after(&x, zeros, prev.as_ref())?,
            None => {
                let seen = match &prev {
                    Some(p) => Tensor::cat(&[p, &x], 0)?,
                    None => x.clone(),
                };
                seen.pad_with_zeros(0, zeros, 0)?
            }
        };
        drop(x);
        // The last `need` real (not zero) frames; a copy, since a view would keep the whole
        // chunk alive in the cache.
        let n_in = input.dim(0)?;
        let keep = need.min(n_in - zeros);
        cache.set(slot, input.narrow(0, n_in - keep, keep)?.copy()?);
        self.conv_frames(&input, residual)
    }

    /// Temporal "valid" conv (no time padding) of `T` frames → `(T−kt)/st + 1` frames, plus
    /// `residual` when given.
    pub fn conv_frames(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        self.conv.forward(x, residual)
    }
}

/// Conv2d with bias applied per frame, square kernel, symmetric padding.
#[derive(Debug, Clone)]
pub struct FrameConv2d {
    kernel: FrameKernel,
    bias: Tensor,
}

impl FrameConv2d {
    pub fn new(
        w: &Weights,
        in_ch: usize,
        out_ch: usize,
        k: usize,
        pad: usize,
        stride: usize,
        layout: Layout,
    ) -> Result<Self> {
        let weight = w.get((out_ch, in_ch, k, k), "weight")?;
        Ok(Self {
            kernel: FrameKernel::new(&weight, pad, stride, layout)?,
            bias: w.get(out_ch, "bias")?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.kernel.forward(x, Some(&self.bias), None)
    }
}

/// RMS norm over channels as `F.normalize(x)·√C·γ`: `x / max(‖x‖₂, 1e-12)`, computed in f32
/// whatever the activation dtype (formula and kernel: `layers::video`).
#[derive(Debug, Clone)]
pub struct ChannelRmsNorm {
    /// `[C]`, already scaled by √C.
    scale: Tensor,
    layout: Layout,
}

impl ChannelRmsNorm {
    /// `images = false`: checkpoint γ is `[C,1,1,1]` (video); `true`: `[C,1,1]` (per-frame).
    pub fn new(w: &Weights, ch: usize, images: bool, layout: Layout) -> Result<Self> {
        let gamma = if images {
            w.get((ch, 1, 1), "gamma")?
        } else {
            w.get((ch, 1, 1, 1), "gamma")?
        };
        let scale = (gamma.flatten_all()? * (ch as f64).sqrt())?;
        Ok(Self { scale, layout })
    }

    /// `silu(self.forward(x))`, in one pass over `x` on a GPU.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        channel_rms_norm(x, &self.scale, self.layout, true)
    }

    /// `[zeros; prefix; silu(self.forward(x))]` along the frames: a causal conv's padded
    /// input, written in place on a GPU.
    pub fn forward_silu_after(
        &self,
        x: &Tensor,
        zeros: usize,
        prefix: Option<&Tensor>,
    ) -> Result<Tensor> {
        padded_norm_silu(x, &self.scale, self.layout, zeros, prefix)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        channel_rms_norm(x, &self.scale, self.layout, false)
    }
}

/// A copy of the last `n` frames of `x` (all of them when it has fewer), for a cache: a view
/// would keep the whole chunk alive.
pub fn last_frames(x: &Tensor, n: usize) -> Result<Tensor> {
    let t = x.dim(0)?;
    let keep = n.min(t);
    Ok(x.narrow(0, t - keep, keep)?.copy()?)
}
