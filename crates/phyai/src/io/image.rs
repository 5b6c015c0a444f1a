//! Conditioning images (PNG/JPEG) → model input, preprocessed as the reference I2V path
//! does: scale so the image covers `height × width` (aspect ratio kept, sizes rounded up),
//! antialiased bilinear resampling, centre crop, round to integers, map to [−1, 1].

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// Loads `path` as `[1, 3, height, width]` f32 in [−1, 1] on the CPU.
pub fn load_image(path: &Path, height: usize, width: usize) -> Result<Tensor> {
    if height == 0 || width == 0 {
        return Err(Error::invalid(
            "image",
            format!("target size {height}x{width} is empty"),
        ));
    }
    let img = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(|e| Error::invalid("image", format!("{}: {e}", path.display())))?
        .to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let chw = preprocess(img.as_raw(), h, w, height, width);
    Ok(Tensor::from_vec(chw, (1, 3, height, width), &Device::Cpu)?)
}

/// Packed RGB `[src_h, src_w, 3]` bytes → planar `[3, height, width]` values in [−1, 1].
pub fn preprocess(rgb: &[u8], src_h: usize, src_w: usize, height: usize, width: usize) -> Vec<f32> {
    let scale = f64::max(width as f64 / src_w as f64, height as f64 / src_h as f64);
    let rh = (scale * src_h as f64).ceil() as usize;
    let rw = (scale * src_w as f64).ceil() as usize;
    let top = ((rh - height) as f64 / 2.0).round_ties_even() as usize;
    let left = ((rw - width) as f64 / 2.0).round_ties_even() as usize;
    let wx = Taps::new(src_w, rw);
    let wy = Taps::new(src_h, rh);
    let mut out = vec![0f32; 3 * height * width];
    // Horizontal pass over all source rows (only the kept columns), then vertical.
    let mut rows = vec![0f32; src_h * width * 3];
    for y in 0..src_h {
        for x in 0..width {
            let (start, ws) = wx.at(left + x);
            for c in 0..3 {
                let mut acc = 0f32;
                for (k, &wt) in ws.iter().enumerate() {
                    acc += wt * rgb[(y * src_w + start + k) * 3 + c] as f32;
                }
                rows[(y * width + x) * 3 + c] = acc;
            }
        }
    }
    for y in 0..height {
        let (start, ws) = wy.at(top + y);
        for x in 0..width {
            for c in 0..3 {
                let mut acc = 0f32;
                for (k, &wt) in ws.iter().enumerate() {
                    acc += wt * rows[((start + k) * width + x) * 3 + c];
                }
                let v = acc.round_ties_even().clamp(0.0, 255.0);
                out[(c * height + y) * width + x] = v / 127.5 - 1.0;
            }
        }
    }
    out
}

/// Per-output-pixel taps of the antialiased triangle filter (`align_corners=False`): the
/// filter widens by the downscale factor so every source pixel contributes.
struct Taps {
    starts: Vec<usize>,
    weights: Vec<Vec<f32>>,
}

impl Taps {
    /// Weights are computed in f32 in the same order as the reference kernel, so the
    /// interpolated values match it to the last bit in almost every pixel.
    fn new(input: usize, output: usize) -> Self {
        let scale = input as f32 / output as f32;
        let support = if scale >= 1.0 { scale } else { 1.0 };
        let inv = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
        let mut starts = Vec::with_capacity(output);
        let mut weights = Vec::with_capacity(output);
        for i in 0..output {
            let center = scale * (i as f32 + 0.5);
            // Truncation toward zero, then clamped at 0, as the reference does.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let mut ws: Vec<f32> = (lo..hi)
                .map(|j| {
                    let x = (j as f32 - center + 0.5) * inv;
                    (1.0 - x.abs()).max(0.0)
                })
                .collect();
            let total: f32 = ws.iter().sum();
            if total != 0.0 {
                ws.iter_mut().for_each(|w| *w /= total);
            }
            starts.push(lo);
            weights.push(ws);
        }
        Self { starts, weights }
    }

    fn at(&self, i: usize) -> (usize, &[f32]) {
        (self.starts[i], &self.weights[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_size_keeps_pixels() {
        let rgb: Vec<u8> = (0..4 * 6 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let out = preprocess(&rgb, 4, 6, 4, 6);
        for y in 0..4 {
            for x in 0..6 {
                for c in 0..3 {
                    let want = rgb[(y * 6 + x) * 3 + c] as f32 / 127.5 - 1.0;
                    assert_eq!(out[(c * 4 + y) * 6 + x], want);
                }
            }
        }
    }

    #[test]
    fn cover_then_centre_crop() {
        // 2x8 image of constant columns → 4x4: scaled x2, 16 wide, crop 6 from the left.
        let mut rgb = vec![0u8; 2 * 8 * 3];
        for y in 0..2 {
            for x in 0..8 {
                for c in 0..3 {
                    rgb[(y * 8 + x) * 3 + c] = (x * 30) as u8;
                }
            }
        }
        let out = preprocess(&rgb, 2, 8, 4, 4);
        assert_eq!(out.len(), 3 * 16);
        // Output column 0 is resized column 6 → source position 2.75: 60 + 0.75·30 = 82.5,
        // rounded half to even.
        let v = (out[0] + 1.0) * 127.5;
        assert!((v - 82.0).abs() < 1e-3, "{v}");
    }
}
