//! Seeded Gaussian noise identical to numpy's legacy `RandomState(seed).standard_normal`.
//!
//! The reference seeds its initial latents this way, so reproducing the generator bit for
//! bit lets a seed give exactly the reference's video: MT19937 seeded from a 32-bit integer
//! (Knuth's initialisation, which numpy uses for an integer seed), 53-bit doubles from two
//! 32-bit draws, and the Marsaglia polar method that returns the second value of each pair
//! first and caches the other. Values are generated in f64 and cast to f32 once, C order.

use crate::{Error, Result};

const STATE_LEN: usize = 624;
const SHIFT: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// The MT19937 generator with numpy's legacy Gaussian cache.
pub struct RandomState {
    key: [u32; STATE_LEN],
    pos: usize,
    gauss: Option<f64>,
}

impl RandomState {
    /// `numpy.random.RandomState(seed)` for an integer seed.
    pub fn new(seed: u32) -> Self {
        let mut key = [0u32; STATE_LEN];
        key[0] = seed;
        for i in 1..STATE_LEN {
            let prev = key[i - 1];
            key[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        RandomState {
            key,
            pos: STATE_LEN,
            gauss: None,
        }
    }

    fn refill(&mut self) {
        for i in 0..STATE_LEN {
            let y = (self.key[i] & UPPER_MASK) | (self.key[(i + 1) % STATE_LEN] & LOWER_MASK);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            self.key[i] = self.key[(i + SHIFT) % STATE_LEN] ^ (y >> 1) ^ mag;
        }
        self.pos = 0;
    }

    /// Next tempered 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.pos == STATE_LEN {
            self.refill();
        }
        let mut y = self.key[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// Uniform double in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// One standard normal value (legacy polar method with its cached partner).
    pub fn gauss(&mut self) -> f64 {
        if let Some(g) = self.gauss.take() {
            return g;
        }
        loop {
            let x1 = 2.0 * self.next_f64() - 1.0;
            let x2 = 2.0 * self.next_f64() - 1.0;
            let r2 = x1 * x1 + x2 * x2;
            if r2 < 1.0 && r2 != 0.0 {
                let f = (-2.0 * r2.ln() / r2).sqrt();
                self.gauss = Some(f * x1);
                return f * x2;
            }
        }
    }
}

/// Number of values of `shape`, refusing sizes that overflow.
fn numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::invalid("noise shape", format!("{shape:?} is too large")))
}

/// `RandomState(seed).standard_normal(shape)` in f64, C order, from a fresh generator.
pub fn standard_normal_f64(seed: u32, shape: &[usize]) -> Result<Vec<f64>> {
    let n = numel(shape)?;
    let mut rs = RandomState::new(seed);
    Ok((0..n).map(|_| rs.gauss()).collect())
}

/// `RandomState(seed).standard_normal(shape).astype(float32)`, C order, fresh generator.
///
/// Video noise is drawn with shape `[1, C, t, h, w]`. Sound noise is drawn with shape
/// `[C, T]` (channels first) from its own fresh generator with the same seed; in the
/// engine's `[1, C, T]` sound layout that buffer is used as is, no transpose.
pub fn standard_normal(seed: u32, shape: &[usize]) -> Result<Vec<f32>> {
    Ok(standard_normal_f64(seed, shape)?
        .into_iter()
        .map(|v| v as f32)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_noise_is_invalid() {
        assert!(matches!(
            standard_normal(0, &[usize::MAX, 2]),
            Err(Error::Invalid { .. })
        ));
    }

    #[test]
    fn cached_partner_is_returned_second() {
        let mut rs = RandomState::new(7);
        let a = rs.gauss();
        assert!(rs.gauss.is_some());
        let b = rs.gauss();
        assert!(rs.gauss.is_none());
        assert_ne!(a, b);
    }
}
