//! The audio decoder's two per-sample operations on channels-first `[B, C, T]` sequences —
//! the snake activation and the dilated 1-D convolution — each as one function. On a CUDA
//! device (bf16, f16 or f32) the snake is one kernel (`kernels/audio.cu`, five tensor ops
//! otherwise) and the convolution goes to cuDNN with a timed algorithm, many times faster
//! than candle's conv1d; elsewhere both run as tensor operations (the reference formulation
//! the CPU tests check).

use candle_core::Tensor;

use crate::Result;

/// Whether `x` takes the CUDA path: the project's kernels and cuDNN (CUDA, bf16/f16/f32).
#[cfg(feature = "cuda")]
fn on_gpu(x: &Tensor) -> bool {
    use candle_core::DType;
    x.device().is_cuda() && matches!(x.dtype(), DType::BF16 | DType::F16 | DType::F32)
}

/// `x + sin²(alpha·x) · inv_beta` of `x` `[B, C, T]`, with `alpha` and `inv_beta` `[1, C, 1]`.
pub fn snake(x: &Tensor, alpha: &Tensor, inv_beta: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if on_gpu(x) {
        return super::cuda::audio::snake(x, alpha, inv_beta);
    }
    let s = x.broadcast_mul(alpha)?.sin()?.sqr()?;
    Ok((x + s.broadcast_mul(inv_beta)?)?)
}

/// `x` `[B, C, T]` convolved with `kernel` `[O, C, K]`, padding `pad` at both ends and taps
/// `dilation` apart → `[B, O, T']`, plus `bias` `[O]` when given.
pub fn conv1d(
    x: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    pad: usize,
    dilation: usize,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if on_gpu(x) {
        return super::cuda::cudnn_conv::conv_seq(x, kernel, bias, pad, dilation);
    }
    let y = x.conv1d(kernel, pad, 1, dilation, 1)?;
    match bias {
        Some(b) => Ok(y.broadcast_add(&b.reshape((1, (), 1))?)?),
        None => Ok(y),
    }
}
