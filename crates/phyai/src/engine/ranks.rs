//! Multi-rank execution inside one process: rank 0's plugin runs on the caller's thread
//! (so it can report progress), ranks 1.. run on their own threads and execute the same
//! jobs in lockstep through the mesh's collectives. A failing rank aborts the mesh, so the
//! others return promptly with an error naming it.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;

use candle_core::Tensor;

use super::progress::{Progress, Silent};
use super::registry::Plugin;
use super::request::{Conditioning, GenerationOutput, GenerationRequest};
use crate::parallel::local::Aborter;
use crate::parallel::RankMesh;
use crate::{Error, Result};

enum Job {
    Step(Box<GenerationRequest>),
    EncodeImage(Tensor),
}

enum Reply {
    Step(Result<GenerationOutput>),
    EncodeImage(Result<Conditioning>),
}

struct Worker {
    rank: usize,
    jobs: Sender<Job>,
    replies: Receiver<Reply>,
    handle: Option<JoinHandle<()>>,
}

/// Rank 0's plugin plus the worker threads of the other ranks.
pub struct RankPool {
    lead: Box<dyn Plugin>,
    workers: Vec<Worker>,
    aborter: Option<Aborter>,
}

/// Builds one rank's plugin from its mesh.
pub type PluginFactory = dyn Fn(RankMesh) -> Result<Box<dyn Plugin>> + Send + Sync;

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

