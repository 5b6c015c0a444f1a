//! Tensor-parallel linear layers. Each rank loads only its shard from the checkpoint
//! (through [`Weights::get_slice`]) and knows the collective its output needs; with a
//! group of one they are plain linear layers. Model code calls `forward` and never sees
//! ranks.
//!
//! Sharding: weights are `[out, in]` (torch layout). Column-parallel splits `out` (rows),
//! so each rank produces a slice of the features; row-parallel splits `in` (columns), so
//! each rank produces a partial sum that is all-reduced over the tp group.

use std::ops::Range;
use std::sync::Arc;

use candle_core::{Module, Tensor};

use super::fp8::LinearWeight;
use crate::io::weights::Weights;
use crate::parallel::Communicator;
use crate::{Error, Result};

use crate::parallel::group::shard_range;

/// `y = x·Wᵀ + b` over this rank's rows of `W`: output features sharded, no collective.
#[derive(Clone, Debug)]
pub struct ColumnParallelLinear {
    weight: LinearWeight,
    bias: Option<Tensor>,
}

impl ColumnParallelLinear {
    /// Loads rows `range` of `[out, in]` (and of the bias).
    pub fn load(
        w: &Weights,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        range: Range<usize>,
    ) -> Result<Self> {
        let weight = LinearWeight::load(w, out_dim, in_dim, Some((0, range.clone())))?;
        let bias = if bias {
            Some(w.get_slice(out_dim, "bias", 0, range)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// Several projections of the same input fused into one GEMM (e.g. Q, K, V): each part is
    /// `(weights, out_dim, rows of this rank)`; the output concatenates the parts in order.
    pub fn fused(
        parts: &[(&Weights, usize, Range<usize>)],
        in_dim: usize,
        bias: bool,
    ) -> Result<Self> {
        let mut ws = Vec::with_capacity(parts.len());
        let mut bs = Vec::with_capacity(parts.len());
        for (w, out_dim, range) in parts {
            let l = Self::load(w, in_dim, *out_dim, bias, range.clone())?;
            ws.push(l.weight);
            if let Some(b) = l.bias {
                bs.push(b);
            }
        }
        let what = parts
            .iter()
            .map(|(w, _, _)| w.module_path())
            .collect::<Vec<_>>()
            .join(" + ");
        Ok(Self {
            weight: LinearWeight::cat_rows(ws, &what)?,
            bias: if bias {
                Some(Tensor::cat(&bs, 0)?)
            } else {
                None
            },
        })
    }

    pub fn out_features(&self) -> usize {
        self.weight.out_features()
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.weight.matmul_t(x, None)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// `y = Σ_ranks x_r·W_rᵀ + b` with `x` sharded on its last dim; all-reduced over `comm`.
#[derive(Clone)]
pub struct RowParallelLinear {
    weight: LinearWeight,
    bias: Option<Tensor>,
    comm: Arc<dyn Communicator>,
}

impl RowParallelLinear {
    /// Loads columns `range` of `[out, in]`; the bias is whole and added once, after the sum.
    pub fn load(
        w: &Weights,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        range: Range<usize>,
        comm: Arc<dyn Communicator>,
    ) -> Result<Self> {
        let weight = LinearWeight::load(w, out_dim, in_dim, Some((1, range)))?;
        let bias = if bias {
            Some(w.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self { weight, bias, comm })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let partial = self.weight.matmul_t(x, Some(self.comm.as_ref()))?;
        let y = if self.comm.size() > 1 {
            self.comm.all_reduce_sum(&partial)?
        } else {
            partial
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// Token embedding with the vocabulary split over the tp group: each rank looks up the ids
/// it owns (zeros elsewhere) and the rows are summed over the group.
#[derive(Clone)]
pub struct VocabParallelEmbedding {
    table: Tensor,
    first: u32,
    comm: Arc<dyn Communicator>,
}

impl VocabParallelEmbedding {
    pub fn load(
        w: &Weights,
        vocab: usize,
        hidden: usize,
        comm: Arc<dyn Communicator>,
    ) -> Result<Self> {
        let range = shard_range(vocab, comm.rank(), comm.size(), "vocab_size")?;
        let first = range.start as u32;
        let table = w.get_slice((vocab, hidden), "weight", 0, range)?;
        Ok(Self { table, first, comm })
    }

    /// `ids` → `[len, hidden]`. Ids beyond the vocabulary are an error, not a panic.
    pub fn forward(&self, ids: &[u32]) -> Result<Tensor> {
        let rows = self.table.dim(0)? as u32;
        let vocab = rows as usize * self.comm.size();
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(Error::invalid(
                "token ids",
                format!("id {bad} is outside the model's vocabulary of {vocab}"),
            ));
        }
        let dev = self.table.device();
        if self.comm.size() == 1 {
            let idx = Tensor::from_slice(ids, ids.len(), dev)?;
            return Ok(
                candle_nn::Embedding::new(self.table.clone(), self.table.dim(1)?).forward(&idx)?,
            );
        }
        let local: Vec<u32> = ids
            .iter()
            .map(|&i| {
                if i >= self.first && i < self.first + rows {
                    i - self.first
                } else {
                    0
                }
            })
            .collect();
        let keep: Vec<f32> = ids
            .iter()
            .map(|&i| {
                if i >= self.first && i < self.first + rows {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        let idx = Tensor::from_slice(&local, ids.len(), dev)?;
        let keep = Tensor::from_slice(&keep, (ids.len(), 1), dev)?.to_dtype(self.table.dtype())?;
        let rows = self.table.index_select(&idx, 0)?.broadcast_mul(&keep)?;
        self.comm.all_reduce_sum(&rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::weights::WeightStore;
    use crate::parallel::local::run_ranks;
    use crate::parallel::{MeshShape, SingleRank};
    use candle_core::{DType, Device};
    use std::path::Path;
    use std::time::Duration;

    fn weights() -> Weights {
        let store = Arc::new(WeightStore::synthetic(Path::new("test"), 7));
        Weights::new(store, DType::F32, &Device::Cpu)
    }

    fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let n = b
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        (d / n).sqrt()
    }

    #[test]
    fn column_then_row_parallel_equals_unsharded_mlp() {
        let (hidden, inter) = (8, 12);
        let x = Tensor::randn(0f32, 1.0, (5, hidden), &Device::Cpu).unwrap();
        let full = {
            let w = weights();
            let up =
                ColumnParallelLinear::load(&w.pp("up"), hidden, inter, true, 0..inter).unwrap();
            let down = RowParallelLinear::load(
                &w.pp("down"),
                inter,
                hidden,
                true,
                0..inter,
                Arc::new(SingleRank),
            )
            .unwrap();
            down.forward(&up.forward(&x).unwrap().relu().unwrap())
                .unwrap()
        };
        for tp in [2usize, 3, 4] {
            let outs = run_ranks(MeshShape::new(1, 1, tp), Duration::from_secs(10), |m| {
                let w = weights();
                let r = shard_range(inter, m.tp.rank(), tp, "intermediate")?;
                let up = ColumnParallelLinear::load(&w.pp("up"), hidden, inter, true, r.clone())?;
                let down =
                    RowParallelLinear::load(&w.pp("down"), inter, hidden, true, r, m.tp.clone())?;
                down.forward(&up.forward(&x)?.relu()?)
            })
            .unwrap();
            for o in outs {
                assert!(rel_err(&o, &full) < 1e-6, "tp={tp}");
            }
        }
    }

    #[test]
    fn vocab_parallel_embedding_matches_whole_table() {
        let ids = [0u32, 5, 11, 6, 3];
        let whole = VocabParallelEmbedding::load(&weights().pp("emb"), 12, 4, Arc::new(SingleRank))
            .unwrap()
            .forward(&ids)
            .unwrap();
        let outs = run_ranks(MeshShape::new(1, 1, 4), Duration::from_secs(10), |m| {
            VocabParallelEmbedding::load(&weights().pp("emb"), 12, 4, m.tp.clone())?.forward(&ids)
        })
        .unwrap();
        for o in outs {
            assert!(rel_err(&o, &whole) < 1e-7);
        }
        let e = VocabParallelEmbedding::load(&weights().pp("emb"), 12, 4, Arc::new(SingleRank))
            .unwrap()
            .forward(&[12])
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside the model's vocabulary"), "{e}");
        assert!(shard_range(12, 0, 5, "vocab_size").is_err());
    }
}
