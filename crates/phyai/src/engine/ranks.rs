//! Multi-rank execution inside one process: rank 0's plugin runs on the caller's thread
//! (so it can report progress), ranks 1.. run on their own threads and execute the same
//! jobs in lockstep through the mesh's collectives. A failing rank aborts the mesh, so the
//! others return promptly with an error naming it.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;

use super::plugin::Plugin;
use super::progress::{Progress, Silent};
use crate::parallel::local::Aborter;
use crate::parallel::RankMesh;
use crate::{Error, Result};

/// A worker rank's reply to one request: only success or its own error travels back (the
/// lead's output is the one returned).
type Reply = Result<()>;

struct Worker<R> {
    rank: usize,
    requests: Sender<R>,
    replies: Receiver<Reply>,
    handle: Option<JoinHandle<()>>,
}

/// Rank 0's plugin plus the worker threads of the other ranks.
pub struct RankPool<P: Plugin> {
    lead: P,
    workers: Vec<Worker<P::Request>>,
    aborter: Option<Aborter>,
}

/// Builds one rank's plugin from its mesh.
pub type PluginFactory<P> = dyn Fn(RankMesh) -> Result<P> + Send + Sync;

/// Makes one rank's mesh on that rank's own thread (NCCL communicators are created by all
/// ranks of a group at once, so they cannot be made ahead on one thread).
pub type MeshSource = Box<dyn FnOnce() -> Result<RankMesh> + Send>;

/// Mesh sources for meshes that already exist (in-process communicators).
pub fn ready(meshes: Vec<RankMesh>) -> Vec<MeshSource> {
    meshes
        .into_iter()
        .map(|m| Box::new(move || Ok(m)) as MeshSource)
        .collect()
}

impl<P: Plugin> RankPool<P> {
    /// Loads every rank's plugin (in parallel) and starts the workers. `meshes[0]` is this
    /// thread's rank.
    pub fn start(
        meshes: Vec<MeshSource>,
        aborter: Option<Aborter>,
        factory: std::sync::Arc<PluginFactory<P>>,
    ) -> Result<Self> {
        let mut meshes = meshes.into_iter();
        let lead_mesh = meshes
            .next()
            .ok_or_else(|| Error::msg("a rank pool needs at least one rank"))?;
        let mut workers = Vec::new();
        let mut loaded = Vec::new();
        for (i, mesh) in meshes.enumerate() {
            let rank = i + 1;
            let (req_tx, req_rx) = channel::<P::Request>();
            let (reply_tx, reply_rx) = channel::<Reply>();
            let (ready_tx, ready_rx) = channel::<Result<()>>();
            let factory = factory.clone();
            let aborter = aborter.clone();
            let handle = std::thread::Builder::new()
                .name(format!("phyai-rank-{rank}"))
                .spawn(move || {
                    worker_loop(rank, mesh, factory, aborter, ready_tx, req_rx, reply_tx)
                })
                .map_err(|e| Error::msg(format!("rank {rank}: cannot start its thread: {e}")))?;
            workers.push(Worker {
                rank,
                requests: req_tx,
                replies: reply_rx,
                handle: Some(handle),
            });
            loaded.push((rank, ready_rx));
        }
        let lead = lead_mesh().and_then(|m| factory(m));
        if workers.is_empty() {
            // The only rank here: its error needs no rank label (see `gather`).
            return lead.map(|lead| Self {
                lead,
                workers,
                aborter,
            });
        }
        let (lead, mut first_err) = match lead {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e.on_rank(0))),
        };
        for (rank, ready) in loaded {
            let r = ready
                .recv()
                .unwrap_or_else(|_| Err(Error::msg("its thread died while loading")));
            if let (Err(e), None) = (r, &first_err) {
                first_err = Some(e.on_rank(rank));
            }
        }
        match (lead, first_err) {
            (Some(lead), None) => Ok(Self {
                lead,
                workers,
                aborter,
            }),
            (_, Some(e)) => Err(e),
            (None, None) => Err(Error::msg("rank 0 failed to load")),
        }
    }

    pub fn lead(&self) -> &P {
        &self.lead
    }

    /// Every rank runs `request`; rank 0 (this thread) reports to `progress`.
    pub fn step(&mut self, request: &P::Request, progress: &dyn Progress) -> Result<P::Output> {
        for w in &self.workers {
            w.requests
                .send(request.clone())
                .map_err(|_| Error::msg(format!("rank {} is gone", w.rank)))?;
        }
        let lead = self.lead.step(request, progress);
        self.abort_on_err(&lead, 0);
        self.gather(lead)
    }

    /// Collects the workers' replies. A rank's own failure is reported over the errors it
    /// caused in the others (collectives aborted on its account, which name it already).
    fn gather<T>(&self, lead: Result<T>) -> Result<T> {
        if self.workers.is_empty() {
            // The only rank here: a single-rank run, or one process of a multi-process job
            // (whose own report names the rank).
            return lead;
        }
        let mut worker_err: Option<Error> = None;
        for w in &self.workers {
            let r = w
                .replies
                .recv()
                .unwrap_or_else(|_| Err(Error::msg("its thread died")));
            if let Err(e) = r {
                let own = !matches!(e, Error::Rank { .. });
                if worker_err.is_none() || own {
                    worker_err = Some(e.on_rank(w.rank));
                }
            }
        }
        match (lead, worker_err) {
            (Ok(v), None) => Ok(v),
            (Err(e), _) if !matches!(e, Error::Rank { .. }) => Err(e.on_rank(0)),
            (Err(e), None) => Err(e),
            (_, Some(e)) => Err(e),
        }
    }

    fn abort_on_err<T>(&self, r: &Result<T>, rank: usize) {
        if let (Err(e), Some(a)) = (r, &self.aborter) {
            a.abort(rank, &e.to_string());
        }
    }
}

