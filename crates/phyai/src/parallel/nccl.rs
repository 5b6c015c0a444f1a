//! NCCL communicator for CUDA builds. Collectives run on the tensor's device stream through
//! candle custom ops, so no host synchronisation is added; inputs are made contiguous first.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDType, CudaStorage};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use cudarc::nccl::safe::{Comm, Id, ReduceOp};
use half::{bf16, f16};

use super::comm::{all_to_all_by_blocks, Communicator, SingleRank};
use super::mesh::{Axis, MeshShape, RankMesh};
use crate::{Error, Result};

/// A cudarc communicator that may move between threads.
struct SharedComm(Comm);

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it are not
// concurrent; the engine issues one rank's collectives from that rank's thread only.
unsafe impl Send for SharedComm {}
unsafe impl Sync for SharedComm {}

impl std::ops::Deref for SharedComm {
    type Target = Comm;
    fn deref(&self) -> &Comm {
        &self.0
    }
}

/// One rank's NCCL communicator over a group.
pub struct NcclComm {
    comm: Arc<SharedComm>,
    device: candle_core::Device,
}

/// The 128-byte NCCL unique id, exchanged by the rendezvous.
pub fn new_unique_id() -> Result<[u8; 128]> {
    let id = Id::new().map_err(|e| Error::msg(format!("nccl: creating unique id: {e:?}")))?;
    Ok(id.internal().map(|c| c as u8))
}

impl NcclComm {
    /// Joins the group identified by `id` as `rank` of `size`, on `device`'s stream.
    pub fn new(
        device: &candle_core::Device,
        rank: usize,
        size: usize,
        id: [u8; 128],
    ) -> Result<Self> {
        let dev = match device {
            candle_core::Device::Cuda(d) => d,
            _ => return Err(Error::msg("nccl communicator needs a CUDA device")),
        };
        let id = Id::uninit(id.map(|b| b as core::ffi::c_char));
        let comm = Comm::from_rank(dev.cuda_stream(), rank, size, id).map_err(|e| {
            Error::msg(format!("nccl: rank {rank} of {size} failed to join: {e:?}"))
        })?;
        Ok(Self {
            comm: Arc::new(SharedComm(comm)),
            device: device.clone(),
        })
    }
}

#[derive(Clone, Copy)]
enum Op {
    AllReduce,
    AllGather,
    Broadcast(usize),
    /// Block `j` of the `[size, ..]` input to rank `j`, block `j` of the output from rank `j`.
    AllToAll,
}

struct Collective {
    comm: Arc<SharedComm>,
    op: Op,
}

fn nccl_err(e: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::Msg(format!("nccl: {e:?}"))
}

impl Collective {
    fn run<T: CudaDType + cudarc::nccl::NcclType + cudarc::driver::DeviceRepr>(
        &self,
        s: &CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = s.device().clone();
        let src = s.as_cuda_slice::<T>()?;
        let src = match l.contiguous_offsets() {
            Some((a, b)) => src.slice(a..b),
            None => candle_core::bail!("nccl collective needs a contiguous input"),
        };
        let n = src.len();
        let world = self.comm.world_size();
        let (out_len, shape) = match self.op {
            Op::AllGather => {
                let mut dims = l.shape().dims().to_vec();
                dims[0] *= world;
                (n * world, Shape::from(dims))
            }
            _ => (n, l.shape().clone()),
        };
        // SAFETY: every element is written by the collective before it is read.
        let mut dst = unsafe { dev.alloc::<T>(out_len)? };
        match self.op {
            Op::AllReduce => self
                .comm
                .all_reduce(&src, &mut dst, &ReduceOp::Sum)
                .map(drop)
                .map_err(nccl_err)?,
            Op::AllGather => self
                .comm
                .all_gather(&src, &mut dst)
                .map(drop)
                .map_err(nccl_err)?,
            Op::Broadcast(root) => self
                .comm
                .broadcast(Some(&src), &mut dst, root as i32)
                .map(drop)
                .map_err(nccl_err)?,
            Op::AllToAll => {
                if !n.is_multiple_of(world) {
                    candle_core::bail!("nccl all_to_all: {n} elements in {world} blocks");
                }
                let block = n / world;
                if block > 0 {
                    self.exchange_blocks(&src, &mut dst, block)?;
                }
            }
        };
        Ok((CudaStorage::wrap_cuda_slice(dst, dev), shape))
    }
}

