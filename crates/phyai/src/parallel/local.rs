//! In-process communicator: ranks are threads sharing a hub of tensor slots. Used for CPU
//! multi-rank runs and for testing every parallel layer without GPUs.
//!
//! Faults: when a rank fails, [`run_ranks`] aborts every hub, so ranks blocked in a
//! collective return an error naming the failing rank instead of waiting forever; a
//! collective that waits longer than the hub's timeout fails the same way.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use candle_core::Tensor;

use super::comm::{all_to_all_by_blocks, Communicator};
use super::mesh::{Axis, MeshShape, RankMesh};
use crate::{Error, Result};

struct HubState {
    slots: Vec<Option<Tensor>>,
    arrived: usize,
    generation: u64,
    /// The rank whose failure aborted the group, and its error.
    aborted: Option<(usize, String)>,
}

/// Shared rendezvous of one group.
pub struct LocalHub {
    size: usize,
    state: Mutex<HubState>,
    cv: Condvar,
    timeout: Duration,
}

impl LocalHub {
    pub fn new(size: usize, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            size,
            state: Mutex::new(HubState {
                slots: vec![None; size],
                arrived: 0,
                generation: 0,
                aborted: None,
            }),
            cv: Condvar::new(),
            timeout,
        })
    }

    /// Wakes every waiter: `rank` failed with `why`, and all later collectives fail with
    /// that rank's error.
    pub fn abort(&self, rank: usize, why: &str) {
        let mut s = self.state.lock().unwrap();
        if s.aborted.is_none() {
            s.aborted = Some((rank, why.to_string()));
        }
        self.cv.notify_all();
    }

    /// Barrier that also runs `leader` once, under the lock, when the last rank arrives.
    fn sync(&self, rank: usize, deposit: Option<Tensor>) -> Result<Vec<Option<Tensor>>> {
        let mut s = self.state.lock().unwrap();
        if let Some(a) = &s.aborted {
            return Err(aborted(a));
        }
        if let Some(t) = deposit {
            s.slots[rank] = Some(t);
        }
        let gen = s.generation;
        s.arrived += 1;
        if s.arrived == self.size {
            s.arrived = 0;
            s.generation += 1;
            self.cv.notify_all();
        } else {
            let deadline = Instant::now() + self.timeout;
            while s.generation == gen {
                if let Some(a) = &s.aborted {
                    return Err(aborted(a));
                }
                let now = Instant::now();
                if now >= deadline {
                    let why = format!(
                        "collective timed out after {:?} waiting for other ranks",
                        self.timeout
                    );
                    s.aborted = Some((rank, why.clone()));
                    self.cv.notify_all();
                    return Err(Error::msg(why));
                }
                s = self.cv.wait_timeout(s, deadline - now).unwrap().0;
            }
        }
        Ok(s.slots.clone())
    }

    /// Second barrier so slots are not overwritten before every rank has read them.
    fn release(&self, rank: usize) -> Result<()> {
        self.sync(rank, None).map(|_| ())
    }
}

/// The error a collective returns after `rank` aborted the group: attributed to that rank.
fn aborted((rank, why): &(usize, String)) -> Error {
    Error::msg(why.clone()).on_rank(*rank)
}

/// One rank's handle on a [`LocalHub`].
pub struct LocalComm {
    hub: Arc<LocalHub>,
    rank: usize,
}

impl LocalComm {
    pub fn new(hub: Arc<LocalHub>, rank: usize) -> Self {
        Self { hub, rank }
    }

    fn exchange(&self, t: &Tensor) -> Result<Vec<Tensor>> {
        let slots = self.hub.sync(self.rank, Some(t.clone()))?;
        let all = slots
            .into_iter()
            .enumerate()
            .map(|(r, s)| s.ok_or_else(|| Error::msg(format!("rank {r} deposited nothing"))))
            .collect::<Result<Vec<_>>>()?;
        self.hub.release(self.rank)?;
        Ok(all)
    }
}

impl Communicator for LocalComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.hub.size
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let all = self.exchange(t)?;
        let mut acc = all[0].clone();
        for x in &all[1..] {
            acc = (acc + x)?;
        }
        Ok(acc)
    }
    fn all_gather(&self, t: &Tensor, dim: usize) -> Result<Tensor> {
        let all = self.exchange(t)?;
        Ok(Tensor::cat(&all, dim)?)
    }
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        let all = self.exchange(t)?;
        all.into_iter()
            .nth(root)
            .ok_or_else(|| Error::msg(format!("broadcast root {root} out of range")))
    }
    fn all_to_all(&self, t: &Tensor, split_dim: usize, concat_dim: usize) -> Result<Tensor> {
        // The same packing as the byte-moving backends, so CPU runs test it.
        all_to_all_by_blocks(t, split_dim, concat_dim, self.hub.size, |packed| {
            let all = self.exchange(packed)?;
            let mine = all
                .iter()
                .map(|x| x.get(self.rank))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Ok(Tensor::stack(&mine, 0)?)
        })
    }
    fn barrier(&self) -> Result<()> {
        self.hub.sync(self.rank, None).map(|_| ())
    }
}

