//! The memory-bound steps between a layer's matrix products — SiLU·mul, residual add +
//! RMSNorm, QK norm + rotary embedding — each as one function. On a CUDA device in bf16/f16
//! each is one fused kernel (`kernels/glue.cu`) that reads and writes every activation
//! once; elsewhere, or for shapes the kernels do not cover, the same steps run as separate
//! tensor operations (the reference formulation the CPU tests check).

use candle_core::{Tensor, D};

#[cfg(feature = "cuda")]
use super::fp8::known_amax;
use super::norm::RmsNorm;
#[cfg(feature = "cuda")]
use super::norm::RmsScale;
use super::rope::apply_rope;
use crate::Result;

/// Whether `t` can go to a fused kernel: half precision on a CUDA device, contiguous.
#[cfg(feature = "cuda")]
fn fusable(t: &Tensor) -> bool {
    t.device().is_cuda()
        && matches!(
            t.dtype(),
            candle_core::DType::BF16 | candle_core::DType::F16
        )
        && t.is_contiguous()
}

/// `gu` `[.., 2·inter]` (gate then up, as the fused gate/up GEMM writes it) →
/// `silu(gate) · up` `[.., inter]`.
pub fn silu_mul(gu: &Tensor) -> Result<Tensor> {
    let width = gu.dim(D::Minus1)?;
    let inter = width / 2;
    #[cfg(feature = "cuda")]
    if fusable(gu) && width.is_multiple_of(16) {
        let rows = gu.elem_count() / width;
        let mut shape = gu.dims().to_vec();
        *shape.last_mut().expect("rank ≥ 1") = inter;
        let amax = wanted_amax(gu)?;
        let out = super::cuda::glue::silu_mul(gu, rows, inter, amax.as_ref())?.reshape(shape)?;
        if let Some(a) = amax {
            known_amax::remember(&out, a);
        }
        return Ok(out);
    }
    let gate = gu.narrow(D::Minus1, 0, inter)?;
    let up = gu.narrow(D::Minus1, inter, inter)?;
    Ok((candle_nn::ops::silu(&gate)? * up)?)
}

/// Residual update and the norm that follows it: `s = x + y`, returns `(s, norm(s))`.
pub fn add_rms_norm(x: &Tensor, y: &Tensor, norm: &RmsNorm) -> Result<(Tensor, Tensor)> {
    #[cfg(feature = "cuda")]
    if let Some(rows_dim) = norm_fast_path(x, norm) {
        if fusable(y) && y.dims() == x.dims() && y.dtype() == x.dtype() {
            let (rows, dim) = rows_dim;
            let w = norm.weight().to_device(x.device())?.to_dtype(x.dtype())?;
            let amax = wanted_amax(x)?;
            let both = super::cuda::glue::add_rms_norm(
                x,
                Some(y),
                &w,
                rows,
                dim,
                norm.eps() as f32,
                norm.scale() == RmsScale::AfterCast,
                amax.as_ref(),
            )?;
            let s = both.get(0)?.reshape(x.dims())?;
            let n = both.get(1)?.reshape(x.dims())?;
            if let Some(a) = amax {
                known_amax::remember(&n, a);
            }
            return Ok((s, n));
        }
    }
    let s = (x + y)?;
    let n = norm.forward(&s)?;
    Ok((s, n))
}

/// `norm(x)`, through the fused kernel where it applies.
pub fn rms_norm(x: &Tensor, norm: &RmsNorm) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Some((rows, dim)) = norm_fast_path(x, norm) {
        let w = norm.weight().to_device(x.device())?.to_dtype(x.dtype())?;
        let n = super::cuda::glue::add_rms_norm(
            x,
            None,
            &w,
            rows,
            dim,
            norm.eps() as f32,
            norm.scale() == RmsScale::AfterCast,
            None,
        )?;
        return Ok(n.reshape(x.dims())?);
    }
    norm.forward(x)
}

/// A zeroed f32 `[1]` on `x`'s device for a producer to fold its output's max|·| into, when
/// an FP8 consumer has asked for it ([`known_amax`]).
#[cfg(feature = "cuda")]
fn wanted_amax(x: &Tensor) -> Result<Option<Tensor>> {
    Ok(if known_amax::wanted() {
        Some(Tensor::zeros(1, candle_core::DType::F32, x.device())?)
    } else {
        None
    })
}

