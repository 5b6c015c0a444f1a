//! Convolutions of a frame stack, what every video VAE conv is built from: a square-kernel
//! 2-D convolution of each frame ([`FrameKernel`]) and a 3-D convolution over time and
//! space ([`FramesConv3d`]). Which implementation runs is chosen by device and [`Layout`] at
//! load; the model code only holds the result.
//!
//! Equivalent evaluations of the 2-D kernel:
//! - `Cudnn` (CUDA, channels last): one cuDNN call over all frames (`cuda::cudnn_conv`).
//! - `Conv2d`: candle's conv2d (cuDNN on CUDA). On CPU it lowers to im2col, a buffer k²
//!   times the input, which at 720p and 512–1024 channels is tens of GB.
//! - `Shifted` (CPU, stride 1): the conv as a sum over the k² spatial taps of a 1×1 conv
//!   (a `[O, C] × [C, H·W]` matmul) of the zero-padded frame shifted by the tap. Transient
//!   memory is one shifted copy of one frame plus the accumulator.
//!
//! The last two work frame-major; a channels-last stack is transposed around them (only
//! the tests run the CPU that way).

use candle_core::{Device, Tensor};

use super::frames::Layout;
use crate::Result;

#[derive(Debug, Clone)]
enum Kernel {
    /// `[O, 1, k, k, C]`: one cuDNN call over all frames (CUDA).
    #[cfg(feature = "cuda")]
    Cudnn(Tensor),
    Conv2d(Tensor),
    /// `k·k` matrices `[O, C]`, row-major over (dy, dx).
    Shifted(Vec<Tensor>),
}

/// Square-kernel 2-D convolution of every frame of a stack (no bias of its own: callers
/// pass it to [`Self::forward`], where cuDNN adds it in place).
#[derive(Debug, Clone)]
pub struct FrameKernel {
    kernel: Kernel,
    k: usize,
    pad: usize,
    stride: usize,
    layout: Layout,
}

impl FrameKernel {
    /// `weight` is `[O, C, k, k]`; frames come in `layout`.
    pub fn new(weight: &Tensor, pad: usize, stride: usize, layout: Layout) -> Result<Self> {
        let (_, _, k, k2) = weight.dims4()?;
        if k != k2 {
            return Err(crate::Error::msg(format!(
                "frame conv: non-square kernel {k}×{k2}"
            )));
        }
        #[cfg(feature = "cuda")]
        if weight.device().is_cuda() && layout == Layout::ChannelsLast {
            return Ok(Self {
                kernel: Kernel::Cudnn(super::cuda::cudnn_conv::weight_channels_last(
                    &weight.unsqueeze(2)?,
                )?),
                k,
                pad,
                stride,
                layout,
            });
        }
        let kernel = if matches!(weight.device(), Device::Cpu) && stride == 1 {
            let mut mats = Vec::with_capacity(k * k);
            for dy in 0..k {
                for dx in 0..k {
                    let m = weight.narrow(2, dy, 1)?.narrow(3, dx, 1)?;
                    mats.push(m.squeeze(3)?.squeeze(2)?.contiguous()?);
                }
            }
            Kernel::Shifted(mats)
        } else {
            Kernel::Conv2d(weight.contiguous()?)
        };
        Ok(Self {
            kernel,
            k,
            pad,
            stride,
            layout,
        })
    }

    /// `T` frames of `C` channels → `T` frames of `O` channels, plus a per-channel `bias`
    /// `[O]` and then a `residual` (the output's shape) when given (with cuDNN both added in
    /// place right after the conv).
    pub fn forward(
        &self,
        x: &Tensor,
        bias: Option<&Tensor>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let frame_major = |x: &Tensor| self.layout.to_frame_major(x);
        let y = match &self.kernel {
            #[cfg(feature = "cuda")]
            Kernel::Cudnn(w) => {
                use super::cuda::cudnn_conv::{conv_frames, weight_channels_first};
                match conv_frames(x, w, bias, residual, self.pad, [1, self.stride]) {
                    Ok(y) => return Ok(y),
                    Err(e) => {
                        warn_fallback(&e);
                        let w = weight_channels_first(w)?.squeeze(2)?;
                        frame_major(x)?.conv2d(&w, self.pad, self.stride, 1, 1)?
                    }
                }
            }
            Kernel::Conv2d(w) => frame_major(x)?.conv2d(w, self.pad, self.stride, 1, 1)?,
            Kernel::Shifted(mats) => self.shifted(&frame_major(x)?, mats)?,
        };
        let y = match bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?)?,
            None => y,
        };
        let y = self.layout.from_frame_major(&y)?;
        Ok(match residual {
            Some(r) => (y + r)?,
            None => y,
        })
    }

    /// The CPU evaluation: per frame, a sum of `k²` shifted 1×1 convs.
    fn shifted(&self, x: &Tensor, mats: &[Tensor]) -> Result<Tensor> {
        let (t, c, h, w) = x.dims4()?;
        let (k, p) = (self.k, self.pad);
        let (ho, wo) = (h + 2 * p + 1 - k, w + 2 * p + 1 - k);
        let padded = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
        let mut frames = Vec::with_capacity(t);
        for f in 0..t {
            let frame = padded.get(f)?;
            let mut acc: Option<Tensor> = None;
            for dy in 0..k {
                for dx in 0..k {
                    let shifted = if k == 1 && p == 0 {
                        frame.reshape((c, h * w))?
                    } else {
                        frame
                            .narrow(1, dy, ho)?
                            .narrow(2, dx, wo)?
                            .contiguous()?
                            .reshape((c, ho * wo))?
                    };
                    let y = mats[dy * k + dx].matmul(&shifted)?;
                    acc = Some(match acc {
                        Some(a) => (a + y)?,
                        None => y,
                    });
                }
            }
            let acc = acc.expect("kernel has at least one tap");
            frames.push(acc.reshape(((), ho, wo))?);
        }
        Ok(Tensor::stack(&frames, 0)?)
    }
}

