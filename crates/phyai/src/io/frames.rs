//! Conditioning videos (video-to-video continuation, transfer controls, action inputs): an
//! mp4, or a folder of PNG frames read in file-name order, exactly, so tests can feed the
//! same pixels as the reference. 8-bit levels map to [−1, 1] as `k/127.5 − 1`.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// The `.png` files of `dir`, sorted by name; at least one.
pub fn png_frames(dir: &Path, field: &str) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let is_png = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("png"));
        if is_png && path.is_file() {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(Error::invalid(
            field,
            format!("{}: the folder holds no .png frames", dir.display()),
        ));
    }
    files.sort();
    Ok(files)
}

/// Loads the PNG frames of `dir` as `[1, 3, F, height, width]` f32 in [−1, 1] on the CPU.
/// Every frame must already be `height × width` (no resampling: the frames are used as
/// they are, so they must be the size of the request).
pub fn load_png_frames(dir: &Path, height: usize, width: usize, field: &str) -> Result<Tensor> {
    let files = png_frames(dir, field)?;
    let plane = height * width;
    let mut data = vec![0f32; 3 * files.len() * plane];
    let frames = files.len();
    for (f, file) in files.iter().enumerate() {
        let img = image::ImageReader::open(file)
            .map_err(|e| Error::io(file, e))?
            .with_guessed_format()
            .map_err(|e| Error::io(file, e))?
            .decode()
            .map_err(|e| Error::invalid(field, format!("{}: {e}", file.display())))?
            .to_rgb8();
        let (w, h) = (img.width() as usize, img.height() as usize);
        if (h, w) != (height, width) {
            return Err(Error::invalid(
                field,
                format!(
                    "{}: frame is {h}x{w}, the request is {height}x{width}",
                    file.display()
                ),
            ));
        }
        for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
            for c in 0..3 {
                data[(c * frames + f) * plane + i] = px[c] as f32 / 127.5 - 1.0;
            }
        }
    }
    Ok(Tensor::from_vec(
        data,
        (1, 3, frames, height, width),
        &Device::Cpu,
    )?)
}

/// Loads the video at `path` (a folder of PNG frames, or an mp4) as
/// `[1, 3, F, height, width]` f32 in [−1, 1] on the CPU; frames must be the request size.
pub fn load_video(path: &Path, height: usize, width: usize, field: &str) -> Result<Tensor> {
    if path.is_dir() {
        return load_png_frames(path, height, width, field);
    }
    let v = super::mp4_read::read_mp4(path, field)?;
    if (v.height, v.width) != (height, width) {
        return Err(Error::invalid(
            field,
            format!(
                "{}: frames are {}x{}, the request is {height}x{width}",
                path.display(),
                v.height,
                v.width
            ),
        ));
    }
    let (f, plane) = (v.frames, height * width);
    let mut data = vec![0f32; 3 * f * plane];
    for (i, px) in v.data.chunks_exact(3).enumerate() {
        let (frame, at) = (i / plane, i % plane);
        for c in 0..3 {
            data[(c * f + frame) * plane + at] = px[c] as f32 / 127.5 - 1.0;
        }
    }
    Ok(Tensor::from_vec(
        data,
        (1, 3, f, height, width),
        &Device::Cpu,
    )?)
}

/// Loads conditioning pixels at their own size as `[1, 3, F, H, W]` f32 in [−1, 1]: a
/// folder of PNG frames (all the size of the first), an mp4, or one image file (PNG/JPEG,
/// `F` = 1), with no resampling.
pub fn load_native(path: &Path, field: &str) -> Result<Tensor> {
    let is_mp4 = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("mp4"));
    let first = if path.is_dir() {
        png_frames(path, field)?.swap_remove(0)
    } else if is_mp4 {
        let v = super::mp4_read::read_mp4(path, field)?;
        return load_video(path, v.height, v.width, field);
    } else {
        path.to_path_buf()
    };
    let (w, h) = image::image_dimensions(&first)
        .map_err(|e| Error::invalid(field, format!("{}: {e}", first.display())))?;
    let (h, w) = (h as usize, w as usize);
    if path.is_dir() {
        return load_png_frames(path, h, w, field);
    }
    let img = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(|e| Error::invalid(field, format!("{}: {e}", path.display())))?
        .to_rgb8();
    let plane = h * w;
    let mut data = vec![0f32; 3 * plane];
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            data[c * plane + i] = px[c] as f32 / 127.5 - 1.0;
        }
    }
    Ok(Tensor::from_vec(data, (1, 3, 1, h, w), &Device::Cpu)?)
}

/// The RGB bytes of every frame of `path` (a PNG folder, all frames one size, or an mp4) at
/// their own size.
fn read_rgb8(path: &Path, field: &str) -> Result<super::mp4_read::RgbFrames> {
    if !path.is_dir() {
        return super::mp4_read::read_mp4(path, field);
    }
    let files = png_frames(path, field)?;
    let mut data = Vec::new();
    let mut size = None;
    for file in &files {
        let img = image::ImageReader::open(file)
            .map_err(|e| Error::io(file, e))?
            .with_guessed_format()
            .map_err(|e| Error::io(file, e))?
            .decode()
            .map_err(|e| Error::invalid(field, format!("{}: {e}", file.display())))?
            .to_rgb8();
        let hw = (img.height() as usize, img.width() as usize);
        if *size.get_or_insert(hw) != hw {
            return Err(Error::invalid(
                field,
                format!(
                    "{}: frame is {}x{}, the first frame is {}x{}",
                    file.display(),
                    hw.0,
                    hw.1,
                    size.map_or(0, |s| s.0),
                    size.map_or(0, |s| s.1)
                ),
            ));
        }
        data.extend_from_slice(img.as_raw());
    }
    let (height, width) = size.unwrap_or((0, 0));
    Ok(super::mp4_read::RgbFrames {
        data,
        frames: files.len(),
        height,
        width,
    })
}

