//! Action-conditioned generation on checkpoints trained with `action_gen`: a chunk of
//! `chunk` robot actions and the `chunk + 1` video frames they connect, generated jointly.
//!
//! - policy: frame 0 is given; the other frames and every action are generated.
//! - forward dynamics: frame 0 and the actions are given; the other frames are generated.
//! - inverse dynamics: every frame is given; the actions are generated.
//!
//! As in the reference, the conditioning frames are placed on a canvas picked by the
//! resolution tier (the bin whose aspect ratio is closest to the input's), shrunk to fit it
//! when larger (aspect kept, antialiased bicubic), padded on the right and bottom (by
//! reflection, or by replication when the padding is as wide as the content), encoded, and
//! the latents cropped back to the content: the output has the content's size, rounded down
//! to whole latent pixels (16). Actions are the embodiment's raw vectors, zero-padded to the model's
//! `action_dim`; predicted actions are the denoised latents cut back to the domain's width
//! (no normalisation either way). The prompt becomes the JSON action caption the model was
//! trained on; the negative prompt is used as is (empty by default).

use candle_core::{DType, Tensor};
use serde_json::{Map, Value};

use super::processor::metadata::py_strip;
use super::processor::pyjson;
use crate::{Error, Result};

/// What the model generates and what it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionMode {
    Policy,
    ForwardDynamics,
    InverseDynamics,
}

impl ActionMode {
    /// `policy`, `forward-dynamics` or `inverse-dynamics` (underscores accepted too).
    pub fn parse(text: &str, field: &str) -> Result<Self> {
        match text.replace('_', "-").as_str() {
            "policy" => Ok(Self::Policy),
            "forward-dynamics" => Ok(Self::ForwardDynamics),
            "inverse-dynamics" => Ok(Self::InverseDynamics),
            _ => Err(Error::invalid(
                field,
                format!("expected policy, forward-dynamics or inverse-dynamics, got {text:?}"),
            )),
        }
    }

    /// The reference's name of the mode.
    pub fn name(self) -> &'static str {
        match self {
            Self::Policy => "policy",
            Self::ForwardDynamics => "forward_dynamics",
            Self::InverseDynamics => "inverse_dynamics",
        }
    }

    /// Whether the mode outputs actions (policy, inverse dynamics).
    pub fn predicts_actions(self) -> bool {
        self != Self::ForwardDynamics
    }
}

/// The reference's embodiment table: name, domain id (row of the action projections) and
/// the unpadded action width (`None`: the width depends on the dataset, unsupported).
const EMBODIMENTS: &[(&str, usize, Option<usize>)] = &[
    ("no_action", 0, None),
    ("av", 1, Some(9)),
    ("camera_pose", 2, Some(9)),
    ("hand_pose", 3, Some(57)),
    ("pusht", 4, Some(2)),
    ("libero", 5, None),
    ("umi", 6, Some(10)),
    ("bridge_orig_lerobot", 7, Some(10)),
    ("droid_lerobot", 8, Some(10)),
    ("robomind-franka", 8, Some(10)),
    ("galbot", 9, Some(30)),
    ("robomind-franka-dual", 12, Some(20)),
    ("robomind-ur", 13, Some(10)),
    ("agibotworld", 15, Some(29)),
    ("agibot_gear_gripper", 15, Some(29)),
    ("agibot_gear_gripper_ext", 15, Some(29)),
    ("fractal", 20, Some(10)),
];

/// An embodiment domain: its projection row and action width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Embodiment {
    pub name: &'static str,
    pub id: usize,
    pub raw_dim: usize,
}

