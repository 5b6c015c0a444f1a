//! FP8 linear layers on a CUDA device: E4M3 codes stay on the device (1 byte per weight,
//! no 16-bit copy), activations are quantized by `kernels/fp8.cu` with their scale kept in
//! device memory, and the products run as cuBLASLt FP8 GEMMs ([`super::cublaslt`]).
//! W8A16 steps dequantize the weight into a temporary 16-bit tensor per call.
//!
//! The math is the CPU path's (`layers::fp8::weight`): the same codes, the same scales, the
//! same rounding of `x / s`; only the accumulation differs (f32 inside the GEMM instead of
//! the compute dtype after dequantization).

use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::{CudaDevice, DType, Device, Shape, Tensor};

use super::buffer::{addr, device, dtype_suffix, output};
use super::cublaslt::{fp8_gemm, unsupported, Fp8Gemm};
use crate::layers::fp8::weight::Fp8Part;
use crate::layers::fp8::{e4m3, known_amax};
use crate::parallel::Communicator;
use crate::{Error, Result};

pub(crate) const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fp8.ptx"));

/// W8A8 products that ran dequantized because cuBLASLt refused them (shape, alignment or
/// dtype), since the process started: zero on the supported layouts, which tests check.
static EMULATED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many W8A8 products ran without an FP8 GEMM so far.
pub fn emulated_products() -> usize {
    EMULATED.load(std::sync::atomic::Ordering::Relaxed)
}
const MODULE: &str = "phyai_fp8";

fn grid(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 4096) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn launch_err(
    what: &str,
) -> impl Fn(candle_core::cuda_backend::cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::msg(format!("{what} launch: {e}"))
}

/// `max|x|` over all of `x` (contiguous) as an f32 `[1]` tensor on its device.
pub(crate) fn amax(x: &Tensor) -> Result<Tensor> {
    let dev = device(x)?;
    let stream = dev.cuda_stream();
    let f = dev.get_or_load_custom_func(
        &format!("amax_{}", dtype_suffix(x.dtype(), "FP8 quantization")?),
        MODULE,
        PTX,
    )?;
    let out = Tensor::zeros(1, DType::F32, x.device())?;
    let (src, dst) = (addr(x, &stream)?, addr(&out, &stream)?);
    let n = x.elem_count() as i64;
    let mut b = f.builder();
    b.arg(&src).arg(&n).arg(&dst);
    // SAFETY: argument types and order match `amax_*`; `x` holds `n` contiguous values.
    unsafe { b.launch(grid(x.elem_count().min(1 << 20))) }.map_err(launch_err("amax"))?;
    Ok(out)
}

/// Codes of `n` values at `src` into `dst` (device addresses). `scale`: the address of an
/// f32 scale, or of an amax when `dynamic`; `scale_out`: where the scale used goes (0: none).
#[allow(clippy::too_many_arguments)]
fn quantize_raw(
    dev: &CudaDevice,
    dtype: DType,
    src: u64,
    n: usize,
    scale: u64,
    dynamic: bool,
    dst: u64,
    scale_out: u64,
) -> Result<()> {
    let f = dev.get_or_load_custom_func(
        &format!("quantize_e4m3_{}", dtype_suffix(dtype, "FP8 quantization")?),
        MODULE,
        PTX,
    )?;
    let (n64, dy) = (n as i64, dynamic as i32);
    let mut b = f.builder();
    b.arg(&src)
        .arg(&n64)
        .arg(&scale)
        .arg(&dy)
        .arg(&dst)
        .arg(&scale_out);
    // SAFETY: argument types and order match `quantize_e4m3_*`; buffers hold `n` values.
    unsafe { b.launch(grid(n)) }.map_err(launch_err("quantize_e4m3"))?;
    Ok(())
}

/// `x` (contiguous) → its E4M3 codes (u8, same shape) and the f32 `[1]` scale used: `scale`
/// itself, or `amax / 448` when `dynamic` (then `scale` holds the amax).
pub(crate) fn quantize(x: &Tensor, scale: &Tensor, dynamic: bool) -> Result<(Tensor, Tensor)> {
    let dev = device(x)?;
    let stream = dev.cuda_stream();
    let (codes, dst) = output(&dev, DType::U8, x.shape().clone())?;
    let (src, s) = (addr(x, &stream)?, addr(scale, &stream)?);
    if dynamic {
        let (used, u) = output(&dev, DType::F32, Shape::from(1))?;
        quantize_raw(&dev, x.dtype(), src, x.elem_count(), s, true, dst, u)?;
        Ok((codes, used))
    } else {
        quantize_raw(&dev, x.dtype(), src, x.elem_count(), s, false, dst, 0)?;
        Ok((codes, scale.clone()))
    }
}

