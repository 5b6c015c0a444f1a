//! Still-image output (text-to-image): one RGB frame as PNG (lossless, the default) or
//! JPEG, chosen by the file extension, written whole or not at all.

use std::io::Cursor;
use std::path::Path;

use image::codecs::jpeg::JpegEncoder;
use image::{ImageEncoder, ImageFormat};

use super::atomic::write_atomic;
use crate::{Error, Result};

/// JPEG quality: high enough that the 8-bit levels survive nearly unchanged.
const JPEG_QUALITY: u8 = 95;

/// The still formats, by extension (case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StillFormat {
    Png,
    Jpeg,
}

impl StillFormat {
    /// `.png` → PNG, `.jpg`/`.jpeg` → JPEG; anything else is `None`.
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "png" => Some(StillFormat::Png),
            "jpg" | "jpeg" => Some(StillFormat::Jpeg),
            _ => None,
        }
    }
}

/// Encodes packed RGB `[height, width, 3]` bytes as `format`.
pub fn encode_still(
    rgb: &[u8],
    height: usize,
    width: usize,
    format: StillFormat,
) -> Result<Vec<u8>> {
    if height == 0 || width == 0 || rgb.len() != height * width * 3 {
        return Err(Error::invalid(
            "image",
            format!("{} bytes is not a {height}x{width} RGB image", rgb.len()),
        ));
    }
    let (w, h) = (
        u32::try_from(width).map_err(|_| Error::invalid("image", "too wide"))?,
        u32::try_from(height).map_err(|_| Error::invalid("image", "too tall"))?,
    );
    let mut out = Cursor::new(Vec::new());
    let res = match format {
        StillFormat::Png => image::write_buffer_with_format(
            &mut out,
            rgb,
            w,
            h,
            image::ExtendedColorType::Rgb8,
            ImageFormat::Png,
        ),
        StillFormat::Jpeg => JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY).write_image(
            rgb,
            w,
            h,
            image::ExtendedColorType::Rgb8,
        ),
    };
    res.map_err(|e| Error::msg(format!("encoding the image failed: {e}")))?;
    Ok(out.into_inner())
}

/// Writes packed RGB `[height, width, 3]` bytes to `path` as PNG or JPEG (by extension).
pub fn write_still(path: &Path, rgb: &[u8], height: usize, width: usize) -> Result<()> {
    let format = StillFormat::from_path(path).ok_or_else(|| {
        Error::invalid(
            "--out",
            format!(
                "{}: an image is written as .png, .jpg or .jpeg",
                path.display()
            ),
        )
    })?;
    write_atomic(path, &encode_still(rgb, height, width, format)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(h: usize, w: usize) -> Vec<u8> {
        (0..h * w * 3).map(|i| (i * 37 % 251) as u8).collect()
    }

    #[test]
    fn png_round_trips_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.PNG");
        let rgb = pattern(5, 7);
        write_still(&path, &rgb, 5, 7).unwrap();
        let back = image::open(&path).unwrap().to_rgb8();
        assert_eq!((back.width(), back.height()), (7, 5));
        assert_eq!(back.as_raw(), &rgb);
    }

    #[test]
    fn jpeg_is_chosen_by_extension() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jpg");
        let rgb = vec![128u8; 16 * 16 * 3];
        write_still(&path, &rgb, 16, 16).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..2], &[0xFF, 0xD8]); // JPEG SOI marker
        let back = image::open(&path).unwrap().to_rgb8();
        assert!(back.as_raw().iter().all(|&v| v.abs_diff(128) <= 1));
    }

    #[test]
    fn unknown_extension_or_size_is_refused_without_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.gif");
        let e = write_still(&path, &pattern(2, 2), 2, 2)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--out: "), "{e}");
        assert!(!path.exists());
        let png = dir.path().join("b.png");
        assert!(write_still(&png, &[0u8; 5], 2, 2).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
