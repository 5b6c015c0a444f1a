//! The fused layer glue (SiLU·mul, residual add + RMSNorm, QK norm + rotary embedding):
//! on CPU against the formulas written out element by element; on a GPU (opt-in,
//! PHYAI_GPU_TESTS=1, `--ignored`) the bf16 kernels against the f32 CPU result.

mod support;

use candle_core::{DType, Device, Tensor};
use phyai::layers::glue;
use phyai::layers::norm::{RmsNorm, RmsScale};
use support::rel_err;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    // A small deterministic generator so CPU and GPU see the same values.
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn norm_of(dim: usize, seed: u64, scale: RmsScale) -> RmsNorm {
    let w = randn(&[dim], seed).affine(0.5, 1.0).unwrap();
    RmsNorm::new(w, 1e-6, scale)
}

fn rms_ref(row: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    row.iter().zip(w).map(|(v, g)| v * inv * g).collect()
}

#[test]
fn silu_mul_matches_formula() {
    let gu = randn(&[5, 48], 1);
    let got = glue::silu_mul(&gu).unwrap().to_vec2::<f32>().unwrap();
    let rows = gu.to_vec2::<f32>().unwrap();
    for (r, row) in rows.iter().enumerate() {
        for j in 0..24 {
            let g = row[j];
            let want = g / (1.0 + (-g).exp()) * row[24 + j];
            assert!(
                (got[r][j] - want).abs() < 1e-6,
                "({r},{j}): {} vs {want}",
                got[r][j]
            );
        }
    }
}

#[test]
fn add_rms_norm_matches_formula() {
    let (x, y) = (randn(&[6, 32], 2), randn(&[6, 32], 3));
    let norm = norm_of(32, 4, RmsScale::AfterCast);
    let (s, n) = glue::add_rms_norm(&x, &y, &norm).unwrap();
    let w = norm.weight().to_vec1::<f32>().unwrap();
    let (xs, ys) = (x.to_vec2::<f32>().unwrap(), y.to_vec2::<f32>().unwrap());
    let (s, n) = (s.to_vec2::<f32>().unwrap(), n.to_vec2::<f32>().unwrap());
    for r in 0..6 {
        let sum: Vec<f32> = xs[r].iter().zip(&ys[r]).map(|(a, b)| a + b).collect();
        assert_eq!(s[r], sum);
        let want = rms_ref(&sum, &w, 1e-6);
        for (a, b) in n[r].iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "row {r}: {a} vs {b}");
        }
    }
}

#[test]
fn qk_norm_rope_matches_formula() {
    let (n, hq, hkv, d) = (7, 4, 2, 8);
    let qkv = randn(&[n, hq + 2 * hkv, d], 5);
    let (nq, nk) = (
        norm_of(d, 6, RmsScale::AfterCast),
        norm_of(d, 7, RmsScale::AfterCast),
    );
    let cos = randn(&[n, d / 2], 8);
    let sin = randn(&[n, d / 2], 9);
    let (q, k, v) = glue::qk_norm_rope(&qkv, (hq, hkv), Some((&nq, &nk)), &cos, &sin).unwrap();
    assert_eq!(q.dims(), [hq, n, d]);
    assert_eq!(k.dims(), [hkv, n, d]);
    let all = qkv.to_vec3::<f32>().unwrap();
    let (c, s) = (cos.to_vec2::<f32>().unwrap(), sin.to_vec2::<f32>().unwrap());
    let (q, k, v) = (
        q.to_vec3::<f32>().unwrap(),
        k.to_vec3::<f32>().unwrap(),
        v.to_vec3::<f32>().unwrap(),
    );
    for t in 0..n {
        for h in 0..hq + 2 * hkv {
            let x = &all[t][h];
            let got = if h < hq {
                &q[h][t]
            } else if h < hq + hkv {
                &k[h - hq][t]
            } else {
                assert_eq!(&v[h - hq - hkv][t], x);
                continue;
            };
            let w = if h < hq { nq.weight() } else { nk.weight() };
            let y = rms_ref(x, &w.to_vec1::<f32>().unwrap(), 1e-6);
            for i in 0..d / 2 {
                let (a, b) = (y[i], y[i + d / 2]);
                let want = [a * c[t][i] - b * s[t][i], b * c[t][i] + a * s[t][i]];
                assert!((got[i] - want[0]).abs() < 1e-5, "t{t} h{h} i{i}");
                assert!(
                    (got[i + d / 2] - want[1]).abs() < 1e-5,
                    "t{t} h{h} i{}",
                    i + d / 2
                );
            }
        }
    }
}

