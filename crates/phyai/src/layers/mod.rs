//! Building blocks shared by the models: attention, norms, rotary embedding, MLP, linear
//! layers (plain and tensor-parallel) and the sequence-parallel exchange.

pub mod attention;
#[cfg(feature = "cuda")]
pub(crate) mod audio_cuda;
#[cfg(feature = "cuda")]
pub mod cudnn_conv;
#[cfg(feature = "cuda")]
mod cudnn_handle;
#[cfg(feature = "cuda")]
pub mod cudnn_sdpa;
pub mod fp8;
pub mod glue;
#[cfg(feature = "cuda")]
pub(crate) mod glue_cuda;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod rope;
pub mod sp;
pub mod tp;
#[cfg(feature = "cuda")]
pub(crate) mod video_cuda;
