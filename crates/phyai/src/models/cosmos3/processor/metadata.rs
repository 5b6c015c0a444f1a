//! Duration/resolution metadata added to prompts, in the two reference conventions.
//!
//! The model was trained with captions that state the clip's length, frame rate and
//! resolution; both references append that to the prompt text before tokenizing, but
//! differently:
//! - PhyAI: positive prompt only. Plain text is stripped and gets
//!   "The video is {secs:.1f} seconds long and is of {fps:.0f} FPS." (videos only) and
//!   "This video is of {H}x{W} resolution."; a JSON-object prompt instead gets
//!   `duration` ("<int secs>s") and `fps` (videos; removed for images) and `resolution`
//!   merged in and is re-serialised like Python `json.dumps`.
//! - diffusers: the same sentences on the raw positive text (no JSON handling, "image"
//!   wording for one frame) and the "is not" inverse sentences on the negative text.

use serde_json::{json, Value};

use super::pyjson;

/// The clip the prompt describes.
#[derive(Debug, Clone, Copy)]
pub struct ClipMeta {
    pub num_frames: usize,
    pub height: usize,
    pub width: usize,
    pub fps: f64,
}

impl ClipMeta {
    fn seconds(&self) -> f64 {
        self.num_frames as f64 / self.fps
    }

    fn duration_sentence(&self, negated: bool) -> String {
        let not = if negated { "not " } else { "" };
        format!(
            "The video is {not}{:.1} seconds long and is {not}of {:.0} FPS.",
            self.seconds(),
            self.fps
        )
    }

    fn resolution_sentence(&self, medium: &str, negated: bool) -> String {
        let not = if negated { "not " } else { "" };
        format!(
            "This {medium} is {not}of {}x{} resolution.",
            self.height, self.width
        )
    }
}

/// Python `str.isspace` for one character (Unicode White_Space plus the ASCII
/// separators U+001C..U+001F).
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python `str.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_space)
}

/// PhyAI's positive-prompt caption (`cosmos3_generation_caption`, no aspect ratio).
pub fn phyai_caption(prompt: &str, meta: &ClipMeta) -> String {
    if let Some(mut obj) = pyjson::parse_object(prompt) {
        let video = meta.num_frames > 1;
        if video {
            let secs = if meta.fps > 0.0 {
                meta.seconds().trunc() as i64
            } else {
                0
            };
            obj.insert("duration".into(), Value::String(format!("{secs}s")));
            obj.insert("fps".into(), float_value(meta.fps));
        } else {
            obj.shift_remove("duration");
            obj.shift_remove("fps");
        }
        obj.insert(
            "resolution".into(),
            json!({"H": meta.height, "W": meta.width}),
        );
        return pyjson::dumps(&Value::Object(obj));
    }
    let mut text = py_strip(prompt).to_string();
    if meta.num_frames > 1 {
        text = format!(
            "{}. {}",
            text.trim_end_matches('.'),
            meta.duration_sentence(false)
        );
    }
    let text = py_strip(&text);
    format!(
        "{}. {}",
        text.trim_end_matches('.'),
        meta.resolution_sentence("video", false)
    )
}

/// diffusers' prompt augmentation (`tokenize_prompt` templates); `negated` selects the
/// inverse sentences used on the negative prompt.
pub fn diffusers_caption(text: &str, meta: &ClipMeta, negated: bool) -> String {
    let image = meta.num_frames == 1;
    let mut text = text.to_string();
    if !image {
        text = append_sentence(&text, &meta.duration_sentence(negated));
    }
    let medium = if image { "image" } else { "video" };
    append_sentence(&text, &meta.resolution_sentence(medium, negated))
}

/// Joins with ". " after dropping trailing dots; an empty base gives the addition alone.
fn append_sentence(base: &str, addition: &str) -> String {
    let base = base.trim_end_matches('.');
    if base.is_empty() {
        addition.to_string()
    } else {
        format!("{base}. {addition}")
    }
}

/// A float JSON value (always printed with a fraction or exponent, like Python floats).
fn float_value(x: f64) -> Value {
    serde_json::Number::from_f64(x)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: ClipMeta = ClipMeta {
        num_frames: 189,
        height: 720,
        width: 1280,
        fps: 24.0,
    };

    #[test]
    fn phyai_plain_and_json() {
        assert_eq!(
            phyai_caption("  A cat...\n", &META),
            "A cat. The video is 7.9 seconds long and is of 24 FPS. This video is of 720x1280 resolution."
        );
        assert_eq!(
            phyai_caption(r#"{"resolution": 1, "a": "é"}"#, &META),
            r#"{"resolution": {"H": 720, "W": 1280}, "a": "\u00e9", "duration": "7s", "fps": 24.0}"#
        );
    }

    #[test]
    fn diffusers_negative_is_inverse() {
        assert_eq!(
            diffusers_caption("", &META, true),
            "The video is not 7.9 seconds long and is not of 24 FPS. This video is not of 720x1280 resolution."
        );
        let image = ClipMeta {
            num_frames: 1,
            ..META
        };
        assert_eq!(
            diffusers_caption("x.", &image, false),
            "x. This image is of 720x1280 resolution."
        );
    }
}