/// `n` codes at `src` times the f32 at `scale`, as `dtype` values at `dst`.
fn dequantize_raw(
    dev: &CudaDevice,
    dtype: DType,
    src: u64,
    n: usize,
    scale: u64,
    dst: u64,
) -> Result<()> {
    let f = dev.get_or_load_custom_func(
        &format!(
            "dequantize_e4m3_{}",
            dtype_suffix(dtype, "FP8 dequantization")?
        ),
        MODULE,
        PTX,
    )?;
    let n64 = n as i64;
    let mut b = f.builder();
    b.arg(&src).arg(&n64).arg(&scale).arg(&dst);
    // SAFETY: argument types and order match `dequantize_e4m3_*`; buffers hold `n` values.
    unsafe { b.launch(grid(n)) }.map_err(launch_err("dequantize_e4m3"))?;
    Ok(())
}

/// Scales are stored one per 16 bytes (4 floats): cuBLASLt refuses scale pointers that are
/// not 16-byte aligned, and a fused weight hands it the scale of each block.
const SCALE_STRIDE: usize = 4;

/// `values` as an f32 tensor on `dev` with [`SCALE_STRIDE`] floats per value.
fn scale_slots(values: &[f32], dev: &Device) -> Result<Tensor> {
    let mut v = vec![0f32; values.len() * SCALE_STRIDE];
    for (i, s) in values.iter().enumerate() {
        v[i * SCALE_STRIDE] = *s;
    }
    Ok(Tensor::from_vec(v, values.len() * SCALE_STRIDE, &Device::Cpu)?.to_device(dev)?)
}

/// An FP8 weight `[out, in]` on a CUDA device: codes and per-block scales.
#[derive(Debug, Clone)]
pub struct Fp8Operand {
    /// E4M3 codes `[out, in]`, u8, contiguous.
    codes: Tensor,
    /// Weight scale of each row block, f32 `[blocks · SCALE_STRIDE]`.
    w_scale: Tensor,
    /// Calibrated activation scale of each block, laid out as `w_scale`; `None`: dynamic.
    x_scale: Option<Tensor>,
    /// The compute dtype outputs are produced in.
    dtype: DType,
}

impl Fp8Operand {
    /// Codes already on the device with their parts' scales.
    pub fn new(codes: Tensor, parts: &[Fp8Part], dtype: DType) -> Result<Self> {
        let dev = codes.device().clone();
        let ws: Vec<f32> = parts.iter().map(|p| p.weight_scale).collect();
        let w_scale = scale_slots(&ws, &dev)?;
        let x_scale = match parts
            .iter()
            .map(|p| p.input_scale)
            .collect::<Option<Vec<_>>>()
        {
            Some(xs) => Some(scale_slots(&xs, &dev)?),
            None => None,
        };
        Ok(Self {
            codes: codes.contiguous()?,
            w_scale,
            x_scale,
            dtype,
        })
    }

    /// Online quantization on the device of a whole 16-bit (or f32) weight `w`, then the
    /// rows `range` of dimension `dim` (a tensor-parallel shard); the scale is the whole
    /// tensor's. Returns the operand's codes and the scale (for [`Fp8Part`]).
    pub fn quantize_weight(
        w: &Tensor,
        slice: Option<(usize, std::ops::Range<usize>)>,
    ) -> Result<(Tensor, f32)> {
        let w = w.contiguous()?;
        let amax = amax(&w)?.to_device(&Device::Cpu)?.to_vec1::<f32>()?[0];
        if !amax.is_finite() {
            return Err(Error::msg("not finite, cannot be quantized"));
        }
        let scale = if amax > 0.0 { amax / e4m3::MAX } else { 1.0 };
        let part = match slice {
            None => w,
            Some((dim, r)) => w.narrow(dim, r.start, r.len())?.contiguous()?,
        };
        let s = Tensor::new(&[scale], part.device())?;
        let (codes, _) = quantize(&part, &s, false)?;
        Ok((codes, scale))
    }

    pub fn codes(&self) -> &Tensor {
        &self.codes
    }