/// The local communicators of every rank of a mesh, plus the hubs behind them so a
/// failing rank can release the others ([`LocalMeshes::abort`]).
pub struct LocalMeshes {
    pub meshes: Vec<RankMesh>,
    hubs: Vec<Arc<LocalHub>>,
}

impl LocalMeshes {
    pub fn new(shape: MeshShape, timeout: Duration) -> Self {
        let world = shape.world();
        let world_hub = LocalHub::new(world, timeout);
        let mut hubs: Vec<Arc<LocalHub>> = vec![world_hub.clone()];
        let mut axis_hubs: Vec<(Axis, Vec<usize>, Arc<LocalHub>)> = Vec::new();
        for axis in [Axis::Cfg, Axis::Sp, Axis::Tp] {
            for g in shape.groups(axis) {
                let hub = LocalHub::new(g.len(), timeout);
                hubs.push(hub.clone());
                axis_hubs.push((axis, g, hub));
            }
        }
        let comm_for = |rank: usize, axis: Axis| -> Arc<dyn Communicator> {
            let (_, g, hub) = axis_hubs
                .iter()
                .find(|(a, g, _)| *a == axis && g.contains(&rank))
                .expect("every rank belongs to one group per axis");
            let idx = g.iter().position(|&r| r == rank).unwrap();
            Arc::new(LocalComm::new(hub.clone(), idx))
        };
        let meshes = (0..world)
            .map(|rank| RankMesh {
                shape,
                rank,
                world: Arc::new(LocalComm::new(world_hub.clone(), rank)),
                cfg: comm_for(rank, Axis::Cfg),
                sp: comm_for(rank, Axis::Sp),
                tp: comm_for(rank, Axis::Tp),
            })
            .collect();
        Self { meshes, hubs }
    }

    /// A handle that releases every rank blocked in a collective of these meshes.
    pub fn aborter(&self) -> Aborter {
        Aborter {
            hubs: self.hubs.clone(),
        }
    }
}

/// Fails every pending and later collective of a set of local meshes with `why`.
#[derive(Clone)]
pub struct Aborter {
    hubs: Vec<Arc<LocalHub>>,
}

impl Aborter {
    /// `rank` failed with `why`: every collective of every group fails with its error.
    pub fn abort(&self, rank: usize, why: &str) {
        for h in &self.hubs {
            h.abort(rank, why);
        }
    }
}

