//! Bilinear resampling of 8-bit RGB frames exactly as Pillow's `Image.resize(…, BILINEAR)`
//! computes it, which is how the reference's video processor brings control clips to the
//! request size: a separable triangle filter widened by the scale when shrinking
//! (antialiasing), coefficients normalised per output pixel and rounded to 22-bit fixed
//! point, the horizontal pass first (rounded to 8 bits), then the vertical pass. A pass
//! whose size does not change is skipped, so a frame of the target size is unchanged.

/// Fixed-point fraction bits of the coefficients (Pillow's `PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The taps of one output pixel: first input index and fixed-point weights.
struct Taps {
    start: usize,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for a bilinear filter.
fn taps(in_size: usize, out_size: usize) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the triangle's support is 1
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C truncation toward zero, then clamped, as the reference does.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (xmin..xmax)
                .map(|x| {
                    let d = ((x as f64 - center + 0.5) * ss).abs();
                    if d < 1.0 {
                        1.0 - d
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = raw.iter().sum();
            let one = (1u32 << PRECISION_BITS) as f64;
            let weights = raw
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    if w < 0.0 {
                        (-0.5 + w * one) as i32
                    } else {
                        (0.5 + w * one) as i32
                    }
                })
                .collect();
            Taps {
                start: xmin,
                weights,
            }
        })
        .collect()
}

/// Rounds a fixed-point sum to an 8-bit level (Pillow's `clip8`).
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One pass along an axis: `lines` independent lines of `len_in` samples, `stride` apart
/// within a line, each resampled to `taps.len()` samples.
fn pass(
    src: &[u8],
    (h, w): (usize, usize),
    horizontal: bool,
    taps: &[Taps],
) -> (Vec<u8>, usize, usize) {
    let (oh, ow) = if horizontal {
        (h, taps.len())
    } else {
        (taps.len(), w)
    };
    let mut out = vec![0u8; oh * ow * 3];
    for y in 0..oh {
        for x in 0..ow {
            let t = if horizontal { &taps[x] } else { &taps[y] };
            for c in 0..3 {
                let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                for (k, &wt) in t.weights.iter().enumerate() {
                    let (sy, sx) = if horizontal {
                        (y, t.start + k)
                    } else {
                        (t.start + k, x)
                    };
                    acc += src[(sy * w + sx) * 3 + c] as i64 * wt as i64;
                }
                out[(y * ow + x) * 3 + c] = clip8(acc);
            }
        }
    }
    (out, oh, ow)
}

/// Resizes one RGB frame (`[H, W, 3]` bytes) from `src_h × src_w` to `height × width`.
pub fn resize_rgb8(src: &[u8], src_h: usize, src_w: usize, height: usize, width: usize) -> Vec<u8> {
    let mut img = src.to_vec();
    let (mut h, mut w) = (src_h, src_w);
    if w != width {
        (img, h, w) = pass(&img, (h, w), true, &taps(w, width));
    }
    if h != height {
        (img, _, _) = pass(&img, (h, w), false, &taps(h, height));
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_unchanged_and_constant_stays_constant() {
        let src: Vec<u8> = (0..4 * 5 * 3).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(resize_rgb8(&src, 4, 5, 4, 5), src);
        // Normalised weights: a flat frame stays flat at any size.
        let flat = vec![137u8; 9 * 13 * 3];
        for (h, w) in [(4, 6), (20, 31), (9, 2)] {
            assert!(resize_rgb8(&flat, 9, 13, h, w).iter().all(|&v| v == 137));
        }
    }
}
