//! A generation request: everything one `Engine::step` needs, with no parallel topology.

use candle_core::Tensor;

use crate::{Error, Result};

/// Latent grid of a video: `t = (frames−1)/4+1`, `h = H/16`, `w = W/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatentShape {
    pub t: usize,
    pub h: usize,
    pub w: usize,
}

/// Converts a pixel-space request (frames, height, width) to the latent grid, checking the
/// VAE's constraints: frames = 4k+1, height and width multiples of 16.
pub fn pixel_to_latent_shape(frames: usize, height: usize, width: usize) -> Result<LatentShape> {
    if frames == 0 || !(frames - 1).is_multiple_of(4) {
        return Err(Error::invalid(
            "--num-frames",
            format!("must be 4k+1 (1, 5, 9, …, 189), got {frames}"),
        ));
    }
    for (flag, v) in [("--height", height), ("--width", width)] {
        if v == 0 || v % 16 != 0 {
            return Err(Error::invalid(
                flag,
                format!("must be a positive multiple of 16, got {v}"),
            ));
        }
    }
    Ok(LatentShape {
        t: (frames - 1) / 4 + 1,
        h: height / 16,
        w: width / 16,
    })
}

/// Number of sound latent frames for a clip, as the reference derives it: the clip's
/// sample count `⌊frames / fps · rate⌋` divided by the decoder's hop (1920), rounded up.
pub fn sound_latent_frames(frames: usize, fps: f64, sample_rate: u32, hop: usize) -> usize {
    let samples = (frames as f64 / fps * sample_rate as f64) as usize;
    samples.div_ceil(hop)
}

/// Clean latent frames that stay fixed through the loop (I2V: the encoded image at frame 0).
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// Normalised latents `[1, C, k, h, w]` for the conditioned frames.
    pub latents: Tensor,
    /// Latent frame indexes they occupy, ascending.
    pub frame_indexes: Vec<usize>,
}

/// Initial noise supplied by the caller instead of drawing it from the seed.
#[derive(Debug, Clone)]
pub struct InitNoise {
    /// `[1, C, t, h, w]` f32.
    pub video: Tensor,
    /// `[1, 64, T]` f32.
    pub sound: Option<Tensor>,
}

#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// Token ids of the positive (conditional) prompt.
    pub pos_ids: Vec<u32>,
    /// Token ids of the negative (unconditional) prompt.
    pub neg_ids: Vec<u32>,
    pub latent: LatentShape,
    pub fps: f64,
    pub steps: usize,
    pub guidance_scale: f64,
    pub seed: u64,
    /// Number of sound latent frames; `None` generates no audio.
    pub sound_frames: Option<usize>,
    pub conditioning: Option<Conditioning>,
    pub init_noise: Option<InitNoise>,
}

impl GenerationRequest {
    /// Request-level checks that do not need the model.
    pub fn validate(&self) -> Result<()> {
        if self.pos_ids.is_empty() {
            return Err(Error::invalid("--prompt", "tokenised to nothing"));
        }
        if self.steps == 0 {
            return Err(Error::invalid("--steps", "must be at least 1"));
        }
        if !(self.fps.is_finite() && self.fps > 0.0) {
            return Err(Error::invalid(
                "--fps",
                format!("must be > 0, got {}", self.fps),
            ));
        }
        if !(self.guidance_scale.is_finite() && self.guidance_scale >= 0.0) {
            return Err(Error::invalid(
                "--guidance-scale",
                format!("must be ≥ 0, got {}", self.guidance_scale),
            ));
        }
        if self.guidance_scale > 1.0 && self.neg_ids.is_empty() {
            return Err(Error::invalid(
                "--negative-prompt",
                "tokenised to nothing but guidance needs an unconditional branch",
            ));
        }
        if let Some(c) = &self.conditioning {
            if c.frame_indexes.iter().any(|&i| i >= self.latent.t) {
                return Err(Error::invalid(
                    "conditioning",
                    "frame index beyond the latent length",
                ));
            }
        }
        Ok(())
    }

    /// Classifier-free guidance runs the unconditional branch only when it matters.
    pub fn uses_cfg(&self) -> bool {
        crate::models::cosmos3::sampler::uses_cfg(self.guidance_scale)
    }
}

/// What one request produces.
#[derive(Debug, Clone)]
pub struct GenerationOutput {
    /// Pixels `[1, 3, T, H, W]` in [0, 1], f32.
    pub video: Tensor,
    /// Waveform `[1, 2, N]` in [−1, 1], f32, with its sample rate.
    pub audio: Option<(Tensor, u32)>,
    /// Final latents `[1, C, t, h, w]` (and sound `[1, 64, T]`), f32.
    pub latents: Tensor,
    pub sound_latents: Option<Tensor>,
    /// Wall time per stage, in order.
    pub timings: Vec<(String, std::time::Duration)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latent_shape_of_reference_sizes() {
        assert_eq!(
            pixel_to_latent_shape(189, 720, 1280).unwrap(),
            LatentShape {
                t: 48,
                h: 45,
                w: 80
            }
        );
        assert_eq!(
            pixel_to_latent_shape(93, 480, 832).unwrap(),
            LatentShape {
                t: 24,
                h: 30,
                w: 52
            }
        );
        assert_eq!(
            pixel_to_latent_shape(1, 16, 16).unwrap(),
            LatentShape { t: 1, h: 1, w: 1 }
        );
    }

    #[test]
    fn latent_shape_rejects_bad_sizes() {
        for (f, h, w, flag) in [
            (188, 720, 1280, "--num-frames"),
            (0, 720, 1280, "--num-frames"),
            (189, 721, 1280, "--height"),
            (189, 720, 1000, "--width"),
            (189, 0, 1280, "--height"),
        ] {
            let e = pixel_to_latent_shape(f, h, w).unwrap_err().to_string();
            assert!(e.starts_with(flag), "{e}");
        }
    }

    #[test]
    fn sound_frames_follow_the_duration() {
        // 189 frames at 24 fps = 7.875 s → 196.875 → 197 latent steps at 25 Hz.
        assert_eq!(sound_latent_frames(189, 24.0, 48_000, 1920), 197);
        assert_eq!(sound_latent_frames(24, 24.0, 48_000, 1920), 25);
        assert_eq!(sound_latent_frames(9, 24.0, 48_000, 1920), 10);
    }
}
