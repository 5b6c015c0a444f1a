//! Convolutions through cuDNN with the algorithm timed on first use of a shape. Video:
//! channels-last `[T, H, W, C]` frames as ONE 3-D convolution, all temporal taps
//! accumulated in f32 inside the kernel, on tensor cores in bf16/f16 (a 2-D conv of every
//! frame is the same call with one temporal tap). Audio: channels-first `[B, C, T]`
//! sequences with dilated taps ([`conv_seq`]), many times faster than candle's conv1d,
//! which takes cuDNN's heuristic algorithm and zeroes a fresh workspace on every call.
//!
//! cuDNN's fast half-precision kernels want channels last, which is why the VAE keeps its
//! activations that way on the GPU: the frames are seen by cuDNN as NDHWC `[1, C, T, H, W]`
//! and the weight is kept as `[O, kt, k, k, C]` from load time. Measured at the 720p
//! decoder shape this is many times faster than handing cuDNN the frame-major layout.
//!
//! Descriptors and the algorithm (timed by cuDNN on first use of a shape) are built once
//! per shape and kept per thread; the workspace comes from the stream-ordered pool.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::rc::Rc;

use candle_core::cuda_backend::cudarc::driver::DevicePtrMut;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Device, Storage, Tensor};
use cudarc::cudnn::sys as dnn;

use super::buffer::addr;
use super::cudnn_handle::handle_for;
use crate::{Error, Result};

fn check(status: dnn::cudnnStatus_t, what: &str) -> Result<()> {
    if status == dnn::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(Error::msg(format!("cuDNN convolution, {what}: {status:?}")))
    }
}

/// What makes two calls share descriptors and an algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    stream: usize,
    dtype: DType,
    geometry: Geometry,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Geometry {
    /// Channels-last video frames ([`conv_frames`]).
    Frames(FramesConv),
    /// A channels-first sequence ([`conv_seq`]).
    Seq(SeqConv),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FramesConv {
    /// Input `[T, C, H, W]` and weight `[O, C, kt, k, k]`, logical dims.
    x: [usize; 4],
    w: [usize; 5],
    pad: usize,
    stride: [usize; 2],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SeqConv {
    /// Input `[B, C, T]` and weight `[O, C, K]`.
    x: [usize; 3],
    w: [usize; 3],
    pad: usize,
    dilation: usize,
}

struct Plan {
    handle: dnn::cudnnHandle_t,
    x: dnn::cudnnTensorDescriptor_t,
    w: dnn::cudnnFilterDescriptor_t,
    y: dnn::cudnnTensorDescriptor_t,
    conv: dnn::cudnnConvolutionDescriptor_t,
    algo: dnn::cudnnConvolutionFwdAlgo_t,
    workspace: usize,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each descriptor was created once by this plan and is destroyed once.
        unsafe {
            dnn::cudnnDestroyTensorDescriptor(self.x);
            dnn::cudnnDestroyTensorDescriptor(self.y);
            dnn::cudnnDestroyFilterDescriptor(self.w);
            dnn::cudnnDestroyConvolutionDescriptor(self.conv);
        }
    }
}

thread_local! {
    static PLANS: RefCell<HashMap<Key, Rc<Plan>>> = RefCell::new(HashMap::new());
}

fn data_type(dtype: DType) -> Result<(dnn::cudnnDataType_t, dnn::cudnnMathType_t)> {
    use dnn::cudnnDataType_t as D;
    use dnn::cudnnMathType_t as M;
    match dtype {
        DType::BF16 => Ok((D::CUDNN_DATA_BFLOAT16, M::CUDNN_TENSOR_OP_MATH)),
        DType::F16 => Ok((D::CUDNN_DATA_HALF, M::CUDNN_TENSOR_OP_MATH)),
        // Plain FMA keeps f32 runs exact (no TF32 rounding).
        DType::F32 => Ok((D::CUDNN_DATA_FLOAT, M::CUDNN_FMA_MATH)),
        d => Err(Error::msg(format!(
            "cuDNN convolution: unsupported dtype {d:?}"
        ))),
    }
}

/// Scratch the algorithm search may use. The search runs the candidates on the call's own
/// buffers within this bound, so it never allocates the gigabytes some candidates ask for
/// (the fastest ones at the 720p decoder shapes need under 32 MiB).
const SEARCH_WORKSPACE: usize = 256 << 20;

impl Key {
    /// The search's scratch bound. A channels-first sequence is transposed to channels last
    /// inside cuDNN for the tensor-core kernels, which needs room for the input and output
    /// (the 48 kHz audio's last stage: 2 × 242 MB); below that only slow kernels are left.
    fn search_limit(&self) -> usize {
        match self.geometry {
            Geometry::Frames(_) => SEARCH_WORKSPACE,
            Geometry::Seq(g) => {
                let [b, c, t] = g.x;
                let out: usize = g.out_dims().map_or(0, |d| d.iter().product());
                let bytes = (b * c * t + out) * self.dtype.size_in_bytes();
                SEARCH_WORKSPACE.max(bytes + (bytes >> 3))
            }
        }
    }
}

fn too_small() -> Error {
    Error::msg("cuDNN convolution: input smaller than the kernel")
}

impl FramesConv {
    /// Output `[T', O, H', W']`, or an error when the input is smaller than the kernel.
    fn out_dims(&self) -> Result<[usize; 4]> {
        let [t, _, h, w] = self.x;
        let [o, _, kt, k, _] = self.w;
        let [st, ss] = self.stride;
        let p = self.pad;
        if t < kt || h + 2 * p < k || w + 2 * p < k {
            return Err(too_small());
        }
        Ok([
            (t - kt) / st + 1,
            o,
            (h + 2 * p - k) / ss + 1,
            (w + 2 * p - k) / ss + 1,
        ])
    }
}

impl SeqConv {
    /// Output `[B, O, T']`, or an error when the input is smaller than the dilated kernel.
    fn out_dims(&self) -> Result<[usize; 3]> {
        let [b, _, t] = self.x;
        let [o, _, k] = self.w;
        let span = self.dilation * (k - 1) + 1;
        if t + 2 * self.pad < span {
            return Err(too_small());
        }
        Ok([b, o, t + 2 * self.pad - span + 1])
    }
}

/// The call's device buffers, on which the algorithm search times its candidates.
struct Buffers<'a> {
    dev: &'a candle_core::CudaDevice,
    x: u64,
    w: u64,
    y: u64,
}

