//! Engine configuration, shaped like the original's `EngineArgs` / `EngineConfig`: where
//! the model runs and its parallel topology. Model options live in the plugin's own args.

use candle_core::{DType, Device};

use crate::parallel::MeshShape;
use crate::{Error, Result};

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Cpu,
    /// CUDA, from this GPU ordinal on: rank r of a one-process run uses GPU `n + r`, the
    /// one rank of a multi-process job's process GPU `n + LOCAL_RANK`.
    Cuda(usize),
}

impl Target {
    /// The candle device; a CUDA target in a build without CUDA is a clear error.
    pub fn device(self) -> Result<Device> {
        match self {
            Target::Cpu => Ok(Device::Cpu),
            Target::Cuda(i) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(no_cuda());
                }
                #[cfg(feature = "cuda")]
                crate::layers::cuda::kernel_images::ensure_linked();
                Ok(Device::new_cuda(i)?)
            }
        }
    }
}

/// The error of a CUDA target in a CPU-only build.
pub(crate) fn no_cuda() -> Error {
    Error::invalid(
        "device",
        "cuda: this build has no CUDA support (rebuild with `--features cuda`)",
    )
}

#[derive(Debug, Clone)]
pub struct DeviceConfig {
    pub target: Target,
    /// Compute dtype of the models (f32 or bf16). Timestep embeddings, norm statistics,
    /// rope angles and sampler state stay f32 regardless.
    pub dtype: DType,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            target: Target::Cpu,
            dtype: DType::F32,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    pub device: DeviceConfig,
    /// The parallel topology (`world = cfg · sp · tp`).
    pub parallel: MeshShape,
}

#[derive(Debug, Clone)]
pub struct EngineArgs<A> {
    /// Name of the model plugin, e.g. `cosmos3_wn`; must be the engine's plugin's name.
    pub plugin: String,
    pub plugin_args: A,
    pub config: EngineConfig,
}
