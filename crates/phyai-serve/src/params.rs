//! A create request's fields → the generation parameters of one job.
//!
//! `size` ("WxH") sets width and height (multiples of 16). `seconds` sets the frame count
//! to `seconds · fps` rounded to the nearest 4k+1 (the VAE's frame grid); an explicit
//! `num_frames` wins over `seconds`. Fields left out take the server's [`Defaults`].

use serde::{Deserialize, Serialize};

use crate::errors::ApiError;
use crate::transfer::TransferParams;

/// Sizes used when a request leaves them out: the library's, shared with `phyai generate`.
pub use phyai::models::cosmos3::ClipDefaults as Defaults;

/// The reference's defaults (720p, 189 frames, 35 steps), for real checkpoints.
pub const REFERENCE: Defaults = Defaults::REFERENCE;

/// Small enough for the random-weight demo checkpoint to answer in seconds on a CPU.
pub const DEMO: Defaults = Defaults::DEMO;

/// Upper bounds that keep one request from occupying the server for days.
const MAX_SIDE: usize = 4096;
pub const MAX_FRAMES: usize = 1025;
const MAX_STEPS: usize = 1000;
const MAX_PROMPT_CHARS: usize = 20_000;

/// The text fields of a create request, as sent (multipart values, or JSON values
/// rendered as text), before any checking.
#[derive(Debug, Clone, Default)]
pub struct CreateFields {
    pub prompt: Option<String>,
    pub model: Option<String>,
    pub size: Option<String>,
    pub seconds: Option<String>,
    pub negative_prompt: Option<String>,
    pub seed: Option<String>,
    pub num_frames: Option<String>,
    pub fps: Option<String>,
    pub steps: Option<String>,
    pub guidance_scale: Option<String>,
    pub sound: Option<String>,
    pub chunk_frames: Option<String>,
    pub conditional_frames: Option<String>,
    pub control_guidance: Option<String>,
    pub control_guidance_interval: Option<String>,
    pub condition_frames: Option<String>,
    pub condition_video_keep: Option<String>,
}

impl CreateFields {
    /// Stores `value` under `name`; unknown names are ignored (SDKs may send more fields).
    pub fn set(&mut self, name: &str, value: String) {
        let slot = match name {
            "prompt" => &mut self.prompt,
            "model" => &mut self.model,
            "size" => &mut self.size,
            "seconds" => &mut self.seconds,
            "negative_prompt" => &mut self.negative_prompt,
            "seed" => &mut self.seed,
            "num_frames" => &mut self.num_frames,
            "fps" => &mut self.fps,
            "steps" => &mut self.steps,
            "guidance_scale" => &mut self.guidance_scale,
            "sound" => &mut self.sound,
            "chunk_frames" => &mut self.chunk_frames,
            "conditional_frames" => &mut self.conditional_frames,
            "control_guidance" => &mut self.control_guidance,
            "control_guidance_interval" => &mut self.control_guidance_interval,
            "condition_frames" => &mut self.condition_frames,
            "condition_video_keep" => &mut self.condition_video_keep,
            _ => return,
        };
        *slot = Some(value);
    }
}

/// Everything a job needs to run, stored with the job (JSON) so a restart can rerun it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobParams {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub model: String,
    pub width: usize,
    pub height: usize,
    pub num_frames: usize,
    pub fps: f64,
    pub steps: usize,
    pub guidance_scale: f64,
    pub seed: u32,
    pub sound: bool,
    /// The clip's duration as the video object reports it (OpenAI sends a string).
    pub seconds: String,
    /// Control clips and their settings of a transfer job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferParams>,
    /// The conditioning of a continuation job (its input file is an mp4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuation: Option<crate::continuation::ContinuationParams>,
}

impl JobParams {
    pub fn size(&self) -> String {
        format!("{}x{}", self.width, self.height)
    }
}

/// What the loaded model can do, for checks that depend on it.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The `model` reported when a request names none.
    pub name: String,
    pub defaults: Defaults,
    /// Whether the audio decoder is loaded (`sound` requests need it).
    pub sound: bool,
}