impl Embodiment {
    /// Looks `name` up; unknown names and domains without a fixed width are `domain` errors.
    pub fn named(name: &str) -> Result<Self> {
        let supported = || {
            EMBODIMENTS
                .iter()
                .filter(|e| e.2.is_some())
                .map(|e| e.0)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match EMBODIMENTS.iter().find(|e| e.0 == name) {
            Some(&(name, id, Some(raw_dim))) => Ok(Self { name, id, raw_dim }),
            Some(_) => Err(Error::invalid(
                "domain",
                format!(
                    "{name:?} has no fixed action width; supported: {}",
                    supported()
                ),
            )),
            None => Err(Error::invalid(
                "domain",
                format!("unknown embodiment {name:?}; known: {}", supported()),
            )),
        }
    }
}

/// The canvases of one tier: `(aspect ratio h/w, (height, width))`.
type TierBins = [(f64, (usize, usize)); 5];

/// Canvases `(height, width)` per resolution tier, keyed by aspect ratio h/w, in the
/// reference's order (the first of equally close ratios wins).
const TIERS: &[(usize, TierBins)] = &[
    (
        256,
        [
            (1.0, (256, 256)),
            (0.8, (256, 320)),
            (1.25, (320, 256)),
            (0.6, (192, 320)),
            (1.6666666666666667, (320, 192)),
        ],
    ),
    (
        480,
        [
            (1.0, (640, 640)),
            (0.7391304347826086, (544, 736)),
            (1.3529411764705883, (736, 544)),
            (0.5769230769230769, (480, 832)),
            (1.7333333333333334, (832, 480)),
        ],
    ),
    (
        704,
        [
            (1.0, (960, 960)),
            (0.7647058823529411, (832, 1088)),
            (1.3076923076923077, (1088, 832)),
            (0.55, (704, 1280)),
            (1.8181818181818181, (1280, 704)),
        ],
    ),
    (
        720,
        [
            (1.0, (960, 960)),
            (0.7536231884057971, (832, 1104)),
            (1.3269230769230769, (1104, 832)),
            (0.5625, (720, 1280)),
            (1.7777777777777777, (1280, 720)),
        ],
    ),
];

/// The canvas of tier `tier` for content of `height`×`width` pixels.
pub fn canvas(tier: usize, height: usize, width: usize) -> Result<(usize, usize)> {
    let bins = TIERS
        .iter()
        .find(|t| t.0 == tier)
        .map(|t| &t.1)
        .ok_or_else(|| {
            Error::invalid(
                "resolution_tier",
                format!("expected 256, 480, 704 or 720, got {tier}"),
            )
        })?;
    let ar = height as f64 / width as f64;
    let mut best = bins[0];
    for &b in &bins[1..] {
        if (b.0 - ar).abs() < (best.0 - ar).abs() {
            best = b;
        }
    }
    Ok(best.1)
}

/// Camera framing sentences of the action caption, by view point.
const VIEW_POINTS: &[(&str, &str)] = &[
    (
        "ego_view",
        "This video is captured from a first-person perspective looking at the scene.",
    ),
    (
        "third_person_view",
        "This video is captured from a third-person perspective looking towards the agent from the front.",
    ),
    ("wrist_view", "This video is captured from a wrist-mounted camera."),
    (
        "concat_view",
        "This video contains concatenated views from multiple camera perspectives.",
    ),
];

fn framing(view_point: &str) -> Result<&'static str> {
    VIEW_POINTS
        .iter()
        .find(|v| v.0 == view_point)
        .map(|v| v.1)
        .ok_or_else(|| {
            Error::invalid(
                "view_point",
                format!("expected ego_view, third_person_view, wrist_view or concat_view, got {view_point:?}"),
            )
        })
}

/// An action-conditioned request's own settings. The conditioning pixels are the
/// request's `image` (policy, forward dynamics) or `video` (any mode; inverse dynamics
/// needs one), at their own size: sides multiples of 16 that fit the tier's canvas.
#[derive(Debug, Clone)]
pub struct ActionRequest {
    pub mode: ActionMode,
    /// Embodiment name from the reference's table (e.g. `bridge_orig_lerobot`).
    pub domain: String,
    /// Action steps per chunk; the clip has `chunk + 1` frames, so a multiple of 4.
    pub chunk: usize,
    /// 256, 480, 704 or 720: which canvases the input is padded into.
    pub resolution_tier: usize,
    /// Forward dynamics: the raw actions `[n, raw_dim]` (f32); fewer than `chunk` rows
    /// repeat the last one, more are cut.
    pub actions: Option<Tensor>,
    /// Camera framing of the caption (`ego_view`, …).
    pub view_point: String,
    /// Initial action latents `[chunk, action_dim]` instead of drawing them from the seed.
    pub init_noise: Option<Tensor>,
}

