//! NumPy `.npy` files of 2-D float arrays (format 1.0/2.0/3.0, little-endian `<f4`/`<f8`,
//! C order): action sequences in and out.

use std::path::Path;

use crate::{Error, Result};

const MAGIC: &[u8] = b"\x93NUMPY";

/// A row-major `[rows, cols]` f32 array.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

/// Parses a `.npy` file's bytes; `field` names the input in errors.
pub fn parse(bytes: &[u8], field: &str) -> Result<Matrix> {
    let bad = |why: &str| Error::invalid(field, format!("not a 2-D float .npy array: {why}"));
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad("no .npy header"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(&format!("format version {v}"))),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header"))?;
    let value_of = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest)
    };
    let descr = value_of("descr").ok_or_else(|| bad("no descr"))?;
    let width = if descr.starts_with("'<f4'") {
        4
    } else if descr.starts_with("'<f8'") {
        8
    } else {
        return Err(bad(&format!(
            "dtype {}, expected float32 or float64",
            descr.split(',').next().unwrap_or(descr)
        )));
    };
    if !value_of("fortran_order").is_some_and(|v| v.starts_with("False")) {
        return Err(bad("Fortran order"));
    }
    let shape = value_of("shape")
        .and_then(|v| v.strip_prefix('('))
        .and_then(|v| v.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad("unreadable shape"))?;
    let [rows, cols] = dims[..] else {
        return Err(bad(&format!("shape {dims:?}")));
    };
    let body = &bytes[start + header_len..];
    if body.len() != rows * cols * width {
        return Err(bad(&format!(
            "{} data bytes for shape [{rows}, {cols}]",
            body.len()
        )));
    }
    let data = if width == 4 {
        body.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    } else {
        body.chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
            .collect()
    };
    Ok(Matrix { rows, cols, data })
}

/// Reads a `.npy` file.
pub fn read(path: &Path, field: &str) -> Result<Matrix> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(&bytes, field).map_err(|e| Error::invalid(field, format!("{}: {e}", path.display())))
}

/// The bytes of a `<f4` `.npy` file (format 1.0) holding `m`.
pub fn encode(m: &Matrix) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        m.rows, m.cols
    );
    // Magic, version, length and header end on a 64-byte boundary, newline last.
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + 4 * m.data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in &m.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_numpy_layout() {
        let m = Matrix {
            rows: 2,
            cols: 3,
            data: vec![1.0, -2.5, 3.0, 0.0, 1e-7, 7.0],
        };
        let bytes = encode(&m);
        // numpy's own header for this array, byte for byte.
        let want = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        assert_eq!(&bytes[10..10 + want.len()], want.as_bytes());
        assert_eq!(
            (10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize) % 64,
            0
        );
        assert_eq!(parse(&bytes, "actions").unwrap(), m);
        let mut f8 = bytes[..10].to_vec();
        let h = "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 2), }";
        let h = format!("{h:<53}\n");
        f8[8..10].copy_from_slice(&(h.len() as u16).to_le_bytes());
        f8.extend_from_slice(h.as_bytes());
        f8.extend_from_slice(&0.5f64.to_le_bytes());
        f8.extend_from_slice(&(-4f64).to_le_bytes());
        assert_eq!(parse(&f8, "a").unwrap().data, vec![0.5, -4.0]);
        for bad in [&b"hello"[..], &bytes[..bytes.len() - 1]] {
            assert!(parse(bad, "actions")
                .unwrap_err()
                .to_string()
                .starts_with("actions: "));
        }
    }
}