/// Checks every field and fills in defaults; errors name the field.
pub fn resolve(f: &CreateFields, model: &ModelInfo) -> Result<JobParams, ApiError> {
    let d = &model.defaults;
    let prompt = f.prompt.clone().unwrap_or_default();
    if prompt.trim().is_empty() {
        return Err(ApiError::invalid(
            "prompt",
            "is required and must not be empty",
        ));
    }
    if prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(ApiError::invalid(
            "prompt",
            format!("is longer than {MAX_PROMPT_CHARS} characters"),
        ));
    }
    let (width, height) = match f.size.as_deref() {
        Some(s) => parse_size(s)?,
        None => (d.width, d.height),
    };
    let fps = match f.fps.as_deref() {
        Some(s) => {
            let v: f64 = number("fps", s)?;
            if !(v.is_finite() && v > 0.0 && v <= 240.0) {
                return Err(ApiError::invalid(
                    "fps",
                    format!("must be in (0, 240], got {s}"),
                ));
            }
            v
        }
        None => d.fps,
    };
    let seconds_in = match f.seconds.as_deref() {
        Some(s) => {
            let v: f64 = number("seconds", s)?;
            if !(v.is_finite() && v > 0.0) {
                return Err(ApiError::invalid(
                    "seconds",
                    format!("must be > 0, got {s}"),
                ));
            }
            Some((s.trim().to_string(), v))
        }
        None => None,
    };
    let num_frames = match (f.num_frames.as_deref(), &seconds_in) {
        (Some(s), _) => {
            let n: usize = number("num_frames", s)?;
            if n == 0 || !(n - 1).is_multiple_of(4) {
                return Err(ApiError::invalid(
                    "num_frames",
                    format!("must be 4k+1 (1, 5, 9, …), got {n}"),
                ));
            }
            n
        }
        (None, Some((_, secs))) => frames_for_seconds(*secs, fps),
        (None, None) => d.num_frames,
    };
    if num_frames > MAX_FRAMES {
        let param = if f.num_frames.is_some() {
            "num_frames"
        } else {
            "seconds"
        };
        return Err(ApiError::invalid(
            param,
            format!("asks for {num_frames} frames, more than the limit of {MAX_FRAMES}"),
        ));
    }
    let steps = match f.steps.as_deref() {
        Some(s) => {
            let n: usize = number("steps", s)?;
            if n == 0 || n > MAX_STEPS {
                return Err(ApiError::invalid(
                    "steps",
                    format!("must be in 1..={MAX_STEPS}, got {n}"),
                ));
            }
            n
        }
        None => d.steps,
    };
    let guidance_scale = match f.guidance_scale.as_deref() {
        Some(s) => {
            let v: f64 = number("guidance_scale", s)?;
            if !(v.is_finite() && (0.0..=100.0).contains(&v)) {
                return Err(ApiError::invalid(
                    "guidance_scale",
                    format!("must be in [0, 100], got {s}"),
                ));
            }
            v
        }
        None => d.guidance_scale,
    };
    let seed = match f.seed.as_deref() {
        Some(s) => number::<u32>("seed", s)?,
        None => d.seed,
    };
    let sound = match f.sound.as_deref().map(str::trim) {
        None | Some("") | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(s) => {
            return Err(ApiError::invalid(
                "sound",
                format!("must be true or false, got {s:?}"),
            ))
        }
    };
    if sound && !model.sound {
        return Err(ApiError::invalid(
            "sound",
            "this server's checkpoint has no sound decoder (sound_tokenizer/)",
        ));
    }
    let negative_prompt = f.negative_prompt.clone().filter(|s| !s.is_empty());
    let seconds = match seconds_in {
        Some((s, _)) => s,
        None => format_seconds(num_frames as f64 / fps),
    };
    Ok(JobParams {
        prompt,
        negative_prompt,
        model: f
            .model
            .clone()
            .filter(|m| !m.trim().is_empty())
            .unwrap_or_else(|| model.name.clone()),
        width,
        height,
        num_frames,
        fps,
        steps,
        guidance_scale,
        seed,
        sound,
        seconds,
        transfer: None,
        continuation: None,
    })
}

/// `seconds · fps` rounded to the nearest frame count of the form 4k+1 (at least 1).
pub fn frames_for_seconds(seconds: f64, fps: f64) -> usize {
    let k = ((seconds * fps - 1.0) / 4.0).round().max(0.0);
    4 * (k as usize) + 1
}

/// "WxH" → (width, height), both positive multiples of 16 up to [`MAX_SIDE`].
pub fn parse_size(s: &str) -> Result<(usize, usize), ApiError> {
    let bad = || ApiError::invalid("size", format!("must be \"WIDTHxHEIGHT\", got {s:?}"));
    let (w, h) = s.trim().split_once(['x', 'X']).ok_or_else(bad)?;
    let w: usize = w.trim().parse().map_err(|_| bad())?;
    let h: usize = h.trim().parse().map_err(|_| bad())?;
    for v in [w, h] {
        if v == 0 || !v.is_multiple_of(16) || v > MAX_SIDE {
            return Err(ApiError::invalid(
                "size",
                format!("width and height must be multiples of 16 in 16..={MAX_SIDE}, got {s}"),
            ));
        }
    }
    Ok((w, h))
}

