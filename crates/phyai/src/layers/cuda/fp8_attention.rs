//! FP8 attention on Hopper: FlashInfer's FA3-lineage FP8 prefill kernel
//! (kernels/fp8_attention_sm90.cu), compiled into the binary when the build is given
//! FlashInfer's headers (`PHYAI_FLASHINFER_DIR`, see build.rs); otherwise [`available`] is
//! false and callers keep bf16 attention.
//!
//! q, k and v (bf16, `[H, S, D]` views with unit stride on D, as the cuDNN path takes them)
//! are quantized to E4M3 with one scale per head (amax/448), token-major; the kernel runs
//! both products in FP8 with f32 accumulation and writes bf16 `[Sq, Hq, D]`, returned as the
//! `[Hq, Sq, D]` view. Head dim 128, no mask (the generation tower's attention).

use candle_core::Tensor;

use crate::Result;

/// Whether this build has the FP8 attention kernels.
pub fn available() -> bool {
    cfg!(phyai_fp8_attention)
}

/// FP8 attention, or an error (no kernels in this build, a shape or device the kernel does
/// not take); the caller then runs bf16 attention. Shapes as in
/// [`crate::layers::attention::attention`].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    #[cfg(phyai_fp8_attention)]
    {
        Ok(q.apply_op3_no_bwd(k, v, &imp::Fp8Sdpa)?.transpose(0, 1)?)
    }
    #[cfg(not(phyai_fp8_attention))]
    {
        let _ = (q, k, v);
        Err(crate::Error::invalid(
            "fp8_attention",
            "this build has no FP8 attention kernels (build with PHYAI_FLASHINFER_DIR set)",
        ))
    }
}

