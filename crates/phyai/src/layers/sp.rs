//! Ulysses sequence parallelism. The tokens of a sequence are split contiguously over the
//! ranks of the sp group; everything token-local (norms, projections, rotary embedding,
//! MLP) runs on the local shard. Around attention an all-to-all swaps the split: each rank
//! then holds `1/sp` of the heads over the whole sequence, attends, and a second all-to-all
//! gives the tokens back. With a group of one every method is the identity.
//!
//! Padding: a sequence of `n` tokens is padded to `n_pad = sp·⌈n/sp⌉` with dummy tokens at
//! its end, so every shard has the same length. After the first all-to-all the dummy
//! queries, keys and values are the last `n_pad − n` rows and are cut off, so they never
//! enter attention (exact, no mask); the attention output is zero-padded back before the
//! second all-to-all and the dummy rows are dropped at the end.

use std::ops::Range;

use candle_core::Tensor;

use crate::parallel::Group;
use crate::{Error, Result};

/// This rank's contiguous block of a sequence of `tokens` tokens, padded to `padded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqShard {
    /// Real tokens of the whole sequence.
    pub tokens: usize,
    /// `tokens` rounded up to a multiple of the group size.
    pub padded: usize,
    /// First position of this shard in the padded sequence.
    pub start: usize,
    /// Shard length (the same on every rank): `padded / size`.
    pub len: usize,
}

impl SeqShard {
    /// The shard of `rank` of `size` ranks; `size` ≥ 1.
    pub fn new(tokens: usize, rank: usize, size: usize) -> Result<Self> {
        if size == 0 || rank >= size {
            return Err(Error::msg(format!(
                "rank {rank} of a sequence-parallel group of {size}"
            )));
        }
        let len = tokens.div_ceil(size);
        Ok(Self {
            tokens,
            padded: len * size,
            start: rank * len,
            len,
        })
    }

    /// The real tokens of this shard as positions of the whole sequence (may be empty).
    pub fn real(&self) -> Range<usize> {
        let end = (self.start + self.len).min(self.tokens);
        self.start.min(end)..end
    }

    /// Dummy tokens at the end of this shard.
    pub fn pad(&self) -> usize {
        self.len - self.real().len()
    }
}

/// Ulysses on the sp group: token shards, and the all-to-alls that swap them for head
/// shards around attention.
impl Group {
    /// This rank's shard of a sequence of `tokens` tokens.
    pub fn seq_shard(&self, tokens: usize) -> Result<SeqShard> {
        SeqShard::new(tokens, self.rank(), self.size())
    }

    /// The contiguous block of `heads` (`what`, e.g. "num_key_value_heads") this rank
    /// attends with between the two all-to-alls; an error when the group does not divide it.
    pub fn local_heads(&self, heads: usize, what: &str) -> Result<Range<usize>> {
        self.shard(heads, what)
    }

    /// Sequence shards → head shards, for several tensors in one exchange: each part
    /// `[H_i, shard.len, D]` comes back as `[H_i/sp, shard.tokens, D]` (this rank's heads over
    /// the whole sequence, dummy tokens cut off). Parts must share `shard.len` and `D`.
    pub fn seq_to_heads(&self, parts: &[&Tensor], shard: &SeqShard) -> Result<Vec<Tensor>> {
        let n = self.size();
        if n == 1 {
            return Ok(parts.iter().map(|&t| t.clone()).collect());
        }
        let mut per = Vec::with_capacity(parts.len());
        for t in parts {
            per.push(self.local_heads(t.dim(0)?, "attention heads")?.len());
        }
        // Rank j's chunk of the stacked heads is [part 0 heads of j, part 1 heads of j, ..].
        let mut chunks = Vec::with_capacity(n * parts.len());
        for j in 0..n {
            for (t, &p) in parts.iter().zip(&per) {
                chunks.push(t.narrow(0, j * p, p)?);
            }
        }
        let stacked = Tensor::cat(&chunks, 0)?;
        let mine = self.comm().all_to_all(&stacked, 0, 1)?;
        let mut out = Vec::with_capacity(parts.len());
        let mut h0 = 0;
        for &p in &per {
            let t = mine.narrow(0, h0, p)?;
            out.push(if shard.padded > shard.tokens {
                t.narrow(1, 0, shard.tokens)?
            } else {
                t
            });
            h0 += p;
        }
        Ok(out)
    }

