//! Engine configuration, shaped like the original's `EngineArgs` / `EngineConfig`
//! (device, parallel and runtime sections) and the `cosmos3_wn` plugin arguments.

use std::path::PathBuf;

use candle_core::DType;

use crate::models::cosmos3::sampler::SigmaStyle;
use crate::{Error, Result};

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Cpu,
    /// CUDA, from this GPU ordinal on: rank r of a one-process run uses GPU `n + r`, the
    /// one rank of a multi-process job's process GPU `n + LOCAL_RANK`.
    Cuda(usize),
}

#[derive(Debug, Clone)]
pub struct DeviceConfig {
    pub target: Target,
    /// Compute dtype of the transformer and VAE (f32 or bf16). The timestep embedder,
    /// norm statistics, rope angles and sampler state stay f32 regardless.
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

/// The parallel topology: `world_size = cfg_size · sp_size · tp_size`, cfg outermost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParallelConfig {
    pub world_size: usize,
    pub cfg_size: usize,
    pub tp_size: usize,
    pub sp_size: usize,
}

impl Default for ParallelConfig {
    fn default() -> Self {
        Self {
            world_size: 1,
            cfg_size: 1,
            tp_size: 1,
            sp_size: 1,
        }
    }
}

impl ParallelConfig {
    pub fn new(cfg_size: usize, tp_size: usize, sp_size: usize) -> Self {
        Self {
            world_size: cfg_size * tp_size * sp_size,
            cfg_size,
            tp_size,
            sp_size,
        }
    }

    /// Checks the topology's own consistency (sizes, world = cfg·sp·tp).
    pub fn validate_shape(&self) -> Result<()> {
        if !(self.cfg_size == 1 || self.cfg_size == 2) {
            return Err(Error::invalid(
                "--cfg",
                format!(
                    "must be 1 or 2 (cond and uncond branches), got {}",
                    self.cfg_size
                ),
            ));
        }
        for (flag, n) in [("--tp", self.tp_size), ("--sp", self.sp_size)] {
            if n == 0 {
                return Err(Error::invalid(flag, "must be at least 1"));
            }
        }
        if self.world_size != self.cfg_size * self.tp_size * self.sp_size {
            return Err(Error::invalid(
                "world size",
                format!(
                    "{} ≠ cfg {} · sp {} · tp {}",
                    self.world_size, self.cfg_size, self.sp_size, self.tp_size
                ),
            ));
        }
        Ok(())
    }

    /// Checks the topology against the model's key/value head count.
    pub fn validate(&self, num_kv_heads: usize) -> Result<()> {
        self.validate_shape()?;
        let heads_split = self.tp_size * self.sp_size;
        if !num_kv_heads.is_multiple_of(heads_split) {
            return Err(Error::invalid(
                if self.sp_size > 1 {
                    "--tp/--sp"
                } else {
                    "--tp"
                },
                format!(
                    "tp·sp = {heads_split} must divide the model's {num_kv_heads} key/value heads"
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    /// Capture the generation step in a CUDA graph. Not implemented: the engine refuses
    /// to start with it set rather than silently running without it.
    pub use_cuda_graph: bool,
    /// Decode the video in this many spatial tiles on one device (caps VAE memory);
    /// `None` decodes whole frames, or one tile per rank when parallel.
    pub vae_tiles: Option<usize>,
    /// Show progress bars on stderr.
    pub progress: bool,
}

#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    pub device: DeviceConfig,
    pub parallel: ParallelConfig,
    pub runtime: RuntimeConfig,
}

/// Arguments of the `cosmos3_wn` plugin.
#[derive(Debug, Clone)]
pub struct Cosmos3Args {
    pub checkpoint_dir: PathBuf,
    /// Overrides the checkpoint scheduler's `flow_shift`.
    pub flow_shift: Option<f64>,
    /// Overrides the checkpoint scheduler's `use_karras_sigmas`.
    pub use_karras_sigmas: Option<bool>,
    /// Load the audio decoder (needed for T2AV/I2AV).
    pub load_sound: bool,
    /// Which reference's flow-sigma construction to follow.
    pub sigma_schedule: SigmaStyle,
    /// Quantize an unquantized transformer at load (`--quantize fp8`); a checkpoint that is
    /// already FP8 keeps its own quantization.
    pub quantize: Option<crate::layers::fp8::Quantize>,
}

/// Plugin-specific arguments; one variant per registered plugin.
#[derive(Debug, Clone)]
pub enum PluginArgs {
    Cosmos3(Cosmos3Args),
}

#[derive(Debug, Clone)]
pub struct EngineArgs {
    /// Registry name of the model plugin, e.g. `cosmos3_wn`.
    pub plugin: String,
    pub plugin_args: PluginArgs,
    pub config: EngineConfig,
}
