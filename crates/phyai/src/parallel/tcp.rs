//! TCP communicator for CPU ranks in separate processes: a star through rank 0.
//!
//! Rank 0's process holds the in-process hubs of [`super::local`] for the whole mesh and
//! runs one proxy thread per other rank; a rank > 0 sends each collective (which axis,
//! which operation, its tensor) over its one stream, its proxy performs that collective on
//! the rank's behalf through the local hubs, and sends back the result. Sums therefore add
//! in rank order exactly as the threaded backend does: the results are bit-identical.
//!
//! Tensors travel as raw little-endian bytes after a dtype/shape header. A rank waits for
//! a collective's result at most the collective timeout; a proxy waits for the next request
//! without limit, since its rank may be loading weights or idle between requests (a rank
//! that dies closes its stream, and the job's watchdog reports it).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};

use super::comm::{Communicator, SingleRank};
use super::mesh::{Axis, MeshShape, RankMesh};
use crate::{Error, Result};

/// Which communicator of the mesh a request is for.
#[derive(Clone, Copy, Debug)]
enum Group {
    World,
    Axis(Axis),
}

impl Group {
    fn code(self) -> u8 {
        match self {
            Group::World => 0,
            Group::Axis(Axis::Cfg) => 1,
            Group::Axis(Axis::Sp) => 2,
            Group::Axis(Axis::Tp) => 3,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            0 => Group::World,
            1 => Group::Axis(Axis::Cfg),
            2 => Group::Axis(Axis::Sp),
            3 => Group::Axis(Axis::Tp),
            _ => return None,
        })
    }
    fn of(self, mesh: &RankMesh) -> &Arc<dyn Communicator> {
        match self {
            Group::World => &mesh.world,
            Group::Axis(Axis::Cfg) => &mesh.cfg,
            Group::Axis(Axis::Sp) => &mesh.sp,
            Group::Axis(Axis::Tp) => &mesh.tp,
        }
    }
}

/// A collective and its arguments.
#[derive(Clone, Copy, Debug)]
enum Op {
    AllReduceSum,
    AllGather { dim: u32 },
    Broadcast { root: u32 },
    AllToAll { split: u32, concat: u32 },
    Barrier,
}

impl Op {
    fn encode(self) -> [u8; 9] {
        let (code, a, b) = match self {
            Op::AllReduceSum => (0u8, 0u32, 0u32),
            Op::AllGather { dim } => (1, dim, 0),
            Op::Broadcast { root } => (2, root, 0),
            Op::AllToAll { split, concat } => (3, split, concat),
            Op::Barrier => (4, 0, 0),
        };
        let mut out = [0u8; 9];
        out[0] = code;
        out[1..5].copy_from_slice(&a.to_le_bytes());
        out[5..].copy_from_slice(&b.to_le_bytes());
        out
    }
    fn decode(b: &[u8; 9]) -> Option<Self> {
        let a = u32::from_le_bytes(b[1..5].try_into().unwrap());
        let c = u32::from_le_bytes(b[5..].try_into().unwrap());
        Some(match b[0] {
            0 => Op::AllReduceSum,
            1 => Op::AllGather { dim: a },
            2 => Op::Broadcast { root: a },
            3 => Op::AllToAll {
                split: a,
                concat: c,
            },
            4 => Op::Barrier,
            _ => return None,
        })
    }
    fn run(self, comm: &dyn Communicator, t: &Tensor) -> Result<Tensor> {
        match self {
            Op::AllReduceSum => comm.all_reduce_sum(t),
            Op::AllGather { dim } => comm.all_gather(t, dim as usize),
            Op::Broadcast { root } => comm.broadcast(t, root as usize),
            Op::AllToAll { split, concat } => comm.all_to_all(t, split as usize, concat as usize),
            Op::Barrier => comm.barrier().map(|()| t.clone()),
        }
    }
}

/// Largest tensor accepted off the wire (a corrupt header must not allocate the machine).
const MAX_TENSOR_BYTES: usize = 1 << 36;

fn dtype_code(d: DType) -> Result<u8> {
    Ok(match d {
        DType::U8 => 0,
        DType::U32 => 1,
        DType::I64 => 2,
        DType::BF16 => 3,
        DType::F16 => 4,
        DType::F32 => 5,
        DType::F64 => 6,
        d => {
            return Err(Error::msg(format!(
                "tcp communicator: unsupported dtype {d:?}"
            )))
        }
    })
}

fn dtype_of(code: u8) -> Option<DType> {
    Some(match code {
        0 => DType::U8,
        1 => DType::U32,
        2 => DType::I64,
        3 => DType::BF16,
        4 => DType::F16,
        5 => DType::F32,
        6 => DType::F64,
        _ => return None,
    })
}