/// A tensor descriptor of `dims` with `strides` (elements).
fn tensor_desc(
    dt: dnn::cudnnDataType_t,
    dims: &[usize],
    strides: &[usize],
) -> Result<dnn::cudnnTensorDescriptor_t> {
    let dims: Vec<i32> = dims.iter().map(|&v| v as i32).collect();
    let strides: Vec<i32> = strides.iter().map(|&v| v as i32).collect();
    let mut d = std::ptr::null_mut();
    // SAFETY: out-pointer and arrays outlive the calls.
    unsafe {
        check(
            dnn::cudnnCreateTensorDescriptor(&mut d),
            "tensor descriptor",
        )?;
        check(
            dnn::cudnnSetTensorNdDescriptor(
                d,
                dt,
                dims.len() as i32,
                dims.as_ptr(),
                strides.as_ptr(),
            ),
            "tensor layout",
        )?;
    }
    Ok(d)
}

/// Filter and convolution descriptors: `fdims` in `format`, per-axis padding, stride and
/// dilation (f32 accumulation, `math` for the multiply).
fn conv_descs(
    dt: dnn::cudnnDataType_t,
    math: dnn::cudnnMathType_t,
    format: dnn::cudnnTensorFormat_t,
    fdims: &[usize],
    pads: &[usize],
    strides: &[usize],
    dilation: &[usize],
) -> Result<(
    dnn::cudnnFilterDescriptor_t,
    dnn::cudnnConvolutionDescriptor_t,
)> {
    let i32s = |v: &[usize]| -> Vec<i32> { v.iter().map(|&x| x as i32).collect() };
    let (fdims, pads, strides, dil) = (i32s(fdims), i32s(pads), i32s(strides), i32s(dilation));
    let mut wd = std::ptr::null_mut();
    let mut conv = std::ptr::null_mut();
    // SAFETY: out-pointers and arrays outlive the calls.
    unsafe {
        check(
            dnn::cudnnCreateFilterDescriptor(&mut wd),
            "filter descriptor",
        )?;
        check(
            dnn::cudnnSetFilterNdDescriptor(wd, dt, format, fdims.len() as i32, fdims.as_ptr()),
            "filter layout",
        )?;
        check(
            dnn::cudnnCreateConvolutionDescriptor(&mut conv),
            "conv descriptor",
        )?;
        check(
            dnn::cudnnSetConvolutionNdDescriptor(
                conv,
                pads.len() as i32,
                pads.as_ptr(),
                strides.as_ptr(),
                dil.as_ptr(),
                dnn::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                dnn::cudnnDataType_t::CUDNN_DATA_FLOAT,
            ),
            "conv parameters",
        )?;
        check(dnn::cudnnSetConvolutionMathType(conv, math), "math type")?;
    }
    Ok((wd, conv))
}

