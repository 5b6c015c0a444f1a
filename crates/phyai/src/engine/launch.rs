//! The engine as one rank of a multi-process job (WORLD_SIZE set): this process joins the
//! job, builds only its own rank's mesh (TCP collectives on CPU, NCCL on GPU `base +
//! LOCAL_RANK`) and runs that rank's plugin on the calling thread.

use std::sync::Arc;

use super::config::{EngineArgs, EngineConfig, Target};
use super::plugin::Plugin;
use super::ranks::{MeshSource, PluginFactory, RankPool};
use super::COLLECTIVE_TIMEOUT;
use crate::parallel::job::{check_world, Backend, Job};
use crate::parallel::rendezvous::LaunchEnv;
use crate::parallel::MeshShape;
use crate::Result;

/// Joins the multi-process job the environment describes (WORLD_SIZE > 1) as a rank of
/// `config`'s topology; `None` for a single-process launch. [`super::Engine::new`] joins
/// on its own; calling this first, before any other work, also makes the errors of that
/// work reach the other ranks ([`Job::fail`]) instead of leaving them in the rendezvous.
pub fn join_launch(config: &EngineConfig) -> Result<Option<&'static Job>> {
    let shape = config.parallel;
    shape.validate()?;
    let Some(env) = LaunchEnv::from_env()? else {
        return Ok(None);
    };
    check_world(&env, shape)?;
    if env.world_size == 1 {
        return Ok(None);
    }
    let backend = match config.device.target {
        Target::Cpu => Backend::Tcp,
        Target::Cuda(_) => {
            nccl::supported()?;
            Backend::Nccl
        }
    };
    Job::join(&env, shape, backend, COLLECTIVE_TIMEOUT).map(Some)
}

/// Loads this rank's plugin. An error fails the whole job (every process exits naming
/// this rank), since the others may already wait on this rank inside a collective.
pub(super) fn start<P: Plugin>(
    args: &EngineArgs<P::Args>,
    job: &'static Job,
) -> Result<RankPool<P>> {
    let shape = args.config.parallel;
    let pool = (|| {
        let mut config = args.config.clone();
        let source: MeshSource = match config.device.target {
            Target::Cpu => {
                let mesh = job.tcp_mesh(shape, COLLECTIVE_TIMEOUT)?;
                Box::new(move || Ok(mesh))
            }
            Target::Cuda(base) => {
                let ordinal = base + job.local_rank();
                config.device.target = Target::Cuda(ordinal);
                nccl::mesh(job, shape, ordinal)?
            }
        };
        let plugin_args = args.plugin_args.clone();
        let make: Arc<PluginFactory<P>> =
            Arc::new(move |mesh| P::load(&plugin_args, &config, mesh));
        RankPool::start(vec![source], None, make)
    })();
    pool.or_else(|e| job.fail(&e.to_string()))
}

#[cfg(feature = "cuda")]
mod nccl {
    use super::*;
    use crate::parallel::nccl::NcclMeshPlan;

    pub fn supported() -> Result<()> {
        Ok(())
    }

    /// This rank's NCCL mesh: rank 0 makes the unique id of every group and shares them;
    /// the blocking NCCL joins then run on the rank's own thread.
    pub fn mesh(job: &Job, shape: MeshShape, ordinal: usize) -> Result<MeshSource> {
        let ids = if job.rank() == 0 {
            NcclMeshPlan::new(shape)?.to_bytes()
        } else {
            Vec::new()
        };
        let ids = job.share(&ids, COLLECTIVE_TIMEOUT)?;
        let plan = NcclMeshPlan::from_bytes(shape, &ids)?;
        let rank = job.rank();
        Ok(Box::new(move || plan.build(rank, ordinal)))
    }
}

#[cfg(not(feature = "cuda"))]
mod nccl {
    use super::*;

    use crate::engine::config::no_cuda;

    pub fn supported() -> Result<()> {
        Err(no_cuda())
    }

    pub fn mesh(_: &Job, _: MeshShape, _: usize) -> Result<MeshSource> {
        Err(no_cuda())
    }
}