/// Loads the video at `path` (a PNG folder or an mp4) as `[1, 3, F, height, width]` f32 in
/// [−1, 1] on the CPU, resizing frames of another size as the reference's video processor
/// does (Pillow's bilinear resize, see [`super::resample`]); frames of the request size are
/// used exactly as they are.
pub fn load_video_resized(path: &Path, height: usize, width: usize, field: &str) -> Result<Tensor> {
    resized_tensor(read_rgb8(path, field)?, height, width)
}

/// Loads conditioning pixels as the reference's video processor takes a clip without a
/// target size: a PNG folder, an mp4, or one image file (`F` = 1), each side rounded down to
/// a multiple of 16 (Pillow's bilinear resize when that changes it), as `[1, 3, F, H, W]` f32
/// in [−1, 1]. The action modes' input.
pub fn load_native_16(path: &Path, field: &str) -> Result<Tensor> {
    let is_mp4 = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("mp4"));
    let v = if path.is_dir() || is_mp4 {
        read_rgb8(path, field)?
    } else {
        let img = image::ImageReader::open(path)
            .map_err(|e| Error::io(path, e))?
            .with_guessed_format()
            .map_err(|e| Error::io(path, e))?
            .decode()
            .map_err(|e| Error::invalid(field, format!("{}: {e}", path.display())))?
            .to_rgb8();
        super::mp4_read::RgbFrames {
            height: img.height() as usize,
            width: img.width() as usize,
            frames: 1,
            data: img.into_raw(),
        }
    };
    let (h, w) = (v.height - v.height % 16, v.width - v.width % 16);
    if h == 0 || w == 0 {
        return Err(Error::invalid(
            field,
            format!(
                "{}: frames are {}x{}, smaller than 16 pixels",
                path.display(),
                v.height,
                v.width
            ),
        ));
    }
    resized_tensor(v, h, w)
}

/// `v`'s frames at `height`×`width` (Pillow's bilinear resize where the size differs) as
/// `[1, 3, F, height, width]` f32 in [−1, 1].
fn resized_tensor(v: super::mp4_read::RgbFrames, height: usize, width: usize) -> Result<Tensor> {
    let (f, plane) = (v.frames, height * width);
    let src_plane = v.height * v.width * 3;
    let mut data = vec![0f32; 3 * f * plane];
    for frame in 0..f {
        let src = &v.data[frame * src_plane..(frame + 1) * src_plane];
        let px = if (v.height, v.width) == (height, width) {
            src.to_vec()
        } else {
            super::resample::resize_rgb8(src, v.height, v.width, height, width)
        };
        for (at, rgb) in px.chunks_exact(3).enumerate() {
            for c in 0..3 {
                data[(c * f + frame) * plane + at] = rgb[c] as f32 / 127.5 - 1.0;
            }
        }
    }
    Ok(Tensor::from_vec(
        data,
        (1, 3, f, height, width),
        &Device::Cpu,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, h: u32, w: u32, level: u8) {
        image::RgbImage::from_pixel(w, h, image::Rgb([level, 0, 255]))
            .save(path)
            .unwrap();
    }

    #[test]
    fn frames_load_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("b.png"), 2, 3, 255);
        write_png(&dir.path().join("a.png"), 2, 3, 0);
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let t = load_png_frames(dir.path(), 2, 3, "video").unwrap();
        assert_eq!(t.dims(), &[1, 3, 2, 2, 3]);
        let red = t.get(0).unwrap().get(0).unwrap(); // [F, H, W]
        let firsts: Vec<f32> = (0..2)
            .map(|f| {
                red.get(f)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()[0]
            })
            .collect();
        assert_eq!(firsts, vec![-1.0, 1.0]);
    }

    #[test]
    fn mp4_and_png_folder_give_the_same_layout() {
        let dir = tempfile::tempdir().unwrap();
        let rgb: Vec<u8> = [[200u8, 100, 50]; 2 * 16 * 16].concat();
        let mp4 = dir.path().join("c.mp4");
        crate::io::video::write_mp4(&mp4, &rgb, 2, 16, 16, 24.0, None).unwrap();
        let v = load_video(&mp4, 16, 16, "video").unwrap();
        assert_eq!(v.dims(), &[1, 3, 2, 16, 16]);
        let red = v.get(0).unwrap().get(0).unwrap().mean_all().unwrap();
        let red = (red.to_scalar::<f32>().unwrap() + 1.0) * 127.5;
        assert!((red - 200.0).abs() < 4.0, "{red}");
        let e = load_video(&mp4, 32, 16, "video").unwrap_err().to_string();
        assert!(e.contains("frames are 16x16, the request is 32x16"), "{e}");
    }

    #[test]
    fn wrong_size_or_empty_folder_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_png_frames(dir.path(), 2, 3, "video")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("video: ") && e.contains("no .png"), "{e}");
        write_png(&dir.path().join("a.png"), 4, 3, 0);
        let e = load_png_frames(dir.path(), 2, 3, "video")
            .unwrap_err()
            .to_string();
        assert!(e.contains("frame is 4x3, the request is 2x3"), "{e}");
    }
}
