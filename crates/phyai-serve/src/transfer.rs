//! Transfer requests: control clips uploaded as `control_<hint>` files (`control_edge`,
//! `control_depth`, …; mp4) with the chunking and control-guidance fields of `phyai
//! generate`. As there, the clip is as long as its first control in canonical order (edge,
//! blur, depth, seg, wsm); `num_frames` or `seconds`, when given, only cap it.

use phyai::models::cosmos3::sampler::GuidanceInterval;
use phyai::models::cosmos3::transfer::ChunkPlan;
use phyai::models::cosmos3::Hint;
use serde::{Deserialize, Serialize};

use crate::errors::ApiError;
use crate::params::{format_seconds, number, CreateFields, JobParams, MAX_FRAMES};

/// The multipart field prefix of a control clip.
pub const FIELD_PREFIX: &str = "control_";

/// The transfer part of a job, stored with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferParams {
    /// The uploaded hints in canonical order; each clip is stored beside the job's inputs.
    pub hints: Vec<String>,
    pub chunk_frames: Option<usize>,
    pub conditional_frames: usize,
    pub control_guidance: f64,
    /// `LO,HI`, checked when the job was created.
    pub control_guidance_interval: Option<String>,
}

/// The hint a `control_<hint>` file field carries (`None` for other fields, the
/// `control_guidance*` text fields included); an unknown hint is an error naming the field.
pub fn field_hint(name: &str) -> Option<Result<Hint, ApiError>> {
    if matches!(name, "control_guidance" | "control_guidance_interval") {
        return None;
    }
    let hint = name.strip_prefix(FIELD_PREFIX)?;
    Some(Hint::parse(hint, name).map_err(|e| ApiError::invalid(name, e.detail())))
}

