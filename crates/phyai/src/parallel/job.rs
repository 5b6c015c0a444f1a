//! This process as one rank of a multi-process job (a torchrun-style launch: one process
//! per rank, RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT in the environment).
//!
//! Joining is a rendezvous at rank 0 that opens two streams per other rank: the control
//! channel (heartbeats, "done", failures: see [`super::watchdog`]) and the data channel
//! (the collectives of CPU runs, see [`super::tcp`]; on GPUs only the NCCL unique ids from
//! rank 0, see [`Job::share`]). Rank 0 then sends every rank its welcome, the mesh shape
//! and backend, so a rank launched with different flags fails the job at once.
//!
//! A process joins at most one job, for its whole life ([`Job::current`]); joining early
//! (before loading anything) means every later error is reported to the other ranks.

use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::mesh::{MeshShape, RankMesh};
use super::rendezvous::{self, LaunchEnv};
use super::watchdog::Watchdog;
use crate::{Error, Result};

/// How the ranks exchange tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// CPU ranks: collectives through rank 0 over TCP.
    Tcp,
    /// GPU ranks: NCCL, with the unique ids from rank 0's welcome.
    Nccl,
}

impl Backend {
    fn code(self) -> u8 {
        match self {
            Backend::Tcp => 0,
            Backend::Nccl => 1,
        }
    }
}

const CONTROL: usize = 0;
const DATA: usize = 1;

/// The data streams, until the mesh takes them.
enum Data {
    /// Rank 0: one stream per rank 1..world.
    Hub(Vec<TcpStream>),
    /// Rank > 0: the stream to rank 0.
    Spoke(TcpStream),
}

/// One process's membership in a multi-process job.
pub struct Job {
    env: LaunchEnv,
    shape: MeshShape,
    backend: Backend,
    watchdog: Arc<Watchdog>,
    data: Mutex<Option<Data>>,
}

static CURRENT: OnceLock<Job> = OnceLock::new();

/// Checks that the launch started one process per rank of the mesh.
pub fn check_world(env: &LaunchEnv, shape: MeshShape) -> Result<()> {
    if env.world_size != shape.world() {
        return Err(Error::invalid(
            "WORLD_SIZE",
            format!(
                "{} processes were launched but --cfg {} · --sp {} · --tp {} = {} ranks \
                 (launch one process per rank)",
                env.world_size,
                shape.cfg,
                shape.sp,
                shape.tp,
                shape.world()
            ),
        ));
    }
    Ok(())
}

