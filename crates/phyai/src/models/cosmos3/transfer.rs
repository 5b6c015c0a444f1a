//! Transfer: video-to-video steered by control hints (see [`super::control`]). The request
//! part and the chunk geometry; the chunk loop itself is [`super::transfer_loop`].
//!
//! As in the reference, the output is as long as the first control clip (canonical order),
//! capped by the request's `num_frames`, and is generated in chunks of `chunk_frames`
//! (rounded up to 4k+1; default: the whole clip). Each chunk after the first starts `stride
//! = chunk_frames − conditional_frames` frames after the previous one and is conditioned on
//! the previous chunk's last `conditional_frames` decoded frames, re-encoded. Controls of
//! different lengths are accepted as the reference accepts them: a shorter one is
//! reflect-padded in time, a longer one is used up to the output length.

use candle_core::Tensor;

use super::control::{canonical, Control};
use super::request::pixel_to_latent_shape;
use super::sampler::GuidanceInterval;
use crate::{Error, Result};

/// The transfer part of a request.
#[derive(Debug, Clone)]
pub struct TransferInput {
    /// Control clips in any order, at most one per hint (ordered canonically when run).
    pub controls: Vec<Control>,
    /// Pixel frames per chunk, rounded up to 4k+1 (`None`: the whole clip in one chunk).
    pub chunk_frames: Option<usize>,
    /// Frames each chunk after the first reuses from the end of the previous one.
    pub conditional_frames: usize,
    /// Scale of the control guidance axis: `c₀ + gc·(c − c₀)` with `c₀` the conditional
    /// velocity without the controls; 1 runs no control-free branch.
    pub control_guidance: f64,
    /// Control guidance only at timesteps in this interval (default: every step).
    pub control_guidance_interval: Option<GuidanceInterval>,
    /// Initial noise of every chunk, `[chunks, 1, C, t, h, w]`, used in order instead of the
    /// seed's generator.
    pub chunk_noise: Option<Tensor>,
}

impl TransferInput {
    /// Controls with the reference's defaults: one chunk, one conditional frame, control
    /// guidance 1 at every step.
    pub fn new(controls: Vec<Control>) -> Self {
        Self {
            controls,
            chunk_frames: None,
            conditional_frames: 1,
            control_guidance: 1.0,
            control_guidance_interval: None,
            chunk_noise: None,
        }
    }

    /// The controls in canonical hint order.
    pub fn ordered(&self) -> Result<Vec<Control>> {
        canonical(self.controls.clone(), "controls")
    }

    /// The chunk geometry of a request of `num_frames` (the cap on the output length).
    pub fn plan(&self, num_frames: usize) -> Result<ChunkPlan> {
        let first = self
            .ordered()?
            .first()
            .ok_or_else(|| Error::invalid("controls", "transfer needs at least one control"))?
            .frames
            .dim(2)?;
        ChunkPlan::new(
            first,
            num_frames,
            self.chunk_frames,
            self.conditional_frames,
        )
    }

