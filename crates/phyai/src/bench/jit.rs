//! What a first GPU run on a machine spends loading kernel modules. The build ships every
//! module compiled for the GPUs it targets (`layers::cuda::kernel_images`); a module without
//! machine code for this GPU is compiled from PTX by the driver when first loaded (cached
//! under `~/.nv/ComputeCache` afterwards). Loads every module the engine uses once, as a
//! generation does, and times it; `PHYAI_KERNEL_IMAGES=0` measures the PTX path instead, and
//! `CUDA_CACHE_DISABLE=1` its uncached cost. (Loads on parallel threads take as long as the
//! sum: the driver compiles one module at a time.)

use candle_core::Device;

use crate::{Error, Result};

/// One module load.
#[derive(Debug, Clone)]
pub struct JitLoad {
    pub module: String,
    /// KiB of the PTX text the module is otherwise compiled from.
    pub ptx_kib: usize,
    /// Loaded from its compiled image (false: the driver compiled PTX).
    pub compiled: bool,
    pub ms: f64,
}

/// Every kernel module the engine uses, loaded once: candle's, then the project's.
pub fn jit_bench(device: &Device) -> Result<Vec<JitLoad>> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        use crate::layers::cuda::kernel_images::module_loads;
        use cudarc::nvrtc::Ptx;
        let ctx = dev.cuda_stream().context().clone();
        let modules: [(&str, &str); 14] = [
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
            ("phyai fp8", crate::layers::cuda::fp8::PTX),
        ];
        let mut out = Vec::new();
        for (name, ptx) in modules {
            let before = module_loads().len();
            let t = std::time::Instant::now();
            let m = ctx
                .load_module(Ptx::from_src(ptx))
                .map_err(|e| Error::msg(format!("loading {name}: {e}")))?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let compiled = module_loads()
                .get(before)
                .is_some_and(|l| l.compiled && l.name == name);
            out.push(JitLoad {
                module: name.to_string(),
                ptx_kib: ptx.len() >> 10,
                compiled,
                ms,
            });
            drop(m);
        }
        return Ok(out);
    }
    let _ = device;
    Err(Error::msg("the jit part needs a CUDA device"))
}
