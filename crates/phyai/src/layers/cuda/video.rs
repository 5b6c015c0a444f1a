//! Launchers for the video VAE's own kernels, `kernels/video.cu`, on channels-last
//! `[frames, H, W, C]` activations in bf16, f16 or f32. Callers check shapes, dtypes and
//! contiguity first; these functions only move pointers and pick launch sizes.

use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::{CudaDevice, DType, Shape, Tensor};

use super::buffer::{addr, device, dtype_suffix, output};
use crate::{Error, Result};

pub(crate) const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/video.ptx"));
const MODULE: &str = "phyai_video";

fn suffix(dtype: DType) -> Result<&'static str> {
    dtype_suffix(dtype, "video kernels")
}

/// A grid-stride launch over `n` items.
fn flat(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 1 << 20) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Element counts the kernels index with 32-bit integers.
fn fits_i32(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n).map_err(|_| {
        Error::msg(format!(
            "{what}: {n} elements exceed the video kernels' 2^31 limit (decode in tiles)"
        ))
    })
}

/// Whether 2-byte elements in rows of `c` can move as 16-byte vectors from `ptrs`.
fn vec8(dtype: DType, c: usize, ptrs: &[u64]) -> bool {
    dtype.size_in_bytes() == 2 && c.is_multiple_of(8) && ptrs.iter().all(|p| p.is_multiple_of(16))
}

