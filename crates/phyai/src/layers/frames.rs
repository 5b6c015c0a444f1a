//! Where the channel axis of a stack of video frames sits, and the few operations whose
//! indexing depends on it.
//!
//! On the CPU the video VAE works frame-major, `[T, C, H, W]` (frames are the conv batch). On a
//! GPU it works channels-last, `[T, H, W, C]`, end to end: that is the layout cuDNN's fast
//! half-precision convolutions read and write, so no convolution pays for a transpose, and
//! every pixel's channels are one contiguous row for the norm. The time axis is dim 0 in
//! both, so the causal caches and chunking do not care.

use candle_core::{Device, Tensor};

use crate::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[T, C, H, W]`.
    FrameMajor,
    /// `[T, H, W, C]`.
    ChannelsLast,
}

impl Layout {
    /// Channels-last on CUDA devices, frame-major elsewhere.
    pub fn for_device(device: &Device) -> Self {
        if device.is_cuda() {
            Self::ChannelsLast
        } else {
            Self::FrameMajor
        }
    }

    /// The channel axis.
    pub fn channel_dim(self) -> usize {
        match self {
            Self::FrameMajor => 1,
            Self::ChannelsLast => 3,
        }
    }

    /// `(T, C, H, W)` of a frame stack in this layout.
    pub fn dims(self, x: &Tensor) -> Result<(usize, usize, usize, usize)> {
        let (a, b, c, d) = x.dims4()?;
        Ok(match self {
            Self::FrameMajor => (a, b, c, d),
            Self::ChannelsLast => (a, d, b, c),
        })
    }

    /// A frame-major stack in this layout (contiguous).
    pub fn from_frame_major(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::FrameMajor => x.clone(),
            Self::ChannelsLast => x.permute((0, 2, 3, 1))?.contiguous()?,
        })
    }

    /// A stack in this layout as frame-major (contiguous).
    pub fn to_frame_major(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::FrameMajor => x.clone(),
            Self::ChannelsLast => x.permute((0, 3, 1, 2))?.contiguous()?,
        })
    }

    /// A per-channel vector `[C]` shaped to broadcast over a frame stack.
    pub fn per_channel(self, v: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::FrameMajor => v.reshape((1, (), 1, 1))?,
            Self::ChannelsLast => v.reshape((1, 1, 1, ()))?,
        })
    }

    /// Zero-pads one row at the bottom and one column at the right of every frame.
    pub fn pad_bottom_right(self, x: &Tensor) -> Result<Tensor> {
        let (hd, wd) = match self {
            Self::FrameMajor => (2, 3),
            Self::ChannelsLast => (1, 2),
        };
        Ok(x.pad_with_zeros(hd, 0, 1)?.pad_with_zeros(wd, 0, 1)?)
    }
}
