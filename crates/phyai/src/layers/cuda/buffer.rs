//! Device buffers as the project's kernels and cuDNN calls see them: raw addresses of
//! tensors, fresh uninitialised outputs, and the dtype suffix of a kernel instance. Shared by
//! every launcher in this folder, so pointer arithmetic lives in one place.

use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut};
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Shape, Storage, Tensor};

use crate::{Error, Result};

/// The name suffix of the bf16/f16/f32 instances of a kernel family (`what`, for the error).
pub(crate) fn dtype_suffix(dtype: DType, what: &str) -> Result<&'static str> {
    match dtype {
        DType::BF16 => Ok("bf16"),
        DType::F16 => Ok("f16"),
        DType::F32 => Ok("f32"),
        d => Err(Error::msg(format!(
            "{what} need bf16, f16 or f32, got {d:?}"
        ))),
    }
}

/// Device address of a CUDA tensor's first element (bf16, f16, f32 or u8), for handing the
/// tensor to a kernel or library call enqueued on `stream`.
pub(crate) fn addr(
    t: &Tensor,
    stream: &std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>,
) -> Result<u64> {
    let (s, l) = t.storage_and_layout();
    let Storage::Cuda(c) = &*s else {
        return Err(Error::msg(format!(
            "tensor {:?} is not on a CUDA device",
            t.dims()
        )));
    };
    let base = match t.dtype() {
        DType::BF16 => c.as_cuda_slice::<half::bf16>()?.device_ptr(stream).0,
        DType::F16 => c.as_cuda_slice::<half::f16>()?.device_ptr(stream).0,
        DType::F32 => c.as_cuda_slice::<f32>()?.device_ptr(stream).0,
        DType::U8 => c.as_cuda_slice::<u8>()?.device_ptr(stream).0,
        d => return Err(Error::msg(format!("no device address for dtype {d:?}"))),
    };
    Ok(base + (l.start_offset() * t.dtype().size_in_bytes()) as u64)
}

/// [`addr`] of `t`, or 0 (a null pointer) for none: a kernel's optional operand.
pub(crate) fn addr_or_null(
    t: Option<&Tensor>,
    stream: &std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>,
) -> Result<u64> {
    t.map_or(Ok(0), |t| addr(t, stream))
}

/// A fresh uninitialised `[shape]` tensor of `dtype` and its address; the kernel that
/// receives the address writes every element.
pub(crate) fn output(dev: &CudaDevice, dtype: DType, shape: Shape) -> Result<(Tensor, u64)> {
    let n = shape.elem_count();
    let stream = dev.cuda_stream();
    let storage = match dtype {
        DType::BF16 => {
            // SAFETY: fully written by the kernel launched right after, on the same stream.
            let mut s = unsafe { dev.alloc::<half::bf16>(n)? };
            let p = s.device_ptr_mut(&stream).0;
            (CudaStorage::wrap_cuda_slice(s, dev.clone()), p)
        }
        DType::F16 => {
            // SAFETY: as above.
            let mut s = unsafe { dev.alloc::<half::f16>(n)? };
            let p = s.device_ptr_mut(&stream).0;
            (CudaStorage::wrap_cuda_slice(s, dev.clone()), p)
        }
        DType::F32 => {
            // SAFETY: as above.
            let mut s = unsafe { dev.alloc::<f32>(n)? };
            let p = s.device_ptr_mut(&stream).0;
            (CudaStorage::wrap_cuda_slice(s, dev.clone()), p)
        }
        DType::U8 => {
            // SAFETY: as above.
            let mut s = unsafe { dev.alloc::<u8>(n)? };
            let p = s.device_ptr_mut(&stream).0;
            (CudaStorage::wrap_cuda_slice(s, dev.clone()), p)
        }
        d => {
            return Err(Error::msg(format!(
                "kernel output: unsupported dtype {d:?}"
            )))
        }
    };
    let t = Tensor::from_storage(Storage::Cuda(storage.0), shape, BackpropOp::none(), false);
    Ok((t, storage.1))
}

/// The CUDA device `t` lives on; an error for any other device.
pub(crate) fn device(t: &Tensor) -> Result<CudaDevice> {
    match t.device() {
        candle_core::Device::Cuda(d) => Ok(d.clone()),
        _ => Err(Error::msg("kernel input: tensor is not on a CUDA device")),
    }
}