impl RankPool {
    /// Loads every rank's plugin (in parallel) and starts the workers. `meshes[0]` is this
    /// thread's rank.
    pub fn start(
        meshes: Vec<MeshSource>,
        aborter: Option<Aborter>,
        factory: std::sync::Arc<PluginFactory>,
    ) -> Result<Self> {
        let mut meshes = meshes.into_iter();
        let lead_mesh = meshes
            .next()
            .ok_or_else(|| Error::msg("a rank pool needs at least one rank"))?;
        let mut workers = Vec::new();
        let mut loaded = Vec::new();
        for (i, mesh) in meshes.enumerate() {
            let rank = i + 1;
            let (job_tx, job_rx) = channel::<Job>();
            let (reply_tx, reply_rx) = channel::<Reply>();
            let (ready_tx, ready_rx) = channel::<Result<()>>();
            let factory = factory.clone();
            let aborter = aborter.clone();
            let handle = std::thread::Builder::new()
                .name(format!("phyai-rank-{rank}"))
                .spawn(move || {
                    worker_loop(rank, mesh, factory, aborter, ready_tx, job_rx, reply_tx)
                })
                .map_err(|e| Error::msg(format!("rank {rank}: cannot start its thread: {e}")))?;
            workers.push(Worker {
                rank,
                jobs: job_tx,
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
        let mut first_err = lead
            .as_ref()
            .err()
            .map(|e| Error::msg(format!("rank 0: {e}")));
        for (rank, ready) in loaded {
            let r = ready
                .recv()
                .unwrap_or_else(|_| Err(Error::msg("its thread died while loading")));
            if let (Err(e), None) = (r, &first_err) {
                first_err = Some(Error::msg(format!("rank {rank}: {e}")));
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok(Self {
            lead: lead?,
            workers,
            aborter,
        })
    }

    fn broadcast(&self, make: impl Fn() -> Job) -> Result<()> {
        for w in &self.workers {
            w.jobs
                .send(make())
                .map_err(|_| Error::msg(format!("rank {} is gone", w.rank)))?;
        }
        Ok(())
    }

    /// Collects the workers' replies; the first failure (by rank) wins over rank 0's own
    /// echo of it.
    fn gather<T>(&self, lead: Result<T>, unwrap: impl Fn(Reply) -> Result<()>) -> Result<T> {
        if self.workers.is_empty() {
            // The only rank here: a single-rank run, or one process of a multi-process job
            // (whose own report names the rank).
            return lead;
        }
        // A rank's own failure is preferred over the "rank r failed" echoes it caused.
        let mut worker_err: Option<Error> = None;
        for w in &self.workers {
            let r = w
                .replies
                .recv()
                .map_err(|_| Error::msg(format!("rank {} died", w.rank)))
                .and_then(&unwrap);
            if let Err(e) = r {
                let own = !e.to_string().starts_with("rank ");
                let e = if own {
                    Error::msg(format!("rank {} failed: {e}", w.rank))
                } else {
                    e
                };
                if worker_err.is_none() || own {
                    worker_err = Some(e);
                }
            }
        }
        match (lead, worker_err) {
            (Ok(v), None) => Ok(v),
            (Err(e), _) if !e.to_string().starts_with("rank ") => {
                Err(Error::msg(format!("rank 0 failed: {e}")))
            }
            (Err(e), None) => Err(e),
            (_, Some(e)) => Err(e),
        }
    }

    pub fn sound_spec(&self) -> Option<(u32, usize)> {
        self.lead.sound_spec()
    }

    pub fn encode_image(&mut self, pixels: &Tensor) -> Result<Conditioning> {
        self.broadcast(|| Job::EncodeImage(pixels.clone()))?;
        let lead = self.lead.encode_image(pixels);
        self.abort_on_err(&lead, 0);
        self.gather(lead, |r| match r {
            Reply::EncodeImage(r) => r.map(|_| ()),
            _ => Err(Error::msg("rank reply out of order")),
        })
    }

    pub fn step(
        &mut self,
        request: &GenerationRequest,
        progress: &dyn Progress,
    ) -> Result<GenerationOutput> {
        self.broadcast(|| Job::Step(Box::new(request.clone())))?;
        let lead = self.lead.step(request, progress);
        self.abort_on_err(&lead, 0);
        self.gather(lead, |r| match r {
            Reply::Step(r) => r.map(|_| ()),
            _ => Err(Error::msg("rank reply out of order")),
        })
    }

    fn abort_on_err<T>(&self, r: &Result<T>, rank: usize) {
        if let (Err(e), Some(a)) = (r, &self.aborter) {
            a.abort(&format!("rank {rank} failed: {e}"));
        }
    }
}

fn worker_loop(
    rank: usize,
    mesh: MeshSource,
    factory: std::sync::Arc<PluginFactory>,
    aborter: Option<Aborter>,
    ready: Sender<Result<()>>,
    jobs: Receiver<Job>,
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
    let fail = |e: &Error| {
        if let Some(a) = &aborter {
            a.abort(&format!("rank {rank} failed: {e}"));
        }
    };
    while let Ok(job) = jobs.recv() {
        let reply = match job {
            Job::Step(req) => {
                let r = plugin.step(&req, &Silent);
                if let Err(e) = &r {
                    fail(e);
                }
                Reply::Step(r)
            }
            Job::EncodeImage(px) => {
                let r = plugin.encode_image(&px);
                if let Err(e) = &r {
                    fail(e);
                }
                Reply::EncodeImage(r)
            }
        };
        if replies.send(reply).is_err() {
            return;
        }
    }
}

impl Drop for RankPool {
    fn drop(&mut self) {
        for w in &mut self.workers {
            // Closing the job channel ends the worker's loop.
            let (dead_tx, _) = channel();
            w.jobs = dead_tx;
            if let Some(h) = w.handle.take() {
                let _ = h.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::local::LocalMeshes;
    use crate::parallel::MeshShape;
    use candle_core::Device;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// All-reduces once per denoising step; `fail` = (rank, step) errors there.
    struct Lockstep {
        mesh: RankMesh,
        fail: Option<(usize, usize)>,
    }

    impl Plugin for Lockstep {
        fn name(&self) -> &'static str {
            "lockstep"
        }
        fn sound_spec(&self) -> Option<(u32, usize)> {
            None
        }
        fn encode_image(&mut self, _: &Tensor) -> Result<Conditioning> {
            Err(Error::msg("no encoder"))
        }
        fn step(&mut self, req: &GenerationRequest, _: &dyn Progress) -> Result<GenerationOutput> {
            let mut acc = Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu)?;
            for step in 0..req.steps {
                if self.fail == Some((self.mesh.rank, step)) {
                    return Err(Error::msg(format!("injected fault at step {step}")));
                }
                let one = Tensor::ones(1, candle_core::DType::F32, &Device::Cpu)?;
                acc = (acc + self.mesh.world.all_reduce_sum(&one)?)?;
            }
            Ok(GenerationOutput {
                video: acc.clone(),
                audio: None,
                latents: acc,
                sound_latents: None,
                timings: Vec::new(),
            })
        }
    }

    fn request(steps: usize) -> GenerationRequest {
        GenerationRequest {
            pos_ids: vec![1],
            neg_ids: vec![1],
            latent: super::super::LatentShape { t: 1, h: 1, w: 1 },
            fps: 24.0,
            steps,
            guidance_scale: 1.0,
            seed: 0,
            sound_frames: None,
            conditioning: None,
            init_noise: None,
        }
    }

    fn pool(world: usize, fail: Option<(usize, usize)>) -> RankPool {
        let local = LocalMeshes::new(MeshShape::new(1, 1, world), Duration::from_secs(60));
        let aborter = local.aborter();
        let factory: Arc<PluginFactory> =
            Arc::new(move |mesh| Ok(Box::new(Lockstep { mesh, fail }) as Box<dyn Plugin>));
        RankPool::start(ready(local.meshes), Some(aborter), factory).unwrap()
    }

    #[test]
    fn ranks_run_requests_in_lockstep() {
        let mut p = pool(4, None);
        for _ in 0..2 {
            let out = p.step(&request(3), &Silent).unwrap();
            assert_eq!(out.latents.to_vec1::<f32>().unwrap(), vec![12.0]);
        }
    }

    #[test]
    fn a_rank_failing_mid_run_stops_every_rank_with_its_name() {
        for failing in [0usize, 2] {
            let mut p = pool(4, Some((failing, 2)));
            let start = Instant::now();
            let e = p.step(&request(5), &Silent).unwrap_err().to_string();
            assert!(
                e.contains(&format!("rank {failing}")) && e.contains("injected fault at step 2"),
                "{e}"
            );
            assert!(start.elapsed() < Duration::from_secs(10));
        }
    }
}
