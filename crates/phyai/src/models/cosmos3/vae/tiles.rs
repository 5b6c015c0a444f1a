//! Spatially tiled video decode: the latent `(h, w)` plane is cut into a near-square grid of
//! tiles; each tile is decoded with a halo of extra latent pixels on its interior sides, and
//! the pixel tiles are blended with a linear feather ramp (`halo·scale` pixels wide) and
//! normalised by the summed weights.
//!
//! Two uses share this code: N ranks each decode the tile of their index and then gather
//! and [`TilePlan::assemble`] (every rank ends with the same video), or one device decodes
//! the tiles in sequence ([`decode_tiled`]) to bound peak memory by a tile.

use std::ops::Range;

use candle_core::{DType, Tensor};

use super::decoder::WanDecoder;
use crate::{Error, Result};

/// Latent pixels of overlap each tile decodes beyond its core on interior sides.
pub const DEFAULT_HALO: usize = 2;

/// Tile grid: `rows` tiles along h, `cols` along w.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileGrid {
    pub rows: usize,
    pub cols: usize,
}

impl TileGrid {
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Factors `n_tiles` into the divisor pair closest to square (2 → 1×2, 4 → 2×2, 8 → 2×4,
/// a prime p → 1×p), the larger factor along the larger latent side (ties: along w). Every
/// rank computes the same grid, so the split is consistent without communication.
pub fn tile_grid(n_tiles: usize, h: usize, w: usize) -> Result<TileGrid> {
    if n_tiles == 0 {
        return Err(Error::invalid("tiles", "need at least one tile"));
    }
    let mut small = 1;
    let mut r = 1;
    while r * r <= n_tiles {
        if n_tiles.is_multiple_of(r) {
            small = r;
        }
        r += 1;
    }
    let large = n_tiles / small;
    let grid = if h > w {
        TileGrid {
            rows: large,
            cols: small,
        }
    } else {
        TileGrid {
            rows: small,
            cols: large,
        }
    };
    if grid.rows > h || grid.cols > w {
        return Err(Error::invalid(
            "tiles",
            format!(
                "{n_tiles} tiles ({}×{}) do not fit a {h}×{w} latent",
                grid.rows, grid.cols
            ),
        ));
    }
    Ok(grid)
}

/// One axis of a tile: `core` is the part it owns, `halo` the slice it decodes (core widened
/// by the halo on interior sides, clipped to the axis).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TileSpan {
    pub core: Range<usize>,
    pub halo: Range<usize>,
}

/// Span of tile `idx` of `n` over an axis of `len`; integer division spreads a remainder
/// without gaps or overlap of the cores.
pub fn tile_span(len: usize, n: usize, idx: usize, halo: usize) -> TileSpan {
    let start = idx * len / n;
    let end = (idx + 1) * len / n;
    TileSpan {
        core: start..end,
        halo: start.saturating_sub(halo)..(end + halo).min(len),
    }
}

/// Linear ramp of length `n`: rises over the first `feather` samples, falls over the last,
/// 1 in between; all ones when `feather == 0`. Strictly positive, so the summed weights
/// never vanish.
pub fn feather_ramp(n: usize, feather: usize) -> Vec<f32> {
    if feather == 0 || n <= 1 {
        return vec![1.0; n];
    }
    let f = (feather + 1) as f32;
    (0..n)
        .map(|i| {
            let up = (i + 1) as f32 / f;
            let down = (n - i) as f32 / f;
            up.min(down).min(1.0)
        })
        .collect()
}

/// The tiles of one latent `(h, w)` plane.
#[derive(Debug, Clone)]
pub struct TilePlan {
    pub grid: TileGrid,
    pub h: usize,
    pub w: usize,
    pub halo: usize,
    /// Pixels per latent pixel.
    pub scale: usize,
}

impl TilePlan {
    pub fn new(n_tiles: usize, h: usize, w: usize, halo: usize, scale: usize) -> Result<Self> {
        Ok(Self {
            grid: tile_grid(n_tiles, h, w)?,
            h,
            w,
            halo,
            scale,
        })
    }