/// `(rows, dim)` when `x` can be normalised by the fused kernel.
#[cfg(feature = "cuda")]
fn norm_fast_path(x: &Tensor, norm: &RmsNorm) -> Option<(usize, usize)> {
    let dim = x.dim(D::Minus1).ok()?;
    (fusable(x) && dim.is_multiple_of(8) && dim <= 8192 && norm.weight().dims() == [dim])
        .then(|| (x.elem_count() / dim, dim))
}

/// The fused QKV GEMM output `[N, hq + 2·hkv, d]` → Q `[hq, N, d]`, K and V `[hkv, N, d]`
/// (head-major views of token-major data): Q and K normalised per head (when norms are
/// given) and rotated by `cos`/`sin` `[N, d/2]`; V untouched.
pub fn qk_norm_rope(
    qkv: &Tensor,
    heads: (usize, usize),
    norms: Option<(&RmsNorm, &RmsNorm)>,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (hq, hkv) = heads;
    qkv.dims3()?;
    let v = qkv.narrow(1, hq + hkv, hkv)?.transpose(0, 1)?;
    #[cfg(feature = "cuda")]
    if let Some((q, k)) = qk_norm_rope_fused(qkv, heads, norms, cos, sin)? {
        return Ok((q, k, v));
    }
    let part = |start: usize, len: usize, norm: Option<&RmsNorm>| -> Result<Tensor> {
        let t = qkv.narrow(1, start, len)?;
        let t = match norm {
            Some(nm) => nm.forward(&t)?,
            None => t,
        };
        apply_rope(&t.transpose(0, 1)?, cos, sin)
    };
    Ok((
        part(0, hq, norms.map(|p| p.0))?,
        part(hq, hkv, norms.map(|p| p.1))?,
        v,
    ))
}

/// [`qk_norm_rope`]'s Q and K from one CUDA kernel; `None` where the kernel does not apply.
#[cfg(feature = "cuda")]
fn qk_norm_rope_fused(
    qkv: &Tensor,
    (hq, hkv): (usize, usize),
    norms: Option<(&RmsNorm, &RmsNorm)>,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<Option<(Tensor, Tensor)>> {
    let (n, _, d) = qkv.dims3()?;
    let applies = fusable(qkv)
        && d.is_multiple_of(64)
        && d <= 256
        && cos.dtype() == qkv.dtype()
        && cos.is_contiguous()
        && sin.is_contiguous()
        && cos.dims() == [n, d / 2]
        && sin.dims() == [n, d / 2]
        // The kernel moves each lane's elements in one aligned access.
        && [qkv, cos, sin]
            .iter()
            .all(|t| t.layout().start_offset().is_multiple_of(8))
        && norms.is_none_or(|(a, b)| {
            a.weight().dims() == [d]
                && b.weight().dims() == [d]
                && a.eps() == b.eps()
                && a.scale() == b.scale()
        });
    if !applies {
        return Ok(None);
    }
    let on_device = |w: &Tensor| -> candle_core::Result<Tensor> {
        let t = w.to_device(qkv.device())?.to_dtype(qkv.dtype())?;
        // Aligned like the other operands (a fresh copy starts at offset 0).
        if t.layout().start_offset().is_multiple_of(8) {
            Ok(t)
        } else {
            t.copy()
        }
    };
    let weights = match norms {
        Some((a, b)) => Some((on_device(a.weight())?, on_device(b.weight())?, a)),
        None => None,
    };
    let out = super::cuda::glue::qk_norm_rope(
        qkv,
        weights
            .as_ref()
            .map(|(wq, wk, a)| (wq, wk, a.eps() as f32, a.scale() == RmsScale::AfterCast)),
        cos,
        sin,
        n,
        hq,
        hkv,
        d,
    )?;
    let q = out.narrow(1, 0, hq)?.transpose(0, 1)?;
    let k = out.narrow(1, hq, hkv)?.transpose(0, 1)?;
    Ok(Some((q, k)))
}
