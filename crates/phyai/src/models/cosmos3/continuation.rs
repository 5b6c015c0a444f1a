//! Video-to-video continuation: the leading latent frames of the output are the encoded
//! frames of a given video and stay clean, the rest is generated.
//!
//! As in the reference, `condition_frame_indexes_vision` (default `[0, 1]`) names the latent
//! frames kept from the video; they need its first (`keep` first) or last (`keep` last)
//! `max(index)·4 + 1` pixel frames, and a shorter video is padded by repeating its last
//! frame. The reference encodes that clip padded to the whole request length; the causal
//! VAE makes latent frame j depend only on pixel frames ≤ 4j, so encoding just the needed
//! frames gives the same latents.

use candle_core::Tensor;

use crate::{Error, Result};

/// Which end of a longer video conditions the request (`condition_video_keep`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VideoKeep {
    #[default]
    First,
    Last,
}

impl VideoKeep {
    pub fn parse(text: &str, field: &str) -> Result<Self> {
        match text {
            "first" => Ok(VideoKeep::First),
            "last" => Ok(VideoKeep::Last),
            other => Err(Error::invalid(
                field,
                format!("expected \"first\" or \"last\", got {other:?}"),
            )),
        }
    }
}

/// How a video conditions a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoCondition {
    /// Latent frame indexes kept from the video (`condition_frame_indexes_vision`).
    pub indexes: Vec<usize>,
    pub keep: VideoKeep,
}

impl Default for VideoCondition {
    fn default() -> Self {
        Self {
            indexes: vec![0, 1],
            keep: VideoKeep::First,
        }
    }
}