impl Collective {
    /// One grouped send/recv pair per peer (this rank included), so NCCL runs them as one
    /// all-to-all: each rank sends and receives `1/size` of the bytes an all-gather would.
    fn exchange_blocks<T: cudarc::nccl::NcclType + cudarc::driver::DeviceRepr>(
        &self,
        src: &cudarc::driver::CudaView<'_, T>,
        dst: &mut cudarc::driver::CudaSlice<T>,
        block: usize,
    ) -> candle_core::Result<()> {
        use cudarc::nccl::result::{group_end, group_start};
        let sends: Vec<_> = src.chunks_exact(block).collect();
        let mut recvs: Vec<_> = dst.as_view_mut().chunks_exact_mut(block).collect();
        group_start().map_err(nccl_err)?;
        let mut queued = Ok(());
        for (peer, (s, r)) in sends.iter().zip(recvs.iter_mut()).enumerate() {
            queued = self
                .comm
                .send(s, peer as i32)
                .and_then(|()| self.comm.recv(r, peer as i32).map(|_| ()));
            if queued.is_err() {
                break;
            }
        }
        // The group is closed even when queueing failed, so NCCL is left usable.
        let ended = group_end();
        queued.map_err(nccl_err)?;
        ended.map_err(nccl_err)?;
        Ok(())
    }
}

impl CustomOp1 for Collective {
    fn name(&self) -> &'static str {
        "nccl-collective"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("nccl collectives need CUDA tensors")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        match s.dtype() {
            DType::BF16 => self.run::<bf16>(s, l),
            DType::F16 => self.run::<f16>(s, l),
            DType::F32 => self.run::<f32>(s, l),
            d => candle_core::bail!("nccl collective: unsupported dtype {d:?}"),
        }
    }
}

impl NcclComm {
    fn apply(&self, t: &Tensor, op: Op) -> Result<Tensor> {
        let t = t.contiguous()?;
        Ok(t.apply_op1_no_bwd(&Collective {
            comm: self.comm.clone(),
            op,
        })?)
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.comm.rank()
    }
    fn size(&self) -> usize {
        self.comm.world_size()
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        self.apply(t, Op::AllReduce)
    }
    fn all_gather(&self, t: &Tensor, dim: usize) -> Result<Tensor> {
        // NCCL gathers along the outermost axis; move `dim` there and back.
        if dim == 0 {
            return self.apply(t, Op::AllGather);
        }
        let moved = t.transpose(0, dim)?;
        let g = self.apply(&moved, Op::AllGather)?;
        Ok(g.transpose(0, dim)?.contiguous()?)
    }
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        self.apply(t, Op::Broadcast(root))
    }
    fn all_to_all(&self, t: &Tensor, split_dim: usize, concat_dim: usize) -> Result<Tensor> {
        all_to_all_by_blocks(t, split_dim, concat_dim, self.size(), |packed| {
            self.apply(packed, Op::AllToAll)
        })
    }
    fn barrier(&self) -> Result<()> {
        let one = Tensor::ones(1, DType::F32, &self.device)?;
        self.all_reduce_sum(&one)?.to_vec1::<f32>()?;
        Ok(())
    }
}

/// The NCCL unique ids of every group of a mesh, made once by the launching process (or by
/// rank 0 of a multi-process job, which sends them to the others: [`Self::to_bytes`]); each
/// rank then joins its world, cfg, sp and tp groups in that order (the same order on every
/// rank, so the blocking joins cannot deadlock).
pub struct NcclMeshPlan {
    shape: MeshShape,
    world_id: [u8; 128],
    /// (axis, first rank of the group) → id.
    group_ids: Vec<(Axis, usize, [u8; 128])>,
}

impl NcclMeshPlan {
    pub fn new(shape: MeshShape) -> Result<Self> {
        let mut group_ids = Vec::new();
        for axis in [Axis::Cfg, Axis::Sp, Axis::Tp] {
            for g in shape.groups(axis) {
                if g.len() > 1 {
                    group_ids.push((axis, g[0], new_unique_id()?));
                }
            }
        }
        Ok(Self {
            shape,
            world_id: new_unique_id()?,
            group_ids,
        })
    }

