//! The FP8 E4M3 ("fn": finite, no infinities) number format: 1 sign, 4 exponent (bias 7)
//! and 3 mantissa bits, largest finite value ±448, code `0x7F`/`0xFF` is NaN.
//!
//! [`encode`] rounds to nearest, ties to even, exactly as torch's
//! `.to(torch.float8_e4m3fn)` does for every |x| ≤ 464 (464 is the tie between 448 and the
//! NaN code, and rounds to 448). Above that torch produces NaN while [`encode`] saturates to
//! ±448; the quantizers clamp to ±448 before encoding, so the two never differ there.

/// Largest finite E4M3 value.
pub const MAX: f32 = 448.0;

/// The value of every code, decoded once.
static TABLE: std::sync::LazyLock<[f32; 256]> = std::sync::LazyLock::new(|| {
    let mut t = [0f32; 256];
    for (c, v) in t.iter_mut().enumerate() {
        *v = decode_slow(c as u8);
    }
    t
});

fn decode_slow(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = ((code >> 3) & 0xF) as i32;
    let m = (code & 7) as f32;
    if e == 15 && code & 7 == 7 {
        return f32::NAN;
    }
    let mag = if e == 0 {
        m * (2f32).powi(-9)
    } else {
        (1.0 + m / 8.0) * (2f32).powi(e - 7)
    };
    sign * mag
}

/// The value of an E4M3 code (NaN for `0x7F`/`0xFF`).
#[inline]
pub fn decode(code: u8) -> f32 {
    TABLE[code as usize]
}

/// Whether a code is one of the two NaN codes.
#[inline]
pub fn is_nan_code(code: u8) -> bool {
    code & 0x7F == 0x7F
}

/// Rounds `x` to the nearest E4M3 code, ties to even; saturates to ±448 beyond 464; NaN
/// gives the NaN code.
#[inline]
pub fn encode(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7F;
    }
    let bits = x.to_bits();
    let sign = ((bits >> 24) & 0x80) as u8;
    let a = f32::from_bits(bits & 0x7FFF_FFFF);
    let mag = if a < 2f32.powi(-6) {
        // Subnormal range: multiples of 2^-9 (a·512 is exact); 8 · 2^-9 is the smallest
        // normal, whose code (exponent 1, mantissa 0) is also 8.
        (a * 512.0).round_ties_even() as u32
    } else {
        let abits = a.to_bits();
        let exp = (abits >> 23) as i32 - 127;
        if exp > 8 {
            0x7E
        } else {
            // Exponent and top 3 mantissa bits, then round the 20 dropped bits; a carry out
            // of the mantissa correctly bumps the exponent.
            let v = (((exp + 7) as u32) << 3) | ((abits >> 20) & 7);
            let rest = abits & 0xF_FFFF;
            let half = 0x8_0000;
            if rest > half || (rest == half && v & 1 == 1) {
                v + 1
            } else {
                v
            }
        }
    };
    sign | mag.min(0x7E) as u8
}

/// `x` rounded through E4M3 after scaling: `decode(encode(clamp(x / scale, ±448))) · scale`,
/// the fake-quantization of one value with a per-tensor scale.
#[inline]
pub fn fake_quant(x: f32, scale: f32) -> f32 {
    decode(encode((x / scale).clamp(-MAX, MAX))) * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips() {
        for c in 0..=255u8 {
            if is_nan_code(c) {
                assert!(decode(c).is_nan());
                continue;
            }
            let v = decode(c);
            // -0 encodes as 0x80, +0 as 0x00.
            assert_eq!(encode(v), c, "code {c:#04x} = {v}");
        }
        assert_eq!(decode(0x7E), 448.0);
        assert_eq!(decode(0x01), 2f32.powi(-9));
        assert_eq!(decode(0x08), 2f32.powi(-6));
    }

    #[test]
    fn rounding_ties_and_saturation() {
        // 1.0625 is halfway between 1.0 (mantissa 0, even) and 1.125.
        assert_eq!(decode(encode(1.0625)), 1.0);
        // 1.1875 is halfway between 1.125 (odd) and 1.25 (even).
        assert_eq!(decode(encode(1.1875)), 1.25);
        // Half the smallest subnormal ties to zero; just above it rounds up.
        assert_eq!(encode(2f32.powi(-10)), 0);
        assert_eq!(encode(f32::from_bits(2f32.powi(-10).to_bits() + 1)), 1);
        assert_eq!(decode(encode(464.0)), 448.0);
        assert_eq!(decode(encode(1e9)), 448.0);
        assert_eq!(decode(encode(-1e9)), -448.0);
        assert!(decode(encode(f32::NAN)).is_nan());
        assert_eq!(fake_quant(3.0, 0.5), 3.0);
        assert_eq!(fake_quant(1000.0, 1.0), 448.0);
    }
}