/// Makes `p` a transfer job: `controls` are the uploaded hints with each clip's frame count.
/// Checks the fields that only transfer reads and what transfer excludes, and sets the clip
/// length from the first control.
pub fn resolve_transfer(
    f: &CreateFields,
    controls: &[(Hint, usize)],
    has_image: bool,
    p: &mut JobParams,
) -> Result<(), ApiError> {
    let mut controls = controls.to_vec();
    controls.sort_by_key(|(h, _)| *h);
    let Some(&(first, first_frames)) = controls.first() else {
        return Ok(());
    };
    let field = format!("{FIELD_PREFIX}{first}");
    if let Some(w) = controls.windows(2).find(|w| w[0].0 == w[1].0) {
        let name = format!("{FIELD_PREFIX}{}", w[0].0);
        return Err(ApiError::invalid(&name, "is given twice"));
    }
    if has_image {
        return Err(ApiError::invalid(
            "input_reference",
            "transfer follows its controls, not an image",
        ));
    }
    if p.sound {
        return Err(ApiError::invalid("sound", "transfer generates video only"));
    }
    let chunk_frames = match f.chunk_frames.as_deref() {
        Some(s) => {
            let n: usize = number("chunk_frames", s)?;
            if n == 0 || n > MAX_FRAMES {
                return Err(ApiError::invalid(
                    "chunk_frames",
                    format!("must be in 1..={MAX_FRAMES}, got {n}"),
                ));
            }
            Some(n)
        }
        None => None,
    };
    let conditional_frames = match f.conditional_frames.as_deref() {
        Some(s) => number("conditional_frames", s)?,
        None => 1,
    };
    let control_guidance = match f.control_guidance.as_deref() {
        Some(s) => {
            let v: f64 = number("control_guidance", s)?;
            if !(v.is_finite() && (0.0..=100.0).contains(&v)) {
                return Err(ApiError::invalid(
                    "control_guidance",
                    format!("must be in [0, 100], got {s}"),
                ));
            }
            v
        }
        None => 1.0,
    };
    let control_guidance_interval = match f.control_guidance_interval.as_deref() {
        Some(s) => {
            GuidanceInterval::parse(s, "control_guidance_interval")
                .map_err(|e| ApiError::invalid("control_guidance_interval", e.detail()))?;
            Some(s.trim().to_string())
        }
        None => None,
    };
    // An explicit length caps the control's; otherwise the control sets it.
    let cap = if f.num_frames.is_some() || f.seconds.is_some() {
        p.num_frames
    } else {
        usize::MAX
    };
    let plan = ChunkPlan::new(first_frames, cap, chunk_frames, conditional_frames).map_err(
        |e| match &e {
            phyai::Error::Invalid { what, msg } => ApiError::invalid(what, msg.clone()),
            other => ApiError::invalid(&field, other.to_string()),
        },
    )?;
    if plan.total_frames > MAX_FRAMES {
        return Err(ApiError::invalid(
            &field,
            format!(
                "has {} frames, more than the limit of {MAX_FRAMES} (cap it with num_frames)",
                plan.total_frames
            ),
        ));
    }
    p.num_frames = plan.total_frames;
    p.seconds = format_seconds(plan.total_frames as f64 / p.fps);
    p.transfer = Some(TransferParams {
        hints: controls.iter().map(|(h, _)| h.name().to_string()).collect(),
        chunk_frames,
        conditional_frames,
        control_guidance,
        control_guidance_interval,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{resolve, ModelInfo, DEMO};

    fn job(pairs: &[(&str, &str)], controls: &[(Hint, usize)]) -> Result<JobParams, ApiError> {
        let mut f = CreateFields::default();
        for (k, v) in pairs {
            f.set(k, v.to_string());
        }
        let model = ModelInfo {
            name: "cosmos3-demo".into(),
            defaults: DEMO,
            sound: true,
        };
        let mut p = resolve(&f, &model)?;
        resolve_transfer(&f, controls, false, &mut p)?;
        Ok(p)
    }

    #[test]
    fn the_first_control_in_canonical_order_sets_the_length() {
        // depth (30 frames) was sent before edge (20): edge comes first and sets 20.
        let p = job(
            &[
                ("prompt", "a"),
                ("chunk_frames", "10"),
                ("control_guidance", "1.5"),
            ],
            &[(Hint::Depth, 30), (Hint::Edge, 20)],
        )
        .unwrap();
        let t = p.transfer.as_ref().unwrap();
        assert_eq!(t.hints, ["edge", "depth"]);
        assert_eq!(
            (p.num_frames, t.chunk_frames, t.conditional_frames),
            (20, Some(10), 1)
        );
        assert_eq!(t.control_guidance, 1.5);
        // 20 frames at the demo's 24 fps.
        assert_eq!(p.seconds, "0.833");
        // An explicit frame count caps it.
        let p = job(&[("prompt", "a"), ("num_frames", "9")], &[(Hint::Edge, 20)]).unwrap();
        assert_eq!(p.num_frames, 9);
        // No controls: not a transfer job.
        let p = job(&[("prompt", "a")], &[]).unwrap();
        assert!(p.transfer.is_none());
    }

    #[test]
    fn bad_transfer_fields_are_named() {
        for (pairs, controls, param) in [
            (vec![("sound", "true")], vec![(Hint::Edge, 9)], "sound"),
            (
                vec![("chunk_frames", "0")],
                vec![(Hint::Edge, 9)],
                "chunk_frames",
            ),
            (
                vec![("chunk_frames", "5"), ("conditional_frames", "5")],
                vec![(Hint::Edge, 9)],
                "conditional_frames",
            ),
            (
                vec![("control_guidance", "-1")],
                vec![(Hint::Seg, 9)],
                "control_guidance",
            ),
            (
                vec![("control_guidance_interval", "9,1")],
                vec![(Hint::Seg, 9)],
                "control_guidance_interval",
            ),
            (
                vec![],
                vec![(Hint::Edge, 9), (Hint::Edge, 9)],
                "control_edge",
            ),
            (vec![], vec![(Hint::Wsm, 2000)], "control_wsm"),
        ] {
            let mut all = vec![("prompt", "a")];
            all.extend(pairs.iter().copied());
            let e = job(&all, &controls).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{all:?}: {}", e.message);
            assert!(e.message.starts_with(param), "{}", e.message);
        }
        assert!(field_hint("prompt").is_none());
        assert!(field_hint("control_guidance").is_none());
        assert!(matches!(field_hint("control_seg"), Some(Ok(Hint::Seg))));
        let e = field_hint("control_normals").unwrap().unwrap_err();
        assert_eq!(e.param.as_deref(), Some("control_normals"));
    }
}