    /// Every check that needs no model, for a clip of `height × width` capped at
    /// `num_frames` frames.
    pub fn validate(&self, num_frames: usize, height: usize, width: usize) -> Result<()> {
        if num_frames == 0 {
            return Err(Error::invalid("num_frames", "must be at least 1"));
        }
        if self.chunk_frames == Some(0) {
            return Err(Error::invalid("chunk_frames", "must be at least 1"));
        }
        let controls = self.ordered()?;
        for c in &controls {
            let d = c.frames.dims();
            if d.len() != 5 || d[0] != 1 || d[1] != 3 || d[2] == 0 || d[3..] != [height, width] {
                return Err(Error::invalid(
                    "controls",
                    format!(
                        "the {} clip has shape {d:?}, the request needs [1, 3, F, {height}, {width}]",
                        c.hint
                    ),
                ));
            }
        }
        let plan = self.plan(num_frames)?;
        pixel_to_latent_shape(plan.chunk_frames, height, width)?;
        let g = self.control_guidance;
        if !(g.is_finite() && g >= 0.0) {
            return Err(Error::invalid(
                "control_guidance",
                format!("must be ≥ 0, got {g}"),
            ));
        }
        if let Some(n) = &self.chunk_noise {
            let d = n.dims();
            if d.len() != 6 || d[0] != plan.num_chunks || d[1] != 1 || d[3] != plan.latent_frames()
            {
                return Err(Error::invalid(
                    "chunk_noise",
                    format!(
                        "has shape {d:?}, the request needs [{}, 1, C, {}, h, w] ({} chunks of {} frames)",
                        plan.num_chunks,
                        plan.latent_frames(),
                        plan.num_chunks,
                        plan.chunk_frames
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// How a transfer clip splits into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlan {
    /// Output frames.
    pub total_frames: usize,
    /// Pixel frames of every chunk, 4k+1.
    pub chunk_frames: usize,
    pub num_chunks: usize,
    /// Frames between the starts of consecutive chunks.
    pub stride: usize,
    /// Frames each chunk after the first reuses from the previous one.
    pub conditional_frames: usize,
}

impl ChunkPlan {
    /// The reference's geometry: `control_frames` capped at `num_frames`, chunks of
    /// `chunk_frames` (default: all) rounded up to 4k+1 (a one-frame clip is one frame).
    pub fn new(
        control_frames: usize,
        num_frames: usize,
        chunk_frames: Option<usize>,
        conditional_frames: usize,
    ) -> Result<Self> {
        let total = control_frames.min(num_frames).max(1);
        let per_chunk = chunk_frames.unwrap_or(total).max(1);
        let chunk = if total == 1 {
            1
        } else {
            (per_chunk - 1).div_ceil(4) * 4 + 1
        };
        if total <= chunk {
            return Ok(Self {
                total_frames: total,
                chunk_frames: chunk,
                num_chunks: 1,
                stride: chunk,
                conditional_frames,
            });
        }
        if conditional_frames >= chunk {
            return Err(Error::invalid(
                "conditional_frames",
                format!(
                    "{conditional_frames} must be below the chunk length ({chunk} frames{})",
                    if chunk_frames.is_some_and(|c| c != chunk) {
                        " after rounding up to 4k+1"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let stride = chunk - conditional_frames;
        let remaining = total - chunk;
        Ok(Self {
            total_frames: total,
            chunk_frames: chunk,
            num_chunks: 1 + remaining.div_ceil(stride),
            stride,
            conditional_frames,
        })
    }

    /// Latent frames of a chunk.
    pub fn latent_frames(&self) -> usize {
        (self.chunk_frames - 1) / 4 + 1
    }

    /// Frames every control is padded to before chunking.
    pub fn padded_frames(&self) -> usize {
        self.total_frames.max(self.chunk_frames)
    }

    /// Output frames `start..end` chunk `k`'s controls cover (before padding to a chunk).
    pub fn window(&self, k: usize) -> (usize, usize) {
        let start = k * self.stride;
        (start, (start + self.chunk_frames).min(self.total_frames))
    }

    /// Pixel frames chunk `k` reuses from the previous chunk (none for the first).
    pub fn reused_frames(&self, k: usize) -> usize {
        if k == 0 {
            0
        } else {
            self.conditional_frames.min(self.chunk_frames)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::cosmos3::control::Hint;
    use candle_core::{DType, Device};

    #[test]
    fn geometry_follows_the_reference() {
        // 11 frames in chunks of 6 → 9, reusing 5: stride 4, two chunks (0..9, 4..11).
        let p = ChunkPlan::new(11, usize::MAX, Some(6), 5).unwrap();
        assert_eq!(
            (p.total_frames, p.chunk_frames, p.num_chunks, p.stride),
            (11, 9, 2, 4)
        );
        assert_eq!((p.window(0), p.window(1)), ((0, 9), (4, 11)));
        assert_eq!((p.padded_frames(), p.latent_frames()), (11, 3));
        // The whole clip in one chunk, rounded up; the cap shortens the output.
        let p = ChunkPlan::new(11, 7, None, 1).unwrap();
        assert_eq!((p.total_frames, p.chunk_frames, p.num_chunks), (7, 9, 1));
        assert_eq!(p.padded_frames(), 9);
        // 189 frames in chunks of 93 reusing 1: 92 new frames per chunk → 3 chunks.
        let p = ChunkPlan::new(189, 189, Some(93), 1).unwrap();
        assert_eq!((p.num_chunks, p.stride), (3, 92));
        assert_eq!(ChunkPlan::new(1, 5, Some(9), 1).unwrap().chunk_frames, 1);
        let e = ChunkPlan::new(11, 11, Some(5), 5).unwrap_err().to_string();
        assert!(e.starts_with("conditional_frames: 5 must be below"), "{e}");
        // One chunk needs no conditional frames, whatever their number.
        assert!(ChunkPlan::new(5, 5, Some(5), 9).is_ok());
    }

    #[test]
    fn bad_transfer_inputs_name_their_field() {
        let clip = |f| Tensor::zeros((1, 3, f, 16, 32), DType::F32, &Device::Cpu).unwrap();
        let ok = TransferInput::new(vec![Control {
            hint: Hint::Edge,
            frames: clip(9),
        }]);
        ok.validate(9, 16, 32).unwrap();
        let mut cases: Vec<(TransferInput, usize, &str)> = Vec::new();
        cases.push((TransferInput::new(vec![]), 9, "controls"));
        let mut t = ok.clone();
        t.controls[0].frames = clip(9).narrow(3, 0, 8).unwrap();
        cases.push((t, 9, "controls"));
        let mut t = ok.clone();
        t.controls.push(t.controls[0].clone());
        cases.push((t, 9, "controls"));
        let mut t = ok.clone();
        t.chunk_frames = Some(5);
        t.conditional_frames = 5;
        cases.push((t, 9, "conditional_frames"));
        let mut t = ok.clone();
        t.control_guidance = f64::NAN;
        cases.push((t, 9, "control_guidance"));
        let mut t = ok.clone();
        t.chunk_noise = Some(Tensor::zeros((2, 1, 4, 3, 1, 2), DType::F32, &Device::Cpu).unwrap());
        cases.push((t, 9, "chunk_noise"));
        cases.push((ok.clone(), 0, "num_frames"));
        for (t, frames, field) in cases {
            let e = t.validate(frames, 16, 32).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{field}: ")), "{field}: {e}");
        }
    }

    #[test]
    fn transfer_requests_refuse_what_transfer_does_not_use() {
        use crate::models::cosmos3::{Cosmos3Request, InitNoise, Prompt};
        let clip = Tensor::zeros((1, 3, 7, 16, 32), DType::F32, &Device::Cpu).unwrap();
        // Any length up to the cap: the output is the control's 7 frames.
        let mut ok = Cosmos3Request::new(Prompt::text("a road"), usize::MAX, 16, 32);
        ok.transfer = Some(TransferInput::new(vec![Control {
            hint: Hint::Depth,
            frames: clip.clone(),
        }]));
        ok.validate().unwrap();
        let mut r = ok.clone();
        r.sound = true;
        let mut cases = vec![(r, "sound")];
        let mut r = ok.clone();
        r.image = Some(Tensor::zeros((1, 3, 16, 32), DType::F32, &Device::Cpu).unwrap());
        cases.push((r, "image"));
        let mut r = ok.clone();
        r.init_noise = Some(InitNoise {
            video: clip.clone(),
            sound: None,
        });
        cases.push((r, "init_noise"));
        let mut r = ok.clone();
        r.height = 24;
        cases.push((r, "controls"));
        for (r, field) in cases {
            let e = r.validate().unwrap_err().to_string();
            assert!(e.starts_with(&format!("{field}: ")), "{field}: {e}");
        }
    }
}
