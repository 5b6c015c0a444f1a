//! Peak device memory, for the benchmarks: on CUDA the high-water mark of the
//! stream-ordered pool every tensor comes from (comparable to torch's max allocated); on
//! other devices there is no such counter.

use candle_core::Device;

/// Peak bytes allocated on `device` since the last [`reset_peak_memory`]; `None` on CPU.
pub fn peak_memory(device: &Device) -> Option<usize> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        return super::cuda::memory::peak(dev);
    }
    let _ = device;
    None
}

/// Restarts the peak of [`peak_memory`] from the bytes in use now, once the work already
/// queued on `device` has finished.
pub fn reset_peak_memory(device: &Device) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        let _ = device.synchronize();
        super::cuda::memory::reset_peak(dev);
    }
    let _ = device;
}