fn build(key: &Key, stream: dnn::cudaStream_t, bufs: &Buffers) -> Result<Plan> {
    let (dt, math) = data_type(key.dtype)?;
    // The thread's handle map keeps the handle alive for as long as this plan is cached.
    let handle = handle_for(stream)?;
    let (x, y, (wd, conv)) = match key.geometry {
        Geometry::Frames(g) => {
            let [o, c, kt, k, _] = g.w;
            let [st, ss] = g.stride;
            let p = g.pad;
            // Channels-last `[T, H, W, C]` seen by cuDNN as NDHWC `[1, C, T, H, W]`.
            let cl = |[t, c, h, w]: [usize; 4]| {
                tensor_desc(
                    dt,
                    &[1, c, t, h, w],
                    &[t * c * h * w, 1, h * w * c, w * c, c],
                )
            };
            (
                cl(g.x)?,
                cl(g.out_dims()?)?,
                conv_descs(
                    dt,
                    math,
                    dnn::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC,
                    &[o, c, kt, k, k],
                    &[0, p, p],
                    &[st, ss, ss],
                    &[1, 1, 1],
                )?,
            )
        }
        Geometry::Seq(g) => {
            let [o, c, k] = g.w;
            // `[B, C, T]` seen as NCHW `[B, C, 1, T]`.
            let nchw = |[b, c, t]: [usize; 3]| tensor_desc(dt, &[b, c, 1, t], &[c * t, t, t, 1]);
            (
                nchw(g.x)?,
                nchw(g.out_dims()?)?,
                conv_descs(
                    dt,
                    math,
                    dnn::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                    &[o, c, 1, k],
                    &[0, g.pad],
                    &[1, 1],
                    &[1, g.dilation],
                )?,
            )
        }
    };
    let mut plan = Plan {
        handle: handle.0,
        x,
        w: wd,
        y,
        conv,
        algo: dnn::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
        workspace: 0,
    };
    const N: usize = 8;
    let mut found = 0i32;
    // SAFETY: plain struct of enums and numbers, fully written by cuDNN for `found` entries.
    let mut perf: [dnn::cudnnConvolutionFwdAlgoPerf_t; N] = unsafe { std::mem::zeroed() };
    let cu = bufs.dev.cuda_stream();
    // SAFETY: scratch for the search, written before read.
    let limit = key.search_limit();
    let mut scratch = unsafe { bufs.dev.alloc::<u8>(limit)? };
    let sp = scratch.device_ptr_mut(&cu).0;
    // SAFETY: descriptors are live and match the buffers; the result array holds N entries;
    // the output buffer is overwritten later by the real call.
    unsafe {
        check(
            dnn::cudnnFindConvolutionForwardAlgorithmEx(
                plan.handle,
                plan.x,
                bufs.x as *const c_void,
                plan.w,
                bufs.w as *const c_void,
                plan.conv,
                plan.y,
                bufs.y as *mut c_void,
                N as i32,
                &mut found,
                perf.as_mut_ptr(),
                sp as *mut c_void,
                limit,
            ),
            "algorithm search",
        )?;
    }
    drop(scratch);
    for r in &perf[..found.max(0) as usize] {
        tracing::debug!(
            "conv {:?}: {:?} {:?} {:.3} ms, workspace {} MiB",
            key.geometry,
            r.algo,
            r.status,
            r.time,
            r.memory >> 20
        );
    }
    // The fastest measured algorithm (all fit the search's scratch).
    let pick = perf[..found.max(0) as usize]
        .iter()
        .find(|r| r.status == dnn::cudnnStatus_t::CUDNN_STATUS_SUCCESS && r.memory <= limit)
        .ok_or_else(|| Error::msg("cuDNN convolution: no supported algorithm"))?;
    plan.algo = pick.algo;
    let mut ws = 0usize;
    // SAFETY: descriptors are live.
    unsafe {
        check(
            dnn::cudnnGetConvolutionForwardWorkspaceSize(
                plan.handle,
                plan.x,
                plan.w,
                plan.conv,
                plan.y,
                plan.algo,
                &mut ws,
            ),
            "workspace size",
        )?;
    }
    plan.workspace = ws;
    Ok(plan)
}

