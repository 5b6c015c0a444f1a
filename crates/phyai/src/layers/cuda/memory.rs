//! The high-water mark of the stream-ordered memory pool every CUDA tensor is allocated
//! from (what torch reports as max allocated), read through the driver API.

use candle_core::CudaDevice;
use cudarc::driver::sys;

/// The default pool of `dev`'s device, or `None` when the driver does not give it.
fn default_pool(dev: &CudaDevice) -> Option<sys::CUmemoryPool> {
    let cu = dev.cuda_stream().context().cu_device();
    let mut pool = std::ptr::null_mut();
    // SAFETY: a plain query; the out-pointer is live.
    let ok =
        unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, cu) } == sys::CUresult::CUDA_SUCCESS;
    ok.then_some(pool)
}

/// Peak bytes in use since the last [`reset_peak`].
pub fn peak(dev: &CudaDevice) -> Option<usize> {
    let pool = default_pool(dev)?;
    let mut high = 0u64;
    // SAFETY: a plain query of a live pool; the out-pointer is live.
    let ok = unsafe {
        sys::cuMemPoolGetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            (&mut high as *mut u64).cast(),
        )
    } == sys::CUresult::CUDA_SUCCESS;
    ok.then_some(high as usize)
}

/// Restarts the peak from the bytes in use now.
pub fn reset_peak(dev: &CudaDevice) {
    let Some(pool) = default_pool(dev) else {
        return;
    };
    let mut zero = 0u64;
    // SAFETY: a live pool; zero is the only value this attribute accepts.
    unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            (&mut zero as *mut u64).cast(),
        );
    }
}
