//! The communicator interface every parallel layer talks to. Backends: [`super::local`]
//! (ranks as threads of one process, for CPU runs and tests), [`super::tcp`] (CPU ranks
//! in separate processes) and NCCL (CUDA builds).
//!
//! Every collective is called by all ranks of the group in the same order; results are
//! identical on every rank (reductions sum in rank order, so they are deterministic).

use candle_core::Tensor;

use crate::Result;

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