#[cfg(phyai_fp8_attention)]
mod imp {
    use std::ffi::c_void;

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut};
    use candle_core::cuda_backend::CudaStorage;
    use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape};
    use half::bf16;

    /// The kernel's head dimension.
    const HEAD_DIM: usize = 128;

    extern "C" {
        fn phyai_fp8_quantize_heads(
            x: *const c_void,
            stride_s: i64,
            stride_h: i64,
            rows: i32,
            heads: i32,
            amax: *mut f32,
            scale: *mut f32,
            out: *mut c_void,
            device: i32,
            stream: *mut c_void,
        ) -> i32;
        fn phyai_fp8_attention_sm90(
            q: *const c_void,
            k: *const c_void,
            v: *const c_void,
            o: *mut c_void,
            q_scale: *mut f32,
            k_scale: *mut f32,
            v_scale: *mut f32,
            qo_len: i32,
            kv_len: i32,
            qo_heads: i32,
            kv_heads: i32,
            sm_scale: f64,
            tiles: i32,
            device: i32,
            stream: *mut c_void,
        ) -> i32;
    }

    /// The kernel's tile configuration (`PHYAI_FP8_ATTENTION_TILES`, 0-4; 0 is FlashInfer's
    /// own and the fastest measured: 38.5 ms at W720 on an H100 against 41.2-143.7 ms for
    /// the others), for measuring.
    fn tiles() -> i32 {
        static TILES: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
        *TILES.get_or_init(|| {
            std::env::var("PHYAI_FP8_ATTENTION_TILES")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|t| (0..=4).contains(t))
                .unwrap_or(0)
        })
    }

    fn check(code: i32, what: &str) -> candle_core::Result<()> {
        if code == 0 {
            Ok(())
        } else {
            candle_core::bail!("FP8 attention: {what} failed with CUDA error {code}")
        }
    }

    /// `[head, seq]` strides of an `[H, S, D]` bf16 view whose rows are 16-byte aligned.
    fn strides(l: &Layout) -> candle_core::Result<[usize; 2]> {
        let st = l.stride();
        let ok = st.len() == 3
            && st[2] == 1
            && st[0].is_multiple_of(8)
            && st[1].is_multiple_of(8)
            && l.start_offset().is_multiple_of(8);
        if !ok {
            candle_core::bail!("FP8 attention needs 16-byte aligned [H, S, D] rows, got {st:?}");
        }
        Ok([st[0], st[1]])
    }

    pub struct Fp8Sdpa;

    impl CustomOp3 for Fp8Sdpa {
        fn name(&self) -> &'static str {
            "fp8-sdpa"
        }

        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            candle_core::bail!("FP8 attention needs CUDA tensors")
        }

        fn cuda_fwd(
            &self,
            q: &CudaStorage,
            lq: &Layout,
            k: &CudaStorage,
            lk: &Layout,
            v: &CudaStorage,
            lv: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            for s in [q, k, v] {
                if s.dtype() != DType::BF16 {
                    candle_core::bail!("FP8 attention takes bf16 inputs, got {:?}", s.dtype());
                }
            }
            let (hq, sq, d) = lq.shape().dims3()?;
            let (hkv, sk, _) = lk.shape().dims3()?;
            if d != HEAD_DIM || hkv == 0 || !hq.is_multiple_of(hkv) {
                candle_core::bail!(
                    "FP8 attention takes head dim {HEAD_DIM}, got {d} ({hq}/{hkv} heads)"
                );
            }
            let (sq_, sk_) = (i32::try_from(sq), i32::try_from(sk));
            let (Ok(sq32), Ok(sk32)) = (sq_, sk_) else {
                candle_core::bail!("FP8 attention: sequence too long");
            };
            let (sqs, sks, svs) = (strides(lq)?, strides(lk)?, strides(lv)?);
            let dev = q.device().clone();
            let stream = dev.cuda_stream();
            let ordinal = stream.context().ordinal() as i32;
            let raw = stream.cu_stream() as *mut c_void;
            // SAFETY: every element of these buffers is written by the kernels below before
            // anything reads it.
            let (mut q8, mut k8, mut v8, mut out, mut scales, mut amax) = unsafe {
                (
                    dev.alloc::<u8>(sq * hq * d)?,
                    dev.alloc::<u8>(sk * hkv * d)?,
                    dev.alloc::<u8>(sk * hkv * d)?,
                    dev.alloc::<bf16>(sq * hq * d)?,
                    dev.alloc::<f32>(hq + 2 * hkv)?,
                    dev.alloc::<f32>(hq.max(hkv))?,
                )
            };
            {
                let at = |s: &CudaStorage, l: &Layout| -> candle_core::Result<u64> {
                    let slice = s.as_cuda_slice::<bf16>()?;
                    let (p, _sync) = slice.device_ptr(&stream);
                    Ok(p + (l.start_offset() * 2) as u64)
                };
                let (qp, kp, vp) = (at(q, lq)?, at(k, lk)?, at(v, lv)?);
                let (q8p, _a) = q8.device_ptr_mut(&stream);
                let (k8p, _b) = k8.device_ptr_mut(&stream);
                let (v8p, _c) = v8.device_ptr_mut(&stream);
                let (op, _d) = out.device_ptr_mut(&stream);
                let (sp, _e) = scales.device_ptr_mut(&stream);
                let (ap, _f) = amax.device_ptr_mut(&stream);
                let scale_q = sp as *mut f32;
                // SAFETY: offsets stay inside the `hq + 2·hkv` scale buffer.
                let (scale_k, scale_v) = unsafe { (scale_q.add(hq), scale_q.add(hq + hkv)) };
                let amax_p = ap as *mut f32;
                // SAFETY: every pointer is a live device allocation of the sizes computed
                // above, on the stream the kernels are enqueued on; the strides were checked.
                unsafe {
                    for (x, st, rows, heads, scale, dst, what) in [
                        (qp, sqs, sq32, hq, scale_q, q8p, "quantizing q"),
                        (kp, sks, sk32, hkv, scale_k, k8p, "quantizing k"),
                        (vp, svs, sk32, hkv, scale_v, v8p, "quantizing v"),
                    ] {
                        check(
                            phyai_fp8_quantize_heads(
                                x as *const c_void,
                                st[1] as i64,
                                st[0] as i64,
                                rows,
                                heads as i32,
                                amax_p,
                                scale,
                                dst as *mut c_void,
                                ordinal,
                                raw,
                            ),
                            what,
                        )?;
                    }
                    crate::layers::profile::mark(
                        &candle_core::Device::Cuda(dev.clone()),
                        "attention: q/k/v to FP8",
                    );
                    check(
                        phyai_fp8_attention_sm90(
                            q8p as *const c_void,
                            k8p as *const c_void,
                            v8p as *const c_void,
                            op as *mut c_void,
                            scale_q,
                            scale_k,
                            scale_v,
                            sq32,
                            sk32,
                            hq as i32,
                            hkv as i32,
                            1.0 / (d as f64).sqrt(),
                            tiles(),
                            ordinal,
                            raw,
                        ),
                        "the attention kernel",
                    )?;
                }
            }
            drop((q8, k8, v8, scales, amax));
            Ok((
                CudaStorage::wrap_cuda_slice(out, dev),
                Shape::from((sq, hq, d)),
            ))
        }
    }
}
