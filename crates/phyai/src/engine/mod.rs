//! The engine API, shaped like the original: `Engine::new(EngineArgs)` then
//! `engine.step(request)` per generation. The engine is generic over the model
//! [`Plugin`]; it knows ranks and launches, not models.

pub mod config;
mod launch;
pub mod plugin;
pub mod progress;
pub mod ranks;

pub use config::{DeviceConfig, EngineArgs, EngineConfig, Target};
pub use launch::join_launch;
pub use plugin::Plugin;
pub use progress::{Progress, Silent};

use crate::parallel::MeshShape;
use crate::{Error, Result};

/// How long a rank waits in a collective for its peers before declaring them lost.
const COLLECTIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Loads a model plugin once (on every rank of the parallel topology) and serves requests.
pub struct Engine<P: Plugin> {
    pool: ranks::RankPool<P>,
    config: EngineConfig,
    /// The multi-process job this process is one rank of, if any.
    job: Option<&'static crate::parallel::job::Job>,
}

impl<P: Plugin> Engine<P> {
    /// Builds the plugin on `cfg · sp · tp` ranks. By default every rank lives in this
    /// process: threads linked by the in-process communicator on CPU, one thread per GPU
    /// with NCCL on CUDA (rank r on GPU `base + r`); a single rank needs no communicator.
    ///
    /// When WORLD_SIZE is set (a torchrun-style launch), this process is rank RANK of a
    /// WORLD_SIZE-process job instead, which must equal cfg·sp·tp: it holds that one rank,
    /// on GPU `base + LOCAL_RANK` under CUDA. Then an error in any rank, here or in another
    /// process, ends every process of the job with one line naming the failing rank (the
    /// others may be blocked in collectives that cannot be cancelled): `new` and `step` do
    /// not return errors after the job is joined. Call [`Self::finish`] after the last
    /// request.
    pub fn new(args: EngineArgs<P::Args>) -> Result<Self> {
        if args.plugin != P::NAME {
            return Err(Error::invalid(
                "plugin",
                format!(
                    "{:?} is not this engine's plugin ({})",
                    args.plugin,
                    P::NAME
                ),
            ));
        }
        let shape = args.config.parallel;
        shape.validate()?;
        P::check(&args.plugin_args, &args.config)?;
        if let Some(job) = join_launch(&args.config)? {
            return Ok(Self {
                pool: launch::start(&args, job)?,
                config: args.config,
                job: Some(job),
            });
        }
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
        let make: std::sync::Arc<ranks::PluginFactory<P>> = std::sync::Arc::new(move |mesh| {
            let mut cfg = config.clone();
            if let Target::Cuda(first) = cfg.device.target {
                cfg.device.target = Target::Cuda(first + mesh.rank);
            }
            P::load(&plugin_args, &cfg, mesh)
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

    /// This process's lead rank's plugin, for what it reports about itself (read only).
    pub fn plugin(&self) -> &P {
        self.pool.lead()
    }

    /// Runs one request silently.
    pub fn step(&mut self, request: &P::Request) -> Result<P::Output> {
        self.step_with_progress(request, &Silent)
    }

    /// Runs one request, reporting stages and denoising steps to `progress`. A request
    /// that fails [`Plugin::validate`] is refused before any rank starts on it.
    pub fn step_with_progress(
        &mut self,
        request: &P::Request,
        progress: &dyn Progress,
    ) -> Result<P::Output> {
        P::validate(request)?;
        let r = self.pool.step(request, progress);
        self.checked(r)
    }
}

/// One NCCL mesh per GPU `first..first + world`, each built on its rank's thread.
#[cfg(feature = "cuda")]
fn cuda_meshes(shape: MeshShape, first: usize) -> Result<Vec<ranks::MeshSource>> {
    let plan = std::sync::Arc::new(crate::parallel::nccl::NcclMeshPlan::new(shape)?);
    Ok((0..shape.world())
        .map(|rank| {
            let plan = plan.clone();
            Box::new(move || plan.build(rank, first + rank)) as ranks::MeshSource
        })
        .collect())
}

#[cfg(not(feature = "cuda"))]
fn cuda_meshes(_: MeshShape, _: usize) -> Result<Vec<ranks::MeshSource>> {
    Err(config::no_cuda())
}