impl ActionRequest {
    /// A request with the reference's defaults (tier 480, ego view).
    pub fn new(mode: ActionMode, domain: impl Into<String>, chunk: usize) -> Self {
        Self {
            mode,
            domain: domain.into(),
            chunk,
            resolution_tier: 480,
            actions: None,
            view_point: "ego_view".into(),
            init_noise: None,
        }
    }

    /// Pixel frames of the clip.
    pub fn num_frames(&self) -> usize {
        self.chunk + 1
    }

    /// Every check that needs no model; `pixels` is the conditioning `[1, 3, F, H, W]`
    /// (`field` names where it came from). Returns the embodiment and the canvas.
    pub fn validate(&self, pixels: &Tensor, field: &str) -> Result<(Embodiment, (usize, usize))> {
        let e = Embodiment::named(&self.domain)?;
        if self.chunk == 0 || !self.chunk.is_multiple_of(4) {
            return Err(Error::invalid(
                "action_chunk",
                format!(
                    "must be a positive multiple of 4 (the clip has chunk + 1 = 4k + 1 frames), got {}",
                    self.chunk
                ),
            ));
        }
        framing(&self.view_point)?;
        let d = pixels.dims();
        if d.len() != 5 || d[0] != 1 || d[1] != 3 || d[2] == 0 {
            return Err(Error::invalid(
                field,
                format!("pixels have shape {d:?}, expected [1, 3, F, H, W]"),
            ));
        }
        let (h, w) = (d[3], d[4]);
        if h == 0 || w == 0 || h % 16 != 0 || w % 16 != 0 {
            return Err(Error::invalid(
                field,
                format!(
                    "is {h}x{w}; action modes need sides that are multiples of 16 (the \
                     reference's video processor resizes files to that first, as\
                     io::frames::load_native_16 does)"
                ),
            ));
        }
        let (ch, cw) = canvas(self.resolution_tier, h, w)?;
        match (self.mode, &self.actions) {
            (ActionMode::ForwardDynamics, None) => {
                return Err(Error::invalid(
                    "actions",
                    "forward dynamics needs the actions",
                ))
            }
            (ActionMode::ForwardDynamics, Some(a)) => {
                let ad = a.dims();
                if ad.len() != 2 || ad[0] == 0 || ad[1] != e.raw_dim {
                    return Err(Error::invalid(
                        "actions",
                        format!(
                            "shape {ad:?}, domain {} needs [n, {}] with n ≥ 1",
                            e.name, e.raw_dim
                        ),
                    ));
                }
            }
            (_, Some(_)) => {
                return Err(Error::invalid(
                    "actions",
                    format!(
                        "only forward dynamics takes actions, not {}",
                        self.mode.name()
                    ),
                ))
            }
            (_, None) => {}
        }
        Ok((e, (ch, cw)))
    }

    /// The clean action latent `[chunk, action_dim]` and which rows are denoised: the given
    /// actions (forward dynamics, every row clean) or zeros (all rows denoised).
    pub fn clean_actions(&self, action_dim: usize) -> Result<(Tensor, Vec<bool>)> {
        match (&self.mode, &self.actions) {
            (ActionMode::ForwardDynamics, Some(a)) => {
                let a = a.to_dtype(DType::F32)?;
                let n = a.dim(0)?;
                let rows = if n >= self.chunk {
                    a.narrow(0, 0, self.chunk)?
                } else {
                    let last = a.narrow(0, n - 1, 1)?.repeat((self.chunk - n, 1))?;
                    Tensor::cat(&[&a, &last], 0)?
                };
                let raw = rows.dim(1)?;
                let padded = rows.pad_with_zeros(1, 0, action_dim - raw)?;
                Ok((padded, vec![false; self.chunk]))
            }
            _ => Ok((
                Tensor::zeros(
                    (self.chunk, action_dim),
                    DType::F32,
                    &candle_core::Device::Cpu,
                )?,
                vec![true; self.chunk],
            )),
        }
    }

