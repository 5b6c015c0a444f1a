//! The video decode split over every rank of the mesh: rank r decodes spatial tile r (with
//! its halo), the tiles are all-gathered and every rank blends the same full video.

use candle_core::Tensor;

use super::tiles::{decode_tile, tile_grid, TilePlan, DEFAULT_HALO};
use super::WanDecoder;
use crate::parallel::RankMesh;
use crate::Result;

/// The most tiles (≤ `ranks`) the latent grid `h × w` can be split into.
fn tile_count(ranks: usize, h: usize, w: usize) -> usize {
    (1..=ranks)
        .rev()
        .find(|&n| tile_grid(n, h, w).is_ok())
        .unwrap_or(1)
}

/// Decodes `latents` `[1, z, t, h, w]` across the world of `mesh`; `frames` is the pixel
/// frame count the decoder produces. Ranks beyond the tile count decode nothing but join
/// the gather. Returns the full `[1, 3, frames, H, W]` video on every rank.
pub fn decode_parallel(
    decoder: &WanDecoder,
    latents: &Tensor,
    frames: usize,
    mesh: &RankMesh,
) -> Result<Tensor> {
    let (_, _, _, h, w) = latents.dims5()?;
    let world = mesh.world.size();
    let n = tile_count(world, h, w);
    let plan = TilePlan::new(n, h, w, DEFAULT_HALO, decoder.spatial_scale())?;
    let s = decoder.spatial_scale();
    // Tiles differ in size; pad each to the largest so the gather has one shape.
    let mut max_h = 0;
    let mut max_w = 0;
    for i in 0..n {
        let (r, c) = plan.spans(i)?;
        max_h = max_h.max(r.halo.len() * s);
        max_w = max_w.max(c.halo.len() * s);
    }
    let rank = mesh.world.rank();
    let mine = if rank < n {
        let px = decode_tile(decoder, latents, &plan, rank)?;
        let (_, _, _, th, tw) = px.dims5()?;
        px.pad_with_zeros(3, 0, max_h - th)?
            .pad_with_zeros(4, 0, max_w - tw)?
    } else {
        Tensor::zeros(
            (1, 3, frames, max_h, max_w),
            latents.dtype(),
            latents.device(),
        )?
    };
    let all = mesh.world.all_gather(&mine.contiguous()?, 0)?;
    let tiles = (0..n)
        .map(|i| {
            let (r, c) = plan.spans(i)?;
            let t = all
                .narrow(0, i, 1)?
                .narrow(3, 0, r.halo.len() * s)?
                .narrow(4, 0, c.halo.len() * s)?;
            Ok((i, t))
        })
        .collect::<Result<Vec<_>>>()?;
    plan.assemble(&tiles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_count_falls_back_to_what_the_grid_allows() {
        assert_eq!(tile_count(8, 45, 80), 8);
        assert_eq!(tile_count(8, 1, 3), 3);
        assert_eq!(tile_count(1, 4, 4), 1);
    }
}
