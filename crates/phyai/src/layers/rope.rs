//! Interleaved three-axis rotary embedding (mRoPE, rotate-half convention).
//!
//! A token has a position per axis (t, h, w). Of the `head_dim/2` frequency slots, slot `j`
//! takes its position from axis h when `j % 3 == 1` and `j < 3·section[1]`, from axis w when
//! `j % 3 == 2` and `j < 3·section[2]`, and from axis t otherwise. Angles are
//! `position · θ^(−2j/head_dim)` in f32; the `head_dim/2` angles are used twice (first and
//! second half of the head), so `rope(x) = x·cos + rotate_half(x)·sin`.

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

#[derive(Clone, Debug)]
pub struct MultiAxisRope {
    inv_freq: Vec<f32>,
    section: [usize; 3],
}

impl MultiAxisRope {
    /// `section` gives the number of slots of each axis; it must sum to `head_dim / 2`.
    pub fn new(head_dim: usize, theta: f64, section: [usize; 3]) -> Result<Self> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(Error::invalid(
                "head_dim",
                format!("{head_dim} is not even"),
            ));
        }
        let half = head_dim / 2;
        if section.iter().sum::<usize>() != half {
            return Err(Error::invalid(
                "mrope_section",
                format!("{section:?} does not sum to head_dim/2 = {half}"),
            ));
        }
        // The exponent 2j/head_dim is an f32; the power is taken in f64 and rounded once,
        // then inverted in f32 (what the reference's f32 arithmetic yields, to the ulp).
        let inv_freq = (0..half)
            .map(|j| {
                let e = (2 * j) as f32 / head_dim as f32;
                1.0f32 / theta.powf(e as f64) as f32
            })
            .collect();
        Ok(Self { inv_freq, section })
    }

    pub fn half_dim(&self) -> usize {
        self.inv_freq.len()
    }

    /// The axis (0 = t, 1 = h, 2 = w) whose position drives frequency slot `j`.
    pub fn axis_of(&self, j: usize) -> usize {
        if j % 3 == 1 && j < 3 * self.section[1] {
            1
        } else if j % 3 == 2 && j < 3 * self.section[2] {
            2
        } else {
            0
        }
    }

    /// `cos`, `sin` tables `[N, head_dim/2]` for positions `[N]` of `(t, h, w)`; angles and
    /// trigonometry in f32, then rounded to `dtype`.
    pub fn tables(
        &self,
        positions: &[[f32; 3]],
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.half_dim();
        let n = positions.len();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        let axes: Vec<usize> = (0..half).map(|j| self.axis_of(j)).collect();
        for p in positions {
            for (j, &a) in axes.iter().enumerate() {
                let angle = p[a] * self.inv_freq[j];
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (n, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (n, half), device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }
}

/// Rotates `x` `[heads, N, head_dim]` by the tables of [`MultiAxisRope::tables`] (`[N, head_dim/2]`,
/// same dtype as `x`).
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    // Head-major views of token-major data rotate in place order (no transpose copy).
    let tokens_major = x.transpose(0, 1)?;
    if tokens_major.is_contiguous() {
        let y = candle_nn::rotary_emb::rope_thd(&tokens_major.unsqueeze(0)?, cos, sin)?;
        return Ok(y.squeeze(0)?.transpose(0, 1)?);
    }
    let x = x.contiguous()?.unsqueeze(0)?;
    Ok(candle_nn::rotary_emb::rope(&x, cos, sin)?.squeeze(0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_layout_of_the_nano_section() {
        let r = MultiAxisRope::new(128, 5e6, [24, 20, 20]).unwrap();
        let axes: Vec<usize> = (0..64).map(|j| r.axis_of(j)).collect();
        assert_eq!(&axes[..6], &[0, 1, 2, 0, 1, 2]);
        assert_eq!(&axes[57..64], &[0, 1, 2, 0, 0, 0, 0]);
        assert_eq!(axes.iter().filter(|&&a| a == 0).count(), 24);
        assert_eq!(axes.iter().filter(|&&a| a == 1).count(), 20);
        assert_eq!(axes.iter().filter(|&&a| a == 2).count(), 20);
        assert!(MultiAxisRope::new(128, 5e6, [24, 20, 21]).is_err());
    }

    #[test]
    fn rotate_half_matches_formula() {
        let r = MultiAxisRope::new(8, 100.0, [2, 1, 1]).unwrap();
        let pos = [[3f32, 1.0, 2.0], [0.5, 7.0, 4.0]];
        let (cos, sin) = r.tables(&pos, DType::F32, &Device::Cpu).unwrap();
        let x = Tensor::arange(0f32, 32.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 2, 8))
            .unwrap();
        let y = apply_rope(&x, &cos, &sin)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        let xs = x.to_vec3::<f32>().unwrap();
        for h in 0..2 {
            for (n, p) in pos.iter().enumerate() {
                for j in 0..4 {
                    let a = p[r.axis_of(j)] * r.inv_freq[j];
                    let (x1, x2) = (xs[h][n][j], xs[h][n][j + 4]);
                    let e1 = x1 * a.cos() - x2 * a.sin();
                    let e2 = x2 * a.cos() + x1 * a.sin();
                    assert!((y[h][n][j] - e1).abs() < 1e-4);
                    assert!((y[h][n][j + 4] - e2).abs() < 1e-4);
                }
            }
        }
    }
}
