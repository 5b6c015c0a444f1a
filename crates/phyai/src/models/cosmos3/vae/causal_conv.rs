//! Causal 3-D convolution of the Wan VAE, streamed frame-chunk by frame-chunk.
//!
//! Layout: video tensors inside the VAE are frame-major `[T, C, H, W]` (one video, frames as
//! the conv batch), so every spatial op is a 2-D conv over frames ([`FrameKernel`]). A 3-D
//! conv with temporal kernel `kt` is the sum over its taps of a 2-D conv of the frame
//! sequence shifted by the tap, so no 5-D kernel is needed; a cuDNN conv3d can replace
//! [`CausalConv3d::conv_frames`] alone later.
//!
//! Causality: the time axis is left-padded with `2·pad_t` frames. When a video is processed
//! in chunks, those frames come from [`FrameCache`] — the last `2·pad_t` input frames seen by
//! this conv — and are zeros only before the first frame, so chunked and whole-video
//! results are identical.

use candle_core::Tensor;

use super::frame_conv::FrameKernel;
use crate::io::weights::Weights;
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

/// Hands out cache slot numbers in construction order.
#[derive(Debug, Default)]
pub struct SlotCounter(usize);

impl SlotCounter {
    pub fn take(&mut self) -> usize {
        self.0 += 1;
        self.0 - 1
    }
    pub fn count(&self) -> usize {
        self.0
    }
}

/// How the temporal taps are evaluated, chosen by device at load.
#[derive(Debug, Clone)]
enum Taps {
    /// One spatial kernel per temporal tap, oldest frame first, summed (CPU).
    PerTap(Vec<FrameKernel>),
    /// The whole kernel, channels last `[O, kt, k, k, I]`, with its spatial padding: one
    /// cuDNN call per chunk (CUDA).
    #[cfg(feature = "cuda")]
    Whole { weight: Tensor, pad: usize },
}

impl Taps {
    /// `weight` `[O, I, kt, k, k]`, spatial padding `pad`.
    fn new(weight: &Tensor, pad: usize) -> Result<Self> {
        #[cfg(feature = "cuda")]
        if weight.device().is_cuda() {
            let weight = crate::layers::cudnn_conv::weight_channels_last(weight)?;
            return Ok(Self::Whole { weight, pad });
        }
        Ok(Self::PerTap(split_taps(weight, pad)?))
    }
}

/// Conv3d `[O, I, kt, kh, kw]` with causal time padding, symmetric spatial padding
/// (`kh == kw`, `pad_h == pad_w` in every Wan conv), spatial stride 1 and temporal stride `st`.
#[derive(Debug, Clone)]
pub struct CausalConv3d {
    kernel: Taps,
    bias: Tensor,
    t_stride: usize,
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
        slots: &mut SlotCounter,
    ) -> Result<Self> {
        let (kt, ks) = kernel;
        let weight = w.get((out_ch, in_ch, kt, ks, ks), "weight")?;
        let bias = w.get(out_ch, "bias")?;
        let kernel = Taps::new(&weight, pad.1)?;
        let slot = (kt > 1 && pad.0 > 0).then(|| slots.take());
        Ok(Self {
            kernel,
            bias,
            t_stride,
            pad_t: pad.0,
            slot,
        })
    }

    /// Number of history frames this conv pads with (`2·pad_t`).
    fn history(&self) -> usize {
        2 * self.pad_t
    }

    /// Causal forward of one chunk `[T, I, H, W]` → `[T', O, H, W]`, reading and updating
    /// this conv's history in `cache`.
    pub fn forward(&self, x: &Tensor, cache: &mut FrameCache) -> Result<Tensor> {
        let Some(slot) = self.slot else {
            return self.conv_frames(x);
        };
        let need = self.history();
        let seen = match cache.get(slot) {
            Some(prev) => Tensor::cat(&[prev, x], 0)?,
            None => x.clone(),
        };
        let n_seen = seen.dim(0)?;
        let n_prev = n_seen - x.dim(0)?;
        let keep = need.min(n_seen);
        // A copy: a view would keep the whole chunk alive in the cache.
        let new_history = seen.narrow(0, n_seen - keep, keep)?.copy()?;
        // Only the last `need` frames of the history matter; zeros stand in for frames
        // before the start of the video.
        let used_prev = n_prev.min(need);
        let input = seen.narrow(0, n_prev - used_prev, used_prev + x.dim(0)?)?;
        let input = input.pad_with_zeros(0, need - used_prev, 0)?;
        cache.set(slot, new_history);
        self.conv_frames(&input)
    }

    /// Temporal "valid" conv (no time padding) of `[T, I, H, W]` → `[(T−kt)/st + 1, O, H, W]`.
    pub fn conv_frames(&self, x: &Tensor) -> Result<Tensor> {
        match &self.kernel {
            #[cfg(feature = "cuda")]
            Taps::Whole { weight, pad } => {
                use crate::layers::cudnn_conv::{conv_frames, weight_channels_first};
                let stride = [self.t_stride, 1];
                match conv_frames(&x.contiguous()?, weight, Some(&self.bias), *pad, stride) {
                    Ok(y) => Ok(y),
                    Err(e) => {
                        super::frame_conv::warn_fallback(&e);
                        self.sum_taps(x, &split_taps(&weight_channels_first(weight)?, *pad)?)
                    }
                }
            }
            Taps::PerTap(taps) => self.sum_taps(x, taps),
        }
    }

    /// The temporal conv as a sum over taps of per-frame spatial convs, plus the bias.
    fn sum_taps(&self, x: &Tensor, taps: &[FrameKernel]) -> Result<Tensor> {
        let kt = taps.len();
        let t_in = x.dim(0)?;
        if t_in < kt {
            return Err(crate::Error::msg(format!(
                "causal conv: {t_in} frames for a temporal kernel of {kt}"
            )));
        }
        let t_out = (t_in - kt) / self.t_stride + 1;
        let mut acc: Option<Tensor> = None;
        for (k, tap) in taps.iter().enumerate() {
            let frames = if self.t_stride == 1 {
                x.narrow(0, k, t_out)?
            } else {
                let idx: Vec<u32> = (0..t_out).map(|j| (k + j * self.t_stride) as u32).collect();
                let idx = Tensor::new(idx.as_slice(), x.device())?;
                x.index_select(&idx, 0)?
            };
            let y = tap.forward(&frames.contiguous()?, None)?;
            acc = Some(match acc {
                Some(a) => (a + y)?,
                None => y,
            });
        }
        let out = acc.expect("temporal kernel has at least one tap");
        Ok(out.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)?)
    }
}

