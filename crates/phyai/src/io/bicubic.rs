//! Antialiased bicubic resizing of float images exactly as torch's
//! `F.interpolate(x, size, mode="bicubic", align_corners=False, antialias=True)` computes
//! it on the CPU, which is how the reference shrinks an action-mode input into its
//! resolution tier's canvas: a separable Keys cubic (a = −0.5) widened by the scale when
//! shrinking, weights normalised per output pixel, computed in f32, the width pass first.

/// The taps of one output pixel: first input index and normalised weights.
struct Taps {
    start: usize,
    weights: Vec<f32>,
}

fn cubic(x: f32) -> f32 {
    const A: f32 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

fn taps(in_size: usize, out_size: usize) -> Vec<Taps> {
    let scale = in_size as f32 / out_size as f32;
    // The cubic's support is 2; shrinking widens it by the scale (antialiasing).
    let (support, invscale) = if scale >= 1.0 {
        (2.0 * scale, 1.0 / scale)
    } else {
        (2.0, 1.0)
    };
    (0..out_size)
        .map(|i| {
            let center = scale * (i as f32 + 0.5);
            // C truncation toward zero, then clamped, as the reference does.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut weights: Vec<f32> = (xmin..xmax)
                .map(|x| cubic((x as f32 - center + 0.5) * invscale))
                .collect();
            let total: f32 = weights.iter().sum();
            if total != 0.0 {
                weights.iter_mut().for_each(|w| *w /= total);
            }
            Taps {
                start: xmin,
                weights,
            }
        })
        .collect()
}

/// Resizes `planes` images of `h`×`w` f32 values (plane after plane) to `out_h`×`out_w`.
pub fn resize_bicubic_aa(
    src: &[f32],
    planes: usize,
    (h, w): (usize, usize),
    (out_h, out_w): (usize, usize),
) -> Vec<f32> {
    assert_eq!(src.len(), planes * h * w, "resize_bicubic_aa: buffer size");
    let tx = taps(w, out_w);
    let ty = taps(h, out_h);
    let mut out = vec![0f32; planes * out_h * out_w];
    let mut rows = vec![0f32; h * out_w];
    for p in 0..planes {
        let plane = &src[p * h * w..(p + 1) * h * w];
        // Width first (a pass whose size does not change is the identity).
        for y in 0..h {
            let line = &plane[y * w..(y + 1) * w];
            for (x, t) in tx.iter().enumerate() {
                rows[y * out_w + x] = if w == out_w {
                    line[x]
                } else {
                    t.weights
                        .iter()
                        .zip(&line[t.start..])
                        .map(|(k, v)| k * v)
                        .sum()
                };
            }
        }
        let dst = &mut out[p * out_h * out_w..(p + 1) * out_h * out_w];
        for (y, t) in ty.iter().enumerate() {
            for x in 0..out_w {
                dst[y * out_w + x] = if h == out_h {
                    rows[y * out_w + x]
                } else {
                    t.weights
                        .iter()
                        .enumerate()
                        .map(|(j, k)| k * rows[(t.start + j) * out_w + x])
                        .sum()
                };
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_and_same_size_is_identity() {
        for (i, o) in [(380, 320), (210, 177), (7, 3), (3, 7)] {
            for t in taps(i, o) {
                let s: f32 = t.weights.iter().sum();
                assert!((s - 1.0).abs() < 1e-5, "{i}->{o}: {s}");
                assert!(t.start + t.weights.len() <= i);
            }
        }
        let x: Vec<f32> = (0..2 * 5 * 6).map(|v| v as f32 * 0.1 - 1.0).collect();
        assert_eq!(resize_bicubic_aa(&x, 2, (5, 6), (5, 6)), x);
    }

    #[test]
    fn halving_a_constant_keeps_it_and_a_ramp_stays_monotone() {
        let c = vec![0.25f32; 8 * 8];
        let out = resize_bicubic_aa(&c, 1, (8, 8), (4, 4));
        assert!(out.iter().all(|v| (v - 0.25).abs() < 1e-6), "{out:?}");
        let ramp: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let out = resize_bicubic_aa(&ramp, 1, (1, 16), (1, 8));
        assert!(out.windows(2).all(|p| p[1] > p[0]), "{out:?}");
        // Interior outputs of a linear ramp land on the ramp (the filter is symmetric).
        assert!((out[4] - 8.5).abs() < 1e-4, "{out:?}");
    }
}
