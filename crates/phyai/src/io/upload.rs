//! Weights onto a CUDA device in large copies from page-locked memory (built with `cuda`
//! only).
//!
//! A tensor's stored bytes are read (see [`super::read`]: positioned reads from the file by
//! default, in parallel pieces) into one of two 64 MiB page-locked staging buffers and go
//! from there to the device with an asynchronous copy, while the other buffer is filled:
//! reading and copying overlap, and every device copy is a full-speed DMA transfer. Used
//! when the tensor is loaded whole in its stored dtype (bf16, f16 or f32); everything else
//! takes candle's path (a host tensor, then `to_device`). `PHYAI_PINNED_LOAD=0` turns it off.
//!
//! `PHYAI_LOAD_STAGE` picks the staging memory: `registered` (the default) is ordinary
//! process memory page-locked with `cuMemHostRegister`, which the CPU writes through its
//! own cached mapping; `pinned` is memory the driver allocates and maps (`cuMemHostAlloc`);
//! `pageable` reads into ordinary buffers and lets the driver stage the copies, on a second
//! thread. Measured on an H100 with the files in the page cache, registered and pinned
//! load the Nano in the same time and pageable copies take 2-3 s longer.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use candle_core::cuda_backend::cudarc::driver::{
    result, sys, CudaContext, CudaEvent, DevicePtrMut, PinnedHostSlice,
};
use candle_core::cuda_backend::DeviceId;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Storage, Tensor};

use super::read::Source;
use crate::{Error, Result};

const STAGE_BYTES: usize = 64 << 20;

/// Where the staging buffers live (`PHYAI_LOAD_STAGE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Staging {
    Registered,
    Pinned,
    Pageable,
}

fn staging() -> Staging {
    static MODE: OnceLock<Staging> = OnceLock::new();
    *MODE.get_or_init(|| {
        match std::env::var("PHYAI_LOAD_STAGE")
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            Ok("pinned") => Staging::Pinned,
            Ok("pageable") => Staging::Pageable,
            _ => Staging::Registered,
        }
    })
}

/// Page-locked host memory: allocated by the driver, or ordinary memory registered with it.
enum HostMemory {
    Pinned(PinnedHostSlice<u8>),
    Registered {
        ptr: *mut u8,
        layout: std::alloc::Layout,
        ctx: Arc<CudaContext>,
    },
}

impl HostMemory {
    /// Ordinary memory, 2 MiB aligned (whole huge pages where the kernel offers them),
    /// page-locked and mapped for the device by the driver; `None` if registration fails.
    fn registered(ctx: &Arc<CudaContext>, bytes: usize) -> Option<Self> {
        let layout = std::alloc::Layout::from_size_align(bytes, 2 << 20).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            return None;
        }
        #[cfg(target_os = "linux")]
        // SAFETY: advice on memory this function just allocated; failure is harmless.
        unsafe {
            libc::madvise(ptr.cast(), bytes, libc::MADV_HUGEPAGE);
        }
        let ok = ctx.bind_to_thread().is_ok()
            // SAFETY: `ptr..ptr + bytes` is a live allocation owned by the result.
            && unsafe { sys::cuMemHostRegister_v2(ptr.cast(), bytes, 0) }
                == sys::CUresult::CUDA_SUCCESS;
        if !ok {
            // SAFETY: allocated above with `layout`, never handed out.
            unsafe { std::alloc::dealloc(ptr, layout) };
            return None;
        }
        Some(HostMemory::Registered {
            ptr,
            layout,
            ctx: ctx.clone(),
        })
    }
}

impl HostMemory {
    /// Where the CPU writes the buffer.
    fn ptr(&mut self) -> Result<*mut u8> {
        match self {
            HostMemory::Pinned(h) => h.as_mut_ptr().map_err(cuda),
            HostMemory::Registered { ptr, .. } => Ok(*ptr),
        }
    }
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        if let HostMemory::Registered { ptr, layout, ctx } = self {
            // SAFETY: registered and allocated by `registered` with this layout; the copies
            // that read it completed before the stage was dropped.
            unsafe {
                let _ = ctx.bind_to_thread();
                let _ = sys::cuMemHostUnregister(ptr.cast());
                std::alloc::dealloc(*ptr, *layout);
            }
        }
    }
}