    /// Stacks operands along the output rows (a fused projection).
    pub fn cat_rows(ops: &[&Self]) -> Result<Self> {
        let codes = Tensor::cat(&ops.iter().map(|o| &o.codes).collect::<Vec<_>>(), 0)?;
        let w_scale = Tensor::cat(&ops.iter().map(|o| &o.w_scale).collect::<Vec<_>>(), 0)?;
        let x_scale = match ops
            .iter()
            .map(|o| o.x_scale.as_ref())
            .collect::<Option<Vec<_>>>()
        {
            Some(xs) => Some(Tensor::cat(&xs, 0)?),
            None => None,
        };
        Ok(Self {
            codes,
            w_scale,
            x_scale,
            dtype: ops[0].dtype,
        })
    }

    /// The 16-bit weight `codes · s_w` per block, for W8A16 steps (a temporary).
    pub fn dequantized(&self, parts: &[Fp8Part], dtype: DType) -> Result<Tensor> {
        let dev = device(&self.codes)?;
        let stream = dev.cuda_stream();
        let k = self.codes.dim(1)?;
        let (out, dst) = output(&dev, dtype, self.codes.shape().clone())?;
        let (src, ws) = (addr(&self.codes, &stream)?, addr(&self.w_scale, &stream)?);
        let mut row = 0;
        for (i, p) in parts.iter().enumerate() {
            dequantize_raw(
                &dev,
                dtype,
                src + (row * k) as u64,
                p.rows * k,
                ws + (4 * SCALE_STRIDE * i) as u64,
                dst + (row * k * dtype.size_in_bytes()) as u64,
            )?;
            row += p.rows;
        }
        Ok(out)
    }

    /// W8A16: `x · (codes · s_w)ᵀ` in `x`'s dtype.
    pub fn matmul_w8a16(&self, x: &Tensor, parts: &[Fp8Part]) -> Result<Tensor> {
        let w = self.dequantized(parts, x.dtype())?;
        Ok(x.broadcast_matmul(&w.t()?)?)
    }