/// A conv weight `[O, C, kt, k, k]` in the layout [`conv_frames`] takes: `[O, kt, k, k, C]`.
pub fn weight_channels_last(w: &Tensor) -> Result<Tensor> {
    Ok(w.permute((0, 2, 3, 4, 1))?.contiguous()?)
}

/// The inverse of [`weight_channels_last`].
pub fn weight_channels_first(w: &Tensor) -> Result<Tensor> {
    Ok(w.permute((0, 4, 1, 2, 3))?.contiguous()?)
}

/// `x` `[T, H, W, C]` (channels last) convolved with `w` (`[O, kt, k, k, C]`, from
/// [`weight_channels_last`]): temporal taps without padding (stride `stride[0]`), spatial
/// padding `pad` and stride `stride[1]` → `[T', H', W', O]`, plus `bias` `[O]` if given,
/// then plus `residual` (`[T', H', W', O]`) if given: both added in one pass over the result.
pub fn conv_frames(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    pad: usize,
    stride: [usize; 2],
) -> Result<Tensor> {
    let (dev, x) = checked_inputs(x, w)?;
    let (t, h, wd, c) = x.dims4()?;
    let wdims = w.dims();
    let [o, kt, k, k2, wc] = <[usize; 5]>::try_from(wdims)
        .map_err(|_| Error::msg(format!("cuDNN convolution: weight shape {wdims:?}")))?;
    if wc != c || k != k2 {
        return Err(Error::msg(format!(
            "cuDNN convolution: input {:?} and weight {wdims:?} disagree",
            x.dims()
        )));
    }
    let g = FramesConv {
        x: [t, c, h, wd],
        w: [o, c, kt, k, k],
        pad,
        stride,
    };
    let [to, _, ho, wo] = g.out_dims()?;
    let n = to * ho * wo * o;
    let (storage, yp) = forward(&dev, &x, w, Geometry::Frames(g), n)?;
    if bias.is_some() || residual.is_some() {
        super::video::bias_residual_raw(&dev, x.dtype(), yp, bias, residual, n, o)?;
    }
    Ok(Tensor::from_storage(
        Storage::Cuda(storage),
        (to, ho, wo, o),
        BackpropOp::none(),
        false,
    ))
}

