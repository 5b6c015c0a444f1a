//! The memory-bound steps of the video VAE between its convolutions — channel RMS norm (+
//! SiLU, written after a causal conv's history frames), nearest ×2 upsampling, and the up
//! block's parameter-free `dup_up` shortcut — each as one function of a frame stack in a
//! [`Layout`]. On a CUDA device in the channels-last layout each is one kernel
//! (`kernels/video.cu`) that reads and writes every activation once; elsewhere the same
//! steps run as tensor operations (the reference formulation the CPU tests check).
//!
//! Also the encoder's `avg_down` shortcut, the mirror of `dup_up` (no kernel: the encoder
//! only runs on single images for conditioning).

use candle_core::{DType, Tensor};

use super::frames::Layout;
use crate::Result;

/// Whether the video kernels take `x`: CUDA, channels last.
#[cfg(feature = "cuda")]
fn on_kernels(x: &Tensor, layout: Layout) -> bool {
    x.device().is_cuda() && layout == Layout::ChannelsLast
}

/// RMS norm over the channels as `F.normalize(x)·scale`: `x / max(‖x‖₂, 1e-12)·scale`
/// (`scale` `[C]`, already holding √C·γ), computed in f32 whatever the activation dtype,
/// then SiLU when `silu`.
pub fn channel_rms_norm(x: &Tensor, scale: &Tensor, layout: Layout, silu: bool) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if on_kernels(x, layout) {
        return norm_kernel(x, scale, silu, 0, None);
    }
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let norm = xf
        .sqr()?
        .sum_keepdim(layout.channel_dim())?
        .sqrt()?
        .maximum(1e-12)?;
    let y = xf.broadcast_div(&norm)?.to_dtype(dtype)?;
    let y = y.broadcast_mul(&layout.per_channel(scale)?)?;
    Ok(if silu { candle_nn::ops::silu(&y)? } else { y })
}

/// `[zeros zero frames; prefix; channel_rms_norm(x, …, silu = true)]` along the frames: a
/// causal conv's padded input. The kernel writes the norm straight after the copied
/// history, so the padding costs no concatenation pass.
pub fn padded_norm_silu(
    x: &Tensor,
    scale: &Tensor,
    layout: Layout,
    zeros: usize,
    prefix: Option<&Tensor>,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if on_kernels(x, layout) {
        return norm_kernel(x, scale, true, zeros, prefix);
    }
    let y = channel_rms_norm(x, scale, layout, true)?;
    let y = match prefix {
        Some(p) => Tensor::cat(&[p, &y], 0)?,
        None => y,
    };
    Ok(y.pad_with_zeros(0, zeros, 0)?)
}

/// The channel-norm kernel on the contiguous `x` and `scale` in its dtype.
#[cfg(feature = "cuda")]
fn norm_kernel(
    x: &Tensor,
    scale: &Tensor,
    silu: bool,
    zeros: usize,
    prefix: Option<&Tensor>,
) -> Result<Tensor> {
    let scale = scale.to_dtype(x.dtype())?;
    let x = x.contiguous()?;
    super::cuda::video::channel_norm(&x, &scale, silu, zeros, prefix)
}

/// Nearest ×2 upsampling in space, after splitting the channels into `split` blocks that
/// become consecutive frames (`[T, split·C, …]` → `[split·T, C, …]`, block `a` of frame `i`
/// becoming frame `split·i + a`): the temporal upsampler's output order.
pub fn upsample(x: &Tensor, layout: Layout, split: usize) -> Result<Tensor> {
    let (t, sc, h, w) = layout.dims(x)?;
    let c = sc / split;
    match layout {
        Layout::FrameMajor => {
            let x = x.reshape((t * split, c, h, w))?;
            Ok(x.upsample_nearest2d(2 * h, 2 * w)?)
        }
        Layout::ChannelsLast => {
            #[cfg(feature = "cuda")]
            if x.device().is_cuda() {
                return super::cuda::video::upsample(&x.contiguous()?, split);
            }
            Ok(x.reshape(vec![t, h, 1, w, 1, split, c])?
                .broadcast_as(vec![t, h, 2, w, 2, split, c])?
                .permute(vec![0, 5, 1, 2, 3, 4, 6])?
                .contiguous()?
                .reshape((t * split, 2 * h, 2 * w, c))?)
        }
    }
}

/// `y + dup_up(x, …)` with both in `layout`: the up block's shortcut added to its output.
pub fn add_dup_up(
    y: &Tensor,
    x: &Tensor,
    layout: Layout,
    out_ch: usize,
    ft: usize,
    fs: usize,
    first_chunk: bool,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if on_kernels(x, layout) {
        let drop = if first_chunk { ft - 1 } else { 0 };
        let (y, x) = (y.contiguous()?, x.contiguous()?);
        return super::cuda::video::dup_up_add(&y, &x, ft, fs, drop);
    }
    let d = dup_up(&layout.to_frame_major(x)?, out_ch, ft, fs, first_chunk)?;
    Ok((y + layout.from_frame_major(&d)?)?)
}

/// Parameter-free shortcut of an up block: repeat channels, then unfold channel groups into
/// `ft` frames and `fs×fs` pixels. On the first chunk the first `ft − 1` frames are dropped,
/// matching the upsampler that does not double frame 0. Frame-major.
pub fn dup_up(
    x: &Tensor,
    out_ch: usize,
    ft: usize,
    fs: usize,
    first_chunk: bool,
) -> Result<Tensor> {
    let (t, c, h, w) = x.dims4()?;
    let factor = ft * fs * fs;
    let repeats = out_ch * factor / c;
    let x = x
        .unsqueeze(2)?
        .broadcast_as((t, c, repeats, h, w))?
        .reshape(vec![t, out_ch, ft, fs, fs, h, w])?
        .permute(vec![0, 2, 1, 5, 3, 6, 4])?
        .contiguous()?
        .reshape((t * ft, out_ch, h * fs, w * fs))?;
    if first_chunk && ft > 1 {
        Ok(x.narrow(0, ft - 1, t * ft - (ft - 1))?)
    } else {
        Ok(x)
    }
}

/// Parameter-free shortcut of a down block: space/time-to-channel fold (factors `ft`, `fs`)
/// followed by averaging channel groups down to `out_ch`. Pads time at the front with zeros
/// to a multiple of `ft`, as the first (single-frame) chunk needs. Frame-major.
pub fn avg_down(x: &Tensor, out_ch: usize, ft: usize, fs: usize) -> Result<Tensor> {
    let (t, c, h, w) = x.dims4()?;
    let pad_t = (ft - t % ft) % ft;
    let x = x.pad_with_zeros(0, pad_t, 0)?;
    let t2 = (t + pad_t) / ft;
    let (h2, w2) = (h / fs, w / fs);
    let group = c * ft * fs * fs / out_ch;
    let x = x
        .reshape(vec![t2, ft, c, h2, fs, w2, fs])?
        .permute(vec![0, 2, 1, 4, 6, 3, 5])?
        .contiguous()?
        .reshape((t2, out_ch, group, h2, w2))?;
    Ok(x.mean(2)?)
}
