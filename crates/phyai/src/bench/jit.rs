//! What the first GPU run on a machine spends compiling kernels. Kernels ship as PTX and
//! the driver compiles each module to machine code when it is first loaded (cached under
//! `~/.nv/ComputeCache` afterwards). Loads every module the engine uses once and times it;
//! run with `CUDA_CACHE_DISABLE=1` to see the uncached cost. (Loads on parallel threads take
//! as long as the sum: the driver compiles one module at a time.)

use candle_core::Device;

use crate::{Error, Result};

/// Milliseconds to load each kernel module: candle's, then the project's.
pub fn jit_bench(device: &Device) -> Result<Vec<(String, f64)>> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        use cudarc::nvrtc::Ptx;
        let ctx = dev.cuda_stream().context().clone();
        let modules: [(&str, &str); 13] = [
            ("candle affine", candle_kernels::AFFINE.ptx()),
            ("candle binary", candle_kernels::BINARY.ptx()),
            ("candle cast", candle_kernels::CAST.ptx()),
            ("candle conv", candle_kernels::CONV.ptx()),
            ("candle fill", candle_kernels::FILL.ptx()),
            ("candle indexing", candle_kernels::INDEXING.ptx()),
            ("candle reduce", candle_kernels::REDUCE.ptx()),
            ("candle sort", candle_kernels::SORT.ptx()),
            ("candle ternary", candle_kernels::TERNARY.ptx()),
            ("candle unary", candle_kernels::UNARY.ptx()),
            ("phyai glue", crate::layers::cuda::glue::PTX),
            ("phyai video", crate::layers::cuda::video::PTX),
            ("phyai audio", crate::layers::cuda::audio::PTX),
        ];
        let mut out = Vec::new();
        for (name, ptx) in modules {
            let t = std::time::Instant::now();
            let m = ctx
                .load_module(Ptx::from_src(ptx))
                .map_err(|e| Error::msg(format!("loading {name}: {e}")))?;
            out.push((
                format!("{name} ({} KiB of PTX)", ptx.len() >> 10),
                t.elapsed().as_secs_f64() * 1e3,
            ));
            drop(m);
        }
        return Ok(out);
    }
    let _ = device;
    Err(Error::msg("the jit part needs a CUDA device"))
}