/// `[O, I, kt, k, k]` → one spatial kernel per temporal tap.
fn split_taps(weight: &Tensor, pad: usize) -> Result<Vec<FrameKernel>> {
    (0..weight.dim(2)?)
        .map(|k| FrameKernel::new(&weight.narrow(2, k, 1)?.squeeze(2)?, pad, 1))
        .collect()
}

/// Conv2d with bias applied per frame (`[T, I, H, W]`), square kernel, symmetric padding.
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
    ) -> Result<Self> {
        Ok(Self {
            kernel: FrameKernel::new(&w.get((out_ch, in_ch, k, k), "weight")?, pad, stride)?,
            bias: w.get(out_ch, "bias")?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.kernel.forward(x, Some(&self.bias))
    }
}

/// RMS norm over channels (dim 1) as `F.normalize(x)·√C·γ`: `x / max(‖x‖₂, 1e-12)`,
/// computed in f32 whatever the activation dtype.
#[derive(Debug, Clone)]
pub struct ChannelRmsNorm {
    /// `[1, C, 1, 1]`, already scaled by √C.
    scale: Tensor,
}

impl ChannelRmsNorm {
    /// `images = false`: checkpoint γ is `[C,1,1,1]` (video); `true`: `[C,1,1]` (per-frame).
    pub fn new(w: &Weights, ch: usize, images: bool) -> Result<Self> {
        let gamma = if images {
            w.get((ch, 1, 1), "gamma")?
        } else {
            w.get((ch, 1, 1, 1), "gamma")?
        };
        let scale = (gamma.reshape((1, ch, 1, 1))? * (ch as f64).sqrt())?;
        Ok(Self { scale })
    }

    /// `silu(self.forward(x))`, in one pass over `x` on a GPU in half precision.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if let Some(y) = self.fused(x, true)? {
            return Ok(y);
        }
        silu(&self.forward(x)?)
    }

    /// The fused kernel, where it applies (CUDA, bf16/f16).
    #[cfg(feature = "cuda")]
    fn fused(&self, x: &Tensor, with_silu: bool) -> Result<Option<Tensor>> {
        if !x.device().is_cuda()
            || !matches!(
                x.dtype(),
                candle_core::DType::BF16 | candle_core::DType::F16
            )
        {
            return Ok(None);
        }
        let (t, c, h, w) = x.dims4()?;
        let scale = self.scale.to_dtype(x.dtype())?.flatten_all()?;
        let y = crate::layers::glue_cuda::channel_norm(
            &x.contiguous()?,
            &scale,
            t,
            c,
            h * w,
            with_silu,
        )?;
        Ok(Some(y.reshape((t, c, h, w))?))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if let Some(y) = self.fused(x, false)? {
            return Ok(y);
        }
        let dtype = x.dtype();
        let xf = x.to_dtype(candle_core::DType::F32)?;
        let norm = xf.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
        let y = xf.broadcast_div(&norm)?.to_dtype(dtype)?;
        Ok(y.broadcast_mul(&self.scale)?)
    }
}

/// A copy of the last `n` frames of `x` (all of them when it has fewer), for a cache: a view
/// would keep the whole chunk alive.
pub fn last_frames(x: &Tensor, n: usize) -> Result<Tensor> {
    let t = x.dim(0)?;
    let keep = n.min(t);
    Ok(x.narrow(0, t - keep, keep)?.copy()?)
}

/// Silu in the activation dtype.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::silu(x)?)
}
