//! Control hints of transfer: the structure maps (edge, blur, depth, segmentation, world
//! scenario map) a generated clip follows, and how their clips are stretched in time.
//!
//! The reference orders the hints canonically (edge, blur, depth, seg, wsm) whatever order
//! they were given in; that order is the order of the control items in the model's sequence.
//! A clip shorter than needed is extended by reflecting it in time (frames `n−2, n−3, …`
//! appended), repeatedly, and by repeating its last frame once it cannot reflect further.

use std::fmt;

use candle_core::Tensor;

use crate::{Error, Result};

/// A kind of control map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hint {
    Edge,
    Blur,
    Depth,
    Seg,
    Wsm,
}

impl Hint {
    /// Every hint, in canonical order.
    pub const ALL: [Hint; 5] = [Hint::Edge, Hint::Blur, Hint::Depth, Hint::Seg, Hint::Wsm];

    pub fn name(self) -> &'static str {
        match self {
            Hint::Edge => "edge",
            Hint::Blur => "blur",
            Hint::Depth => "depth",
            Hint::Seg => "seg",
            Hint::Wsm => "wsm",
        }
    }

    /// `edge`, `blur`, `depth`, `seg` or `wsm`; `field` names the request field.
    pub fn parse(text: &str, field: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|h| h.name() == text)
            .ok_or_else(|| {
                Error::invalid(
                    field,
                    format!("unknown hint {text:?}; expected one of edge, blur, depth, seg, wsm"),
                )
            })
    }
}

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One control clip: `[1, 3, F, height, width]` f32 in [−1, 1] at the request size (see
/// [`crate::io::frames::load_video`]).
#[derive(Debug, Clone)]
pub struct Control {
    pub hint: Hint,
    pub frames: Tensor,
}

/// The controls in canonical hint order; a hint given twice is an error naming `field`.
pub fn canonical(mut controls: Vec<Control>, field: &str) -> Result<Vec<Control>> {
    controls.sort_by_key(|c| c.hint);
    if let Some(w) = controls.windows(2).find(|w| w[0].hint == w[1].hint) {
        return Err(Error::invalid(
            field,
            format!("the {} hint is given twice", w[0].hint),
        ));
    }
    Ok(controls)
}

/// Source frame indexes of a clip of `n` frames stretched to `len` by time reflection
/// (identity for `len ≤ n`: the clip is not cut here).
pub fn reflect_indexes(n: usize, len: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    while idx.len() < len && n > 0 {
        let pad = (idx.len() - 1).min(len - idx.len());
        if pad == 0 {
            let last = idx[idx.len() - 1];
            idx.resize(len, last);
            break;
        }
        let tail: Vec<usize> = idx.iter().rev().take(pad).copied().collect();
        idx.extend(tail);
    }
    idx
}

/// `frames` `[1, 3, F, H, W]` stretched to at least `len` frames by [`reflect_indexes`].
pub fn reflect_pad(frames: &Tensor, len: usize) -> Result<Tensor> {
    let n = frames.dim(2)?;
    if n >= len {
        return Ok(frames.clone());
    }
    if n == 0 {
        return Err(Error::invalid("controls", "a control clip has no frames"));
    }
    let idx: Vec<u32> = reflect_indexes(n, len)
        .into_iter()
        .map(|i| i as u32)
        .collect();
    let idx = Tensor::from_vec(idx, len, frames.device())?;
    Ok(frames.contiguous()?.index_select(&idx, 2)?)
}

/// A chunk's window of a (padded) control clip: frames `start..end`, stretched by time
/// reflection to `chunk_frames`.
pub fn chunk_window(
    frames: &Tensor,
    start: usize,
    end: usize,
    chunk_frames: usize,
) -> Result<Tensor> {
    let window = frames.narrow(2, start, end - start)?;
    reflect_pad(&window, chunk_frames)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn reflection_then_repetition() {
        // 7 frames to 11: 0..6 then the reversed clip's first four frames (6, 5, 4, 3).
        assert_eq!(
            reflect_indexes(7, 11),
            vec![0, 1, 2, 3, 4, 5, 6, 6, 5, 4, 3]
        );
        // Reflection repeats on the grown clip while it is still too short.
        assert_eq!(reflect_indexes(2, 6), vec![0, 1, 1, 1, 1, 1]);
        assert_eq!(reflect_indexes(3, 10), vec![0, 1, 2, 2, 1, 1, 2, 2, 1, 1]);
        // A single frame cannot reflect: it is repeated.
        assert_eq!(reflect_indexes(1, 3), vec![0, 0, 0]);
        assert_eq!(reflect_indexes(5, 3), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn hints_order_canonically_and_parse_by_name() {
        let f = Tensor::zeros((1, 3, 1, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let c = |hint| Control {
            hint,
            frames: f.clone(),
        };
        let order: Vec<Hint> = canonical(vec![c(Hint::Wsm), c(Hint::Depth), c(Hint::Edge)], "x")
            .unwrap()
            .iter()
            .map(|c| c.hint)
            .collect();
        assert_eq!(order, vec![Hint::Edge, Hint::Depth, Hint::Wsm]);
        let e = canonical(vec![c(Hint::Seg), c(Hint::Seg)], "controls").unwrap_err();
        assert_eq!(e.to_string(), "controls: the seg hint is given twice");
        assert_eq!(Hint::parse("blur", "controls").unwrap(), Hint::Blur);
        let e = Hint::parse("normal", "controls").unwrap_err().to_string();
        assert!(e.starts_with("controls: unknown hint \"normal\""), "{e}");
    }
}
