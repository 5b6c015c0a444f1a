//! `phyai serve`: flags → the server's configuration.

use candle_core::DType;
use phyai::engine::Target;
use phyai::{Error, Result};
use phyai_serve::{BackendArgs, ServeConfig};

use crate::args::{DeviceArg, DtypeArg, ServeArgs};

pub fn run(a: &ServeArgs) -> Result<()> {
    if std::env::var_os("WORLD_SIZE").is_some() {
        return Err(Error::invalid(
            "WORLD_SIZE",
            "phyai serve runs every rank in its own process (one thread per GPU); \
             unset WORLD_SIZE and use --tp/--cfg/--sp",
        ));
    }
    let target = match a.device {
        DeviceArg::Cpu => Target::Cpu,
        DeviceArg::Cuda(n) => Target::Cuda(n),
    };
    let dtype = match (a.dtype, a.device) {
        (Some(DtypeArg::F32), _) | (None, DeviceArg::Cpu) => DType::F32,
        (Some(DtypeArg::Bf16), _) | (None, DeviceArg::Cuda(_)) => DType::BF16,
    };
    if a.checkpoint.is_none() {
        eprintln!(
            "note: no --checkpoint given, serving the built-in demo checkpoint: its weights \
             are RANDOM, so videos are noise-like."
        );
    }
    let stall_at_step = match std::env::var("PHYAI_TEST_STALL_AT_STEP") {
        Ok(v) => Some(v.trim().parse().map_err(|_| {
            Error::invalid("PHYAI_TEST_STALL_AT_STEP", format!("not a step: {v:?}"))
        })?),
        Err(_) => None,
    };
    if a.max_body_mb == 0 {
        return Err(Error::invalid("--max-body-mb", "must be at least 1"));
    }
    phyai_serve::serve(ServeConfig {
        backend: BackendArgs {
            checkpoint: a.checkpoint.clone(),
            target,
            dtype,
            cfg: a.cfg,
            tp: a.tp,
            sp: a.sp,
            quantize: a.quantize.map(Into::into),
            fp8_attention: a.fp8_attention,
        },
        host: a.host.clone(),
        port: a.port,
        data_dir: a.data_dir.clone(),
        api_key: a.api_key.clone().filter(|k| !k.is_empty()),
        max_queue: a.max_queue,
        max_body_bytes: a.max_body_mb.saturating_mul(1 << 20),
        stall_at_step,
    })
}