/// Little-endian bytes of every element of `t`, in row-major order.
fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let flat = t.flatten_all()?;
    fn le<T, const N: usize>(v: Vec<T>, f: impl Fn(&T) -> [u8; N]) -> Vec<u8> {
        v.iter().flat_map(f).collect()
    }
    Ok(match t.dtype() {
        DType::U8 => flat.to_vec1::<u8>()?,
        DType::U32 => le(flat.to_vec1::<u32>()?, |x| x.to_le_bytes()),
        DType::I64 => le(flat.to_vec1::<i64>()?, |x| x.to_le_bytes()),
        DType::BF16 => le(flat.to_vec1::<bf16>()?, |x| x.to_le_bytes()),
        DType::F16 => le(flat.to_vec1::<f16>()?, |x| x.to_le_bytes()),
        DType::F32 => le(flat.to_vec1::<f32>()?, |x| x.to_le_bytes()),
        DType::F64 => le(flat.to_vec1::<f64>()?, |x| x.to_le_bytes()),
        d => {
            return Err(Error::msg(format!(
                "tcp communicator: unsupported dtype {d:?}"
            )))
        }
    })
}

/// Header (dtype, rank, dims) then the raw little-endian elements.
fn write_tensor(w: &mut impl Write, t: &Tensor) -> Result<()> {
    let dims = t.dims();
    let mut head = vec![dtype_code(t.dtype())?, dims.len() as u8];
    for d in dims {
        head.extend_from_slice(&(*d as u64).to_le_bytes());
    }
    let body = tensor_bytes(t)?;
    w.write_all(&head)
        .and_then(|_| w.write_all(&body))
        .map_err(|e| Error::msg(format!("sending a tensor: {e}")))
}

fn read_tensor(r: &mut impl Read, device: &Device) -> std::io::Result<Tensor> {
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let mut head = [0u8; 2];
    r.read_exact(&mut head)?;
    let dtype = dtype_of(head[0]).ok_or_else(|| bad(format!("unknown dtype code {}", head[0])))?;
    let mut dims = Vec::with_capacity(head[1] as usize);
    for _ in 0..head[1] {
        let mut d = [0u8; 8];
        r.read_exact(&mut d)?;
        dims.push(u64::from_le_bytes(d) as usize);
    }
    let bytes = dims
        .iter()
        .try_fold(dtype.size_in_bytes(), |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_TENSOR_BYTES)
        .ok_or_else(|| bad(format!("implausible tensor shape {dims:?}")))?;
    let mut body = vec![0u8; bytes];
    r.read_exact(&mut body)?;
    fn from<T, const N: usize>(b: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
        b.chunks_exact(N)
            .map(|c| f(c.try_into().expect("chunk of N bytes")))
            .collect()
    }
    let t = match dtype {
        DType::U8 => Tensor::from_vec(body, dims, device),
        DType::U32 => Tensor::from_vec(from(&body, u32::from_le_bytes), dims, device),
        DType::I64 => Tensor::from_vec(from(&body, i64::from_le_bytes), dims, device),
        DType::BF16 => Tensor::from_vec(from(&body, bf16::from_le_bytes), dims, device),
        DType::F16 => Tensor::from_vec(from(&body, f16::from_le_bytes), dims, device),
        DType::F32 => Tensor::from_vec(from(&body, f32::from_le_bytes), dims, device),
        DType::F64 => Tensor::from_vec(from(&body, f64::from_le_bytes), dims, device),
        _ => unreachable!("dtype_of only yields the dtypes above"),
    };
    t.map_err(|e| bad(e.to_string()))
}

/// The stream of a rank > 0 to its proxy, shared by its world/cfg/sp/tp communicators
/// (a rank issues one collective at a time, so requests never interleave).
struct Link {
    stream: Mutex<TcpStream>,
    /// This rank's world rank, for error messages.
    rank: usize,
    timeout: Duration,
}

impl Link {
    fn call(&self, group: Group, op: Op, t: &Tensor) -> Result<Tensor> {
        let lost = |e: &dyn std::fmt::Display| {
            Error::msg(format!(
                "rank {}: lost the link to rank 0 during {op:?} on {group:?}: {e}",
                self.rank
            ))
        };
        let mut s = self
            .stream
            .lock()
            .map_err(|_| Error::msg("tcp communicator: link poisoned"))?;
        let mut head = vec![group.code()];
        head.extend_from_slice(&op.encode());
        s.write_all(&head).map_err(|e| lost(&e))?;
        write_tensor(&mut *s, t).map_err(|e| lost(&e))?;
        s.set_read_timeout(Some(self.timeout)).ok();
        let mut status = [0u8; 1];
        s.read_exact(&mut status).map_err(|e| {
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                Error::msg(format!(
                    "rank {}: collective timed out after {:?} waiting for other ranks",
                    self.rank, self.timeout
                ))
            } else {
                lost(&e)
            }
        })?;
        if status[0] == 0 {
            read_tensor(&mut *s, t.device()).map_err(|e| lost(&e))
        } else {
            let msg = super::rendezvous::read_frame(&mut *s).map_err(|e| lost(&e))?;
            Err(Error::msg(String::from_utf8_lossy(&msg).into_owned()))
        }
    }
}