/// Runs `f` on `shape.world()` ranks as threads, each with its [`RankMesh`] of local
/// communicators. If any rank fails, the others are released from their collectives and
/// the first failure (naming its rank) is returned.
pub fn run_ranks<T, F>(shape: MeshShape, timeout: Duration, f: F) -> Result<Vec<T>>
where
    T: Send,
    F: Fn(RankMesh) -> Result<T> + Sync,
{
    let world = shape.world();
    let local = LocalMeshes::new(shape, timeout);
    let aborter = local.aborter();
    let meshes = local.meshes;

    let results: Vec<Result<T>> = std::thread::scope(|scope| {
        let handles: Vec<_> = meshes
            .into_iter()
            .map(|mesh| {
                let aborter = &aborter;
                let f = &f;
                scope.spawn(move || {
                    let rank = mesh.rank;
                    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(mesh)))
                        .unwrap_or_else(|_| Err(Error::msg("panicked")));
                    if let Err(e) = &out {
                        aborter.abort(rank, &e.to_string());
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::msg("rank thread died")))
            })
            .collect()
    });

    // Prefer the root cause (a rank's own error) over the "rank r failed" echoes.
    let mut first_err: Option<Error> = None;
    let mut outs = Vec::with_capacity(world);
    for (rank, r) in results.into_iter().enumerate() {
        match r {
            Ok(v) => outs.push(v),
            Err(e) => {
                let own = !matches!(e, Error::Rank { .. });
                if first_err.is_none() || own {
                    first_err = Some(e.on_rank(rank));
                    if own {
                        break;
                    }
                }
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(outs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn shape(cfg: usize, sp: usize, tp: usize) -> MeshShape {
        MeshShape { cfg, sp, tp }
    }

    #[test]
    fn collectives_agree_on_every_rank() {
        let outs = run_ranks(shape(2, 1, 2), Duration::from_secs(10), |m| {
            let x = Tensor::new(&[m.rank as f32, 1.0], &Device::Cpu)?;
            let sum = m.world.all_reduce_sum(&x)?.to_vec1::<f32>()?;
            let tp_sum = m.tp.all_reduce_sum(&x)?.to_vec1::<f32>()?;
            let g = m.cfg.all_gather(&x.unsqueeze(0)?, 0)?.to_vec2::<f32>()?;
            let b = m.world.broadcast(&x, 3)?.to_vec1::<f32>()?;
            m.world.barrier()?;
            Ok((m.rank, sum, tp_sum, g, b))
        })
        .unwrap();
        for (rank, sum, tp_sum, g, b) in outs {
            assert_eq!(sum, vec![6.0, 4.0]);
            let base = (rank / 2) * 2;
            assert_eq!(tp_sum, vec![(base + base + 1) as f32, 2.0]);
            assert_eq!(
                g,
                vec![
                    vec![(rank % 2) as f32, 1.0],
                    vec![(rank % 2 + 2) as f32, 1.0]
                ]
            );
            assert_eq!(b, vec![3.0, 1.0]);
        }
    }

    #[test]
    fn all_to_all_swaps_sequence_and_head_shards() {
        // Each of 2 ranks holds 2 tokens × 4 heads; after all_to_all over heads→tokens,
        // each holds 4 tokens × 2 heads.
        let outs = run_ranks(shape(1, 2, 1), Duration::from_secs(10), |m| {
            let r = m.rank as f32;
            let x = Tensor::from_vec(
                (0..8).map(|i| r * 100.0 + i as f32).collect::<Vec<_>>(),
                (2, 4),
                &Device::Cpu,
            )?;
            Ok(m.sp.all_to_all(&x, 1, 0)?.to_vec2::<f32>()?)
        })
        .unwrap();
        assert_eq!(
            outs[0],
            vec![
                vec![0., 1.],
                vec![4., 5.],
                vec![100., 101.],
                vec![104., 105.]
            ]
        );
        assert_eq!(
            outs[1],
            vec![
                vec![2., 3.],
                vec![6., 7.],
                vec![102., 103.],
                vec![106., 107.]
            ]
        );
    }

    /// Every split/concat pair of a 4-D tensor over 3 ranks equals slicing every rank's
    /// input and concatenating (what all_to_all means), so the block packing is right
    /// wherever the axes sit.
    #[test]
    fn all_to_all_packing_matches_slicing_for_every_axis_pair() {
        let dims = [3usize, 6, 3, 9];
        let input = |r: usize| {
            let n: usize = dims.iter().product();
            Tensor::from_vec(
                (0..n).map(|i| (r * 1000 + i) as f32).collect::<Vec<_>>(),
                &dims[..],
                &Device::Cpu,
            )
        };
        for (split, &len) in dims.iter().enumerate() {
            for concat in 0..4 {
                let outs = run_ranks(shape(1, 3, 1), Duration::from_secs(10), |m| {
                    let x = input(m.rank)?;
                    m.sp.all_to_all(&x, split, concat)
                })
                .unwrap();
                for (rank, got) in outs.iter().enumerate() {
                    let c = len / 3;
                    let parts = (0..3)
                        .map(|r| input(r)?.narrow(split, rank * c, c))
                        .collect::<candle_core::Result<Vec<_>>>()
                        .unwrap();
                    let want = Tensor::cat(&parts, concat).unwrap();
                    assert_eq!(got.dims(), want.dims(), "split {split} concat {concat}");
                    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    assert_eq!(flat(got), flat(&want), "split {split} concat {concat}");
                }
            }
        }
    }

    #[test]
    fn a_failing_rank_releases_the_others_promptly() {
        let start = Instant::now();
        let err = run_ranks(shape(1, 1, 4), Duration::from_secs(60), |m| {
            if m.rank == 2 {
                return Err(Error::msg("injected fault"));
            }
            let x = Tensor::new(&[1f32], &Device::Cpu)?;
            m.world.all_reduce_sum(&x)?;
            Ok(())
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("rank 2") && err.contains("injected fault"),
            "{err}"
        );
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_missing_rank_times_out_instead_of_hanging() {
        let err = run_ranks(shape(1, 1, 2), Duration::from_millis(200), |m| {
            if m.rank == 0 {
                let x = Tensor::new(&[1f32], &Device::Cpu)?;
                m.world.all_reduce_sum(&x)?;
            }
            Ok(())
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("timed out"), "{err}");
    }
}
