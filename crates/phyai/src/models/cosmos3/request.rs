//! The Cosmos3 plugin's request and output: what a caller asks for (prompt, clip size,
//! sampling settings, optional image and sound), checked before any work, and what one
//! request produces. Errors name request fields (`num_frames`, `steps`, …); front ends map
//! them to their own flag or parameter names.

use candle_core::Tensor;

use super::action::{ActionMode, ActionRequest};
use super::continuation::VideoCondition;
use super::processor::PromptStyle;
use super::sampler::{uses_cfg, GuidanceInterval};
use super::transfer::TransferInput;
use crate::{Error, Result};

/// Latent grid of a video: `t = (frames−1)/4+1`, `h = H/16`, `w = W/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatentShape {
    pub t: usize,
    pub h: usize,
    pub w: usize,
}

/// Converts a pixel-space clip (frames, height, width) to the latent grid, checking the
/// VAE's constraints: frames = 4k+1, height and width multiples of 16.
pub fn pixel_to_latent_shape(frames: usize, height: usize, width: usize) -> Result<LatentShape> {
    if frames == 0 || !(frames - 1).is_multiple_of(4) {
        return Err(Error::invalid(
            "num_frames",
            format!("must be 4k+1 (1, 5, 9, …, 189), got {frames}"),
        ));
    }
    for (field, v) in [("height", height), ("width", width)] {
        if v == 0 || v % 16 != 0 {
            return Err(Error::invalid(
                field,
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
/// sample count `⌊frames / fps · rate⌋` divided by the decoder's hop, rounded up.
pub fn sound_latent_frames(frames: usize, fps: f64, sample_rate: u32, hop: usize) -> usize {
    let samples = (frames as f64 / fps * sample_rate as f64) as usize;
    samples.div_ceil(hop)
}

/// What a front end fills in when a request leaves the clip and sampling settings out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipDefaults {
    pub width: usize,
    pub height: usize,
    pub num_frames: usize,
    pub steps: usize,
    pub fps: f64,
    pub guidance_scale: f64,
    pub seed: u32,
}

impl ClipDefaults {
    /// The reference's defaults (1280×720, 189 frames at 24 fps, 35 steps, guidance 6,
    /// seed 42), for real checkpoints.
    pub const REFERENCE: Self = Self {
        width: 1280,
        height: 720,
        num_frames: 189,
        steps: 35,
        fps: 24.0,
        guidance_scale: 6.0,
        seed: 42,
    };

    /// Small enough for the random-weight demo checkpoint to finish in seconds on a CPU.
    pub const DEMO: Self = Self {
        width: 224,
        height: 128,
        num_frames: 17,
        steps: 8,
        ..Self::REFERENCE
    };
}

/// The text of a request: a prompt for the plugin's processor to format and tokenize, or
/// token ids already made (tests replaying a reference's exact ids).
#[derive(Debug, Clone)]
pub enum Prompt {
    Text {
        prompt: String,
        /// The unconditional prompt; `None` takes the style's default.
        negative_prompt: Option<String>,
        style: PromptStyle,
    },
    Tokens {
        /// Ids of the positive (conditional) branch.
        pos: Vec<u32>,
        /// Ids of the negative (unconditional) branch.
        neg: Vec<u32>,
    },
}

impl Prompt {
    /// A plain-text prompt in the default (PhyAI) style with the default negative prompt.
    pub fn text(prompt: impl Into<String>) -> Self {
        Prompt::Text {
            prompt: prompt.into(),
            negative_prompt: None,
            style: PromptStyle::Phyai,
        }
    }
}

/// Initial noise supplied by the caller instead of drawing it from the seed.
#[derive(Debug, Clone)]
pub struct InitNoise {
    /// `[1, C, t, h, w]` f32.
    pub video: Tensor,
    /// `[1, 64, T]` f32.
    pub sound: Option<Tensor>,
}

/// Video-to-video continuation: the video whose frames condition the request.
#[derive(Debug, Clone)]
pub struct VideoInput {
    /// `[1, 3, F, height, width]` in [−1, 1] (see `io::frames::load_video`).
    pub frames: Tensor,
    /// Which latent frames it fixes and from which end of the video.
    pub condition: VideoCondition,
}

/// One generation: text (and optionally an image) to a clip (and optionally its sound).
#[derive(Debug, Clone)]
pub struct Cosmos3Request {
    pub prompt: Prompt,
    /// Frames of the clip, 4k+1.
    pub num_frames: usize,
    /// Pixels, multiples of 16.
    pub height: usize,
    pub width: usize,
    pub fps: f64,
    pub steps: usize,
    /// Classifier-free guidance scale; > 1 runs the unconditional branch too.
    pub guidance_scale: f64,
    /// Guide only the steps whose timestep lies in this interval (default: every step).
    pub guidance_interval: Option<GuidanceInterval>,
    /// Seed of the initial noise (numpy `RandomState`, whose seeds are 32-bit).
    pub seed: u32,
    /// Also generate the soundtrack (the plugin must be loaded with the audio decoder).
    pub sound: bool,
    /// Image-to-video: `[1, 3, height, width]` in [−1, 1] (see `io::image::load_image`),
    /// kept as the clean first latent frame.
    pub image: Option<Tensor>,
    /// Video-to-video continuation (exclusive with `image`).
    pub video: Option<VideoInput>,
    pub init_noise: Option<InitNoise>,
    /// Distilled checkpoints only: the per-step SDE noise `[steps, 1, C, t, h, w]`, used in
    /// order instead of drawing it from the seed.
    pub step_noise: Option<Tensor>,
    /// Action-conditioned generation (checkpoints with `action_gen`). The conditioning
    /// pixels are `image` or `video` at their own size; `num_frames`, `height` and `width`
    /// are derived from them and the chunk (see [`super::action`]) and not read.
    pub action: Option<ActionRequest>,
    /// Transfer: a clip following these control maps (exclusive with `image`, `video` and
    /// `sound`). `num_frames` then caps the output, which is as long as the controls.
    pub transfer: Option<TransferInput>,
}

impl Cosmos3Request {
    /// A text-to-video request at the given size with the reference's sampling defaults
    /// (24 fps, 35 steps, guidance 6, seed 42).
    pub fn new(prompt: Prompt, num_frames: usize, height: usize, width: usize) -> Self {
        Self {
            prompt,
            num_frames,
            height,
            width,
            fps: 24.0,
            steps: 35,
            guidance_scale: 6.0,
            guidance_interval: None,
            seed: 42,
            sound: false,
            image: None,
            video: None,
            init_noise: None,
            step_noise: None,
            action: None,
            transfer: None,
        }
    }

    /// Classifier-free guidance runs the unconditional branch only when it matters.
    pub fn uses_cfg(&self) -> bool {
        uses_cfg(self.guidance_scale)
    }

    /// The latent grid of the clip.
    pub fn latent(&self) -> Result<LatentShape> {
        pixel_to_latent_shape(self.num_frames, self.height, self.width)
    }

    /// Every check that needs no model.
    pub fn validate(&self) -> Result<()> {
        match (&self.transfer, &self.action) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "transfer",
                    "transfer and action modes cannot be combined",
                ))
            }
            (Some(t), None) => self.validate_transfer(t)?,
            (None, Some(_)) => {}
            (None, None) => {
                self.latent()?;
            }
        }
        match &self.prompt {
            Prompt::Text { prompt, .. } => {
                if prompt.trim().is_empty() {
                    return Err(Error::invalid("prompt", "must not be empty"));
                }
            }
            Prompt::Tokens { pos, neg } => {
                if pos.is_empty() {
                    return Err(Error::invalid("prompt", "tokenised to nothing"));
                }
                if self.uses_cfg() && neg.is_empty() {
                    return Err(Error::invalid(
                        "negative_prompt",
                        "tokenised to nothing but guidance needs an unconditional branch",
                    ));
                }
            }
        }
        if self.steps == 0 {
            return Err(Error::invalid("steps", "must be at least 1"));
        }
        if !(self.fps.is_finite() && self.fps > 0.0) {
            return Err(Error::invalid(
                "fps",
                format!("must be > 0, got {}", self.fps),
            ));
        }
        if !(self.guidance_scale.is_finite() && self.guidance_scale >= 0.0) {
            return Err(Error::invalid(
                "guidance_scale",
                format!("must be ≥ 0, got {}", self.guidance_scale),
            ));
        }
        if let Some(a) = &self.action {
            return self.validate_action(a);
        }
        if let Some(v) = &self.video {
            if self.image.is_some() {
                return Err(Error::invalid(
                    "video",
                    "give either an image or a video, not both",
                ));
            }
            let d = v.frames.dims();
            if d.len() != 5
                || d[0] != 1
                || d[1] != 3
                || d[2] == 0
                || d[3..] != [self.height, self.width]
            {
                return Err(Error::invalid(
                    "video",
                    format!(
                        "frames have shape {d:?}, the request needs [1, 3, F, {}, {}]",
                        self.height, self.width
                    ),
                ));
            }
            v.condition.validate(self.latent()?.t)?;
        }
        if let Some(img) = &self.image {
            let want = [1, 3, self.height, self.width];
            if img.dims() != want {
                return Err(Error::invalid(
                    "image",
                    format!(
                        "pixels have shape {:?}, the request needs {want:?}",
                        img.dims()
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Cosmos3Request {
    /// The conditioning pixels `[1, 3, F, H, W]` of an action request and the field they
    /// came from.
    pub fn action_pixels(&self) -> Result<(Tensor, &'static str)> {
        match (&self.image, &self.video) {
            (Some(_), Some(_)) => Err(Error::invalid(
                "video",
                "give either an image or a video, not both",
            )),
            (Some(px), None) => Ok((px.unsqueeze(2)?, "image")),
            (None, Some(v)) => Ok((v.frames.clone(), "video")),
            (None, None) => Err(Error::invalid(
                "image",
                "action modes need an image or a video to start from",
            )),
        }
    }

    fn validate_action(&self, a: &ActionRequest) -> Result<()> {
        if self.sound {
            return Err(Error::invalid("sound", "action modes generate no sound"));
        }
        if self.step_noise.is_some() {
            return Err(Error::invalid(
                "step_noise",
                "is for distilled checkpoints, not action modes",
            ));
        }
        let (pixels, field) = self.action_pixels()?;
        if a.mode == ActionMode::InverseDynamics && field != "video" {
            return Err(Error::invalid(
                "video",
                "inverse dynamics needs the video whose actions it infers",
            ));
        }
        a.validate(&pixels, field)?;
        Ok(())
    }

    /// The transfer part and what it excludes.
    fn validate_transfer(&self, t: &TransferInput) -> Result<()> {
        let controls = "transfer follows its controls, not an image or a video";
        let noise = "transfer takes its initial noise per chunk (chunk_noise)";
        for (given, field, why) in [
            (self.image.is_some(), "image", controls),
            (self.video.is_some(), "video", controls),
            (self.sound, "sound", "transfer generates video only"),
            (self.init_noise.is_some(), "init_noise", noise),
            (self.step_noise.is_some(), "step_noise", noise),
        ] {
            if given {
                return Err(Error::invalid(field, why));
            }
        }
        t.validate(self.num_frames, self.height, self.width)
    }
}

/// What one request produces.
#[derive(Debug, Clone)]
pub struct Cosmos3Output {
    /// Pixels `[1, 3, T, H, W]` in [0, 1], f32.
    pub video: Tensor,
    /// Waveform `[1, 2, N]` in [−1, 1], f32, with its sample rate.
    pub audio: Option<(Tensor, u32)>,
    /// Final latents `[1, C, t, h, w]` (and sound `[1, 64, T]`), f32.
    pub latents: Tensor,
    pub sound_latents: Option<Tensor>,
    /// Policy and inverse dynamics: the predicted actions `[chunk, raw_dim]`, f32.
    pub actions: Option<Tensor>,
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
        for (f, h, w, field) in [
            (188, 720, 1280, "num_frames"),
            (0, 720, 1280, "num_frames"),
            (189, 721, 1280, "height"),
            (189, 720, 1000, "width"),
            (189, 0, 1280, "height"),
        ] {
            let e = pixel_to_latent_shape(f, h, w).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{field}: ")), "{e}");
        }
    }

    #[test]
    fn sound_frames_follow_the_duration() {
        // 189 frames at 24 fps = 7.875 s → 196.875 → 197 latent steps at 25 Hz.
        assert_eq!(sound_latent_frames(189, 24.0, 48_000, 1920), 197);
        assert_eq!(sound_latent_frames(24, 24.0, 48_000, 1920), 25);
        assert_eq!(sound_latent_frames(9, 24.0, 48_000, 1920), 10);
    }

    #[test]
    fn requests_are_checked_before_any_work() {
        let ok = Cosmos3Request::new(Prompt::text("a robot"), 5, 32, 48);
        ok.validate().unwrap();
        let mut cases: Vec<(Cosmos3Request, &str)> = Vec::new();
        let mut r = ok.clone();
        r.steps = 0;
        cases.push((r, "steps"));
        let mut r = ok.clone();
        r.fps = f64::NAN;
        cases.push((r, "fps"));
        let mut r = ok.clone();
        r.guidance_scale = -1.0;
        cases.push((r, "guidance_scale"));
        let mut r = ok.clone();
        r.prompt = Prompt::text("  ");
        cases.push((r, "prompt"));
        let mut r = ok.clone();
        r.prompt = Prompt::Tokens {
            pos: vec![1],
            neg: vec![],
        };
        cases.push((r, "negative_prompt"));
        let mut r = ok.clone();
        r.image = Some(
            Tensor::zeros(
                (1, 3, 16, 16),
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            )
            .unwrap(),
        );
        cases.push((r, "image"));
        let mut r = ok.clone();
        r.num_frames = 6;
        cases.push((r, "num_frames"));
        for (r, field) in cases {
            let e = r.validate().unwrap_err().to_string();
            assert!(e.starts_with(&format!("{field}: ")), "{field}: {e}");
        }
    }
}
