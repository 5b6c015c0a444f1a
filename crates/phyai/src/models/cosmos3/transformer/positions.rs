//! mRoPE positions `(t, h, w)` of the joint sequence [text | video | sound | action].
//!
//! Text token `i` sits at `(i, i, i)`. Media start on the time axis at
//! `text_len + temporal_modality_margin`; video and sound share that offset (they are
//! simultaneous, not consecutive). With fps modulation on and more than one frame, the time
//! axis counts in units of the base frame rate: frame `f` of a stream with `r` latent frames
//! per second sits at `offset + f / r · base_r` (f32 arithmetic, in that order), else at
//! `offset + f`. Spatial axes are the patch row/column, shifted by the offset unless
//! `reset_spatial_ids`.

use super::config::TransformerConfig;

/// Video frames per latent frame (the VAE's temporal compression).
pub const VIDEO_TEMPORAL_COMPRESSION: usize = 4;

/// Positions of `n` text tokens.
pub fn text_positions(n: usize) -> Vec<[f32; 3]> {
    (0..n).map(|i| [i as f32; 3]).collect()
}

/// Where the media of a request start on the time axis.
pub fn media_offset(cfg: &TransformerConfig, text_len: usize) -> usize {
    text_len + cfg.unified_3d_mrope_temporal_modality_margin
}

/// Positions of a `(t, h, w)` grid of media tokens in (t, h, w) raster order. `rate` is the
/// stream's latent frames per second and `base_rate` the model's; `None` disables fps
/// modulation (integer time steps).
pub fn grid_positions(
    grid: (usize, usize, usize),
    offset: usize,
    rates: Option<(f64, f64)>,
    reset_spatial: bool,
) -> Vec<[f32; 3]> {
    let (t, h, w) = grid;
    let modulated = rates.filter(|_| t > 1);
    let spatial = if reset_spatial { 0.0 } else { offset as f32 };
    let mut out = Vec::with_capacity(t * h * w);
    for f in 0..t {
        let tf = match modulated {
            Some((rate, base)) => (f as f32 / rate as f32) * base as f32 + offset as f32,
            None => (f + offset) as f32,
        };
        for y in 0..h {
            for x in 0..w {
                out.push([tf, y as f32 + spatial, x as f32 + spatial]);
            }
        }
    }
    out
}

/// Positions of the video tokens: `patches` = (latent frames, patch rows, patch columns).
pub fn video_positions(
    cfg: &TransformerConfig,
    text_len: usize,
    patches: (usize, usize, usize),
    fps: f64,
) -> Vec<[f32; 3]> {
    let c = VIDEO_TEMPORAL_COMPRESSION as f64;
    let rates = cfg
        .enable_fps_modulation
        .then_some((fps / c, cfg.base_fps / c));
    grid_positions(
        patches,
        media_offset(cfg, text_len),
        rates,
        cfg.unified_3d_mrope_reset_spatial_ids,
    )
}

/// Positions of `n` sound tokens (one per latent step, at `sound_latent_fps`).
pub fn sound_positions(cfg: &TransformerConfig, text_len: usize, n: usize) -> Vec<[f32; 3]> {
    let rates = cfg
        .enable_fps_modulation
        .then_some((cfg.sound_latent_fps, cfg.base_fps));
    grid_positions(
        (n, 1, 1),
        media_offset(cfg, text_len),
        rates,
        cfg.unified_3d_mrope_reset_spatial_ids,
    )
}

/// Positions of `n` action tokens. Action `i` is the transition into video frame `i + 1`,
/// so with fps modulation it sits at `offset + (i + 1) / fps · base_fps / 4` (the video's
/// pixel frame rate against the base latent rate), else at `offset + i + 1`.
pub fn action_positions(
    cfg: &TransformerConfig,
    text_len: usize,
    n: usize,
    fps: f64,
) -> Vec<[f32; 3]> {
    let offset = media_offset(cfg, text_len);
    let spatial = if cfg.unified_3d_mrope_reset_spatial_ids {
        0.0
    } else {
        offset as f32
    };
    let base = cfg.base_fps / VIDEO_TEMPORAL_COMPRESSION as f64;
    (0..n)
        .map(|i| {
            let t = if cfg.enable_fps_modulation && n > 1 {
                ((i + 1) as f32 / fps as f32) * base as f32 + offset as f32
            } else {
                (i + 1 + offset) as f32
            };
            [t, spatial, spatial]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_and_sound_layout() {
        let cfg = TransformerConfig::default();
        let p = video_positions(&cfg, 7, (3, 2, 2), 16.0);
        assert_eq!(p.len(), 12);
        // 16 fps → 4 latent fps vs base 6: frames 1.5 base steps apart.
        assert_eq!(p[0], [15007.0, 0.0, 0.0]);
        assert_eq!(p[3], [15007.0, 1.0, 1.0]);
        assert_eq!(p[4], [15008.5, 0.0, 0.0]);
        assert_eq!(p[8][0], 15010.0);
        // One frame: no modulation.
        assert_eq!(
            video_positions(&cfg, 7, (1, 1, 2), 16.0)[1],
            [15007.0, 0.0, 1.0]
        );
        let s = sound_positions(&cfg, 7, 3);
        assert_eq!(s[1], [15007.0 + 0.96, 0.0, 0.0]);
        assert_eq!(text_positions(3)[2], [2.0, 2.0, 2.0]);
        let mut off = cfg.clone();
        off.enable_fps_modulation = false;
        off.unified_3d_mrope_reset_spatial_ids = false;
        let p = video_positions(&off, 1, (2, 1, 2), 16.0);
        assert_eq!(p[3], [15002.0, 15001.0, 15002.0]);
        // Actions at 24 fps against base 24/4: a quarter of a base step apart, from 1/4.
        let a = action_positions(&cfg, 7, 4, 24.0);
        assert_eq!(a[0], [15007.25, 0.0, 0.0]);
        assert_eq!(a[3], [15008.0, 0.0, 0.0]);
        assert_eq!(
            action_positions(&off, 1, 2, 24.0)[1],
            [15003.0, 15001.0, 15001.0]
        );
    }
}