    /// W8A8: the activation quantized per block's scale (dynamic over `group` when no
    /// calibrated one), each block one FP8 GEMM into its rows of the output.
    pub fn matmul_w8a8(
        &self,
        x: &Tensor,
        parts: &[Fp8Part],
        group: Option<&dyn Communicator>,
        fast_accum: bool,
    ) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let k = *dims.last().unwrap_or(&0);
        let m = x.elem_count() / k.max(1);
        let n: usize = parts.iter().map(|p| p.rows).sum();
        let offsets: Vec<usize> = parts
            .iter()
            .scan(0, |r, p| {
                let o = *r;
                *r += p.rows;
                Some(o)
            })
            .collect();
        let mut out_dims = dims.clone();
        *out_dims.last_mut().unwrap_or(&mut 0) = n;
        if m == 0 {
            return Ok(Tensor::zeros(out_dims, x.dtype(), x.device())?);
        }
        if !matches!(x.dtype(), DType::BF16 | DType::F16) || unsupported(k, n, &offsets).is_some() {
            EMULATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return self.emulate_w8a8(x, parts, group);
        }
        // The max|x| the kernel that made `x` computed, if it did (dynamic scales only).
        let known = known_amax::known(x);
        match self.fp8_gemms(x, m, k, parts, group, fast_accum, known.as_ref()) {
            Ok(out) => Ok(out.reshape(out_dims)?),
            Err(e) => {
                // cuBLASLt refused this shape or alignment: the same math, unfused.
                EMULATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!("FP8 GEMM unavailable ({e}); using the dequantized product")
                });
                self.emulate_w8a8(x, parts, group)
            }
        }
    }

    /// The activation quantized once per distinct input scale, and the FP8 GEMMs. `known`:
    /// `max|x|`, when the kernel that made `x` computed it.
    #[allow(clippy::too_many_arguments)]
    fn fp8_gemms(
        &self,
        x: &Tensor,
        m: usize,
        k: usize,
        parts: &[Fp8Part],
        group: Option<&dyn Communicator>,
        fast_accum: bool,
        known: Option<&Tensor>,
    ) -> Result<Tensor> {
        let x2 = x.reshape((m, k))?.contiguous()?;
        let uniform = parts.iter().all(|p| p.input_scale == parts[0].input_scale);
        let out = if uniform {
            // One quantized input serves every block.
            let (xc, xs) = self.quantize_input_known(&x2, 0, group, known)?;
            crate::layers::profile::mark(x.device(), "FP8 input quantization");
            self.gemm(&xc, &xs, parts, 0..parts.len(), None, x.dtype(), fast_accum)?
        } else {
            // Blocks calibrated with different input scales each see their own codes.
            let mut out = None;
            for i in 0..parts.len() {
                let (xc, xs) = self.quantize_input(&x2, i, group)?;
                crate::layers::profile::mark(x.device(), "FP8 input quantization");
                out = Some(self.gemm(&xc, &xs, parts, i..i + 1, out, x.dtype(), fast_accum)?);
            }
            out.ok_or_else(|| Error::msg("FP8: a weight without blocks"))?
        };
        Ok(out)
    }

    /// The FP8 GEMMs of blocks `blocks` on already quantized input codes `xc` `[m, k]` with
    /// scale `xs` (f32 `[1]`), writing their rows of `out` `[m, n]` (allocated when `None`);
    /// `fast_accum`: see [`crate::layers::fp8::Accumulation`].
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        xc: &Tensor,
        xs: &Tensor,
        parts: &[Fp8Part],
        blocks: std::ops::Range<usize>,
        out: Option<Tensor>,
        dtype: DType,
        fast_accum: bool,
    ) -> Result<Tensor> {
        let (m, k) = xc.dims2()?;
        let n: usize = parts.iter().map(|p| p.rows).sum();
        let dev = device(xc)?;
        let stream = dev.cuda_stream();
        let (out, base) = match out {
            Some(o) => {
                let b = addr(&o, &stream)?;
                (o, b)
            }
            None => output(&dev, dtype, Shape::from((m, n)))?,
        };
        let (wc, ws) = (addr(&self.codes, &stream)?, addr(&self.w_scale, &stream)?);
        let (x, x_scale) = (addr(xc, &stream)?, addr(xs, &stream)?);
        let row0 = |i: usize| parts[..i].iter().map(|p| p.rows).sum::<usize>();
        for i in blocks {
            let row = row0(i);
            fp8_gemm(
                &stream,
                &Fp8Gemm {
                    w: wc + (row * k) as u64,
                    x,
                    w_scale: ws + (4 * SCALE_STRIDE * i) as u64,
                    x_scale,
                    out: base + (row * dtype.size_in_bytes()) as u64,
                    m,
                    n: parts[i].rows,
                    k,
                    ldd: n,
                    dtype,
                    fast_accum,
                },
            )?;
        }
        Ok(out)
    }

    /// Codes of `x` `[m, k]` for block `i` and the f32 `[1]` scale they were made with.
    pub fn quantize_input(
        &self,
        x: &Tensor,
        i: usize,
        group: Option<&dyn Communicator>,
    ) -> Result<(Tensor, Tensor)> {
        self.quantize_input_known(x, i, group, None)
    }

    /// [`Self::quantize_input`] with `max|x|` already known (dynamic scales skip their
    /// reduction over `x`).
    fn quantize_input_known(
        &self,
        x: &Tensor,
        i: usize,
        group: Option<&dyn Communicator>,
        known: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        match &self.x_scale {
            Some(xs) => quantize(x, &xs.narrow(0, i * SCALE_STRIDE, 1)?, false),
            None => {
                let local = match known {
                    Some(a) => a.clone(),
                    None => amax(x)?,
                };
                let amax = match group {
                    Some(g) if g.size() > 1 => g.all_gather(&local, 0)?.max_keepdim(0)?,
                    _ => local,
                };
                quantize(x, &amax, true)
            }
        }
    }

    /// W8A8 where cuBLASLt cannot run the shape: the quantized input dequantized again and
    /// a 16-bit product (the CPU path's formula, on the device).
    fn emulate_w8a8(
        &self,
        x: &Tensor,
        parts: &[Fp8Part],
        group: Option<&dyn Communicator>,
    ) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let k = *dims.last().unwrap_or(&0);
        let x2 = x.reshape((x.elem_count() / k.max(1), k))?.contiguous()?;
        let w = self.dequantized(parts, x.dtype())?;
        let dev = device(x)?;
        let stream = dev.cuda_stream();
        let mut outs = Vec::with_capacity(parts.len());
        let mut row = 0;
        for (i, p) in parts.iter().enumerate() {
            let (codes, s) = self.quantize_input(&x2, i, group)?;
            let (xq, dst) = output(&dev, x.dtype(), x2.shape().clone())?;
            dequantize_raw(
                &dev,
                x.dtype(),
                addr(&codes, &stream)?,
                codes.elem_count(),
                addr(&s, &stream)?,
                dst,
            )?;
            outs.push(xq.matmul(&w.narrow(0, row, p.rows)?.t()?)?);
            row += p.rows;
        }
        let mut out_dims = dims;
        let n = row;
        *out_dims.last_mut().unwrap_or(&mut 0) = n;
        Ok(Tensor::cat(&outs, 1)?.reshape(out_dims)?)
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
}
