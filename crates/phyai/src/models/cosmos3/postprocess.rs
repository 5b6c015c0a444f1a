//! Decoded tensors → bytes for the writers: RGB uint8 frames and interleaved audio samples.

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// Frames as packed RGB bytes, `[T, H, W, 3]` row-major.
pub struct Rgb8Video {
    pub data: Vec<u8>,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
}

/// `[1, 3, T, H, W]` pixels in [0, 1] → `round(clamp(x, 0, 1)·255)` as RGB bytes, rounding
/// half to even as the references (numpy/torch) do.
pub fn video_to_rgb8(video: &Tensor) -> Result<Rgb8Video> {
    let (b, c, t, h, w) = video.dims5()?;
    if b != 1 || c != 3 {
        return Err(Error::msg(format!(
            "expected video [1, 3, T, H, W], got {:?}",
            video.dims()
        )));
    }
    // [T, H, W, 3] so each frame is contiguous RGB.
    let v = video
        .squeeze(0)?
        .permute((1, 2, 3, 0))?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let data = v
        .iter()
        .map(|&x| {
            let x = if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) };
            (x * 255.0).round_ties_even() as u8
        })
        .collect();
    Ok(Rgb8Video {
        data,
        frames: t,
        height: h,
        width: w,
    })
}

/// `[1, C, N]` waveform → `N·C` samples interleaved by frame (`L R L R …`), clamped to [−1, 1].
pub fn interleave_audio(wave: &Tensor) -> Result<Vec<f32>> {
    let (b, _c, _n) = wave.dims3()?;
    if b != 1 {
        return Err(Error::msg(format!(
            "expected audio [1, C, N], got {:?}",
            wave.dims()
        )));
    }
    let v = wave
        .squeeze(0)?
        .t()?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(v.into_iter()
        .map(|x| if x.is_nan() { 0.0 } else { x.clamp(-1.0, 1.0) })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn pixels_round_and_clamp_in_frame_major_rgb_order() {
        // T=1, H=1, W=2; channel planes R=[0, 1], G=[0.5, 2], B=[-1, 0.2].
        let v = Tensor::from_vec(
            vec![0.0f32, 1.0, 0.5, 2.0, -1.0, 0.2],
            (1, 3, 1, 1, 2),
            &Device::Cpu,
        )
        .unwrap();
        let out = video_to_rgb8(&v).unwrap();
        assert_eq!((out.frames, out.height, out.width), (1, 1, 2));
        assert_eq!(out.data, vec![0, 128, 0, 255, 255, 51]);
    }

    #[test]
    fn audio_interleaves_channels() {
        let a = Tensor::from_vec(
            vec![0.1f32, 0.2, 0.3, -0.1, -2.0, -0.3],
            (1, 2, 3),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(
            interleave_audio(&a).unwrap(),
            vec![0.1, -0.1, 0.2, -1.0, 0.3, -0.3]
        );
    }
}
