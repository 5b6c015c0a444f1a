//! Video continuation over the API: an mp4 sent as `input_reference` (where an image makes
//! an image-to-video job) conditions the clip on its leading latent frames, as `phyai
//! generate --video` does; `condition_frames` and `condition_video_keep` choose them.

use serde::{Deserialize, Serialize};

use crate::errors::ApiError;
use crate::params::{CreateFields, JobParams};
use phyai::models::cosmos3::continuation::VideoCondition;

/// The continuation part of a job, stored with it (the clip is its input file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContinuationParams {
    /// `condition_frames`: latent frame indexes, e.g. "0,1".
    pub condition_frames: String,
    /// `condition_video_keep`: "first" or "last".
    pub keep: String,
}

impl ContinuationParams {
    pub fn condition(&self) -> phyai::Result<VideoCondition> {
        VideoCondition::parse(&self.condition_frames, &self.keep)
    }
}

/// An ISO media file (mp4) starts with an `ftyp` box: size, then the type.
pub fn is_mp4(bytes: &[u8]) -> bool {
    bytes.get(4..8) == Some(b"ftyp".as_slice())
}

/// Makes `p` a continuation job when `video` (an mp4 `input_reference` was sent); otherwise
/// refuses the continuation fields.
pub fn resolve_continuation(
    f: &CreateFields,
    video: bool,
    p: &mut JobParams,
) -> Result<(), ApiError> {
    if !video {
        for (set, field) in [
            (f.condition_frames.is_some(), "condition_frames"),
            (f.condition_video_keep.is_some(), "condition_video_keep"),
        ] {
            if set {
                return Err(ApiError::invalid(
                    field,
                    "needs a video (an mp4 file as input_reference)",
                ));
            }
        }
        return Ok(());
    }
    let c = ContinuationParams {
        condition_frames: f.condition_frames.as_deref().unwrap_or("0,1").trim().into(),
        keep: f
            .condition_video_keep
            .as_deref()
            .unwrap_or("first")
            .trim()
            .into(),
    };
    let field_error = |e: phyai::Error| match e {
        phyai::Error::Invalid { what, msg } => ApiError::invalid(&what, msg),
        other => ApiError::invalid("input_reference", other.to_string()),
    };
    let condition = c.condition().map_err(field_error)?;
    // Latent frames of the clip: (frames − 1) / 4 + 1.
    condition
        .validate((p.num_frames - 1) / 4 + 1)
        .map_err(field_error)?;
    p.continuation = Some(c);
    Ok(())
}
