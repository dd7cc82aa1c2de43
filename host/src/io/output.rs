//! Files a run writes: atomically (temp file + rename), in formats Python opens directly
//! (`.npy`, PNG, JSON).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};

/// A `tempfile` builder whose files get the mode `File::create` gives, `0o666 & !umask`, for
/// temporary files that are renamed into place as outputs (see [`write_atomic`]).
pub fn temp_builder<'a, 'b>() -> tempfile::Builder<'a, 'b> {
    #[allow(unused_mut)]
    let mut b = tempfile::Builder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o666));
    }
    b
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
/// A reader sees the old file or the new one, never a torn one.
///
/// The file gets the mode a plain `File::create` would give it, `0o666 & !umask`: the
/// temporary file is opened with mode `0o666` and the kernel applies the umask at creation
/// (tempfile's default, `0o600`, made every output owner-only whatever the umask). No umask
/// is read or changed, so this is safe with other threads creating files.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = temp_builder()
        .tempfile_in(dir)
        .with_context(|| format!("temp file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.as_file().sync_all().ok();
    tmp.persist(path)
        .map_err(|e| anyhow::anyhow!("renaming into {}: {}", path.display(), e.error))?;
    Ok(())
}

/// Serialises an `.npy` array of little-endian values with dtype `descr` (`<f4`, `<i8`,
/// `|b1`): format 1.0, or 2.0 (4-byte header length) when the header outgrows 1.0's 65535
/// bytes.
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
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // Header length including padding (at most 63 bytes) and the newline must fit in a u16.
    let v1 = dict.len() + 64 <= u16::MAX as usize;
    let prefix = if v1 { 10 } else { 12 };
    // Pad so magic(6) + version(2) + length(2 or 4) + header + '\n' is a multiple of 64.
    let mut header = dict;
    let total = prefix + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(prefix + header.len() + data.len());
    out.extend_from_slice(b"\x93NUMPY");
    if v1 {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
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

/// The header of an `.npy` file.
#[derive(Debug, Clone, PartialEq)]
struct NpyHeader {
    /// NumPy dtype string, e.g. `<f4`.
    descr: String,
    /// Column-major data.
    fortran_order: bool,
    /// Array shape (empty for a scalar).
    shape: Vec<usize>,
}

/// A value of the header dictionary (a Python literal).
#[derive(Debug, Clone, PartialEq)]
enum PyLit {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

/// Parses the header dictionary, a Python literal such as
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`: string keys, values that
/// are strings, `True`/`False` or tuples of integers, in any order, either quote style.
fn parse_npy_dict(text: &str) -> std::result::Result<NpyHeader, String> {
    let c: Vec<char> = text.chars().collect();
    let mut i = 0;
    let ws = |i: &mut usize| {
        while *i < c.len() && c[*i].is_whitespace() {
            *i += 1;
        }
    };
    let expect = |i: &mut usize, ch: char| -> std::result::Result<(), String> {
        ws(i);
        if c.get(*i) == Some(&ch) {
            *i += 1;
            Ok(())
        } else {
            Err(format!("expected `{ch}` at character {}", *i))
        }
    };
    let string = |i: &mut usize| -> std::result::Result<String, String> {
        ws(i);
        let q = match c.get(*i) {
            Some(&q @ ('\'' | '"')) => q,
            _ => return Err(format!("expected a string at character {}", *i)),
        };
        let start = *i + 1;
        let end = (start..c.len())
            .find(|&j| c[j] == q)
            .ok_or("unterminated string")?;
        *i = end + 1;
        Ok(c[start..end].iter().collect())
    };
    let mut dict: Vec<(String, PyLit)> = Vec::new();
    expect(&mut i, '{')?;
    loop {
        ws(&mut i);
        if c.get(i) == Some(&'}') {
            i += 1;
            break;
        }
        let key = string(&mut i)?;
        expect(&mut i, ':')?;
        ws(&mut i);
        let value = match c.get(i) {
            Some('\'' | '"') => PyLit::Str(string(&mut i)?),
            Some('(') => {
                let end = (i..c.len())
                    .find(|&j| c[j] == ')')
                    .ok_or("unterminated tuple")?;
                let inner: String = c[i + 1..end].iter().collect();
                i = end + 1;
                let parts: Vec<&str> = inner.split(',').map(str::trim).collect();
                let parts = match parts.as_slice() {
                    [rest @ .., ""] => rest,
                    all => all,
                };
                let dims = parts
                    .iter()
                    .map(|p| {
                        p.trim_end_matches('L')
                            .parse::<usize>()
                            .map_err(|_| format!("bad dimension `{p}` in the shape"))
                    })
                    .collect::<std::result::Result<_, _>>()?;
                PyLit::Tuple(dims)
            }
            _ => {
                let word: String = c[i..]
                    .iter()
                    .take_while(|ch| ch.is_ascii_alphanumeric())
                    .collect();
                i += word.chars().count();
                match word.as_str() {
                    "True" => PyLit::Bool(true),
                    "False" => PyLit::Bool(false),
                    _ => {
                        return Err(format!(
                            "unsupported value for `{key}` (structured dtypes are not supported)"
                        ));
                    }
                }
            }
        };
        dict.push((key, value));
        ws(&mut i);
        match c.get(i) {
            Some(',') => i += 1,
            Some('}') => {}
            _ => return Err(format!("expected `,` or `}}` at character {i}")),
        }
    }
    ws(&mut i);
    if i != c.len() {
        return Err("text after the dictionary".into());
    }
    let get = |k: &str| {
        dict.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("no `{k}` entry"))
    };
    Ok(NpyHeader {
        descr: match get("descr")? {
            PyLit::Str(s) => s,
            v => return Err(format!("`descr` is {v:?}, not a string")),
        },
        fortran_order: match get("fortran_order")? {
            PyLit::Bool(b) => b,
            v => return Err(format!("`fortran_order` is {v:?}, not True/False")),
        },
        shape: match get("shape")? {
            PyLit::Tuple(t) => t,
            v => return Err(format!("`shape` is {v:?}, not a tuple")),
        },
    })
}

/// Reads an `.npy` file (format 1.0, 2.0 or 3.0): its header and raw data, checked to hold
/// exactly `shape` items of the header's dtype. Fortran-order arrays are refused.
fn read_npy_raw(path: &Path) -> Result<(NpyHeader, usize, Vec<u8>)> {
    let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        bail!(
            "{} is not an .npy file (no \\x93NUMPY magic)",
            path.display()
        );
    }
    let (major, minor) = (b[6], b[7]);
    let (len_bytes, utf8) = match major {
        1 => (2, false),
        2 => (4, false),
        3 => (4, true),
        _ => bail!(
            "{}: .npy format version {major}.{minor} is not supported (1.0, 2.0 and 3.0 are)",
            path.display()
        ),
    };
    let start = 8 + len_bytes;
    let hl = if len_bytes == 2 {
        u16::from_le_bytes([b[8], b[9]]) as usize
    } else {
        let l = b
            .get(8..12)
            .ok_or_else(|| anyhow!("{}: truncated .npy header", path.display()))?;
        u32::from_le_bytes(l.try_into().expect("4 bytes")) as usize
    };
    let raw = b
        .get(start..start + hl)
        .ok_or_else(|| anyhow!("{}: truncated .npy header", path.display()))?;
    let text: String = if utf8 {
        std::str::from_utf8(raw)
            .with_context(|| format!("{}: .npy 3.0 header is not UTF-8", path.display()))?
            .to_string()
    } else {
        raw.iter().map(|&c| c as char).collect() // latin-1
    };
    let header = parse_npy_dict(&text)
        .map_err(|e| anyhow!("{}: bad .npy header {:?}: {e}", path.display(), text.trim()))?;
    if header.fortran_order {
        bail!(
            "{}: Fortran-order arrays are not supported; save a C-order copy \
             (np.save(f, np.ascontiguousarray(a)))",
            path.display()
        );
    }
    let item = npy_item_size(&header.descr).ok_or_else(|| {
        anyhow!(
            "{}: unsupported .npy dtype `{}`",
            path.display(),
            header.descr
        )
    })?;
    let data = b[start + hl..].to_vec();
    let need = header
        .shape
        .iter()
        .try_fold(item, |acc, &d| acc.checked_mul(d));
    if need != Some(data.len()) {
        bail!(
            "{}: header shape {:?} of {} does not match the {} data bytes in the file",
            path.display(),
            header.shape,
            header.descr,
            data.len()
        );
    }
    Ok((header, item, data))
}

/// Bytes per item of a numeric dtype string (`<f4` → 4), if it is one.
fn npy_item_size(descr: &str) -> Option<usize> {
    let mut ch = descr.chars();
    let (order, kind) = (ch.next()?, ch.next()?);
    let size: usize = ch.as_str().parse().ok()?;
    (matches!(order, '<' | '>' | '|' | '=') && matches!(kind, 'f' | 'i' | 'u' | 'b'))
        .then_some(size)
}

/// `chunk` as a fixed-size array in little-endian order (`descr` names the file's order).
fn le<const N: usize>(descr: &str, chunk: &[u8]) -> [u8; N] {
    let mut a: [u8; N] = chunk.try_into().expect("chunk of the item size");
    if descr.starts_with('>') {
        a.reverse();
    }
    a
}

/// Reads a float `.npy` as `f32`: `f4` as is, `f8` rounded to `f32`, little- or big-endian
/// (written by [`write_npy_f32`] or by NumPy).
pub fn read_npy_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let (h, item, raw) = read_npy_raw(path)?;
    let d = h.descr.as_str();
    let vals: Vec<f32> = match (&d[1..], item) {
        ("f4", 4) => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(le(d, c)))
            .collect(),
        ("f8", 8) => raw
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(le(d, c)) as f32)
            .collect(),
        _ => bail!(
            "{}: dtype `{d}` is not a float array (expected float32 `<f4` or float64 `<f8`)",
            path.display()
        ),
    };
    Ok((h.shape, vals))
}

/// Reads an integer `.npy` as `i64` (written by [`write_npy_i64`], or by NumPy as int8 to
/// int64 or uint8 to uint32, either byte order).
pub fn read_npy_i64(path: &Path) -> Result<(Vec<usize>, Vec<i64>)> {
    let (h, _, raw) = read_npy_raw(path)?;
    let d = h.descr.as_str();
    let vals: Vec<i64> = match &d[1..] {
        "i8" => raw
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(le(d, c)))
            .collect(),
        "i4" => raw
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(le(d, c)) as i64)
            .collect(),
        "i2" => raw
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes(le(d, c)) as i64)
            .collect(),
        "i1" => raw.iter().map(|&v| v as i8 as i64).collect(),
        "u4" => raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(le(d, c)) as i64)
            .collect(),
        "u2" => raw
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes(le(d, c)) as i64)
            .collect(),
        "u1" => raw.iter().map(|&v| v as i64).collect(),
        _ => bail!(
            "{}: dtype `{d}` is not an integer array (expected int64 `<i8`, or a narrower \
             integer type)",
            path.display()
        ),
    };
    Ok((h.shape, vals))
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
    let scaled;
    let pixels = if s == 1 {
        rgb
    } else {
        let mut big = vec![0u8; sw * sh * 3];
        for y in 0..sh {
            for x in 0..sw {
                let src = ((y / s) * w + x / s) * 3;
                big[(y * sw + x) * 3..(y * sw + x) * 3 + 3].copy_from_slice(&rgb[src..src + 3]);
            }
        }
        scaled = big;
        &scaled
    };
    let mut buf = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut buf, sw as u32, sh as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header()?;
        wr.write_image_data(pixels)?;
    }
    write_atomic(path, &buf)
}

/// Writes NCHW images of `shape` `[n, c, h, w]` as a PNG grid of `cols` columns, each pixel
/// drawn `scale`×`scale`.
pub fn write_grid(
    path: &Path,
    images: &[f32],
    shape: [usize; 4],
    cols: usize,
    scale: usize,
) -> Result<()> {
    let [n, c, h, w] = shape;
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

    /// A hand-built `.npy` of format `major`.0 with header dictionary `dict` (padded as NumPy
    /// pads) and `data`.
    fn npy_file(major: u8, dict: &str, data: &[u8]) -> Vec<u8> {
        let prefix = if major == 1 { 10 } else { 12 };
        let mut header = dict.to_string();
        let total = prefix + header.len() + 1;
        header.push_str(&" ".repeat((64 - total % 64) % 64));
        header.push('\n');
        let mut out = b"\x93NUMPY".to_vec();
        out.extend_from_slice(&[major, 0]);
        if major == 1 {
            out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn npy_versions_2_and_3_and_other_dtypes_are_read() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.npy");
        let f4: Vec<u8> = [1.5f32, -2.0, 0.25, 8.0, 0.0, 3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let want = vec![1.5f32, -2.0, 0.25, 8.0, 0.0, 3.0];
        for (major, dict) in [
            (
                1,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
            ),
            (
                2,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
            ),
            (
                3,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
            ),
            // Any key order, double quotes, no trailing comma.
            (
                2,
                "{\"shape\": (2,3), \"fortran_order\": False, \"descr\": \"<f4\"}",
            ),
        ] {
            std::fs::write(&p, npy_file(major, dict, &f4)).unwrap();
            let (shape, v) = read_npy_f32(&p).unwrap_or_else(|e| panic!("{major}.0 {dict}: {e:#}"));
            assert_eq!((shape, &v), (vec![2, 3], &want), "{major}.0 {dict}");
        }
        // float64 (NumPy's default) is rounded to f32; big-endian is swapped.
        let f8: Vec<u8> = want
            .iter()
            .flat_map(|v| (*v as f64).to_le_bytes())
            .collect();
        std::fs::write(
            &p,
            npy_file(
                2,
                "{'descr': '<f8', 'fortran_order': False, 'shape': (6,), }",
                &f8,
            ),
        )
        .unwrap();
        assert_eq!(read_npy_f32(&p).unwrap(), (vec![6], want.clone()));
        let be: Vec<u8> = want.iter().flat_map(|v| v.to_be_bytes()).collect();
        std::fs::write(
            &p,
            npy_file(
                1,
                "{'descr': '>f4', 'fortran_order': False, 'shape': (6,), }",
                &be,
            ),
        )
        .unwrap();
        assert_eq!(read_npy_f32(&p).unwrap().1, want);
        // Integer labels: int64 and int32.
        let i4: Vec<u8> = [3i32, -1, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(
            &p,
            npy_file(
                2,
                "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }",
                &i4,
            ),
        )
        .unwrap();
        assert_eq!(read_npy_i64(&p).unwrap(), (vec![3], vec![3, -1, 7]));
        // A 0-d array.
        std::fs::write(
            &p,
            npy_file(
                1,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (), }",
                &2.0f32.to_le_bytes(),
            ),
        )
        .unwrap();
        assert_eq!(read_npy_f32(&p).unwrap(), (vec![], vec![2.0]));
    }

    #[test]
    fn npy_errors_name_the_file_and_the_problem() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bad.npy");
        let err = |bytes: Vec<u8>, f32: bool| {
            std::fs::write(&p, bytes).unwrap();
            let e = if f32 {
                read_npy_f32(&p).err()
            } else {
                read_npy_i64(&p).err()
            };
            let e = format!("{:#}", e.expect("an error"));
            assert!(e.contains("bad.npy"), "{e}");
            e
        };
        let dict = |descr: &str, fortran: &str, shape: &str| {
            format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}")
        };
        let e = err(npy_file(1, &dict("<c8", "False", "(1,)"), &[0; 8]), true);
        assert!(e.contains("unsupported .npy dtype `<c8`"), "{e}");
        let e = err(npy_file(1, &dict("<i8", "False", "(1,)"), &[0; 8]), true);
        assert!(e.contains("dtype `<i8` is not a float array"), "{e}");
        let e = err(npy_file(1, &dict("<f4", "False", "(1,)"), &[0; 4]), false);
        assert!(e.contains("dtype `<f4` is not an integer array"), "{e}");
        let e = err(npy_file(1, &dict("<f4", "True", "(2, 2)"), &[0; 16]), true);
        assert!(e.contains("Fortran-order"), "{e}");
        let e = err(npy_file(1, &dict("<f4", "False", "(3,)"), &[0; 8]), true);
        assert!(e.contains("does not match"), "{e}");
        let e = err(
            npy_file(
                1,
                "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }",
                &[0; 4],
            ),
            true,
        );
        assert!(e.contains("structured"), "{e}");
        let mut v4 = npy_file(2, &dict("<f4", "False", "(1,)"), &[0; 4]);
        v4[6] = 4;
        let e = err(v4, true);
        assert!(e.contains("version 4.0 is not supported"), "{e}");
        let e = err(b"PK\x03\x04 not npy".to_vec(), true);
        assert!(e.contains("not an .npy file"), "{e}");
    }

    #[test]
    fn large_headers_are_written_as_version_2() {
        let shape = vec![1usize; 30_000];
        let b = npy_bytes("<f4", &shape, &1.0f32.to_le_bytes());
        assert_eq!(&b[6..8], &[2, 0]);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("big.npy");
        std::fs::write(&p, &b).unwrap();
        assert_eq!(read_npy_f32(&p).unwrap(), (shape, vec![1.0]));
    }

    /// `write_atomic` gives the file the mode `File::create` gives (0o666 minus the umask), not
    /// tempfile's owner-only 0o600, also when it replaces an existing file.
    #[cfg(unix)]
    #[test]
    fn atomic_writes_get_the_umask_mode_of_a_plain_create() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let plain = d.path().join("plain");
        std::fs::File::create(&plain).unwrap();
        let want = std::fs::metadata(&plain).unwrap().permissions().mode() & 0o777;
        let p = d.path().join("out.json");
        write_atomic(&p, b"{}").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, want, "mode {mode:o}, File::create gives {want:o}");
        write_atomic(&p, b"{ }").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode, want,
            "rewritten: mode {mode:o}, File::create gives {want:o}"
        );
    }
}
