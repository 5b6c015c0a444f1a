//! The engine API, shaped like the original: `Engine::new(EngineArgs)` then
//! `engine.step(request)` per generation.

pub mod config;
mod job;
pub mod progress;
pub mod ranks;
pub mod registry;
pub mod request;

pub use config::{
    Cosmos3Args, DeviceConfig, EngineArgs, EngineConfig, ParallelConfig, PluginArgs, RuntimeConfig,
    Target,
};
pub use job::join_launch;
pub use progress::{Progress, Silent};
pub use request::{
    pixel_to_latent_shape, sound_latent_frames, Conditioning, GenerationOutput, GenerationRequest,
    InitNoise, LatentShape,
};

use crate::Result;

/// How long a rank waits in a collective for its peers before declaring them lost.
const COLLECTIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Loads a model plugin once (on every rank of the parallel topology) and serves requests.
pub struct Engine {
    pool: ranks::RankPool,
    config: EngineConfig,
    /// The multi-process job this process is one rank of, if any.
    job: Option<&'static crate::parallel::job::Job>,
}

impl Engine {
    /// Builds the plugin on `world_size` ranks. By default every rank lives in this
    /// process: threads linked by the in-process communicator on CPU, one thread per GPU
    /// with NCCL on CUDA (rank r on GPU `base + r`); a single rank needs no communicator.
    ///
    /// When WORLD_SIZE is set (a torchrun-style launch), this process is rank RANK of a
    /// WORLD_SIZE-process job instead, which must equal cfg·sp·tp: it holds that one rank,
    /// on GPU `base + LOCAL_RANK` under CUDA. Then an error in any rank, here or in another
    /// process, ends every process of the job with one line naming the failing rank (the
    /// others may be blocked in collectives that cannot be cancelled): `new`, `step` and
    /// `encode_image` do not return errors after the job is joined. Call [`Self::finish`]
    /// after the last request.
    pub fn new(args: EngineArgs) -> Result<Self> {
        let p = &args.config.parallel;
        p.validate_shape()?;
        if args.config.runtime.use_cuda_graph {
            return Err(crate::Error::invalid(
                "use_cuda_graph",
                "CUDA-graph capture of the generation step is not implemented; leave it off",
            ));
        }
        let shape = crate::parallel::MeshShape::new(p.cfg_size, p.sp_size, p.tp_size);
        if let Some(job) = join_launch(&args.config)? {
            return Ok(Self {
                pool: job::start(&args, job)?,
                config: args.config,
                job: Some(job),
            });
        }
        let factory = registry::factory(&args.plugin)?;
        let (meshes, aborter) = if shape.world() == 1 {
            (
                ranks::ready(vec![crate::parallel::RankMesh::single()]),
                None,
            )
        } else {
            match args.config.device.target {
                Target::Cpu => {
                    let local = crate::parallel::local::LocalMeshes::new(shape, COLLECTIVE_TIMEOUT);
                    let aborter = local.aborter();
                    (ranks::ready(local.meshes), Some(aborter))
                }
                Target::Cuda(first) => (cuda_meshes(shape, first)?, None),
            }
        };
        let plugin_args = args.plugin_args.clone();
        let config = args.config.clone();
        // Rank r of a multi-GPU run drives GPU `first + r` (one thread per GPU).
        let make: std::sync::Arc<ranks::PluginFactory> = std::sync::Arc::new(move |mesh| {
            let mut cfg = config.clone();
            if let Target::Cuda(first) = cfg.device.target {
                cfg.device.target = Target::Cuda(first + mesh.rank);
            }
            factory(&plugin_args, &cfg, mesh)
        });
        let pool = ranks::RankPool::start(meshes, aborter, make)?;
        Ok(Self {
            pool,
            config: args.config,
            job: None,
        })
    }

    /// Whether this process writes the outputs: always, except on ranks > 0 of a
    /// multi-process job.
    pub fn writes_outputs(&self) -> bool {
        self.job.is_none_or(|j| j.rank() == 0)
    }

    /// Ends this process's part of a multi-process job: ranks > 0 report success, rank 0
    /// waits until every rank has (so it writes outputs only for a job that succeeded
    /// everywhere). Nothing to do in a single process.
    pub fn finish(&self) {
        if let Some(j) = self.job {
            j.finish(COLLECTIVE_TIMEOUT);
        }
    }

    /// In a multi-process job an error fails the whole job (see [`Self::new`]).
    fn checked<T>(&self, r: Result<T>) -> Result<T> {
        match (r, self.job) {
            (Err(e), Some(j)) => j.fail(&e.to_string()),
            (r, _) => r,
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// `(sample_rate, samples per sound latent step)` when the audio decoder is loaded.
    pub fn sound_spec(&self) -> Option<(u32, usize)> {
        self.pool.sound_spec()
    }

    /// Encodes a conditioning image (`[1, 3, H, W]` in [−1, 1], already resized to the
    /// request's size) into the clean latent frames of an I2V request.
    pub fn encode_image(&mut self, pixels: &candle_core::Tensor) -> Result<Conditioning> {
        let r = self.pool.encode_image(pixels);
        self.checked(r)
    }

    /// Runs one request silently.
    pub fn step(&mut self, request: &GenerationRequest) -> Result<GenerationOutput> {
        self.step_with_progress(request, &Silent)
    }

    /// Runs one request, reporting stages and denoising steps to `progress`.
    pub fn step_with_progress(
        &mut self,
        request: &GenerationRequest,
        progress: &dyn Progress,
    ) -> Result<GenerationOutput> {
        let r = request
            .validate()
            .and_then(|()| self.pool.step(request, progress));
        self.checked(r)
    }
}

/// One NCCL mesh per GPU `first..first + world`, each built on its rank's thread.
#[cfg(feature = "cuda")]
fn cuda_meshes(shape: crate::parallel::MeshShape, first: usize) -> Result<Vec<ranks::MeshSource>> {
    let plan = std::sync::Arc::new(crate::parallel::nccl::NcclMeshPlan::new(shape)?);
    Ok((0..shape.world())
        .map(|rank| {
            let plan = plan.clone();
            Box::new(move || plan.build(rank, first + rank)) as ranks::MeshSource
        })
        .collect())
}

#[cfg(not(feature = "cuda"))]
fn cuda_meshes(_: crate::parallel::MeshShape, _: usize) -> Result<Vec<ranks::MeshSource>> {
    Err(crate::Error::invalid(
        "--device",
        "cuda: this build has no CUDA support (rebuild with `--features cuda`)",
    ))
}
