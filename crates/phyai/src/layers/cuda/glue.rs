//! Launchers for the project's own transformer-layer kernels, `kernels/glue.cu`, in bf16 and
//! f16. Callers (`layers::glue`) check shapes, dtypes and contiguity first; these functions
//! only move pointers and pick launch sizes.

use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::{DType, Shape, Tensor};

use super::buffer::{addr, addr_or_null, device, output};
use crate::{Error, Result};

pub(crate) const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/glue.ptx"));
const MODULE: &str = "phyai_glue";

fn suffix(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::BF16 => Ok("bf16"),
        DType::F16 => Ok("f16"),
        d => Err(Error::msg(format!(
            "fused glue kernels need bf16 or f16, got {d:?}"
        ))),
    }
}

/// `gu` `[rows, 2·inter]` contiguous → `[rows, inter]`; with `amax` (f32 `[1]`, zeroed), also
/// the output's max|·| into it.
pub fn silu_mul(gu: &Tensor, rows: usize, inter: usize, amax: Option<&Tensor>) -> Result<Tensor> {
    let dev = device(gu)?;
    let stream = dev.cuda_stream();
    let f =
        dev.get_or_load_custom_func(&format!("silu_mul_{}", suffix(gu.dtype())?), MODULE, PTX)?;
    let src = addr(gu, &stream)?;
    let (out, dst) = output(&dev, gu.dtype(), Shape::from((rows, inter)))?;
    let blocks_x = (inter / 8).div_ceil(256) as u32;
    let blocks_y = rows.clamp(1, 65535) as u32;
    let (r, i) = (rows as i64, inter as i64);
    let ap = addr_or_null(amax, &stream)?;
    let mut b = f.builder();
    b.arg(&src).arg(&dst).arg(&r).arg(&i).arg(&ap);
    let cfg = LaunchConfig {
        grid_dim: (blocks_x, blocks_y, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: argument types and order match `silu_mul_*`; sizes were checked by the caller.
    unsafe { b.launch(cfg) }.map_err(|e| Error::msg(format!("silu_mul launch: {e}")))?;
    Ok(out)
}

/// `x` (and `y`) `[rows, dim]` contiguous, `w` `[dim]` → `(x + y, norm)` stacked as
/// `[2, rows, dim]`, or the norm of `x` alone `[rows, dim]` when `y` is `None`; with `amax`
/// (f32 `[1]`, zeroed), also the norm's max|·| into it.
#[allow(clippy::too_many_arguments)]
pub fn add_rms_norm(
    x: &Tensor,
    y: Option<&Tensor>,
    w: &Tensor,
    rows: usize,
    dim: usize,
    eps: f32,
    after_cast: bool,
    amax: Option<&Tensor>,
) -> Result<Tensor> {
    let dev = device(x)?;
    let stream = dev.cuda_stream();
    let f =
        dev.get_or_load_custom_func(&format!("add_rms_norm_{}", suffix(x.dtype())?), MODULE, PTX)?;
    let xp = addr(x, &stream)?;
    let yp = addr_or_null(y, &stream)?;
    let wp = addr(w, &stream)?;
    let stacked = if y.is_some() { 2 } else { 1 };
    let (out, base) = output(&dev, x.dtype(), Shape::from((stacked * rows, dim)))?;
    let plane = (rows * dim * x.dtype().size_in_bytes()) as u64;
    let (sum_p, norm_p) = if y.is_some() {
        (base, base + plane)
    } else {
        (0, base)
    };
    let (d, ac) = (dim as i64, after_cast as i32);
    // One 8-wide vector per thread when the row allows it (values stay in registers).
    let vectors = dim / 8;
    let threads = if vectors <= 1024 && vectors.is_multiple_of(32) {
        vectors as u32
    } else {
        vectors.next_power_of_two().clamp(32, 1024) as u32
    };
    let mut b = f.builder();
    b.arg(&xp)
        .arg(&yp)
        .arg(&wp)
        .arg(&sum_p)
        .arg(&norm_p)
        .arg(&d)
        .arg(&eps)
        .arg(&ac);
    let ap = addr_or_null(amax, &stream)?;
    b.arg(&ap);
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: argument types and order match `add_rms_norm_*`; sizes were checked by the caller.
    unsafe { b.launch(cfg) }.map_err(|e| Error::msg(format!("add_rms_norm launch: {e}")))?;
    Ok(if y.is_some() {
        out.reshape((2, rows, dim))?
    } else {
        out
    })
}

/// `qkv` `[tokens, hq + 2·hkv, d]` contiguous → `[tokens, hq + hkv, d]`: normalised (when
/// weights are given) and rotated query then key heads.
#[allow(clippy::too_many_arguments)]
pub fn qk_norm_rope(
    qkv: &Tensor,
    norm: Option<(&Tensor, &Tensor, f32, bool)>,
    cos: &Tensor,
    sin: &Tensor,
    tokens: usize,
    hq: usize,
    hkv: usize,
    d: usize,
) -> Result<Tensor> {
    let dev = device(qkv)?;
    let stream = dev.cuda_stream();
    let f = dev.get_or_load_custom_func(
        &format!("qk_norm_rope_{}", suffix(qkv.dtype())?),
        MODULE,
        PTX,
    )?;
    let src = addr(qkv, &stream)?;
    let (wq, wk, eps, after_cast) = match norm {
        Some((wq, wk, eps, ac)) => (addr(wq, &stream)?, addr(wk, &stream)?, eps, ac),
        None => (0, 0, 0.0, false),
    };
    let (cp, sp) = (addr(cos, &stream)?, addr(sin, &stream)?);
    let (out, dst) = output(&dev, qkv.dtype(), Shape::from((tokens, hq + hkv, d)))?;
    let warps = tokens * (hq + hkv);
    let blocks = (warps * 32).div_ceil(256) as u32;
    let (n, hq32, hkv32, d32) = (tokens as i64, hq as i32, hkv as i32, d as i32);
    let (use_norm, ac) = (norm.is_some() as i32, after_cast as i32);
    let mut b = f.builder();
    b.arg(&src).arg(&wq).arg(&wk).arg(&cp).arg(&sp).arg(&dst);
    b.arg(&n)
        .arg(&hq32)
        .arg(&hkv32)
        .arg(&d32)
        .arg(&eps)
        .arg(&use_norm)
        .arg(&ac);
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: argument types and order match `qk_norm_rope_*`; sizes were checked by the caller.
    unsafe { b.launch(cfg) }.map_err(|e| Error::msg(format!("qk_norm_rope launch: {e}")))?;
    Ok(out)
}
