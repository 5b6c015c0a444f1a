//! `phyai generate --action-mode …`: the action flags as a request, the actions file in
//! (`--actions`, .npy or JSON) and the predicted actions out (`<out>.actions.npy` and
//! `<out>.actions.json`).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use phyai::io::npy;
use phyai::models::cosmos3::continuation::VideoCondition;
use phyai::models::cosmos3::{ActionMode, ActionRequest, Cosmos3Request, VideoInput};
use phyai::{Error, Result};

use crate::args::GenerateArgs;

/// The action part of a request, `None` without `--action-mode`; action flags without it
/// are errors.
pub fn request(a: &GenerateArgs) -> Result<Option<ActionRequest>> {
    let Some(mode) = &a.action_mode else {
        for (set, field) in [
            (a.domain.is_some(), "domain"),
            (a.actions.is_some(), "actions"),
            (a.action_chunk.is_some(), "action_chunk"),
            (a.resolution_tier.is_some(), "resolution_tier"),
            (a.view_point.is_some(), "view_point"),
        ] {
            if set {
                return Err(Error::invalid(field, "needs --action-mode"));
            }
        }
        return Ok(None);
    };
    let mode = ActionMode::parse(mode, "action_mode")?;
    for (set, field) in [
        (a.num_frames.is_some(), "num_frames"),
        (a.height.is_some(), "height"),
        (a.width.is_some(), "width"),
        (a.extend > 0, "extend"),
        (a.sound, "sound"),
    ] {
        if set {
            return Err(Error::invalid(
                field,
                "not with --action-mode (the clip is --action-chunk + 1 frames at the input's size, without sound)",
            ));
        }
    }
    let domain = a.domain.clone().ok_or_else(|| {
        Error::invalid(
            "domain",
            "action modes need the embodiment (e.g. bridge_orig_lerobot)",
        )
    })?;
    let chunk = a.action_chunk.ok_or_else(|| {
        Error::invalid(
            "action_chunk",
            "action modes need the chunk size (actions per clip)",
        )
    })?;
    let mut r = ActionRequest::new(mode, domain, chunk);
    if let Some(t) = a.resolution_tier {
        r.resolution_tier = t;
    }
    if let Some(v) = &a.view_point {
        r.view_point = v.clone();
    }
    if let Some(p) = &a.actions {
        r.actions = Some(read_actions(p)?);
    }
    Ok(Some(r))
}

/// Puts the conditioning pixels (sides rounded down to multiples of 16) into the request: `--image` or
/// `--video` (mp4, PNG folder or one image).
pub fn load_pixels(
    request: &mut Cosmos3Request,
    image: Option<&Path>,
    video: Option<&Path>,
) -> Result<()> {
    let check = |p: &Path, field: &str| -> Result<()> {
        if !p.exists() {
            return Err(Error::invalid(
                field,
                format!("{} does not exist", p.display()),
            ));
        }
        Ok(())
    };
    if let Some(p) = image {
        check(p, "image")?;
        request.image = Some(phyai::io::frames::load_native_16(p, "image")?.squeeze(2)?);
    }
    if let Some(p) = video {
        check(p, "video")?;
        request.video = Some(VideoInput {
            frames: phyai::io::frames::load_native_16(p, "video")?,
            condition: VideoCondition::default(),
        });
    }
    Ok(())
}

/// The `action` tensor of an `--init-noise` file, when it has one.
pub fn init_noise(path: &Path) -> Result<Option<Tensor>> {
    let map = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
        Error::invalid(
            "init_noise",
            format!("{}: {e}", path.display()).replace('\n', " "),
        )
    })?;
    Ok(match map.get("action") {
        Some(t) => Some(t.to_dtype(DType::F32)?),
        None => None,
    })
}

/// `--actions FILE`: a 2-D array `[n, raw_dim]`, as `.npy` (float32/64) or JSON (an array
/// of rows, or an object whose `actions` is one, as `<out>.actions.json` is).
pub fn read_actions(path: &Path) -> Result<Tensor> {
    let is_npy = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    let m = if is_npy {
        npy::read(path, "actions")?
    } else {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        parse_json(&text)
            .map_err(|why| Error::invalid("actions", format!("{}: {why}", path.display())))?
    };
    Ok(Tensor::from_vec(m.data, (m.rows, m.cols), &Device::Cpu)?)
}

fn parse_json(text: &str) -> std::result::Result<npy::Matrix, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let rows = match &value {
        serde_json::Value::Object(m) => m.get("actions"),
        v => Some(v),
    }
    .and_then(|v| v.as_array())
    .ok_or("expected an array of rows (or {\"actions\": [...]})")?;
    let cols = rows.first().and_then(|r| r.as_array()).map_or(0, Vec::len);
    let mut data = Vec::with_capacity(rows.len() * cols);
    for (i, row) in rows.iter().enumerate() {
        let row = row
            .as_array()
            .filter(|r| r.len() == cols && cols > 0)
            .ok_or(format!("row {i} is not a list of {cols} numbers"))?;
        for v in row {
            data.push(v.as_f64().ok_or(format!("row {i} holds a non-number"))? as f32);
        }
    }
    if rows.is_empty() {
        return Err("holds no rows".into());
    }
    Ok(npy::Matrix {
        rows: rows.len(),
        cols,
        data,
    })
}

/// `<out>.actions.npy` and `<out>.actions.json`.
pub fn paths(out: &Path) -> (PathBuf, PathBuf) {
    let with = |ext: &str| {
        let mut s = out.as_os_str().to_owned();
        s.push(ext);
        PathBuf::from(s)
    };
    (with(".actions.npy"), with(".actions.json"))
}

/// Writes the predicted actions `[chunk, raw_dim]` beside the output (each file written
/// whole or not at all).
pub fn write(out: &Path, actions: &Tensor, a: &ActionRequest) -> Result<(PathBuf, PathBuf)> {
    let rows: Vec<Vec<f32>> = actions.to_dtype(DType::F32)?.to_vec2()?;
    let m = npy::Matrix {
        rows: rows.len(),
        cols: rows.first().map_or(0, Vec::len),
        data: rows.iter().flatten().copied().collect(),
    };
    let (npy_path, json_path) = paths(out);
    let json = serde_json::json!({
        "mode": a.mode.name(),
        "domain": a.domain,
        "chunk": a.chunk,
        "actions": rows,
    });
    phyai::io::atomic::write_atomic(&npy_path, &npy::encode(&m))?;
    phyai::io::atomic::write_atomic(&json_path, format!("{json}\n").as_bytes())?;
    Ok((npy_path, json_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_actions() {
        let m = parse_json("[[1, 2.5], [3, -4]]").unwrap();
        assert_eq!((m.rows, m.cols, m.data), (2, 2, vec![1.0, 2.5, 3.0, -4.0]));
        let m = parse_json(r#"{"mode": "policy", "actions": [[0.5]]}"#).unwrap();
        assert_eq!(m.data, vec![0.5]);
        for bad in ["[]", "[[1], [2, 3]]", "{\"a\": 1}", "[[\"x\"]]", "nope"] {
            assert!(parse_json(bad).is_err(), "{bad}");
        }
    }
}