/// Channel RMS norm (and SiLU) of the frames `x` `[t, h, w, c]` (contiguous), written after
/// `zeros` zero frames and a copy of `prefix` (`[p, h, w, c]`): the causal conv's padded
/// input `[zeros + p + t, h, w, c]` in one buffer, with no concatenation pass.
pub fn channel_norm(
    x: &Tensor,
    scale: &Tensor,
    silu: bool,
    zeros: usize,
    prefix: Option<&Tensor>,
) -> Result<Tensor> {
    let dev = device(x)?;
    let stream = dev.cuda_stream();
    let (t, h, w, c) = x.dims4()?;
    let frame = h * w * c;
    let p = prefix.map(|p| p.dim(0)).transpose()?.unwrap_or(0);
    let name = format!("channel_norm_last_{}", suffix(x.dtype())?);
    let f = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
    let (xp, sp) = (addr(x, &stream)?, addr(scale, &stream)?);
    let (out, base) = output(&dev, x.dtype(), Shape::from((zeros + p + t, h, w, c)))?;
    let es = x.dtype().size_in_bytes();
    let cu = stream.cu_stream();
    // SAFETY: both ranges lie inside the fresh output buffer; the prefix is a live contiguous
    // tensor of `p` frames of the same shape and dtype; all on the output's stream.
    unsafe {
        use candle_core::cuda_backend::cudarc::driver::result::{
            memcpy_dtod_async, memset_d8_async,
        };
        if zeros > 0 {
            memset_d8_async(base, 0, zeros * frame * es, cu)
                .map_err(|e| Error::msg(format!("channel_norm zero frames: {e}")))?;
        }
        if let Some(pre) = prefix {
            let pre = pre.contiguous()?;
            let src = addr(&pre, &stream)?;
            memcpy_dtod_async(base + (zeros * frame * es) as u64, src, p * frame * es, cu)
                .map_err(|e| Error::msg(format!("channel_norm history copy: {e}")))?;
        }
    }
    let yp = base + ((zeros + p) * frame * es) as u64;
    let rows = t * h * w;
    let vec = vec8(x.dtype(), c, &[xp, sp, yp]) as i32;
    let (r, cc, si) = (
        fits_i32(rows * 32, "channel norm")? / 32,
        c as i32,
        silu as i32,
    );
    let mut b = f.builder();
    b.arg(&xp)
        .arg(&sp)
        .arg(&yp)
        .arg(&r)
        .arg(&cc)
        .arg(&si)
        .arg(&vec);
    let cfg = LaunchConfig {
        grid_dim: ((rows * 32).div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: argument types and order match `channel_norm_last_*`; `rows·c` elements at
    // `xp` and `yp`, `c` at `sp`.
    unsafe { b.launch(cfg) }.map_err(|e| Error::msg(format!("channel_norm launch: {e}")))?;
    Ok(out)
}

/// Adds `bias` `[c]`, then `residual` (same shape), each if given, in place to the `n`
/// elements (`[n / c, c]`) of `dtype` at device address `y`, a buffer the caller owns and
/// has not yet handed out.
pub fn bias_residual_raw(
    dev: &CudaDevice,
    dtype: DType,
    y: u64,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    n: usize,
    c: usize,
) -> Result<()> {
    let stream = dev.cuda_stream();
    let name = format!("bias_residual_last_{}", suffix(dtype)?);
    let f = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
    let bias = bias.map(|b| b.to_dtype(dtype)).transpose()?;
    let bp = match &bias {
        Some(b) if b.elem_count() == c => addr(b, &stream)?,
        Some(b) => {
            return Err(Error::msg(format!(
                "bias {:?} does not match the {c} conv output channels",
                b.dims()
            )))
        }
        None => 0,
    };
    let residual = residual.map(|r| r.contiguous()).transpose()?;
    let rp = match &residual {
        Some(r) if r.elem_count() == n && r.dtype() == dtype => addr(r, &stream)?,
        Some(r) => {
            return Err(Error::msg(format!(
                "residual {:?} {:?} does not match the {n} {dtype:?} conv outputs",
                r.dims(),
                r.dtype()
            )))
        }
        None => 0,
    };
    let vec = vec8(dtype, c, &[y, bp, rp]);
    let (nn, cc, v) = (fits_i32(n, "bias add")?, c as i32, vec as i32);
    let mut b = f.builder();
    b.arg(&y).arg(&bp).arg(&rp).arg(&nn).arg(&cc).arg(&v);
    // SAFETY: argument types and order match `bias_residual_last_*`; the caller guarantees
    // `n` elements at `y`; the bias and residual sizes were checked.
    unsafe { b.launch(flat(if vec { n / 8 } else { n })) }
        .map_err(|e| Error::msg(format!("bias add launch: {e}")))?;
    Ok(())
}

/// `x` `[t, h, w, s·c]` contiguous → `[t·s, 2h, 2w, c]`: nearest ×2 in space, channel block
/// `a` of frame `i` becoming frame `i·s + a`.
pub fn upsample(x: &Tensor, s: usize) -> Result<Tensor> {
    let dev = device(x)?;
    let stream = dev.cuda_stream();
    let (t, h, w, sc) = x.dims4()?;
    let c = sc / s;
    let row_bytes = c * x.dtype().size_in_bytes();
    let xp = addr(x, &stream)?;
    let fits = |unit: usize| row_bytes.is_multiple_of(unit) && (xp as usize).is_multiple_of(unit);
    let (unit, name) = if fits(16) {
        (16, "upsample_last_u16")
    } else if fits(4) {
        (4, "upsample_last_u4")
    } else {
        (2, "upsample_last_u2")
    };
    let f = dev.get_or_load_custom_func(name, MODULE, PTX)?;
    let (out, yp) = output(&dev, x.dtype(), Shape::from((t * s, 2 * h, 2 * w, c)))?;
    let cu = row_bytes / unit;
    let n = t * s * 4 * h * w * cu;
    let nn = fits_i32(n, "upsample")?;
    let (hh, ww, cc, ss) = (h as i32, w as i32, cu as i32, s as i32);
    let mut b = f.builder();
    b.arg(&xp)
        .arg(&yp)
        .arg(&nn)
        .arg(&hh)
        .arg(&ww)
        .arg(&cc)
        .arg(&ss);
    // SAFETY: argument types and order match `upsample_last_*`; pixel rows are whole
    // numbers of `unit`-byte words, the input is aligned to `unit` and fresh buffers to 256.
    unsafe { b.launch(flat(n)) }.map_err(|e| Error::msg(format!("upsample launch: {e}")))?;
    Ok(out)
}

/// `y + dup_up(x)`: `x` `[t, h, w, c]`, `y` `[t·ft − drop, h·fs, w·fs, o]`, both contiguous.
pub fn dup_up_add(y: &Tensor, x: &Tensor, ft: usize, fs: usize, drop: usize) -> Result<Tensor> {
    let dev = device(x)?;
    let stream = dev.cuda_stream();
    let (_, h, w, c) = x.dims4()?;
    let (ty, hy, wy, o) = y.dims4()?;
    let name = format!("dup_up_add_last_{}", suffix(x.dtype())?);
    let f = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
    let (xp, ypp) = (addr(x, &stream)?, addr(y, &stream)?);
    let (out, op) = output(&dev, x.dtype(), y.shape().clone())?;
    fits_i32(y.elem_count(), "dup_up")?;
    let pixels = ty * hy * wy;
    let span = if o.is_multiple_of(8) { 8 } else { 1 };
    let a = [pixels, h, w, c, o, ft, fs, drop, span].map(|v| v as i32);
    let mut b = f.builder();
    b.arg(&ypp).arg(&xp).arg(&op);
    for v in &a {
        b.arg(v);
    }
    // SAFETY: argument types and order match `dup_up_add_last_*`; shapes were checked by the
    // caller.
    unsafe { b.launch(flat(pixels * o / span)) }
        .map_err(|e| Error::msg(format!("dup_up_add launch: {e}")))?;
    Ok(out)
}
