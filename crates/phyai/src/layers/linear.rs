//! Linear layers as model code sees them. Every matmul of a model goes through one of these
//! types so a tensor-parallel variant can replace a plain one without touching the model:
//! [`Linear`] is replicated on every rank; [`Group`] (the tp group) builds the column/row-parallel layers
//! of [`super::tp`] (plain layers when the group has one rank) and says how many heads or
//! channels this rank owns.

use candle_core::Tensor;

use super::fp8::LinearWeight;
use super::tp::{ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding};
use crate::io::weights::Weights;
use crate::parallel::Group;
use crate::Result;

/// `y = x·Wᵀ + b` with `W` `[out, in]` (torch layout), the same on every rank; `W` is
/// 16-bit or FP8 as the checkpoint and [`Weights::fp8`] decide.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn load(w: &Weights, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = LinearWeight::load(w, out_dim, in_dim, None)?;
        let bias = if bias {
            Some(w.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// `x` `[.., in]` → `[.., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.weight.matmul_t(x, None)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// Tensor-parallel construction: the tp group builds the column/row-parallel layers of
/// [`super::tp`] (plain layers when the group has one rank). Splits are in whole units
/// (attention heads of `head_dim` rows, or single MLP channels), contiguous per rank.
impl Group {
    /// How many of `n` units (`what`, e.g. "num_key_value_heads") this rank owns.
    pub fn local(&self, n: usize, what: &str) -> Result<usize> {
        Ok(self.shard(n, what)?.len())
    }

    /// Output features split: this rank computes its `units` (of `unit` rows each).
    pub fn column(
        &self,
        w: &Weights,
        in_dim: usize,
        units: usize,
        unit: usize,
        bias: bool,
        what: &str,
    ) -> Result<ColumnParallelLinear> {
        let r = self.shard(units, what)?;
        ColumnParallelLinear::load(w, in_dim, units * unit, bias, r.start * unit..r.end * unit)
    }

    /// Several column-parallel projections of one input as one GEMM: each part is
    /// `(weights, units, unit, what)` and is split over the group like [`Self::column`], so
    /// the output is this rank's slice of every part, concatenated in order.
    pub fn fused_column(
        &self,
        parts: &[(&Weights, usize, usize, &str)],
        in_dim: usize,
        bias: bool,
    ) -> Result<ColumnParallelLinear> {
        let mut specs = Vec::with_capacity(parts.len());
        for &(w, units, unit, what) in parts {
            let r = self.shard(units, what)?;
            specs.push((w, units * unit, r.start * unit..r.end * unit));
        }
        ColumnParallelLinear::fused(&specs, in_dim, bias)
    }

    /// Input features split: this rank consumes its `units` and the partial outputs are
    /// summed over the group.
    pub fn row(
        &self,
        w: &Weights,
        units: usize,
        unit: usize,
        out_dim: usize,
        bias: bool,
        what: &str,
    ) -> Result<RowParallelLinear> {
        let r = self.shard(units, what)?;
        RowParallelLinear::load(
            w,
            units * unit,
            out_dim,
            bias,
            r.start * unit..r.end * unit,
            self.comm().clone(),
        )
    }

    /// Token embedding with the vocabulary split over the group.
    pub fn embedding(
        &self,
        w: &Weights,
        vocab: usize,
        hidden: usize,
    ) -> Result<VocabParallelEmbedding> {
        VocabParallelEmbedding::load(w, vocab, hidden, self.comm().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::weights::WeightStore;
    use candle_core::{DType, Device};
    use std::path::Path;
    use std::sync::Arc;

    #[test]
    fn plain_linear_and_single_rank_group() {
        let store = Arc::new(WeightStore::synthetic(Path::new("test"), 1));
        let w = Weights::new(store, DType::F32, &Device::Cpu);
        let x = Tensor::randn(0f32, 1.0, (3, 8), &Device::Cpu).unwrap();
        let lin = Linear::load(&w.pp("a"), 8, 6, true).unwrap();
        let y = lin.forward(&x).unwrap();
        let want = x
            .matmul(&w.pp("a").get((6, 8), "weight").unwrap().t().unwrap())
            .unwrap();
        let d = (y - want).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0); // synthetic bias is zero
        let tp = Group::single();
        assert_eq!(tp.local(8, "heads").unwrap(), 8);
        let col = tp.column(&w.pp("a"), 8, 3, 2, true, "heads").unwrap();
        assert_eq!(col.out_features(), 6);
    }
}
