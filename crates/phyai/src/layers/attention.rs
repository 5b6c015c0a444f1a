//! The one attention entry point of the crate: scaled dot-product attention with grouped
//! query heads, optionally causal.
//!
//! Layout: `q` `[Hq, Sq, D]`, `k`/`v` `[Hkv, Sk, D]` with `Hq = G·Hkv`; query head `h` reads
//! key/value head `h / G` (heads of a group are adjacent). Output `[Hq, Sq, D]` in `q`'s dtype.
//!
//! The portable backend tiles queries and keys and keeps an online softmax (running max,
//! running sum, rescaled accumulator) in f32 whatever the input dtype, so memory is
//! `O(Hq·tile_q·tile_k)`, never `O(Sq·Sk)`. It is written with tensor ops and so runs on any
//! device; on CUDA, bf16/f16 go to cuDNN's fused kernel ([`Backend::FusedCuda`]).

use candle_core::{DType, Device, Tensor, D};

use crate::{Error, Result};

/// Queries per tile.
const TILE_Q: usize = 256;
/// Keys per tile.
const TILE_K: usize = 1024;

/// Which implementation runs for a given device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Tiled online-softmax attention from tensor ops (CPU, and any device as a fallback).
    Tiled,
    /// cuDNN's fused flash attention for bf16/f16 on CUDA ([`super::cuda::cudnn_sdpa`]); f32 and
    /// shapes without a cuDNN engine run the tiled path on the GPU.
    #[cfg(feature = "cuda")]
    FusedCuda,
}

impl Backend {
    pub fn for_device(device: &Device) -> Self {
        #[cfg(feature = "cuda")]
        if device.is_cuda() {
            return Backend::FusedCuda;
        }
        let _ = device;
        Backend::Tiled
    }
}

/// `softmax(q·kᵀ/√D [+ causal mask]) · v`, see the module docs for shapes.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<Tensor> {
    let (hq, sq, d) = q.dims3()?;
    let (hkv, sk, dk) = k.dims3()?;
    if v.dims3()? != (hkv, sk, dk) || dk != d || hkv == 0 || !hq.is_multiple_of(hkv) {
        return Err(Error::invalid(
            "attention",
            format!(
                "incompatible shapes q {:?}, k {:?}, v {:?}",
                q.dims(),
                k.dims(),
                v.dims()
            ),
        ));
    }
    if causal && sq != sk {
        return Err(Error::invalid(
            "attention",
            format!("causal attention needs as many queries as keys ({sq} vs {sk})"),
        ));
    }
    match Backend::for_device(q.device()) {
        Backend::Tiled => tiled(q, k, v, causal, TILE_Q, TILE_K),
        // Small attention (the demo's, say) as tensor ops: cuDNN builds its fused kernels
        // at run time, and the first build in a process costs more than such calls save.
        #[cfg(feature = "cuda")]
        Backend::FusedCuda if hq * sq * sk * d < small_attention_macs() => {
            tiled(q, k, v, causal, TILE_Q, TILE_K)
        }
        #[cfg(feature = "cuda")]
        Backend::FusedCuda => match super::cuda::cudnn_sdpa::attention(q, k, v, causal) {
            Ok(out) => Ok(out),
            // f32, or a shape cuDNN has no engine for (already logged once per shape).
            Err(_) => tiled(q, k, v, causal, TILE_Q, TILE_K),
        },
    }
}

/// Attention of fewer multiply-adds than this (`hq · sq · sk · d`, half its FLOPs) runs as
/// tensor ops on CUDA instead of cuDNN's fused kernel: cuDNN compiles its attention kernels
/// at run time, 0.3-0.7 s for each new shape in a process (measured on an H100), while
/// work this small takes the tensor ops a few milliseconds. 2^30 by default: the demo's
/// calls (8 heads of 16 over at most 2,812 tokens) are below it; the full-size model's text
/// tower over a 512-token prompt (exactly 2^30) and every generation call are not: there
/// the tensor ops would cost more per request (measured: the text tower's 0.026 s became
/// 0.10 s under a bound of 2^31) than one build per process. `PHYAI_SMALL_ATTENTION` sets
/// it (0: always cuDNN).
#[cfg(feature = "cuda")]
fn small_attention_macs() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("PHYAI_SMALL_ATTENTION")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(1 << 30)
    })
}