impl Job {
    /// The job this process joined, if any.
    pub fn current() -> Option<&'static Job> {
        CURRENT.get()
    }

    /// Joins the job described by `env` as a rank of `shape` using `backend`, or returns
    /// the job this process already joined with the same parameters. Errors before the job
    /// exists come back as `Err` (the peers then time out in their rendezvous); a mismatch
    /// found after it exists (another rank launched with different flags) fails the job.
    pub fn join(
        env: &LaunchEnv,
        shape: MeshShape,
        backend: Backend,
        timeout: Duration,
    ) -> Result<&'static Job> {
        check_world(env, shape)?;
        if let Some(job) = CURRENT.get() {
            if job.env != *env || job.shape != shape || job.backend != backend {
                return Err(Error::msg(
                    "this process already joined a multi-process job with other parameters",
                ));
            }
            return Ok(job);
        }
        let rank = env.rank;
        let (controls, data, welcome) = if rank == 0 {
            let port = env.master_port;
            let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| {
                Error::invalid(
                    "MASTER_PORT",
                    format!("rank 0 cannot listen on {port}: {e}"),
                )
            })?;
            let streams = rendezvous::accept(&listener, env.world_size, 2, timeout)?;
            let welcome = encode_welcome(shape, backend);
            let mut controls = Vec::new();
            let mut data = Vec::new();
            for (i, mut chans) in streams.into_iter().enumerate() {
                let d = chans.pop().expect("data channel");
                let mut c = chans.pop().expect("control channel");
                rendezvous::write_frame(&mut c, &welcome).map_err(|e| {
                    Error::msg(format!(
                        "rendezvous: sending rank {} its welcome: {e}",
                        i + 1
                    ))
                })?;
                controls.push((i + 1, c));
                data.push(d);
            }
            (controls, Data::Hub(data), welcome)
        } else {
            let (addr, port) = (env.master_addr.as_str(), env.master_port);
            let mut c = rendezvous::connect(addr, port, rank, CONTROL, timeout)?;
            let d = rendezvous::connect(addr, port, rank, DATA, timeout)?;
            c.set_read_timeout(Some(timeout)).ok();
            let welcome = rendezvous::read_frame(&mut c).map_err(|e| {
                Error::msg(format!(
                    "rendezvous: rank {rank}: no welcome from rank 0: {e}"
                ))
            })?;
            (vec![(0, c)], Data::Spoke(d), welcome)
        };
        let watchdog = Watchdog::start(rank, env.world_size, controls)?;
        let (their_shape, their_backend) = decode_welcome(&welcome)?;
        let job = Job {
            env: env.clone(),
            shape,
            backend,
            watchdog,
            data: Mutex::new(Some(data)),
        };
        if CURRENT.set(job).is_err() {
            return Err(Error::msg(
                "this process already joined a multi-process job",
            ));
        }
        let job = CURRENT.get().expect("just set");
        if their_shape != shape {
            job.fail(&format!(
                "--cfg {} --sp {} --tp {} here, but --cfg {} --sp {} --tp {} on rank 0",
                shape.cfg, shape.sp, shape.tp, their_shape.cfg, their_shape.sp, their_shape.tp
            ));
        }
        if their_backend != backend.code() {
            job.fail("--device differs from rank 0's (cpu on one, cuda on the other)");
        }
        Ok(job)
    }

    pub fn rank(&self) -> usize {
        self.env.rank
    }

    pub fn local_rank(&self) -> usize {
        self.env.local_rank
    }

    pub fn world_size(&self) -> usize {
        self.env.world_size
    }

    /// Rank 0's `payload` (the NCCL unique ids), on every rank; ranks > 0 pass anything.
    /// Goes over the data streams, so not after [`Self::tcp_mesh`].
    pub fn share(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        let mut data = self.data.lock().unwrap_or_else(|p| p.into_inner());
        match data.as_mut() {
            Some(Data::Hub(streams)) => {
                for (i, s) in streams.iter_mut().enumerate() {
                    rendezvous::write_frame(s, payload).map_err(|e| {
                        Error::msg(format!("sending rank {} the NCCL ids: {e}", i + 1))
                    })?;
                }
                Ok(payload.to_vec())
            }
            Some(Data::Spoke(s)) => {
                s.set_read_timeout(Some(timeout)).ok();
                rendezvous::read_frame(s).map_err(|e| {
                    Error::msg(format!(
                        "rank {}: no NCCL ids from rank 0: {e}",
                        self.rank()
                    ))
                })
            }
            None => Err(Error::msg("the job's data streams are already in use")),
        }
    }

    /// This rank's mesh with TCP communicators (CPU backend). Takes the data streams: call
    /// once.
    pub fn tcp_mesh(&self, shape: MeshShape, timeout: Duration) -> Result<RankMesh> {
        let data = self
            .data
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| Error::msg("the job's data streams are already in use"))?;
        match data {
            Data::Hub(streams) => super::tcp::hub_mesh(shape, streams, timeout),
            Data::Spoke(s) => Ok(super::tcp::spoke_mesh(shape, self.rank(), s, timeout)),
        }
    }

    /// Reports this rank's error to the job and ends the process (status 1) with one line
    /// naming the failing rank, as every other process of the job does.
    pub fn fail(&self, msg: &str) -> ! {
        self.watchdog.fail(msg)
    }

    /// Ends this rank's part of the job: ranks > 0 report success; rank 0 waits until every
    /// rank has (so it writes outputs only when the whole job succeeded).
    pub fn finish(&self, timeout: Duration) {
        self.watchdog.finish(timeout)
    }
}

fn encode_welcome(shape: MeshShape, backend: Backend) -> Vec<u8> {
    let mut w = Vec::with_capacity(13);
    for n in [shape.cfg, shape.sp, shape.tp] {
        w.extend_from_slice(&(n as u32).to_le_bytes());
    }
    w.push(backend.code());
    w
}

fn decode_welcome(w: &[u8]) -> Result<(MeshShape, u8)> {
    if w.len() != 13 {
        return Err(Error::msg("rendezvous: rank 0's welcome is malformed"));
    }
    let n = |i: usize| u32::from_le_bytes(w[4 * i..4 * i + 4].try_into().unwrap()) as usize;
    Ok((MeshShape::new(n(0), n(1), n(2)), w[12]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_world_must_match_the_mesh() {
        let env = LaunchEnv {
            rank: 0,
            world_size: 2,
            local_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: 1,
        };
        let e = check_world(&env, MeshShape::new(1, 1, 4))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("WORLD_SIZE") && e.contains("--tp 4"), "{e}");
        check_world(&env, MeshShape::new(2, 1, 1)).unwrap();
    }

    #[test]
    fn welcome_round_trips() {
        let w = encode_welcome(MeshShape::new(2, 1, 4), Backend::Nccl);
        let (s, b) = decode_welcome(&w).unwrap();
        assert_eq!((s, b), (MeshShape::new(2, 1, 4), 1));
    }
}