    /// `(rows span, cols span)` of tile `index` (row-major over the grid).
    pub fn spans(&self, index: usize) -> Result<(TileSpan, TileSpan)> {
        if index >= self.grid.len() {
            return Err(Error::invalid(
                "tile index",
                format!("{index} is outside the {} tiles", self.grid.len()),
            ));
        }
        let (i, j) = (index / self.grid.cols, index % self.grid.cols);
        Ok((
            tile_span(self.h, self.grid.rows, i, self.halo),
            tile_span(self.w, self.grid.cols, j, self.halo),
        ))
    }

    /// The latent slice `[B, z, t, rows.halo, cols.halo]` tile `index` decodes.
    pub fn latent_tile(&self, latents: &Tensor, index: usize) -> Result<Tensor> {
        let (r, c) = self.spans(index)?;
        Ok(latents
            .narrow(3, r.halo.start, r.halo.len())?
            .narrow(4, c.halo.start, c.halo.len())?
            .contiguous()?)
    }

    /// Blends decoded pixel tiles `(index, [B, 3, T, th, tw])` into the full video
    /// `[B, 3, T, h·scale, w·scale]`. Every tile of the grid must be present exactly once.
    pub fn assemble(&self, tiles: &[(usize, Tensor)]) -> Result<Tensor> {
        let mut seen = vec![false; self.grid.len()];
        for (idx, _) in tiles {
            match seen.get_mut(*idx) {
                Some(s) if !*s => *s = true,
                _ => {
                    return Err(Error::invalid(
                        "tiles",
                        format!("tile {idx} is duplicated or outside the grid"),
                    ))
                }
            }
        }
        if seen.iter().any(|s| !s) {
            return Err(Error::invalid(
                "tiles",
                "some tiles of the grid are missing",
            ));
        }
        let (full_h, full_w) = (self.h * self.scale, self.w * self.scale);
        let feather = self.halo * self.scale;
        let mut acc: Option<Tensor> = None;
        let mut wsum: Option<Tensor> = None;
        for (idx, px) in tiles {
            let (r, c) = self.spans(*idx)?;
            let (_, _, _, th, tw) = px.dims5()?;
            let (eh, ew) = (r.halo.len() * self.scale, c.halo.len() * self.scale);
            if (th, tw) != (eh, ew) {
                return Err(Error::invalid(
                    "tiles",
                    format!("tile {idx} is {th}×{tw} pixels, expected {eh}×{ew}"),
                ));
            }
            let dev = px.device();
            let rh = Tensor::from_vec(feather_ramp(th, feather), (th, 1), dev)?;
            let rw = Tensor::from_vec(feather_ramp(tw, feather), (1, tw), dev)?;
            let weight = rh.broadcast_mul(&rw)?.reshape((1, 1, 1, th, tw))?;
            let (y0, x0) = (r.halo.start * self.scale, c.halo.start * self.scale);
            let place = |x: &Tensor| -> Result<Tensor> {
                Ok(x.pad_with_zeros(3, y0, full_h - y0 - th)?.pad_with_zeros(
                    4,
                    x0,
                    full_w - x0 - tw,
                )?)
            };
            let contrib = place(&px.to_dtype(DType::F32)?.broadcast_mul(&weight)?)?;
            let w_full = place(&weight)?;
            acc = Some(match acc {
                Some(a) => (a + contrib)?,
                None => contrib,
            });
            wsum = Some(match wsum {
                Some(s) => (s + w_full)?,
                None => w_full,
            });
        }
        let (acc, wsum) = match (acc, wsum) {
            (Some(a), Some(s)) => (a, s),
            _ => return Err(Error::invalid("tiles", "no tiles to assemble")),
        };
        let out = acc.broadcast_div(&wsum.maximum(1e-6)?)?.clamp(0f32, 1f32)?;
        Ok(out.to_dtype(tiles[0].1.dtype())?)
    }
}

/// Decodes tile `index` of `plan`: pixels `[B, 3, T, th, tw]` in [0, 1].
pub fn decode_tile(
    decoder: &WanDecoder,
    latents: &Tensor,
    plan: &TilePlan,
    index: usize,
) -> Result<Tensor> {
    decoder.decode(&plan.latent_tile(latents, index)?)
}

/// Decodes all tiles in sequence on one device and blends them: same result as N ranks
/// each decoding one tile, with peak memory of one tile's decode.
pub fn decode_tiled(decoder: &WanDecoder, latents: &Tensor, n_tiles: usize) -> Result<Tensor> {
    let (_, _, _, h, w) = latents.dims5()?;
    let plan = TilePlan::new(n_tiles, h, w, DEFAULT_HALO, decoder.spatial_scale())?;
    let tiles = (0..plan.grid.len())
        .map(|i| Ok((i, decode_tile(decoder, latents, &plan, i)?)))
        .collect::<Result<Vec<_>>>()?;
    plan.assemble(&tiles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_is_near_square_and_oriented() {
        let g = |n, h, w| tile_grid(n, h, w).unwrap();
        assert_eq!(g(1, 8, 8), TileGrid { rows: 1, cols: 1 });
        assert_eq!(g(2, 8, 8), TileGrid { rows: 1, cols: 2 });
        assert_eq!(g(4, 8, 8), TileGrid { rows: 2, cols: 2 });
        assert_eq!(g(8, 8, 8), TileGrid { rows: 2, cols: 4 });
        assert_eq!(g(8, 16, 8), TileGrid { rows: 4, cols: 2 });
        assert_eq!(g(6, 44, 80), TileGrid { rows: 2, cols: 3 });
        assert_eq!(g(7, 44, 80), TileGrid { rows: 1, cols: 7 });
        assert!(tile_grid(0, 8, 8).is_err());
        assert!(tile_grid(8, 1, 3).is_err());
    }

    #[test]
    fn spans_cover_the_axis_without_gaps() {
        for len in [5usize, 8, 11, 44] {
            for n in 1..=4 {
                let mut next = 0;
                for i in 0..n {
                    let s = tile_span(len, n, i, 2);
                    assert_eq!(s.core.start, next);
                    assert!(s.core.end > s.core.start);
                    assert_eq!(s.halo.start, s.core.start.saturating_sub(2));
                    assert_eq!(s.halo.end, (s.core.end + 2).min(len));
                    next = s.core.end;
                }
                assert_eq!(next, len);
            }
        }
        assert_eq!(
            tile_span(8, 2, 0, 2),
            TileSpan {
                core: 0..4,
                halo: 0..6
            }
        );
        assert_eq!(
            tile_span(8, 2, 1, 2),
            TileSpan {
                core: 4..8,
                halo: 2..8
            }
        );
    }

    #[test]
    fn feather_ramp_shape() {
        assert_eq!(feather_ramp(4, 0), vec![1.0; 4]);
        let r = feather_ramp(10, 3);
        assert_eq!(
            r,
            vec![0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25]
        );
        assert!(feather_ramp(3, 5).iter().all(|&v| v > 0.0));
    }

    #[test]
    fn assemble_of_constant_tiles_is_constant() {
        let dev = candle_core::Device::Cpu;
        let plan = TilePlan::new(4, 6, 8, 2, 2).unwrap();
        let tiles: Vec<(usize, Tensor)> = (0..4)
            .map(|i| {
                let (r, c) = plan.spans(i).unwrap();
                let t = Tensor::full(0.25f32, (1, 3, 2, r.halo.len() * 2, c.halo.len() * 2), &dev);
                (i, t.unwrap())
            })
            .collect();
        let out = plan.assemble(&tiles).unwrap();
        assert_eq!(out.dims(), &[1, 3, 2, 12, 16]);
        let v: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|x| (x - 0.25).abs() < 1e-6));
        assert!(plan.assemble(&tiles[..3]).is_err());
        assert!(plan.spans(4).is_err());
    }
}
