//! Launchers for the audio decoder's own kernels, `kernels/audio.cu`, on channels-first
//! `[B, C, T]` activations in bf16, f16 or f32: the snake activation in one pass (five
//! tensor ops otherwise) and the conv bias added in place after cuDNN.

use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::{CudaDevice, DType, Shape, Tensor};

use super::buffer::{addr, device, dtype_suffix, output};
use crate::{Error, Result};

pub(crate) const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/audio.ptx"));
const MODULE: &str = "phyai_audio";

fn suffix(dtype: DType) -> Result<&'static str> {
    dtype_suffix(dtype, "audio kernels")
}

/// One block row per channel row (grid y), grid-stride along the `t` samples (grid x).
fn rows_config(rows: usize, t: usize) -> Result<(LaunchConfig, i32)> {
    if rows == 0 || rows > 65_535 {
        return Err(Error::msg(format!(
            "audio kernels: {rows} channel rows (batch x channels) outside 1..=65535"
        )));
    }
    let t32 = i32::try_from(t)
        .map_err(|_| Error::msg(format!("audio kernels: {t} samples exceed 2^31")))?;
    let cfg = LaunchConfig {
        grid_dim: (t.div_ceil(256).clamp(1, 1024) as u32, rows as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    Ok((cfg, t32))
}

/// Per-channel parameters `[C]` (any shape of `c` elements) as contiguous `dtype`.
fn per_channel(p: &Tensor, c: usize, dtype: DType, what: &str) -> Result<Tensor> {
    if p.elem_count() != c {
        return Err(Error::msg(format!(
            "{what} {:?} does not match {c} channels",
            p.dims()
        )));
    }
    Ok(p.to_dtype(dtype)?.flatten_all()?.contiguous()?)
}

/// `x + sin²(alpha·x) · inv_beta` of `x` `[B, C, T]`, with `alpha` and `inv_beta` `[C]`.
pub fn snake(x: &Tensor, alpha: &Tensor, inv_beta: &Tensor) -> Result<Tensor> {
    let dev = device(x)?;
    let stream = dev.cuda_stream();
    let x = x.contiguous()?;
    let (b, c, t) = x.dims3()?;
    let alpha = per_channel(alpha, c, x.dtype(), "snake alpha")?;
    let inv_beta = per_channel(inv_beta, c, x.dtype(), "snake beta")?;
    let (cfg, t32) = rows_config(b * c, t)?;
    let f = dev.get_or_load_custom_func(&format!("snake_{}", suffix(x.dtype())?), MODULE, PTX)?;
    let (out, yp) = output(&dev, x.dtype(), Shape::from((b, c, t)))?;
    let (xp, ap, bp) = (
        addr(&x, &stream)?,
        addr(&alpha, &stream)?,
        addr(&inv_beta, &stream)?,
    );
    let c32 = c as i32;
    let mut l = f.builder();
    l.arg(&xp).arg(&ap).arg(&bp).arg(&yp).arg(&t32).arg(&c32);
    // SAFETY: argument types and order match `snake_*`; `b·c·t` elements at `xp` and `yp`,
    // `c` at `ap` and `bp`.
    unsafe { l.launch(cfg) }.map_err(|e| Error::msg(format!("snake launch: {e}")))?;
    Ok(out)
}

/// Adds `bias` `[C]` in place to the `rows` (`B·C`) rows of `t` elements of `dtype` at
/// device address `y`, a buffer the caller owns and has not yet handed out.
pub fn bias_rows_raw(
    dev: &CudaDevice,
    dtype: DType,
    y: u64,
    bias: &Tensor,
    rows: usize,
    t: usize,
) -> Result<()> {
    let stream = dev.cuda_stream();
    let c = bias.elem_count();
    if c == 0 || !rows.is_multiple_of(c) {
        return Err(Error::msg(format!(
            "conv bias of {c} channels does not divide {rows} output rows"
        )));
    }
    let bias = per_channel(bias, c, dtype, "conv bias")?;
    let (cfg, t32) = rows_config(rows, t)?;
    let f = dev.get_or_load_custom_func(&format!("bias_rows_{}", suffix(dtype)?), MODULE, PTX)?;
    let bp = addr(&bias, &stream)?;
    let c32 = c as i32;
    let mut l = f.builder();
    l.arg(&y).arg(&bp).arg(&t32).arg(&c32);
    // SAFETY: argument types and order match `bias_rows_*`; the caller guarantees `rows·t`
    // elements at `y`; `c` at `bp`.
    unsafe { l.launch(cfg) }.map_err(|e| Error::msg(format!("conv bias launch: {e}")))?;
    Ok(())
}
