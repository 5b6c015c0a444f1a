//! Weights onto a CUDA device in large copies from pinned memory (built with `cuda` only).
//!
//! A tensor's stored bytes are read (see [`super::read`]: positioned reads from the file by
//! default, in parallel pieces) into one of two 64 MiB pinned staging buffers and go from
//! there to the device with an asynchronous copy, while the other buffer is filled: reading
//! and copying overlap, and every device copy is a full-speed pinned transfer. Used when the
//! tensor is loaded whole in its stored dtype (bf16, f16 or f32); everything else takes
//! candle's path (a host tensor, then `to_device`). `PHYAI_PINNED_LOAD=0` turns it off.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use candle_core::cuda_backend::cudarc::driver::{result, CudaEvent, DevicePtrMut, PinnedHostSlice};
use candle_core::cuda_backend::DeviceId;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Storage, Tensor};

use super::read::Source;
use crate::{Error, Result};

const STAGE_BYTES: usize = 64 << 20;

/// One pinned staging buffer and the copy that last read it.
struct Stage {
    host: PinnedHostSlice<u8>,
    ptr: *mut u8,
    pending: Option<CudaEvent>,
}

// SAFETY: the pointer is the pinned allocation `host` owns; stages are used under a lock.
unsafe impl Send for Stage {}

type Stages = Arc<Mutex<Vec<Stage>>>;

/// The two staging buffers of `dev`, made on first use and kept for the process.
fn stages(dev: &CudaDevice) -> Result<Stages> {
    static POOL: Mutex<Vec<(DeviceId, Stages)>> = Mutex::new(Vec::new());
    let mut pool = POOL
        .lock()
        .map_err(|_| Error::msg("staging pool poisoned"))?;
    if let Some((_, s)) = pool.iter().find(|(id, _)| *id == dev.id()) {
        return Ok(s.clone());
    }
    let ctx = dev.cuda_stream().context().clone();
    let mut v = Vec::new();
    for _ in 0..2 {
        // Plain page-locked memory, not write-combined (cudarc's `alloc_pinned`): the
        // kernel's copies out of the page cache into write-combined pages ran at 1.9 GB/s,
        // against 38 GB/s into ordinary memory, on the same machine.
        // SAFETY: the buffer is written before any copy reads it.
        let mut host =
            unsafe { ctx.alloc_pinned_with_flags::<u8>(STAGE_BYTES, 0) }.map_err(cuda)?;
        let ptr = host.as_mut_ptr().map_err(cuda)?;
        v.push(Stage {
            host,
            ptr,
            pending: None,
        });
    }
    let s: Stages = Arc::new(Mutex::new(v));
    pool.push((dev.id(), s.clone()));
    Ok(s)
}

fn cuda(e: impl std::fmt::Display) -> Error {
    Error::msg(format!("weight upload: {e}"))
}

pub(crate) fn enabled(dtype: DType) -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    let on = *ON.get_or_init(|| {
        std::env::var("PHYAI_PINNED_LOAD")
            .ok()
            .is_none_or(|v| v.trim() != "0")
    });
    on && matches!(dtype, DType::BF16 | DType::F16 | DType::F32)
}

/// Uploads `bytes` (a whole tensor of `shape` in `dtype`) to `dev`; returns the tensor and
/// the time spent reading into the staging buffers and waiting for device copies.
pub(crate) fn upload(
    bytes: Source<'_>,
    dtype: DType,
    shape: &[usize],
    dev: &CudaDevice,
) -> Result<(Tensor, Duration, Duration)> {
    let n: usize = shape.iter().product();
    if n * dtype.size_in_bytes() != bytes.len() {
        return Err(Error::msg(format!(
            "weight upload: {} bytes for {shape:?} of {dtype:?}",
            bytes.len()
        )));
    }
    macro_rules! alloc {
        ($t:ty) => {{
            // SAFETY: every byte is written by the copies below before the tensor is used.
            let mut s = unsafe { dev.alloc::<$t>(n.max(1))? };
            let (read, copy) = fill(&mut s, bytes, dev)?;
            (CudaStorage::wrap_cuda_slice(s, dev.clone()), read, copy)
        }};
    }
    let (storage, read, copy) = match dtype {
        DType::BF16 => alloc!(half::bf16),
        DType::F16 => alloc!(half::f16),
        DType::F32 => alloc!(f32),
        d => return Err(Error::msg(format!("weight upload: dtype {d:?}"))),
    };
    let t = Tensor::from_storage(Storage::Cuda(storage), shape, BackpropOp::none(), false);
    Ok((t, read, copy))
}