    /// The JSON caption of `prompt` for a clip on a `height`×`width` canvas at `fps`,
    /// byte-identical to the reference's `json.dumps`.
    pub fn caption(&self, prompt: &str, fps: f64, height: usize, width: usize) -> Result<String> {
        let seconds = self.num_frames() as f64 / fps;
        let duration = seconds.trunc() as u64;
        let end = seconds.round_ties_even() as u64;
        let mut desc = py_strip(prompt).to_string();
        if !desc.is_empty() && !desc.ends_with(['.', '!', '?']) {
            desc.push('.');
        }
        let ratio = width as f64 / height as f64;
        let mut aspect = (1usize, 1usize);
        for r in [(4, 3), (3, 4), (16, 9), (9, 16)] {
            let d = |(a, b): (usize, usize)| (a as f64 / b as f64 - ratio).abs();
            if d(r) < d(aspect) {
                aspect = r;
            }
        }
        let obj = |pairs: Vec<(&str, Value)>| -> Value {
            Value::Object(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect::<Map<_, _>>(),
            )
        };
        let fps_value = serde_json::Number::from_f64(fps)
            .map(Value::Number)
            .ok_or_else(|| Error::invalid("fps", format!("must be finite, got {fps}")))?;
        let caption = obj(vec![
            (
                "cinematography",
                obj(vec![("framing", framing(&self.view_point)?.into())]),
            ),
            (
                "actions",
                Value::Array(vec![obj(vec![
                    ("time", format!("0:00-{}:{:02}", end / 60, end % 60).into()),
                    ("description", desc.into()),
                ])]),
            ),
            ("duration", format!("{duration}s").into()),
            ("fps", fps_value),
            (
                "resolution",
                obj(vec![("H", height.into()), ("W", width.into())]),
            ),
            ("aspect_ratio", format!("{},{}", aspect.0, aspect.1).into()),
        ]);
        Ok(pyjson::dumps(&caption))
    }
}

/// The content size of `h`×`w` frames in a `canvas`: scaled down (never up) to fit, aspect
/// kept, rounded half up, as the reference sizes it.
pub fn content_size(h: usize, w: usize, canvas: (usize, usize)) -> (usize, usize) {
    let (ch, cw) = canvas;
    let scale = f64::min(f64::min(cw as f64 / w as f64, ch as f64 / h as f64), 1.0);
    let fit = |n: usize| ((scale * n as f64 + 0.5) as usize).max(1);
    (fit(h), fit(w))
}

/// `pixels` `[1, 3, F, H, W]` brought to their content size in `canvas` (see
/// [`content_size`]): unchanged when they fit, else shrunk with torch's antialiased bicubic
/// filter as the reference does.
pub fn fit_to_canvas(pixels: &Tensor, canvas: (usize, usize)) -> Result<Tensor> {
    let (f, h, w) = (pixels.dim(2)?, pixels.dim(3)?, pixels.dim(4)?);
    let (th, tw) = content_size(h, w, canvas);
    if (th, tw) == (h, w) {
        return Ok(pixels.clone());
    }
    let src: Vec<f32> = pixels.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let out = crate::io::bicubic::resize_bicubic_aa(&src, 3 * f, (h, w), (th, tw));
    Ok(Tensor::from_vec(out, (1, 3, f, th, tw), pixels.device())?.to_dtype(pixels.dtype())?)
}