pub(crate) fn number<T: std::str::FromStr>(param: &str, s: &str) -> Result<T, ApiError> {
    s.trim()
        .parse()
        .map_err(|_| ApiError::invalid(param, format!("not a valid number: {s:?}")))
}

/// Seconds as a short decimal string: `4.25`, `0.708`, `5`.
pub fn format_seconds(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelInfo {
        ModelInfo {
            name: "cosmos3-demo".into(),
            defaults: DEMO,
            sound: true,
        }
    }

    fn fields(pairs: &[(&str, &str)]) -> CreateFields {
        let mut f = CreateFields::default();
        for (k, v) in pairs {
            f.set(k, v.to_string());
        }
        f
    }

    #[test]
    fn seconds_round_to_the_nearest_4k_plus_1() {
        // 4 s at 24 fps = 96 frames → 97 (k = 24); 5 s → 120 → 121.
        assert_eq!(frames_for_seconds(4.0, 24.0), 97);
        assert_eq!(frames_for_seconds(5.0, 24.0), 121);
        // 7.875 s is the reference's 189 frames exactly.
        assert_eq!(frames_for_seconds(7.875, 24.0), 189);
        // 1 frame at 16 fps = 0.0625 s; tiny durations still give one frame.
        assert_eq!(frames_for_seconds(0.01, 24.0), 1);
        // 0.25 s at 16 fps = 4 frames → (4−1)/4 = 0.75 → k = 1 → 5.
        assert_eq!(frames_for_seconds(0.25, 16.0), 5);
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let p = resolve(&fields(&[("prompt", "a cat")]), &model()).unwrap();
        assert_eq!(
            (p.width, p.height, p.num_frames, p.steps),
            (224, 128, 17, 8)
        );
        assert_eq!(p.model, "cosmos3-demo");
        assert_eq!(p.size(), "224x128");
        // 17 frames at 24 fps.
        assert_eq!(p.seconds, "0.708");
        assert_eq!((p.seed, p.guidance_scale, p.sound), (42, 6.0, false));
    }

    #[test]
    fn explicit_frames_win_over_seconds() {
        let f = fields(&[
            ("prompt", "a"),
            ("size", "32x48"),
            ("seconds", "4"),
            ("num_frames", "5"),
            ("fps", "16"),
            ("seed", "7"),
            ("sound", "true"),
            ("model", "sora-2"),
        ]);
        let p = resolve(&f, &model()).unwrap();
        assert_eq!((p.width, p.height, p.num_frames, p.fps), (32, 48, 5, 16.0));
        assert_eq!((p.seconds.as_str(), p.seed, p.sound), ("4", 7, true));
        assert_eq!(p.model, "sora-2");
        let p = resolve(&fields(&[("prompt", "a"), ("seconds", "4")]), &model()).unwrap();
        assert_eq!(p.num_frames, 97);
    }

    #[test]
    fn bad_fields_are_named() {
        for (pairs, param) in [
            (vec![("prompt", "  ")], "prompt"),
            (vec![("prompt", "a"), ("size", "720p")], "size"),
            (vec![("prompt", "a"), ("size", "30x32")], "size"),
            (vec![("prompt", "a"), ("num_frames", "6")], "num_frames"),
            (vec![("prompt", "a"), ("num_frames", "x")], "num_frames"),
            (vec![("prompt", "a"), ("steps", "0")], "steps"),
            (vec![("prompt", "a"), ("seconds", "-1")], "seconds"),
            (vec![("prompt", "a"), ("seconds", "1000")], "seconds"),
            (vec![("prompt", "a"), ("fps", "0")], "fps"),
            (vec![("prompt", "a"), ("seed", "-3")], "seed"),
            (
                vec![("prompt", "a"), ("guidance_scale", "nan")],
                "guidance_scale",
            ),
            (vec![("prompt", "a"), ("sound", "maybe")], "sound"),
        ] {
            let e = resolve(&fields(&pairs), &model()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{pairs:?}: {}", e.message);
            assert_eq!(e.status, 400);
            assert!(e.message.starts_with(param), "{}", e.message);
        }
        let silent = ModelInfo {
            sound: false,
            ..model()
        };
        let e = resolve(&fields(&[("prompt", "a"), ("sound", "true")]), &silent).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("sound"));
    }
}
