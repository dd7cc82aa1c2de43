//! Files a run writes: atomically (temp file + rename), in formats Python opens directly
//! (`.npy`, PNG, JSON).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
/// A reader sees the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("temp file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.as_file().sync_all().ok();
    tmp.persist(path)
        .map_err(|e| anyhow::anyhow!("renaming into {}: {}", path.display(), e.error))?;
    Ok(())
}

/// Serialises an `.npy` (format 1.0) array of little-endian values with dtype `descr`
/// (`<f4`, `<i8`, `|b1`).
fn npy_bytes(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let shape_txt = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // Pad so magic(6) + version(2) + len(2) + header + '\n' is a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Writes an `f32` array as `.npy`.
pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    if shape.iter().product::<usize>() != data.len() {
        bail!("npy shape {shape:?} does not match {} values", data.len());
    }
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_atomic(path, &npy_bytes("<f4", shape, &bytes))
}

/// Writes an `i64` array as `.npy`.
pub fn write_npy_i64(path: &Path, shape: &[usize], data: &[i64]) -> Result<()> {
    if shape.iter().product::<usize>() != data.len() {
        bail!("npy shape {shape:?} does not match {} values", data.len());
    }
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_atomic(path, &npy_bytes("<i8", shape, &bytes))
}

/// Reads a C-order little-endian `.npy` of dtype `descr` (`<f4`, `<i8`): its shape and raw data.
fn read_npy_raw(path: &Path, descr: &str, item: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        bail!("{} is not an .npy file", path.display());
    }
    let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(b.get(10..10 + hl).unwrap_or_default())?;
    if !header.contains(&format!("'{descr}'")) || header.contains("'fortran_order': True") {
        bail!(
            "{}: expected a C-order {descr} array, header is {header}",
            path.display()
        );
    }
    let shape_txt = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap_or("");
    let shape: Vec<usize> = shape_txt
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let data = b[10 + hl..].to_vec();
    if shape.iter().product::<usize>() * item != data.len() {
        bail!(
            "{}: header shape {shape:?} does not match the data",
            path.display()
        );
    }
    Ok((shape, data))
}

/// Reads an `f32` `.npy` written by [`write_npy_f32`] (or NumPy, C order, little-endian).
pub fn read_npy_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let (shape, raw) = read_npy_raw(path, "<f4", 4)?;
    Ok((
        shape,
        raw.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    ))
}

/// Reads an `i64` `.npy` written by [`write_npy_i64`].
pub fn read_npy_i64(path: &Path) -> Result<(Vec<usize>, Vec<i64>)> {
    let (shape, raw) = read_npy_raw(path, "<i8", 8)?;
    Ok((
        shape,
        raw.chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
    ))
}

/// Maps a value in [−1, 1] to a byte.
pub fn to_u8(v: f32) -> u8 {
    ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
}

/// Lays out NCHW images (values in [−1, 1], C = 1 or 3) in a grid of `cols` columns with a
/// 1-pixel border and returns RGB bytes with the grid's width and height.
pub fn grid_rgb(
    images: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    cols: usize,
) -> (Vec<u8>, usize, usize) {
    let cols = cols.clamp(1, n.max(1));
    let rows = n.div_ceil(cols).max(1);
    let (gw, gh) = (cols * (w + 1) + 1, rows * (h + 1) + 1);
    let mut out = vec![255u8; gw * gh * 3];
    for i in 0..n {
        let (r, col) = (i / cols, i % cols);
        let (oy, ox) = (1 + r * (h + 1), 1 + col * (w + 1));
        for y in 0..h {
            for x in 0..w {
                for ch in 0..3 {
                    let src = if c == 1 { 0 } else { ch.min(c - 1) };
                    let v = images[((i * c + src) * h + y) * w + x];
                    out[((oy + y) * gw + ox + x) * 3 + ch] = to_u8(v);
                }
            }
        }
    }
    (out, gw, gh)
}

/// Writes an RGB image as PNG, scaling each pixel up by `scale` (nearest) for visibility.
pub fn write_png(path: &Path, rgb: &[u8], w: usize, h: usize, scale: usize) -> Result<()> {
    let s = scale.max(1);
    let (sw, sh) = (w * s, h * s);
    let mut big = vec![0u8; sw * sh * 3];
    for y in 0..sh {
        for x in 0..sw {
            let src = ((y / s) * w + x / s) * 3;
            big[(y * sw + x) * 3..(y * sw + x) * 3 + 3].copy_from_slice(&rgb[src..src + 3]);
        }
    }
    let mut buf = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut buf, sw as u32, sh as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header()?;
        wr.write_image_data(&big)?;
    }
    write_atomic(path, &buf)
}

/// Writes NCHW images as a PNG grid.
#[allow(clippy::too_many_arguments)]
pub fn write_grid(
    path: &Path,
    images: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    cols: usize,
    scale: usize,
) -> Result<()> {
    let (rgb, gw, gh) = grid_rgb(images, n, c, h, w, cols);
    write_png(path, &rgb, gw, gh, scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_roundtrip_and_alignment() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.npy");
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5).collect();
        write_npy_f32(&p, &[2, 3, 4], &data).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let hl = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hl) % 64, 0);
        let (shape, back) = read_npy_f32(&p).unwrap();
        assert_eq!(shape, vec![2, 3, 4]);
        assert_eq!(back, data);
    }

    #[test]
    fn grid_places_pixels() {
        let imgs = vec![-1.0f32, 1.0, 1.0, -1.0]; // two 1×1×2 grayscale images
        let (rgb, w, h) = grid_rgb(&imgs, 2, 1, 1, 2, 2);
        assert_eq!((w, h), (7, 3));
        assert_eq!(rgb[(w + 1) * 3], 0); // first image, first pixel: black
        assert_eq!(rgb[(w + 2) * 3], 255);
    }
}