/// One page-locked staging buffer and the copy that last read it.
struct Stage {
    _host: HostMemory,
    ptr: *mut u8,
    pending: Option<CudaEvent>,
}

// SAFETY: the pointer is the page-locked memory `_host` owns; stages are used under a lock.
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
        let registered = match staging() {
            Staging::Registered => HostMemory::registered(&ctx, STAGE_BYTES),
            _ => None,
        };
        let mut host = match registered {
            Some(h) => h,
            // Plain page-locked memory (flags 0), not write-combined as cudarc's
            // `alloc_pinned` makes it: the CPU fills it, and write-combined memory is
            // uncached.
            // SAFETY: the buffer is written before any copy reads it.
            None => HostMemory::Pinned(
                unsafe { ctx.alloc_pinned_with_flags::<u8>(STAGE_BYTES, 0) }.map_err(cuda)?,
            ),
        };
        let ptr = host.ptr()?;
        v.push(Stage {
            _host: host,
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
    if staging() == Staging::Pageable {
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
    }
    copy += t.elapsed();
    Ok((read, copy))
}

/// [`fill`] through two ordinary host buffers: this thread reads a piece into one while a
/// second thread copies the other to the device (the driver stages pageable copies itself).
fn fill_pageable<T>(
    dst: &mut candle_core::cuda_backend::cudarc::driver::CudaSlice<T>,
    bytes: Source<'_>,
    dev: &CudaDevice,
) -> Result<(Duration, Duration)> {
    use std::sync::mpsc;
    static BUFS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    let mut bufs = BUFS
        .lock()
        .map_err(|_| Error::msg("staging buffers poisoned"))?;
    while bufs.len() < 2 {
        bufs.push(vec![0u8; STAGE_BYTES]);
    }
    let stream = dev.cuda_stream();
    let ctx = stream.context().clone();
    let (mut read, mut copy) = (Duration::ZERO, Duration::ZERO);
    let (base, guard) = dst.device_ptr_mut(&stream);
    // The device buffer may still be in use by queued work of the stream that made it.
    stream.synchronize().map_err(cuda)?;
    let (to_copy, pieces) = mpsc::sync_channel::<(Vec<u8>, usize, usize)>(1);
    let (give_back, free) = mpsc::channel::<Vec<u8>>();
    for b in bufs.drain(..) {
        let _ = give_back.send(b);
    }
    let result = std::thread::scope(|s| -> Result<()> {
        let copier = s.spawn(move || -> Result<()> {
            ctx.bind_to_thread().map_err(cuda)?;
            for (buf, start, len) in pieces {
                // SAFETY: `base + start .. + len` lies inside `dst`, which outlives the
                // scope; the copy completes before the call returns.
                unsafe { result::memcpy_htod_sync(base + start as u64, &buf[..len]) }
                    .map_err(cuda)?;
                let _ = give_back.send(buf);
            }
            Ok(())
        });
        let mut fed = Ok(());
        for start in (0..bytes.len()).step_by(STAGE_BYTES) {
            let len = STAGE_BYTES.min(bytes.len() - start);
            let t = Instant::now();
            let Ok(mut buf) = free.recv() else { break };
            copy += t.elapsed();
            let t = Instant::now();
            if let Err(e) = bytes.read_into(start, &mut buf[..len]) {
                fed = Err(cuda(e));
                break;
            }
            read += t.elapsed();
            if to_copy.send((buf, start, len)).is_err() {
                break;
            }
        }
        drop(to_copy);
        let t = Instant::now();
        let copied = copier
            .join()
            .map_err(|_| Error::msg("weight upload: the copy thread panicked"))?;
        copy += t.elapsed();
        fed.and(copied)
    });
    drop(guard);
    // Both buffers come back for the next tensor (the copier returned every one it took).
    bufs.extend(free.try_iter());
    result?;
    Ok((read, copy))
}