    /// The ids as bytes, for rank 0 to send to the other processes of a job.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = self.world_id.to_vec();
        for (axis, first, id) in &self.group_ids {
            b.push(axis_code(*axis));
            b.extend_from_slice(&(*first as u32).to_le_bytes());
            b.extend_from_slice(id);
        }
        b
    }

    /// The plan rank 0 made (see [`Self::to_bytes`]), for a process holding one rank of
    /// `shape`; checks that its groups are those of `shape`.
    pub fn from_bytes(shape: MeshShape, bytes: &[u8]) -> Result<Self> {
        let bad = || Error::msg("nccl: rank 0's unique ids do not match this mesh");
        let id = |b: &[u8]| -> [u8; 128] { b.try_into().expect("128 bytes") };
        if bytes.len() < 128 || !(bytes.len() - 128).is_multiple_of(133) {
            return Err(bad());
        }
        let world_id = id(&bytes[..128]);
        let mut group_ids = Vec::new();
        for rec in bytes[128..].chunks_exact(133) {
            let axis = match rec[0] {
                0 => Axis::Cfg,
                1 => Axis::Sp,
                2 => Axis::Tp,
                _ => return Err(bad()),
            };
            let first = u32::from_le_bytes(rec[1..5].try_into().unwrap()) as usize;
            group_ids.push((axis, first, id(&rec[5..])));
        }
        let expected: Vec<(Axis, usize)> = [Axis::Cfg, Axis::Sp, Axis::Tp]
            .into_iter()
            .flat_map(|a| {
                shape
                    .groups(a)
                    .into_iter()
                    .filter(|g| g.len() > 1)
                    .map(move |g| (a, g[0]))
            })
            .collect();
        let got: Vec<(Axis, usize)> = group_ids.iter().map(|(a, f, _)| (*a, *f)).collect();
        if got != expected {
            return Err(bad());
        }
        Ok(Self {
            shape,
            world_id,
            group_ids,
        })
    }

    /// Joins rank `rank`'s groups on GPU `ordinal`. Call on that rank's own thread, with
    /// every other rank doing the same concurrently.
    pub fn build(&self, rank: usize, ordinal: usize) -> Result<RankMesh> {
        crate::layers::cuda::kernel_images::ensure_linked();
        let device = candle_core::Device::new_cuda(ordinal)?;
        let world = self.shape.world();
        let world_comm: Arc<dyn Communicator> =
            Arc::new(NcclComm::new(&device, rank, world, self.world_id)?);
        let group = |axis: Axis| -> Result<Arc<dyn Communicator>> {
            let g = self.shape.group(rank, axis);
            if g.len() == 1 {
                return Ok(Arc::new(SingleRank));
            }
            let id = self
                .group_ids
                .iter()
                .find(|(a, first, _)| *a == axis && *first == g[0])
                .map(|(_, _, id)| *id)
                .ok_or_else(|| Error::msg("nccl: no id for a mesh group"))?;
            let idx = g.iter().position(|&r| r == rank).unwrap_or(0);
            Ok(Arc::new(NcclComm::new(&device, idx, g.len(), id)?))
        };
        Ok(RankMesh {
            shape: self.shape,
            rank,
            world: world_comm,
            cfg: group(Axis::Cfg)?,
            sp: group(Axis::Sp)?,
            tp: group(Axis::Tp)?,
        })
    }
}

fn axis_code(a: Axis) -> u8 {
    match a {
        Axis::Cfg => 0,
        Axis::Sp => 1,
        Axis::Tp => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The ids survive the trip to another process, and a plan for another mesh is refused.
    #[test]
    fn plan_round_trips_through_bytes() {
        let shape = MeshShape::new(2, 1, 2);
        let mut n = 0u8;
        let mut id = || {
            n += 1;
            [n; 128]
        };
        let mut group_ids = Vec::new();
        for axis in [Axis::Cfg, Axis::Sp, Axis::Tp] {
            for g in shape.groups(axis) {
                if g.len() > 1 {
                    group_ids.push((axis, g[0], id()));
                }
            }
        }
        let plan = NcclMeshPlan {
            shape,
            world_id: id(),
            group_ids,
        };
        let back = NcclMeshPlan::from_bytes(shape, &plan.to_bytes()).unwrap();
        assert_eq!(back.world_id, plan.world_id);
        assert_eq!(back.group_ids, plan.group_ids);
        assert!(NcclMeshPlan::from_bytes(MeshShape::new(1, 1, 4), &plan.to_bytes()).is_err());
    }

    /// One-rank NCCL groups on GPU 0: every collective must give back its input, through
    /// the real NCCL calls and custom ops. Needs a GPU: PHYAI_GPU_TESTS=1, `--ignored`.
    #[test]
    #[ignore = "needs a CUDA device: PHYAI_GPU_TESTS=1, --ignored"]
    fn one_rank_collectives_on_the_gpu() {
        assert!(
            std::env::var_os("PHYAI_GPU_TESTS").is_some(),
            "set PHYAI_GPU_TESTS=1 on a machine with a GPU"
        );
        let dev = Device::new_cuda(0).unwrap();
        let comm = NcclComm::new(&dev, 0, 1, new_unique_id().unwrap()).unwrap();
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let x = Tensor::arange(0f32, 24.0, &dev)
                .unwrap()
                .reshape((2, 3, 4))
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let same = |y: Tensor| {
                assert_eq!(y.dims(), x.dims());
                let d = (y.to_dtype(DType::F32).unwrap() - x.to_dtype(DType::F32).unwrap())
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert_eq!(d, 0.0, "{dtype:?}");
            };
            same(comm.all_reduce_sum(&x).unwrap());
            same(comm.all_gather(&x, 0).unwrap());
            same(comm.all_gather(&x, 2).unwrap());
            same(comm.broadcast(&x, 0).unwrap());
            same(comm.all_to_all(&x, 1, 0).unwrap());
            // A strided view is made contiguous first.
            let t = x.transpose(1, 2).unwrap();
            let y = comm.all_reduce_sum(&t).unwrap();
            assert_eq!(y.dims(), t.dims());
        }
        comm.barrier().unwrap();
    }
}