/// The frames to encode: the first `frames` of `pixels` `[1, 3, F, H, W]` (the last one
/// repeated when it is shorter), padded right and bottom to the `canvas`. Padding
/// reflects the content (without repeating the edge) unless it is as wide as the content,
/// then it replicates the edge.
pub fn canvas_frames(pixels: &Tensor, frames: usize, canvas: (usize, usize)) -> Result<Tensor> {
    let f = pixels.dim(2)?;
    let take = f.min(frames);
    let mut clip = pixels.narrow(2, 0, take)?;
    if take < frames {
        let last = clip
            .narrow(2, take - 1, 1)?
            .repeat((1, 1, frames - take, 1, 1))?;
        clip = Tensor::cat(&[&clip, &last], 2)?;
    }
    let (h, w) = (clip.dim(3)?, clip.dim(4)?);
    let (ch, cw) = canvas;
    let replicate = cw - w >= w || ch - h >= h;
    let device = clip.device().clone();
    let index = |n: usize, len: usize| -> Result<Tensor> {
        let idx: Vec<u32> = (0..len)
            .map(|i| {
                if i < n {
                    i
                } else if replicate {
                    n - 1
                } else {
                    2 * (n - 1) - i
                }
            })
            .map(|i| i as u32)
            .collect();
        Ok(Tensor::from_vec(idx, len, &device)?)
    };
    if ch != h {
        clip = clip.index_select(&index(h, ch)?, 3)?;
    }
    if cw != w {
        clip = clip.index_select(&index(w, cw)?, 4)?;
    }
    Ok(clip)
}

/// Cuts the latents of a canvas `[1, C, t, ch/16, cw/16]` back to the content `h`×`w`.
pub fn crop_to_content(latents: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let lh = (h / 16).max(1);
    let lw = (w / 16).max(1);
    Ok(latents.narrow(3, 0, lh)?.narrow(4, 0, lw)?.contiguous()?)
}

