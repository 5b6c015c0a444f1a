//! The kernel set-up cost of this process, on any device: on CUDA, the kernel modules the
//! driver has loaded so far, how many came from compiled images (no PTX compilation), and
//! the time spent loading them (modules load at first use, mostly during the first
//! request's first calls). `None` in builds without CUDA.

/// Kernel module loads so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KernelSetup {
    pub modules: usize,
    /// Loaded from a compiled image rather than compiled from PTX.
    pub compiled: usize,
    pub seconds: f64,
}

pub fn kernel_setup() -> Option<KernelSetup> {
    #[cfg(feature = "cuda")]
    {
        let loads = super::cuda::kernel_images::module_loads();
        Some(KernelSetup {
            modules: loads.len(),
            compiled: loads.iter().filter(|l| l.compiled).count(),
            seconds: loads.iter().map(|l| l.seconds).sum(),
        })
    }
    #[cfg(not(feature = "cuda"))]
    None
}
