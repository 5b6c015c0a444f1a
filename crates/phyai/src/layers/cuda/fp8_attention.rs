//! FP8 attention on Hopper: FlashInfer's FA3-lineage FP8 prefill kernel
//! (kernels/fp8_attention_sm90.cu), compiled into the binary when the build is given
//! FlashInfer's headers (`PHYAI_FLASHINFER_DIR`, see build.rs); otherwise [`available`] is
//! false and callers keep bf16 attention.
//!
//! q, k and v (bf16, `[H, S, D]` views with unit stride on D, as the cuDNN path takes them)
//! are quantized to E4M3 with one scale per head (amax/448), token-major; the kernel runs
//! both products in FP8 with f32 accumulation and writes bf16 `[Sq, Hq, D]`, returned as the
//! `[Hq, Sq, D]` view. Head dim 128, no mask (the generation tower's attention).
//!
//! [`attention_branches`] takes keys and values in parts (the text K/V, then the video's
//! own) and several branches (both CFG branches of a step) at once: the quantization reads
//! each part where it lies and writes the joined FP8 keys, and every branch's output lands
//! in one tensor, so the tower copies neither its K/V nor the branch outputs together.

use candle_core::Tensor;

use crate::Result;

/// Whether this build has the FP8 attention kernels.
pub fn available() -> bool {
    cfg!(phyai_fp8_attention)
}

pub use crate::layers::attention::KvParts as Branch;

/// FP8 attention, or an error (no kernels in this build, a shape or device the kernel does
/// not take); the caller then runs bf16 attention. Shapes as in
/// [`crate::layers::attention::attention`].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    attention_branches(
        q,
        &[Branch {
            k: vec![k],
            v: vec![v],
        }],
    )
}