/// Zeroes the columns of `x` `[…, action_dim]` beyond the domain's width.
pub fn zero_padding_columns(x: &Tensor, raw_dim: usize) -> Result<Tensor> {
    let d = x.dim(x.rank() - 1)?;
    if raw_dim >= d {
        return Ok(x.clone());
    }
    let mask: Vec<f32> = (0..d)
        .map(|i| if i < raw_dim { 1.0 } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(mask, d, x.device())?.to_dtype(x.dtype())?;
    Ok(x.broadcast_mul(&mask)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn canvases_follow_the_closest_aspect_ratio() {
        assert_eq!(canvas(256, 32, 48).unwrap(), (192, 320));
        assert_eq!(canvas(480, 480, 640).unwrap(), (544, 736));
        assert_eq!(canvas(720, 720, 1280).unwrap(), (720, 1280));
        assert_eq!(canvas(256, 64, 64).unwrap(), (256, 256));
        assert!(canvas(300, 64, 64)
            .unwrap_err()
            .to_string()
            .starts_with("resolution_tier: "));
    }

    #[test]
    fn embodiments_and_modes() {
        let e = Embodiment::named("bridge_orig_lerobot").unwrap();
        assert_eq!((e.id, e.raw_dim), (7, 10));
        assert_eq!(Embodiment::named("fractal").unwrap().id, 20);
        for bad in ["libero", "no_action", "robot"] {
            let msg = Embodiment::named(bad).unwrap_err().to_string();
            assert!(msg.starts_with("domain: "), "{msg}");
        }
        assert_eq!(
            ActionMode::parse("inverse_dynamics", "m").unwrap(),
            ActionMode::InverseDynamics
        );
        assert!(ActionMode::parse("dance", "action_mode").is_err());
    }

    #[test]
    fn view_points_frame_the_caption_as_the_reference() {
        // diffusers 0.42.1 `Cosmos3OmniPipeline._build_action_json_prompt("stack the cubes",
        // view_point=…, num_frames=17, fps=24.0, height=192, width=320)`.
        let tail = r#""actions": [{"time": "0:00-0:01", "description": "stack the cubes."}], "duration": "0s", "fps": 24.0, "resolution": {"H": 192, "W": 320}, "aspect_ratio": "16,9"}"#;
        for (view, framing) in [
            ("wrist_view", "This video is captured from a wrist-mounted camera."),
            (
                "third_person_view",
                "This video is captured from a third-person perspective looking towards the agent from the front.",
            ),
            (
                "concat_view",
                "This video contains concatenated views from multiple camera perspectives.",
            ),
        ] {
            let mut r = ActionRequest::new(ActionMode::Policy, "pusht", 16);
            r.view_point = view.into();
            let want = format!(r#"{{"cinematography": {{"framing": "{framing}"}}, {tail}"#);
            assert_eq!(r.caption("stack the cubes", 24.0, 192, 320).unwrap(), want);
        }
    }

    #[test]
    fn padding_reflects_or_replicates() {
        let x = Tensor::arange(0f32, 3.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 1, 1, 3))
            .unwrap();
        let row = |t: Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        // Padding of 2 < 3 columns: reflection without the edge.
        assert_eq!(
            row(canvas_frames(&x, 1, (1, 5)).unwrap()),
            vec![0., 1., 2., 1., 0.]
        );
        // Padding of 3 ≥ 3 columns: replication; a short clip repeats its last frame.
        let out = canvas_frames(&x, 2, (1, 6)).unwrap();
        assert_eq!(out.dims(), &[1, 1, 2, 1, 6]);
        assert_eq!(
            row(out),
            vec![0., 1., 2., 2., 2., 2., 0., 1., 2., 2., 2., 2.]
        );
    }

    #[test]
    fn actions_are_repeated_and_padded() {
        let mut r = ActionRequest::new(ActionMode::ForwardDynamics, "pusht", 4);
        r.actions = Some(Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu).unwrap());
        let (a, noisy) = r.clean_actions(3).unwrap();
        assert_eq!(noisy, vec![false; 4]);
        assert_eq!(
            a.to_vec2::<f32>().unwrap(),
            vec![
                vec![1., 2., 0.],
                vec![3., 4., 0.],
                vec![3., 4., 0.],
                vec![3., 4., 0.]
            ]
        );
        let px = Tensor::zeros((1, 3, 1, 32, 48), DType::F32, &Device::Cpu).unwrap();
        r.validate(&px, "image").unwrap();
        r.actions = Some(Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap());
        let e = r.validate(&px, "image").unwrap_err().to_string();
        assert!(
            e.starts_with("actions: shape [2, 3], domain pusht needs [n, 2]"),
            "{e}"
        );
        r.chunk = 6;
        assert!(r
            .validate(&px, "image")
            .unwrap_err()
            .to_string()
            .starts_with("action_chunk: "));
        // Larger than its canvas: accepted, and shrunk to fit with the aspect kept.
        let big = Tensor::ones((1, 3, 1, 272, 320), DType::F32, &Device::Cpu).unwrap();
        let mut r = ActionRequest::new(ActionMode::Policy, "pusht", 4);
        r.resolution_tier = 256;
        let (_, canvas) = r.validate(&big, "image").unwrap();
        assert_eq!(canvas, (256, 320));
        assert_eq!(content_size(272, 320, canvas), (256, 301));
        let fitted = fit_to_canvas(&big, canvas).unwrap();
        assert_eq!(fitted.dims(), &[1, 3, 1, 256, 301]);
        let m = fitted.flatten_all().unwrap().min(0).unwrap();
        assert!((m.to_scalar::<f32>().unwrap() - 1.0).abs() < 1e-5);
        // Smaller content is left as it is.
        assert_eq!(content_size(32, 48, canvas), (32, 48));
        let odd = Tensor::zeros((1, 3, 1, 40, 50), DType::F32, &Device::Cpu).unwrap();
        let e = r.validate(&odd, "image").unwrap_err().to_string();
        assert!(e.contains("multiples of 16"), "{e}");
    }
}
