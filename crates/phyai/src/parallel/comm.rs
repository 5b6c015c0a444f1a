//! The communicator interface every parallel layer talks to. Backends: [`super::local`]
//! (ranks as threads of one process, for CPU runs and tests), [`super::tcp`] (CPU ranks
//! in separate processes) and NCCL (CUDA builds).
//!
//! Every collective is called by all ranks of the group in the same order; results are
//! identical on every rank (reductions sum in rank order, so they are deterministic).

use candle_core::Tensor;

use crate::{Error, Result};

pub trait Communicator: Send + Sync {
    /// This rank's index within the group.
    fn rank(&self) -> usize;
    /// Number of ranks in the group.
    fn size(&self) -> usize;
    /// Element-wise sum over the group.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
    /// Concatenation of every rank's tensor along `dim`, in rank order.
    fn all_gather(&self, t: &Tensor, dim: usize) -> Result<Tensor>;
    /// `root`'s tensor on every rank (others pass a tensor of the same shape and dtype).
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor>;
    /// Splits `t` into `size` chunks along `split_dim`, sends chunk j to rank j, and
    /// concatenates the received chunks along `concat_dim` in rank order (Ulysses).
    fn all_to_all(&self, t: &Tensor, split_dim: usize, concat_dim: usize) -> Result<Tensor>;
    /// Returns once every rank has arrived.
    fn barrier(&self) -> Result<()>;
}

/// A group of one: every collective is the identity. Used when an axis has size 1.
pub struct SingleRank;

impl Communicator for SingleRank {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn all_gather(&self, t: &Tensor, _dim: usize) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn broadcast(&self, t: &Tensor, _root: usize) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn all_to_all(&self, t: &Tensor, _split_dim: usize, _concat_dim: usize) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

/// `all_to_all` as one exchange of equal contiguous blocks, for backends that move bytes
/// (NCCL send/recv) rather than tensors. `t` is packed to `[n, ..]` with block `j` the
/// chunk for rank `j`; `exchange` must return the same shape with block `j` received from
/// rank `j`; the blocks are then concatenated along `concat_dim`. Packing copies only when
/// a dimension of size > 1 precedes `split_dim` (likewise unpacking and `concat_dim`).
pub fn all_to_all_by_blocks(
    t: &Tensor,
    split_dim: usize,
    concat_dim: usize,
    n: usize,
    exchange: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let dims = t.dims();
    if split_dim >= dims.len() || concat_dim >= dims.len() {
        return Err(Error::msg(format!(
            "all_to_all: dims {split_dim}/{concat_dim} out of range for shape {dims:?}"
        )));
    }
    let len = dims[split_dim];
    if n == 0 || !len.is_multiple_of(n) {
        return Err(Error::msg(format!(
            "all_to_all: dim {split_dim} of size {len} does not split into {n} ranks"
        )));
    }
    let mut chunk = dims.to_vec();
    chunk[split_dim] = len / n;
    let outer: usize = dims[..split_dim].iter().product();
    let packed = t
        .reshape((outer, n, t.elem_count() / outer.max(1) / n))?
        .transpose(0, 1)?
        .contiguous()?;
    let got = exchange(&packed)?;
    if got.dims() != packed.dims() {
        return Err(Error::msg(format!(
            "all_to_all: exchanged {:?}, expected {:?}",
            got.dims(),
            packed.dims()
        )));
    }
    let outer: usize = chunk[..concat_dim].iter().product();
    let mut out = chunk;
    out[concat_dim] *= n;
    Ok(got
        .reshape((n, outer, t.elem_count() / outer.max(1) / n))?
        .transpose(0, 1)?
        .contiguous()?
        .reshape(out)?)
}