/// Unmasked FP8 attention of `branches.len()` branches at once: the queries `q`
/// `[Hq, B·N, D]` hold branch `b`'s N queries at rows `b·N..(b+1)·N`, and each attends over
/// its own keys and values (the concatenation of the branch's parts). Each branch's q, k
/// and v get their own per-head scales, so the result equals one [`attention`] call per
/// branch on the joined K/V, bit for bit. Returns `[Hq, B·N, D]` (a view of token-major
/// data).
pub fn attention_branches(q: &Tensor, branches: &[Branch<'_>]) -> Result<Tensor> {
    #[cfg(phyai_fp8_attention)]
    {
        imp::run(q, branches)
    }
    #[cfg(not(phyai_fp8_attention))]
    {
        let _ = (q, branches);
        Err(crate::Error::invalid(
            "fp8_attention",
            "this build has no FP8 attention kernels (build with PHYAI_FLASHINFER_DIR set)",
        ))
    }
}

#[cfg(phyai_fp8_attention)]
mod imp {
    use std::ffi::c_void;

    use candle_core::{DType, Device, Shape, Tensor};

    use super::Branch;
    use crate::layers::cuda::buffer::{addr, output};
    use crate::{Error, Result};

    /// The kernel's head dimension.
    const HEAD_DIM: usize = 128;

    extern "C" {
        fn phyai_fp8_amax_heads(
            x: *const c_void,
            stride_s: i64,
            stride_h: i64,
            rows: i32,
            heads: i32,
            amax: *mut f32,
            reset: i32,
            device: i32,
            stream: *mut c_void,
        ) -> i32;
        fn phyai_fp8_quantize_heads_with(
            x: *const c_void,
            stride_s: i64,
            stride_h: i64,
            rows: i32,
            heads: i32,
            amax: *const f32,
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

    fn check(code: i32, what: &str) -> Result<()> {
        if code == 0 {
            Ok(())
        } else {
            Err(Error::msg(format!(
                "FP8 attention: {what} failed with CUDA error {code}"
            )))
        }
    }

    /// A bf16 `[H, S, D]` view the kernels read: its address, `[head, seq]` strides in
    /// elements (rows 16-byte aligned) and sizes.
    struct View {
        at: u64,
        stride_h: i64,
        stride_s: i64,
        heads: usize,
        rows: usize,
    }

    fn view(
        t: &Tensor,
        stream: &std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>,
    ) -> Result<View> {
        if t.dtype() != DType::BF16 {
            return Err(Error::msg(format!(
                "FP8 attention takes bf16 inputs, got {:?}",
                t.dtype()
            )));
        }
        let (heads, rows, d) = t.dims3()?;
        let l = t.layout();
        let st = l.stride();
        let ok = d == HEAD_DIM
            && st[2] == 1
            && st[0].is_multiple_of(8)
            && st[1].is_multiple_of(8)
            && l.start_offset().is_multiple_of(8);
        if !ok {
            return Err(Error::msg(format!(
                "FP8 attention needs head dim {HEAD_DIM} and 16-byte aligned [H, S, D] rows, got {:?} with strides {st:?}",
                t.dims()
            )));
        }
        if i32::try_from(rows).is_err() {
            return Err(Error::msg("FP8 attention: sequence too long"));
        }
        Ok(View {
            at: addr(t, stream)?,
            stride_h: st[0] as i64,
            stride_s: st[1] as i64,
            heads,
            rows,
        })
    }

    /// Per-head E4M3 codes of the parts, one after the other (token-major, rows × heads ×
    /// 128 from `dst`), with one scale per head over all of them written to `scale`.
    fn quantize_parts(
        parts: &[View],
        amax: u64,
        scale: u64,
        dst: u64,
        ordinal: i32,
        raw: *mut c_void,
    ) -> Result<()> {
        let heads = parts[0].heads;
        // SAFETY: each view was checked (dims, strides, alignment) against its tensor, which
        // outlives the enqueued work; `amax`/`scale` hold `heads` floats and `dst` holds the
        // parts' rows × heads × 128 codes; all on the stream `raw`.
        unsafe {
            for (i, p) in parts.iter().enumerate() {
                check(
                    phyai_fp8_amax_heads(
                        p.at as *const c_void,
                        p.stride_s,
                        p.stride_h,
                        p.rows as i32,
                        heads as i32,
                        amax as *mut f32,
                        (i == 0) as i32,
                        ordinal,
                        raw,
                    ),
                    "the per-head amax",
                )?;
            }
            let mut row = 0;
            for p in parts {
                check(
                    phyai_fp8_quantize_heads_with(
                        p.at as *const c_void,
                        p.stride_s,
                        p.stride_h,
                        p.rows as i32,
                        heads as i32,
                        amax as *const f32,
                        scale as *mut f32,
                        (dst + (row * heads * HEAD_DIM) as u64) as *mut c_void,
                        ordinal,
                        raw,
                    ),
                    "quantizing to E4M3",
                )?;
                row += p.rows;
            }
        }
        Ok(())
    }

    pub fn run(q: &Tensor, branches: &[Branch<'_>]) -> Result<Tensor> {
        let Device::Cuda(dev) = q.device() else {
            return Err(Error::msg("FP8 attention needs CUDA tensors"));
        };
        let stream = dev.cuda_stream();
        let ordinal = stream.context().ordinal() as i32;
        let raw = stream.cu_stream() as *mut c_void;
        let qv = view(q, &stream)?;
        let (hq, total) = (qv.heads, qv.rows);
        let nb = branches.len();
        if nb == 0 || !total.is_multiple_of(nb) {
            return Err(Error::msg(format!(
                "FP8 attention: {total} queries for {nb} branches"
            )));
        }
        let n = total / nb;
        let parts = |ts: &[&Tensor]| {
            ts.iter()
                .map(|t| view(t, &stream))
                .collect::<Result<Vec<_>>>()
        };
        let mut kvs = Vec::with_capacity(nb);
        for b in branches {
            let (k, v) = (parts(&b.k)?, parts(&b.v)?);
            let hkv = k.first().map_or(0, |p| p.heads);
            let rows = |ps: &[View]| ps.iter().map(|p| p.rows).sum::<usize>();
            let same = |ps: &[View]| ps.iter().all(|p| p.heads == hkv);
            if k.is_empty()
                || v.len() != k.len()
                || !same(&k)
                || !same(&v)
                || !hq.is_multiple_of(hkv)
                || k.iter().zip(&v).any(|(a, b)| a.rows != b.rows)
            {
                return Err(Error::msg(format!(
                    "FP8 attention: keys and values of a branch disagree ({hq} query heads)"
                )));
            }
            let kv_len = rows(&k);
            if kv_len == 0 || i32::try_from(kv_len).is_err() {
                return Err(Error::msg(format!("FP8 attention: {kv_len} keys")));
            }
            kvs.push((k, v, hkv, kv_len));
        }
        let (q8, q8p) = output(dev, DType::U8, Shape::from(total * hq * HEAD_DIM))?;
        let (out, op) = output(dev, DType::BF16, Shape::from((total, hq, HEAD_DIM)))?;
        let max_heads = kvs.iter().map(|k| k.2).max().unwrap_or(0).max(hq);
        let (amax, ap) = output(dev, DType::F32, Shape::from(max_heads))?;
        for (b, (k, v, hkv, kv_len)) in kvs.iter().enumerate() {
            let (scales, sp) = output(dev, DType::F32, Shape::from(hq + 2 * hkv))?;
            let (k8, k8p) = output(dev, DType::U8, Shape::from(kv_len * hkv * HEAD_DIM))?;
            let (v8, v8p) = output(dev, DType::U8, Shape::from(kv_len * hkv * HEAD_DIM))?;
            let q_rows = View {
                at: qv.at + (b * n) as u64 * qv.stride_s as u64 * 2,
                rows: n,
                ..qv
            };
            let (q_at, o_at) = (
                q8p + (b * n * hq * HEAD_DIM) as u64,
                op + (b * n * hq * HEAD_DIM * 2) as u64,
            );
            let (sk, sv) = (sp + 4 * hq as u64, sp + 4 * (hq + hkv) as u64);
            quantize_parts(&[q_rows], ap, sp, q_at, ordinal, raw)?;
            quantize_parts(k, ap, sk, k8p, ordinal, raw)?;
            quantize_parts(v, ap, sv, v8p, ordinal, raw)?;
            crate::layers::profile::mark(q.device(), "attention: q/k/v to FP8");
            // SAFETY: every pointer is a live device allocation of the sizes computed
            // above (this branch's rows of q8 and of the output), on the kernels' stream.
            unsafe {
                check(
                    phyai_fp8_attention_sm90(
                        q_at as *const c_void,
                        k8p as *const c_void,
                        v8p as *const c_void,
                        o_at as *mut c_void,
                        sp as *mut f32,
                        sk as *mut f32,
                        sv as *mut f32,
                        n as i32,
                        *kv_len as i32,
                        hq as i32,
                        *hkv as i32,
                        1.0 / (HEAD_DIM as f64).sqrt(),
                        tiles(),
                        ordinal,
                        raw,
                    ),
                    "the attention kernel",
                )?;
            }
            crate::layers::profile::mark(q.device(), "attention");
            // Freed in stream order, after the kernel that reads them.
            drop((scales, k8, v8));
        }
        drop((q8, amax));
        Ok(out.transpose(0, 1)?)
    }
}