/// Whether [`attention_fp8_branches`] can run FP8 on `device` in this build (CUDA with the FP8
/// attention kernels compiled in).
pub fn fp8_available(device: &Device) -> bool {
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        return super::cuda::fp8_attention::available();
    }
    let _ = device;
    false
}

/// The keys and values of one branch of [`attention_branches`], each the concatenation of
/// its parts in order (`[Hkv, S_i, D]` views: the text K/V, then the video's own).
pub struct KvParts<'a> {
    pub k: Vec<&'a Tensor>,
    pub v: Vec<&'a Tensor>,
}

/// `[H, S_i, D]` views joined along the sequence into one `[H, ΣS_i, D]` view of token-major
/// `[ΣS_i, H, D]` data: for token-major parts (what the attention kernels and the QKV
/// projection write) one contiguous copy, and a single part is not copied at all.
pub fn cat_seq<T: AsRef<Tensor>>(parts: &[T]) -> Result<Tensor> {
    let tokens = parts
        .iter()
        .map(|p| p.as_ref().transpose(0, 1))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&tokens, 0)?.transpose(0, 1)?)
}

/// Unmasked attention of B branches at once: `q` `[Hq, B·N, D]` holds branch `b`'s
/// queries at rows `b·N..(b+1)·N`, each attends over its own joined keys and values, and
/// the result is `[Hq, B·N, D]` (a view of token-major data, as the output projection
/// reads it).
pub fn attention_branches(q: &Tensor, branches: &[KvParts<'_>]) -> Result<Tensor> {
    let (_, total, _) = q.dims3()?;
    let nb = branches.len().max(1);
    if !total.is_multiple_of(nb) {
        return Err(Error::invalid(
            "attention",
            format!("{total} queries for {nb} branches"),
        ));
    }
    let n = total / nb;
    let outs = branches
        .iter()
        .enumerate()
        .map(|(b, br)| {
            attention(
                &q.narrow(1, b * n, n)?,
                &cat_seq(&br.k)?,
                &cat_seq(&br.v)?,
                false,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    cat_seq(&outs)
}

/// [`attention_branches`] with q, k and v quantized to FP8 E4M3 (one scale per head per
/// branch) and both products in FP8 (Hopper, see [`super::cuda::fp8_attention`]); equal
/// to one FP8 call per branch on the joined K/V, and on CUDA the parts are never copied
/// together. Where FP8 cannot run (another GPU, another head size) it says so once and
/// runs [`attention_branches`].
pub fn attention_fp8_branches(q: &Tensor, branches: &[KvParts<'_>]) -> Result<Tensor> {
    if q.device().is_cuda() {
        match try_attention_fp8_branches(q, branches) {
            Ok(out) => return Ok(out),
            Err(e) => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!("FP8 attention cannot run here ({e}); using bf16 attention")
                });
            }
        }
    }
    attention_branches(q, branches)
}

/// FP8 attention or an error saying why it cannot run here (no fallback: for measuring it).
pub fn try_attention_fp8(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    try_attention_fp8_branches(
        q,
        &[KvParts {
            k: vec![k],
            v: vec![v],
        }],
    )
}

/// [`attention_fp8_branches`] or an error saying why FP8 cannot run here.
pub fn try_attention_fp8_branches(q: &Tensor, branches: &[KvParts<'_>]) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if q.device().is_cuda() {
        return super::cuda::fp8_attention::attention_branches(q, branches);
    }
    let _ = (q, branches);
    Err(Error::invalid(
        "fp8_attention",
        "runs on CUDA devices of a build with the FP8 attention kernels only",
    ))
}

/// Additive mask of one (query tile, key tile) pair: −∞ where key index > query index.
fn causal_bias(q0: usize, nq: usize, k0: usize, nk: usize, dev: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; nq * nk];
    for i in 0..nq {
        for j in 0..nk {
            if k0 + j > q0 + i {
                m[i * nk + j] = f32::NEG_INFINITY;
            }
        }
    }
    Ok(Tensor::from_vec(m, (1, 1, nq, nk), dev)?)
}

/// Online-softmax attention over `tile_q × tile_k` blocks, f32 throughout.
pub(crate) fn tiled(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal: bool,
    tile_q: usize,
    tile_k: usize,
) -> Result<Tensor> {
    let (hq, sq, d) = q.dims3()?;
    let (hkv, sk, _) = k.dims3()?;
    let g = hq / hkv;
    let dev = q.device();
    let scale = 1.0 / (d as f64).sqrt();
    let q4 = q.to_dtype(DType::F32)?.reshape((hkv, g, sq, d))?;
    let kf = k.to_dtype(DType::F32)?.contiguous()?;
    let vf = v.to_dtype(DType::F32)?.contiguous()?;
    let mut outs = Vec::with_capacity(sq.div_ceil(tile_q.max(1)));
    let mut q0 = 0;
    while q0 < sq {
        let nq = tile_q.min(sq - q0);
        let qt = (q4.narrow(2, q0, nq)?.reshape((hkv, g * nq, d))? * scale)?;
        // Keys a causal tile can see end at its last query.
        let k_end = if causal { (q0 + nq).min(sk) } else { sk };
        let mut state: Option<(Tensor, Tensor, Tensor)> = None; // (max, sum, acc)
        let mut k0 = 0;
        while k0 < k_end {
            let nk = tile_k.min(k_end - k0);
            let kt = kf.narrow(1, k0, nk)?;
            let vt = vf.narrow(1, k0, nk)?;
            let mut s = qt.matmul(&kt.t()?)?; // [hkv, g·nq, nk]
            if causal && k0 + nk > q0 + 1 {
                let bias = causal_bias(q0, nq, k0, nk, dev)?;
                s = s.reshape((hkv, g, nq, nk))?.broadcast_add(&bias)?;
                s = s.reshape((hkv, g * nq, nk))?;
            }
            let tile_max = s.max_keepdim(D::Minus1)?;
            state = Some(match state {
                None => {
                    let p = s.broadcast_sub(&tile_max)?.exp()?;
                    let l = p.sum_keepdim(D::Minus1)?;
                    (tile_max, l, p.matmul(&vt)?)
                }
                Some((m, l, acc)) => {
                    let m_new = m.maximum(&tile_max)?;
                    let p = s.broadcast_sub(&m_new)?.exp()?;
                    let corr = (m - &m_new)?.exp()?;
                    let l = ((l * &corr)? + p.sum_keepdim(D::Minus1)?)?;
                    let acc = (acc.broadcast_mul(&corr)? + p.matmul(&vt)?)?;
                    (m_new, l, acc)
                }
            });
            k0 += nk;
        }
        let (_, l, acc) = state.ok_or_else(|| Error::msg("attention over zero keys"))?;
        outs.push(acc.broadcast_div(&l)?.reshape((hkv, g, nq, d))?);
        q0 += nq;
    }
    let out = Tensor::cat(&outs, 2)?.reshape((hq, sq, d))?;
    Ok(out.to_dtype(q.dtype())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whole-matrix softmax attention with the key/value heads repeated.
    fn naive(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Tensor {
        let (hq, sq, d) = q.dims3().unwrap();
        let (hkv, sk, _) = k.dims3().unwrap();
        let g = hq / hkv;
        let rep = |t: &Tensor| {
            t.unsqueeze(1)
                .unwrap()
                .repeat((1, g, 1, 1))
                .unwrap()
                .reshape((hq, sk, d))
                .unwrap()
        };
        let (k, v) = (rep(k), rep(v));
        let mut s = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
        if causal {
            let bias = causal_bias(0, sq, 0, sk, &Device::Cpu)
                .unwrap()
                .squeeze(0)
                .unwrap();
            s = s.broadcast_add(&bias).unwrap();
        }
        candle_nn::ops::softmax_last_dim(&s)
            .unwrap()
            .matmul(&v)
            .unwrap()
    }

    fn rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().sqr().unwrap().sum_all().unwrap();
        let n = b.sqr().unwrap().sum_all().unwrap();
        (d.to_scalar::<f32>().unwrap() / n.to_scalar::<f32>().unwrap()).sqrt()
    }

    #[test]
    fn tiled_matches_naive_gqa_causal_and_full() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (4, 37, 16), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, 37, 16), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, 37, 16), &dev).unwrap();
        for causal in [false, true] {
            let want = naive(&q, &k, &v, causal);
            for (tq, tk) in [(5, 7), (37, 37), (8, 64), (64, 3)] {
                let got = tiled(&q, &k, &v, causal, tq, tk).unwrap();
                let e = rel(&got, &want);
                assert!(e < 1e-6, "causal={causal} tiles=({tq},{tk}) rel err {e}");
            }
        }
        // Cross attention: fewer queries than keys.
        let qs = q.narrow(1, 0, 11).unwrap().contiguous().unwrap();
        let e = rel(
            &tiled(&qs, &k, &v, false, 4, 9).unwrap(),
            &naive(&qs, &k, &v, false),
        );
        assert!(e < 1e-6, "{e}");
    }

    #[test]
    fn bf16_inputs_keep_f32_statistics() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 3.0, (2, 20, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 3.0, (1, 20, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (1, 20, 8), &dev).unwrap();
        let b = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let got = attention(&b(&q), &b(&k), &b(&v), true).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let want = naive(
            &b(&q).to_dtype(DType::F32).unwrap(),
            &b(&k).to_dtype(DType::F32).unwrap(),
            &b(&v).to_dtype(DType::F32).unwrap(),
            true,
        );
        let e = rel(&got.to_dtype(DType::F32).unwrap(), &want);
        assert!(e < 1e-2, "{e}");
    }

    /// Where FP8 cannot run (here: the CPU) the branches attend over their joined parts in
    /// 16 bits: each branch's rows equal one attention call on its concatenated K/V.
    #[test]
    fn branches_over_kv_parts_match_joined_attention() {
        let d = Device::Cpu;
        let (hq, hkv, n, dim) = (4, 2, 5, 8);
        let q = Tensor::randn(0f32, 1.0, (hq, 2 * n, dim), &d).unwrap();
        let part = |s: usize| Tensor::randn(0f32, 1.0, (hkv, s, dim), &d).unwrap();
        let (t0, t1, g0, g1) = (part(3), part(6), part(n), part(n));
        let (u0, u1, w0, w1) = (part(3), part(6), part(n), part(n));
        let out = attention_fp8_branches(
            &q,
            &[
                KvParts {
                    k: vec![&t0, &g0],
                    v: vec![&u0, &w0],
                },
                KvParts {
                    k: vec![&t1, &g1],
                    v: vec![&u1, &w1],
                },
            ],
        )
        .unwrap();
        assert_eq!(out.dims(), [hq, 2 * n, dim]);
        for (b, (k, v)) in [((&t0, &g0), (&u0, &w0)), ((&t1, &g1), (&u1, &w1))]
            .into_iter()
            .enumerate()
        {
            let k = Tensor::cat(&[k.0, k.1], 1).unwrap();
            let v = Tensor::cat(&[v.0, v.1], 1).unwrap();
            let want = attention(&q.narrow(1, b * n, n).unwrap(), &k, &v, false).unwrap();
            let got = out.narrow(1, b * n, n).unwrap();
            assert!(rel(&got, &want) < 1e-6, "branch {b}: {}", rel(&got, &want));
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((3, 4, 8), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((2, 4, 8), DType::F32, &dev).unwrap();
        assert!(attention(&q, &k, &k, false).is_err());
        let k = Tensor::zeros((1, 5, 8), DType::F32, &dev).unwrap();
        assert!(attention(&q, &k, &k, true).is_err());
    }
}