impl VideoCondition {
    /// From the text of `condition_frames` (comma-separated latent frame indexes, e.g.
    /// "0,1") and `condition_video_keep` ("first" or "last").
    pub fn parse(frames: &str, keep: &str) -> Result<Self> {
        let indexes = frames
            .split(',')
            .map(|i| {
                i.trim().parse::<usize>().map_err(|_| {
                    Error::invalid(
                        "condition_frames",
                        format!("expected comma-separated frame indexes, got {frames:?}"),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            indexes,
            keep: VideoKeep::parse(keep, "condition_video_keep")?,
        })
    }

    /// Checks the indexes against a request of `latent_frames` latent frames.
    pub fn validate(&self, latent_frames: usize) -> Result<()> {
        let field = "condition_frames";
        if self.indexes.is_empty() {
            return Err(Error::invalid(field, "must name at least one latent frame"));
        }
        if latent_frames < 2 {
            return Err(Error::invalid(
                "num_frames",
                "video conditioning needs more than one frame",
            ));
        }
        if let Some(&bad) = self.indexes.iter().find(|&&i| i >= latent_frames) {
            return Err(Error::invalid(
                field,
                format!("{bad} is outside the {latent_frames} latent frames of the request"),
            ));
        }
        let mut sorted = self.indexes.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != self.indexes.len() {
            return Err(Error::invalid(field, "lists a frame twice"));
        }
        Ok(())
    }

    /// Pixel frames the conditioning needs: `max(index)·4 + 1`.
    pub fn pixel_frames(&self) -> usize {
        self.indexes.iter().copied().max().unwrap_or(0) * 4 + 1
    }

    /// The clip to encode from `video` `[1, 3, F, H, W]`: its first or last
    /// [`Self::pixel_frames`] frames, padded by repeating the last one.
    pub fn clip(&self, video: &Tensor) -> Result<Tensor> {
        let f = video.dim(2)?;
        if f == 0 {
            return Err(Error::invalid("video", "has no frames"));
        }
        let n = self.pixel_frames();
        let take = n.min(f);
        let start = match self.keep {
            VideoKeep::First => 0,
            VideoKeep::Last => f - take,
        };
        let clip = video.narrow(2, start, take)?;
        if take == n {
            return Ok(clip);
        }
        let last = clip.narrow(2, take - 1, 1)?;
        let pad = last.repeat((1, 1, n - take, 1, 1))?;
        Ok(Tensor::cat(&[&clip, &pad], 2)?)
    }

    /// The conditioned latent frames, in `indexes` order, out of the encoded clip
    /// `[1, C, max(index)+1, h, w]`.
    pub fn select(&self, encoded: &Tensor) -> Result<Tensor> {
        let frames: Vec<Tensor> = self
            .indexes
            .iter()
            .map(|&i| encoded.narrow(2, i, 1))
            .collect::<std::result::Result<_, _>>()?;
        Ok(Tensor::cat(&frames, 2)?)
    }
}

/// Long rollouts: `chunks` further generations after `first` (`[1, 3, T, H, W]` in [0, 1]),
/// each conditioned on the end of the video so far (`cond`'s indexes, the last frames), and
/// appended without the frames it was conditioned on. `generate` receives the running video
/// in [−1, 1] (the conditioning input) and returns its chunk in [0, 1], with the same frame
/// count as `first`. The result has `T + chunks·(T − pixel_frames)` frames.
pub fn extend(
    first: Tensor,
    chunks: usize,
    cond: &VideoCondition,
    generate: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let t = first.dim(2)?;
    let overlap = cond.pixel_frames();
    if chunks > 0 && overlap >= t {
        return Err(Error::invalid(
            "extend",
            format!("each chunk reuses {overlap} frames, so chunks of {t} frames add nothing"),
        ));
    }
    let mut video = first;
    for _ in 0..chunks {
        let running = ((&video * 2.0)? - 1.0)?;
        let chunk = generate(&running)?;
        if chunk.dim(2)? != t {
            return Err(Error::msg(format!(
                "an extension chunk has {} frames, expected {t}",
                chunk.dim(2)?
            )));
        }
        let fresh = chunk.narrow(2, overlap, t - overlap)?;
        video = Tensor::cat(&[&video, &fresh], 2)?;
    }
    Ok(video)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn video(frames: usize) -> Tensor {
        Tensor::arange(0f32, frames as f32, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, frames, 1, 1))
            .unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn clip_takes_the_needed_end_and_pads_short_videos() {
        let first = VideoCondition::default();
        assert_eq!(
            values(&first.clip(&video(7)).unwrap()),
            vec![0., 1., 2., 3., 4.]
        );
        let last = VideoCondition {
            keep: VideoKeep::Last,
            ..first.clone()
        };
        assert_eq!(
            values(&last.clip(&video(7)).unwrap()),
            vec![2., 3., 4., 5., 6.]
        );
        assert_eq!(
            values(&first.clip(&video(3)).unwrap()),
            vec![0., 1., 2., 2., 2.]
        );
        let single = VideoCondition {
            indexes: vec![0],
            keep: VideoKeep::First,
        };
        assert_eq!(values(&single.clip(&video(7)).unwrap()), vec![0.]);
        let enc = Tensor::zeros((1, 2, 3, 1, 1), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(first.select(&enc).unwrap().dims(), &[1, 2, 2, 1, 1]);
    }

    #[test]
    fn extend_conditions_on_the_end_and_drops_the_overlap() {
        // Chunks of 9 frames conditioned on latent frames (0, 1): 5 frames reused, 4 added.
        let first = (video(9) / 100.0).unwrap();
        let cond = VideoCondition {
            indexes: vec![0, 1],
            keep: VideoKeep::Last,
        };
        let mut seen = Vec::new();
        let mut calls = 0.0;
        let mut gen = |running: &Tensor| -> Result<Tensor> {
            seen.push(values(&cond.clip(running)?));
            calls += 1.0;
            Ok(((video(9) / 100.0)? + calls)?)
        };
        let out = extend(first, 2, &cond, &mut gen).unwrap();
        let short = VideoCondition {
            indexes: vec![0, 2],
            keep: VideoKeep::Last,
        };
        assert!(extend(video(9), 1, &short, &mut gen).is_err());
        assert_eq!(out.dim(2).unwrap(), 9 + 2 * 4);
        // The first chunk is conditioned on frames 4..8 of the first clip, mapped to [−1, 1].
        let want: Vec<f32> = (4..9).map(|f| f as f32 / 100.0 * 2.0 - 1.0).collect();
        assert_eq!(seen[0], want);
        let v = values(&out);
        assert_eq!(&v[9..13], &[1.05, 1.06, 1.07, 1.08]);
        assert_eq!(&v[13..], &[2.05, 2.06, 2.07, 2.08]);
    }

    #[test]
    fn bad_conditions_are_field_errors() {
        let c = |idx: Vec<usize>| VideoCondition {
            indexes: idx,
            keep: VideoKeep::First,
        };
        for (cond, t, want) in [
            (c(vec![]), 3, "condition_frames: must name"),
            (c(vec![0, 3]), 3, "condition_frames: 3 is outside"),
            (c(vec![1, 1]), 3, "condition_frames: lists"),
            (c(vec![0]), 1, "num_frames: "),
        ] {
            let e = cond.validate(t).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}");
        }
        assert!(VideoKeep::parse("middle", "condition_video_keep").is_err());
        assert_eq!(VideoKeep::parse("last", "x").unwrap(), VideoKeep::Last);
    }
}