/// The CUDA kernels in bf16 (Nano's head layout, rows wide enough for the vector paths)
/// against the f32 CPU result, and against the unfused bf16 GPU steps they replace.
#[test]
#[ignore = "needs a CUDA device: PHYAI_GPU_TESTS=1"]
fn cuda_glue_matches_f32_cpu() {
    assert!(
        std::env::var_os("PHYAI_GPU_TESTS").is_some(),
        "set PHYAI_GPU_TESTS=1 on a machine with a GPU"
    );
    let gpu = Device::new_cuda(0).unwrap();
    let bf = |t: &Tensor| t.to_device(&gpu).unwrap().to_dtype(DType::BF16).unwrap();
    let f32_of = |t: &Tensor| {
        t.to_dtype(DType::F32)
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap()
    };
    // Inputs rounded to bf16 first, so both sides start from the same values.
    let round = |t: Tensor| {
        t.to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    };

    let gu = round(randn(&[300, 2 * 1024], 11));
    let e = rel_err(
        &f32_of(&glue::silu_mul(&bf(&gu)).unwrap()),
        &glue::silu_mul(&gu).unwrap(),
    );
    eprintln!("silu_mul bf16 GPU vs f32 CPU: {e:.2e}");
    assert!(e < 5e-3, "silu_mul {e}");

    for scale in [RmsScale::AfterCast, RmsScale::BeforeCast] {
        let (x, y) = (
            round(randn(&[300, 4096], 12)),
            round(randn(&[300, 4096], 13)),
        );
        let norm = norm_of(4096, 14, scale);
        let (s, n) = glue::add_rms_norm(&bf(&x), &bf(&y), &norm).unwrap();
        let (s0, n0) = glue::add_rms_norm(&x, &y, &norm).unwrap();
        let (es, en) = (rel_err(&f32_of(&s), &s0), rel_err(&f32_of(&n), &n0));
        let plain = rel_err(
            &f32_of(&glue::rms_norm(&bf(&x), &norm).unwrap()),
            &norm.forward(&x).unwrap(),
        );
        eprintln!("add_rms_norm {scale:?}: sum {es:.2e}, norm {en:.2e}, norm alone {plain:.2e}");
        assert!(
            es < 5e-3 && en < 1e-2 && plain < 1e-2,
            "{scale:?}: {es} {en} {plain}"
        );
    }

    // Every head size the kernel takes (one, two, three or four elements per lane pair).
    for d in [64, 128, 192, 256] {
        let (n, hq, hkv) = (300, 32 * 128 / d, 8 * 128 / d);
        let qkv = round(randn(&[n, hq + 2 * hkv, d], 15));
        let (nq, nk) = (
            norm_of(d, 16, RmsScale::AfterCast),
            norm_of(d, 17, RmsScale::AfterCast),
        );
        let cos = round(randn(&[n, d / 2], 18));
        let sin = round(randn(&[n, d / 2], 19));
        let want = glue::qk_norm_rope(&qkv, (hq, hkv), Some((&nq, &nk)), &cos, &sin).unwrap();
        let got = glue::qk_norm_rope(&bf(&qkv), (hq, hkv), Some((&nq, &nk)), &bf(&cos), &bf(&sin))
            .unwrap();
        for (name, a, b) in [
            ("q", &got.0, &want.0),
            ("k", &got.1, &want.1),
            ("v", &got.2, &want.2),
        ] {
            let e = rel_err(&f32_of(a), b);
            eprintln!("qk_norm_rope d {d} {name}: {e:.2e}");
            assert!(e < 1e-2, "d {d} {name} {e}");
        }
    }
}

/// With an FP8 consumer asking (`known_amax::Wanted`), the fused SiLU·mul and add + RMSNorm
/// kernels hand over max|output| of exactly the tensor they return, equal to a reduction
/// of it, and nothing for any other tensor or outside the scope.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA device: PHYAI_GPU_TESTS=1"]
fn cuda_glue_hands_its_output_maxima_to_fp8() {
    use phyai::layers::fp8::known_amax;
    assert!(
        std::env::var_os("PHYAI_GPU_TESTS").is_some(),
        "set PHYAI_GPU_TESTS=1 on a machine with a GPU"
    );
    let gpu = Device::new_cuda(0).unwrap();
    let bf = |t: &Tensor| t.to_device(&gpu).unwrap().to_dtype(DType::BF16).unwrap();
    let max_abs = |t: &Tensor| {
        t.to_dtype(DType::F32)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let scalar = |t: Tensor| t.to_device(&Device::Cpu).unwrap().to_vec1::<f32>().unwrap()[0];
    let gu = bf(&randn(&[517, 2 * 1536], 21).affine(3.0, 0.0).unwrap());
    let (x, y) = (bf(&randn(&[517, 4096], 22)), bf(&randn(&[517, 4096], 23)));
    let norm = norm_of(4096, 24, RmsScale::AfterCast);
    {
        let _w = known_amax::Wanted::new(true);
        let act = glue::silu_mul(&gu).unwrap();
        let (s, n) = glue::add_rms_norm(&x, &y, &norm).unwrap();
        assert_eq!(
            scalar(known_amax::known(&act).expect("silu_mul's max")),
            max_abs(&act)
        );
        assert_eq!(
            scalar(known_amax::known(&n).expect("the norm's max")),
            max_abs(&n)
        );
        assert!(known_amax::known(&s).is_none(), "the sum is no GEMM input");
    }
    let act = glue::silu_mul(&gu).unwrap();
    assert!(
        known_amax::known(&act).is_none(),
        "computed only when asked for"
    );
}