/// Says once per process that a cuDNN convolution failed and the slower path is used.
#[cfg(feature = "cuda")]
fn warn_fallback(e: &crate::Error) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        tracing::warn!("cuDNN video convolution unavailable ({e}); using per-frame conv2d")
    });
}

/// How the temporal taps of a [`FramesConv3d`] are evaluated, chosen by device and layout at
/// load.
#[derive(Debug, Clone)]
enum Taps {
    /// One spatial kernel per temporal tap, oldest frame first, summed (CPU).
    PerTap(Vec<FrameKernel>),
    /// The whole kernel, channels last `[O, kt, k, k, I]`, with its spatial padding: one
    /// cuDNN call per chunk (CUDA).
    #[cfg(feature = "cuda")]
    Whole { weight: Tensor, pad: usize },
}

/// Conv3d `[O, I, kt, k, k]` over a frame stack, "valid" in time (no temporal padding: the
/// caller prepends whatever history it needs), temporal stride `t_stride`, symmetric spatial
/// padding and spatial stride 1, with a bias.
#[derive(Debug, Clone)]
pub struct FramesConv3d {
    taps: Taps,
    bias: Tensor,
    layout: Layout,
    t_stride: usize,
}

impl FramesConv3d {
    /// `weight` `[O, I, kt, k, k]`, `bias` `[O]`, spatial padding `pad`.
    pub fn new(
        weight: &Tensor,
        bias: Tensor,
        pad: usize,
        t_stride: usize,
        layout: Layout,
    ) -> Result<Self> {
        #[cfg(feature = "cuda")]
        if weight.device().is_cuda() && layout == Layout::ChannelsLast {
            let weight = super::cuda::cudnn_conv::weight_channels_last(weight)?;
            return Ok(Self {
                taps: Taps::Whole { weight, pad },
                bias,
                layout,
                t_stride,
            });
        }
        Ok(Self {
            taps: Taps::PerTap(split_taps(weight, pad, layout)?),
            bias,
            layout,
            t_stride,
        })
    }

    /// `T` frames → `(T−kt)/t_stride + 1` frames, plus `residual` (the output's shape) when
    /// given (with cuDNN, bias and residual are added in one pass right after the conv).
    pub fn forward(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let y = match &self.taps {
            #[cfg(feature = "cuda")]
            Taps::Whole { weight, pad } => {
                use super::cuda::cudnn_conv::{conv_frames, weight_channels_first};
                let stride = [self.t_stride, 1];
                match conv_frames(x, weight, Some(&self.bias), residual, *pad, stride) {
                    Ok(y) => return Ok(y),
                    Err(e) => {
                        warn_fallback(&e);
                        let taps = split_taps(&weight_channels_first(weight)?, *pad, self.layout)?;
                        self.sum_taps(x, &taps)?
                    }
                }
            }
            Taps::PerTap(taps) => self.sum_taps(x, taps)?,
        };
        Ok(match residual {
            Some(r) => (y + r)?,
            None => y,
        })
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
            let y = tap.forward(&frames.contiguous()?, None, None)?;
            acc = Some(match acc {
                Some(a) => (a + y)?,
                None => y,
            });
        }
        let out = acc.expect("temporal kernel has at least one tap");
        Ok(out.broadcast_add(&self.layout.per_channel(&self.bias)?)?)
    }
}

/// `[O, I, kt, k, k]` → one spatial kernel per temporal tap.
fn split_taps(weight: &Tensor, pad: usize, layout: Layout) -> Result<Vec<FrameKernel>> {
    (0..weight.dim(2)?)
        .map(|k| FrameKernel::new(&weight.narrow(2, k, 1)?.squeeze(2)?, pad, 1, layout))
        .collect()
}