/// `x` `[B, C, T]` (channels first, as the audio decoder keeps it) convolved with `w`
/// `[O, C, K]`: padding `pad` on both ends and taps `dilation` apart → `[B, O, T']`, plus
/// `bias` `[O]` if given (rounded after the convolution, as a separate add would be).
pub fn conv_seq(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    pad: usize,
    dilation: usize,
) -> Result<Tensor> {
    let (dev, x) = checked_inputs(x, w)?;
    let (b, c, t) = x.dims3()?;
    let (o, wc, k) = w.dims3()?;
    if wc != c || k == 0 || dilation == 0 {
        return Err(Error::msg(format!(
            "cuDNN convolution: input {:?} and weight {:?} (dilation {dilation}) disagree",
            x.dims(),
            w.dims()
        )));
    }
    let g = SeqConv {
        x: [b, c, t],
        w: [o, c, k],
        pad,
        dilation,
    };
    let out = g.out_dims()?;
    let n = out.iter().product();
    let (storage, yp) = forward(&dev, &x, w, Geometry::Seq(g), n)?;
    if let Some(bias) = bias {
        super::audio::bias_rows_raw(&dev, x.dtype(), yp, bias, b * o, out[2])?;
    }
    Ok(Tensor::from_storage(
        Storage::Cuda(storage),
        (out[0], out[1], out[2]),
        BackpropOp::none(),
        false,
    ))
}

/// The device of `x` and a contiguous `x`, once the weight is known to match it.
fn checked_inputs(x: &Tensor, w: &Tensor) -> Result<(CudaDevice, Tensor)> {
    let Device::Cuda(dev) = x.device() else {
        return Err(Error::msg(
            "cuDNN convolution: input is not on a CUDA device",
        ));
    };
    if !w.is_contiguous() || w.dtype() != x.dtype() {
        return Err(Error::msg(
            "cuDNN convolution: needs a contiguous weight of the input's dtype",
        ));
    }
    Ok((dev.clone(), x.contiguous()?))
}

/// Runs the convolution of `geometry` into a fresh buffer of `n` elements (its storage and
/// device address), with the cached plan, built on first use of the shape.
fn forward(
    dev: &CudaDevice,
    x: &Tensor,
    w: &Tensor,
    geometry: Geometry,
    n: usize,
) -> Result<(CudaStorage, u64)> {
    let stream = dev.cuda_stream();
    let raw = stream.cu_stream() as dnn::cudaStream_t;
    let key = Key {
        stream: raw as usize,
        dtype: x.dtype(),
        geometry,
    };
    let (xp, wp) = (addr(x, &stream)?, addr(w, &stream)?);
    macro_rules! alloc {
        ($ty:ty) => {{
            // SAFETY: every element is written by the convolution (beta = 0) before any read.
            let mut out = unsafe { dev.alloc::<$ty>(n)? };
            let yp = out.device_ptr_mut(&stream).0;
            (CudaStorage::wrap_cuda_slice(out, dev.clone()), yp)
        }};
    }
    let (storage, yp) = match x.dtype() {
        DType::BF16 => alloc!(half::bf16),
        DType::F16 => alloc!(half::f16),
        DType::F32 => alloc!(f32),
        d => {
            return Err(Error::msg(format!(
                "cuDNN convolution: unsupported dtype {d:?}"
            )))
        }
    };
    let bufs = Buffers {
        dev,
        x: xp,
        w: wp,
        y: yp,
    };
    let plan = PLANS.with(|p| -> Result<Rc<Plan>> {
        if let Some(plan) = p.borrow().get(&key) {
            return Ok(plan.clone());
        }
        let plan = Rc::new(build(&key, raw, &bufs)?);
        p.borrow_mut().insert(key, plan.clone());
        Ok(plan)
    })?;
    // SAFETY: scratch for cuDNN, written before read.
    let mut ws = unsafe { dev.alloc::<u8>(plan.workspace.max(16))? };
    let wsp = ws.device_ptr_mut(&stream).0;
    let (one, zero) = (1f32, 0f32);
    // SAFETY: descriptors match the buffers' shapes and dtypes; all pointers are live until
    // the call is enqueued on the handle's stream.
    unsafe {
        check(
            dnn::cudnnConvolutionForward(
                plan.handle,
                (&one as *const f32).cast(),
                plan.x,
                xp as *const c_void,
                plan.w,
                wp as *const c_void,
                plan.conv,
                plan.algo,
                wsp as *mut c_void,
                plan.workspace,
                (&zero as *const f32).cast(),
                plan.y,
                yp as *mut c_void,
            ),
            "forward",
        )?;
    }
    drop(ws);
    Ok((storage, yp))
}