fn worker_loop<P: Plugin>(
    rank: usize,
    mesh: MeshSource,
    factory: std::sync::Arc<PluginFactory<P>>,
    aborter: Option<Aborter>,
    ready: Sender<Result<()>>,
    requests: Receiver<P::Request>,
    replies: Sender<Reply>,
) {
    let mut plugin = match mesh().and_then(|m| factory(m)) {
        Ok(p) => {
            let _ = ready.send(Ok(()));
            p
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    while let Ok(request) = requests.recv() {
        let r = plugin.step(&request, &Silent).map(|_| ());
        if let (Err(e), Some(a)) = (&r, &aborter) {
            a.abort(rank, &e.to_string());
        }
        if replies.send(r).is_err() {
            return;
        }
    }
}

impl<P: Plugin> Drop for RankPool<P> {
    fn drop(&mut self) {
        for w in &mut self.workers {
            // Closing the request channel ends the worker's loop.
            let (dead_tx, _) = channel();
            w.requests = dead_tx;
            if let Some(h) = w.handle.take() {
                let _ = h.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineConfig;
    use crate::parallel::local::LocalMeshes;
    use crate::parallel::MeshShape;
    use candle_core::{DType, Device, Tensor};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// All-reduces once per step of a request; `fail` = (rank, step) errors there.
    struct Lockstep {
        mesh: RankMesh,
        fail: Option<(usize, usize)>,
    }

    impl Plugin for Lockstep {
        const NAME: &'static str = "lockstep";
        type Args = Option<(usize, usize)>;
        /// The number of steps.
        type Request = usize;
        type Output = f32;

        fn load(fail: &Self::Args, _: &EngineConfig, mesh: RankMesh) -> Result<Self> {
            Ok(Self { mesh, fail: *fail })
        }

        fn validate(_: &usize) -> Result<()> {
            Ok(())
        }

        fn step(&mut self, steps: &usize, _: &dyn Progress) -> Result<f32> {
            let mut acc = Tensor::zeros(1, DType::F32, &Device::Cpu)?;
            for step in 0..*steps {
                if self.fail == Some((self.mesh.rank, step)) {
                    return Err(Error::msg(format!("injected fault at step {step}")));
                }
                let one = Tensor::ones(1, DType::F32, &Device::Cpu)?;
                acc = (acc + self.mesh.world.all_reduce_sum(&one)?)?;
            }
            Ok(acc.to_vec1::<f32>()?[0])
        }
    }

    fn pool(world: usize, fail: Option<(usize, usize)>) -> RankPool<Lockstep> {
        let local = LocalMeshes::new(MeshShape::new(1, 1, world), Duration::from_secs(60));
        let aborter = local.aborter();
        let config = EngineConfig::default();
        let factory: Arc<PluginFactory<Lockstep>> =
            Arc::new(move |mesh| Lockstep::load(&fail, &config, mesh));
        RankPool::start(ready(local.meshes), Some(aborter), factory).unwrap()
    }

    #[test]
    fn ranks_run_requests_in_lockstep() {
        let mut p = pool(4, None);
        for _ in 0..2 {
            assert_eq!(p.step(&3, &Silent).unwrap(), 12.0);
        }
    }

    #[test]
    fn a_rank_failing_mid_run_stops_every_rank_with_its_name() {
        for failing in [0usize, 2] {
            let mut p = pool(4, Some((failing, 2)));
            let start = Instant::now();
            let e = p.step(&5, &Silent).unwrap_err();
            assert!(
                matches!(e, Error::Rank { rank, .. } if rank == failing),
                "{e}"
            );
            assert_eq!(
                e.to_string(),
                format!("rank {failing} failed: injected fault at step 2")
            );
            assert!(start.elapsed() < Duration::from_secs(10));
        }
    }
}