/// One communicator of a rank > 0: a group of the mesh reached through rank 0.
struct TcpComm {
    link: Arc<Link>,
    group: Group,
    rank: usize,
    size: usize,
}

impl Communicator for TcpComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        self.link.call(self.group, Op::AllReduceSum, t)
    }
    fn all_gather(&self, t: &Tensor, dim: usize) -> Result<Tensor> {
        self.link
            .call(self.group, Op::AllGather { dim: dim as u32 }, t)
    }
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        self.link
            .call(self.group, Op::Broadcast { root: root as u32 }, t)
    }
    fn all_to_all(&self, t: &Tensor, split_dim: usize, concat_dim: usize) -> Result<Tensor> {
        let op = Op::AllToAll {
            split: split_dim as u32,
            concat: concat_dim as u32,
        };
        self.link.call(self.group, op, t)
    }
    fn barrier(&self) -> Result<()> {
        let empty = Tensor::zeros(0, DType::F32, &Device::Cpu)?;
        self.link.call(self.group, Op::Barrier, &empty).map(|_| ())
    }
}

/// The mesh of rank `rank` > 0, whose collectives go through `stream` to rank 0.
pub fn spoke_mesh(shape: MeshShape, rank: usize, stream: TcpStream, timeout: Duration) -> RankMesh {
    // Collectives are small request/response exchanges: never wait to coalesce packets.
    stream.set_nodelay(true).ok();
    let link = Arc::new(Link {
        stream: Mutex::new(stream),
        rank,
        timeout,
    });
    let comm = |group: Group| -> Arc<dyn Communicator> {
        let members = match group {
            Group::World => (0..shape.world()).collect(),
            Group::Axis(a) => shape.group(rank, a),
        };
        if members.len() == 1 {
            return Arc::new(SingleRank);
        }
        Arc::new(TcpComm {
            link: link.clone(),
            group,
            rank: members.iter().position(|&r| r == rank).unwrap_or(0),
            size: members.len(),
        })
    };
    RankMesh {
        shape,
        rank,
        world: comm(Group::World),
        cfg: comm(Group::Axis(Axis::Cfg)),
        sp: comm(Group::Axis(Axis::Sp)),
        tp: comm(Group::Axis(Axis::Tp)),
    }
}

/// Rank 0's side: builds the local hubs of the whole mesh, starts a proxy thread for each
/// rank `r` > 0 on `streams[r − 1]`, and returns rank 0's own mesh.
pub fn hub_mesh(shape: MeshShape, streams: Vec<TcpStream>, timeout: Duration) -> Result<RankMesh> {
    if streams.len() + 1 != shape.world() {
        return Err(Error::msg(format!(
            "tcp communicator: {} peer streams for a world of {}",
            streams.len(),
            shape.world()
        )));
    }
    let local = super::local::LocalMeshes::new(shape, timeout);
    let mut meshes = local.meshes.into_iter();
    let own = meshes.next().expect("a mesh has rank 0");
    for (mesh, stream) in meshes.zip(streams) {
        let rank = mesh.rank;
        std::thread::Builder::new()
            .name(format!("phyai-proxy-{rank}"))
            .spawn(move || proxy(stream, mesh, timeout))
            .map_err(|e| Error::msg(format!("cannot start the proxy of rank {rank}: {e}")))?;
    }
    Ok(own)
}

