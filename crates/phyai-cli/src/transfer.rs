//! `phyai generate --control HINT=PATH …`: the transfer part of a request from its flags.

use std::path::Path;

use candle_core::{DType, Device};
use phyai::io::frames::load_video_resized;
use phyai::models::cosmos3::sampler::GuidanceInterval;
use phyai::models::cosmos3::{Control, Hint, TransferInput};
use phyai::{Error, Result};

use crate::args::GenerateArgs;

/// The controls (each `HINT=PATH`, read at `height × width`) and the chunking and guidance
/// flags; `chunk_noise` from `--init-noise` when given.
pub fn transfer_input(a: &GenerateArgs, height: usize, width: usize) -> Result<TransferInput> {
    let mut controls = Vec::with_capacity(a.controls.len());
    for spec in &a.controls {
        let (hint, path) = spec.split_once('=').ok_or_else(|| {
            Error::invalid("controls", format!("expected HINT=PATH, got {spec:?}"))
        })?;
        let hint = Hint::parse(hint.trim(), "controls")?;
        let path = Path::new(path);
        if !path.exists() {
            return Err(Error::invalid(
                "controls",
                format!("{hint}: {} does not exist", path.display()),
            ));
        }
        let frames = load_video_resized(path, height, width, "controls")
            .map_err(|e| Error::invalid("controls", format!("{hint}: {}", e.detail())))?;
        controls.push(Control { hint, frames });
    }
    let mut t = TransferInput::new(controls);
    t.chunk_frames = a.chunk_frames;
    t.conditional_frames = a.conditional_frames;
    t.control_guidance = a.control_guidance;
    t.control_guidance_interval = match &a.control_guidance_interval {
        Some(s) => Some(GuidanceInterval::parse(s, "control_guidance_interval")?),
        None => None,
    };
    if let Some(p) = &a.init_noise {
        let map = candle_core::safetensors::load(p, &Device::Cpu).map_err(|e| {
            Error::invalid(
                "init_noise",
                format!("{}: {e}", p.display()).replace('\n', " "),
            )
        })?;
        let noise = map.get("chunk_noise").ok_or_else(|| {
            Error::invalid(
                "init_noise",
                format!(
                    "{}: transfer needs a tensor named `chunk_noise`",
                    p.display()
                ),
            )
        })?;
        t.chunk_noise = Some(noise.to_dtype(DType::F32)?);
    }
    Ok(t)
}
