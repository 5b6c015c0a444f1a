//! Everything that exists only in CUDA builds: launchers for the project's own kernels
//! (`kernels/*.cu`), cuBLASLt FP8 GEMMs, the cuDNN convolution and fused attention, FP8 attention, and
//! driver queries. The model code never calls these directly; the device-neutral layers
//! (`glue`, `attention`, `frame_conv`, `video`, `audio`, `memory`, `fp8`) pick them when a
//! tensor is on a CUDA device and fall back to tensor-op formulas elsewhere.
//! `kernel_images` serves every kernel module (candle's and ours) from images compiled at
//! build time.

pub(crate) mod audio;
mod buffer;
pub(crate) mod cublaslt;
pub mod cudnn_conv;
mod cudnn_handle;
pub mod cudnn_sdpa;
pub mod fp8;
pub mod fp8_attention;
pub(crate) mod glue;
pub mod kernel_images;
pub(crate) mod memory;
pub(crate) mod video;