/// Serves one remote rank's collectives until its stream closes.
fn proxy(mut s: TcpStream, mesh: RankMesh, timeout: Duration) {
    s.set_nodelay(true).ok();
    loop {
        // Idle: no limit (see the module comment). Within a request: the timeout.
        s.set_read_timeout(None).ok();
        let mut head = [0u8; 10];
        if s.read_exact(&mut head[..1]).is_err() {
            return;
        }
        s.set_read_timeout(Some(timeout)).ok();
        if s.read_exact(&mut head[1..]).is_err() {
            return;
        }
        let (Some(group), Some(op)) = (
            Group::from_code(head[0]),
            Op::decode(head[1..].try_into().unwrap()),
        ) else {
            return;
        };
        let Ok(t) = read_tensor(&mut s, &Device::Cpu) else {
            return;
        };
        let sent = match op.run(group.of(&mesh).as_ref(), &t) {
            Ok(out) => s
                .write_all(&[0])
                .map_err(|e| Error::msg(e.to_string()))
                .and_then(|_| write_tensor(&mut s, &out)),
            Err(e) => s
                .write_all(&[1])
                .and_then(|_| super::rendezvous::write_frame(&mut s, e.to_string().as_bytes()))
                .map_err(|e| Error::msg(e.to_string())),
        };
        if sent.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::local::run_ranks;
    use std::net::TcpListener;

    /// Connected stream pairs (rank 0's end, the peer's end) for ranks 1..world.
    fn pairs(n: usize) -> (Vec<TcpStream>, Vec<TcpStream>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        (0..n)
            .map(|_| {
                let c = TcpStream::connect(addr).unwrap();
                (l.accept().unwrap().0, c)
            })
            .unzip()
    }

    /// Runs `f` on every rank: rank 0 on the hub, others through TCP, each on a thread.
    fn over_tcp<T: Send>(
        shape: MeshShape,
        f: impl Fn(RankMesh) -> Result<T> + Sync,
    ) -> Vec<Result<T>> {
        let t = Duration::from_secs(10);
        let (hub_ends, peer_ends) = pairs(shape.world() - 1);
        let own = hub_mesh(shape, hub_ends, t).unwrap();
        let mut meshes = vec![own];
        for (i, s) in peer_ends.into_iter().enumerate() {
            meshes.push(spoke_mesh(shape, i + 1, s, t));
        }
        std::thread::scope(|sc| {
            let hs: Vec<_> = meshes.into_iter().map(|m| sc.spawn(|| f(m))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// Every collective on every axis, in f32 and bf16.
    fn exercise(m: RankMesh) -> Result<Vec<Vec<f32>>> {
        let r = m.rank as f32;
        let x = Tensor::from_vec(
            (0..24)
                .map(|i| r * 0.37 + i as f32 / 7.0)
                .collect::<Vec<_>>(),
            (2, 12),
            &Device::Cpu,
        )?;
        let mut out = Vec::new();
        for comm in [&m.world, &m.cfg, &m.sp, &m.tp] {
            for xt in [x.clone(), x.to_dtype(DType::BF16)?] {
                let flat = |t: Tensor| -> Result<Vec<f32>> {
                    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
                };
                out.push(flat(comm.all_reduce_sum(&xt)?)?);
                out.push(flat(comm.all_gather(&xt, 1)?)?);
                out.push(flat(comm.broadcast(&xt, comm.size() - 1)?)?);
                out.push(flat(comm.all_to_all(&xt, 1, 0)?)?);
                comm.barrier()?;
            }
        }
        Ok(out)
    }

    #[test]
    fn tcp_results_are_bit_identical_to_threads() {
        for shape in [MeshShape::new(2, 1, 2), MeshShape::new(1, 2, 1)] {
            let threads = run_ranks(shape, Duration::from_secs(10), exercise).unwrap();
            let tcp: Vec<_> = over_tcp(shape, exercise)
                .into_iter()
                .map(|r| r.unwrap())
                .collect();
            assert_eq!(threads, tcp, "{shape:?}");
        }
    }

    #[test]
    fn an_error_in_a_collective_reaches_the_remote_rank() {
        // Shapes that cannot be summed: rank 1 gets rank 0's hub error back.
        let outs = over_tcp(MeshShape::new(1, 1, 2), |m| {
            let n = 2 + m.rank;
            m.world
                .all_reduce_sum(&Tensor::zeros(n, DType::F32, &Device::Cpu)?)
        });
        let e = outs[1].as_ref().unwrap_err().to_string();
        assert!(e.contains("shape"), "{e}");
    }

    #[test]
    fn tensors_survive_the_wire_in_every_dtype() {
        let x = Tensor::arange(0f32, 24.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 4))
            .unwrap();
        for d in [
            DType::U8,
            DType::U32,
            DType::I64,
            DType::BF16,
            DType::F16,
            DType::F32,
            DType::F64,
        ] {
            let t = x.to_dtype(d).unwrap();
            let mut buf = Vec::new();
            write_tensor(&mut buf, &t).unwrap();
            let back = read_tensor(&mut buf.as_slice(), &Device::Cpu).unwrap();
            assert_eq!(back.dtype(), d);
            assert_eq!(back.dims(), t.dims());
            let diff = (back.to_dtype(DType::F64).unwrap() - t.to_dtype(DType::F64).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert_eq!(diff, 0.0, "{d:?}");
        }
    }
}