/// Copies `bytes` into `dst` through the staging buffers; returns (read, copy) times. On
/// return every copy has completed.
fn fill<T>(
    dst: &mut candle_core::cuda_backend::cudarc::driver::CudaSlice<T>,
    bytes: Source<'_>,
    dev: &CudaDevice,
) -> Result<(Duration, Duration)> {
    if pageable_staging() {
        return fill_pageable(dst, bytes, dev);
    }
    let stream = dev.cuda_stream();
    let pool = stages(dev)?;
    let mut stages = pool
        .lock()
        .map_err(|_| Error::msg("staging pool poisoned"))?;
    let (mut read, mut copy) = (Duration::ZERO, Duration::ZERO);
    let (base, guard) = dst.device_ptr_mut(&stream);
    for (i, start) in (0..bytes.len()).step_by(STAGE_BYTES).enumerate() {
        let len = STAGE_BYTES.min(bytes.len() - start);
        let stage = &mut stages[i % 2];
        let t = Instant::now();
        if let Some(e) = stage.pending.take() {
            e.synchronize().map_err(cuda)?;
        }
        copy += t.elapsed();
        let t = Instant::now();
        // SAFETY: the stage holds STAGE_BYTES ≥ len bytes and no copy reads it now.
        let host = unsafe { std::slice::from_raw_parts_mut(stage.ptr, len) };
        bytes.read_into(start, host).map_err(cuda)?;
        read += t.elapsed();
        let at = base + start as u64;
        // SAFETY: `at..at + len` lies inside `dst`; `host` stays untouched until the event.
        unsafe { result::memcpy_htod_async(at, host, stream.cu_stream()) }.map_err(cuda)?;
        stage.pending = Some(stream.record_event(None).map_err(cuda)?);
    }
    drop(guard);
    let t = Instant::now();
    for stage in stages.iter_mut() {
        if let Some(e) = stage.pending.take() {
            e.synchronize().map_err(cuda)?;
        }
        let _ = stage.host.len();
    }
    copy += t.elapsed();
    Ok((read, copy))
}

/// Whether to stage through ordinary (pageable) memory instead (`PHYAI_LOAD_STAGE=pageable`):
/// on some virtual machines reads from the page cache into page-locked memory crawl while
/// the same reads into ordinary memory run at memory speed.
fn pageable_staging() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("PHYAI_LOAD_STAGE").is_ok_and(|v| v.trim() == "pageable"))
}

/// [`fill`] through one ordinary host buffer: read a piece, copy it (the driver stages
/// pageable copies itself), repeat.
fn fill_pageable<T>(
    dst: &mut candle_core::cuda_backend::cudarc::driver::CudaSlice<T>,
    bytes: Source<'_>,
    dev: &CudaDevice,
) -> Result<(Duration, Duration)> {
    static BUF: Mutex<Vec<u8>> = Mutex::new(Vec::new());
    let mut buf = BUF
        .lock()
        .map_err(|_| Error::msg("staging buffer poisoned"))?;
    buf.resize(STAGE_BYTES, 0);
    let stream = dev.cuda_stream();
    let (mut read, mut copy) = (Duration::ZERO, Duration::ZERO);
    let (base, guard) = dst.device_ptr_mut(&stream);
    // The device buffer may still be in use by queued work of the stream that made it.
    stream.synchronize().map_err(cuda)?;
    for start in (0..bytes.len()).step_by(STAGE_BYTES) {
        let len = STAGE_BYTES.min(bytes.len() - start);
        let t = Instant::now();
        bytes.read_into(start, &mut buf[..len]).map_err(cuda)?;
        read += t.elapsed();
        let t = Instant::now();
        // SAFETY: `base + start .. + len` lies inside `dst`; the copy completes before return.
        unsafe { result::memcpy_htod_sync(base + start as u64, &buf[..len]) }.map_err(cuda)?;
        copy += t.elapsed();
    }
    drop(guard);
    Ok((read, copy))
}