    /// Head shards → sequence shards: `[H/sp, shard.tokens, D]` → `[H, shard.len, D]`
    /// (dummy tokens zero).
    pub fn heads_to_seq(&self, t: &Tensor, shard: &SeqShard) -> Result<Tensor> {
        if self.size() == 1 {
            return Ok(t.clone());
        }
        let t = t.pad_with_zeros(1, 0, shard.padded - shard.tokens)?;
        self.comm().all_to_all(&t.contiguous()?, 1, 0)
    }

    /// Every rank's shard `[shard.len, ..]` → the whole sequence `[shard.tokens, ..]`.
    pub fn gather_tokens(&self, t: &Tensor, shard: &SeqShard) -> Result<Tensor> {
        if self.size() == 1 {
            return Ok(t.clone());
        }
        let all = self.comm().all_gather(&t.contiguous()?, 0)?;
        Ok(all.narrow(0, 0, shard.tokens)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::attention::attention;
    use crate::parallel::local::run_ranks;
    use crate::parallel::MeshShape;
    use candle_core::Device;
    use std::time::Duration;

    #[test]
    fn shards_cover_the_sequence_with_padding_at_the_end() {
        for (tokens, size) in [(10, 1), (10, 2), (10, 4), (3, 4), (0, 3), (12, 3)] {
            let shards: Vec<SeqShard> = (0..size)
                .map(|r| SeqShard::new(tokens, r, size).unwrap())
                .collect();
            let len = tokens.div_ceil(size);
            let mut next = 0;
            for s in &shards {
                assert_eq!((s.len, s.padded, s.start), (len, len * size, next));
                assert_eq!(s.real().len() + s.pad(), s.len);
                if !s.real().is_empty() {
                    assert_eq!(s.real().start, s.start);
                }
                next += s.len;
            }
            let real: usize = shards.iter().map(|s| s.real().len()).sum();
            assert_eq!(real, tokens, "tokens={tokens} size={size}");
        }
        let s = SeqShard::new(10, 3, 4).unwrap();
        assert_eq!((s.start, s.real(), s.pad()), (9, 9..10, 2));
        let s = SeqShard::new(3, 3, 4).unwrap();
        assert_eq!((s.real().len(), s.pad()), (0, 1));
        assert!(SeqShard::new(5, 2, 2).is_err());
        assert!(SeqShard::new(5, 0, 0).is_err());
    }

    /// Attention over sequence shards through the two all-to-alls equals attention over the
    /// whole sequence, with an odd length so the last shard is padded.
    #[test]
    fn ulysses_attention_matches_whole_sequence() {
        let dev = Device::Cpu;
        let (hq, hkv, n, d) = (4, 2, 11, 8);
        let q = Tensor::randn(0f32, 1.0, (hq, n, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (hkv, n, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (hkv, n, d), &dev).unwrap();
        let want = attention(&q, &k, &v, false).unwrap();
        for sp in [2usize, 1] {
            let outs = run_ranks(MeshShape::new(1, sp, 1), Duration::from_secs(10), |m| {
                let g = Group::new(m.sp.clone());
                let s = g.seq_shard(n)?;
                let local = |t: &Tensor| -> Result<Tensor> {
                    let r = s.real();
                    let x = t.narrow(1, r.start, r.len())?;
                    Ok(x.pad_with_zeros(1, 0, s.pad())?)
                };
                let parts = g.seq_to_heads(&[&local(&q)?, &local(&k)?, &local(&v)?], &s)?;
                assert_eq!(parts[0].dims(), &[hq / sp, n, d]);
                assert_eq!(parts[1].dims(), &[hkv / sp, n, d]);
                let a = attention(&parts[0], &parts[1], &parts[2], false)?;
                let back = g.heads_to_seq(&a, &s)?; // [hq, len, d]
                g.gather_tokens(&back.transpose(0, 1)?, &s) // [n, hq, d]
            })
            .unwrap();
            let want = want.transpose(0, 1).unwrap();
            for o in outs {
                let e = (&o - &want)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(e < 1e-6, "sp={sp}: max err {e}");
            }
        }
    }

    #[test]
    fn heads_not_divisible_are_errors() {
        let outs = run_ranks(MeshShape::new(1, 2, 1), Duration::from_secs(10), |m| {
            let g = Group::new(m.sp.clone());
            Ok(g.local_heads(3, "num_key_value_heads").is_err()
                && g.local_heads(4, "x")? == (m.sp.rank() * 2..m.sp.rank() * 2 + 2))
        })
        .unwrap();
        assert!(outs.iter().all(|&ok| ok));
    }
}
