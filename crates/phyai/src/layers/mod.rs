//! Building blocks shared by the models: attention, norms, rotary embedding, MLP, linear
//! layers (plain and tensor-parallel), the sequence-parallel exchange, and the device
//! dispatch of the fused steps (`glue` for the transformer, `frame_conv`/`video` for the
//! video VAE, `audio` for the audio decoder, `memory` for peak-memory queries, `kernel_setup` for the kernel-module load cost): each picks
//! a CUDA kernel or a tensor-op formula by the tensor's device, so nothing outside
//! `layers` names a CUDA-only module.

pub mod attention;
pub mod audio;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod fp8;
pub mod frame_conv;
pub mod frames;
pub mod glue;
pub mod kernel_setup;
pub mod linear;
pub mod memory;
pub mod mlp;
pub mod norm;
pub mod profile;
pub mod rope;
pub mod sp;
pub mod tp;
pub mod video;
