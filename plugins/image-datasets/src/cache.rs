//! A cache of decoded images, so that decoding tens of thousands of JPEGs happens once.
//!
//! An entry is keyed by the SHA-256 of a description of everything that determines the
//! decoded bytes (source path, each source file's size and modification time, channels,
//! resolution, classes, the reader's version), so an edited, added or removed image makes a
//! new entry (a `.tar` source is keyed by the archive's own size and time, so a cached load
//! does not read the archive at all). Entries hold the class names, labels and pixels followed
//! by a SHA-256 of all of it: a truncated or damaged entry is ignored (and rewritten), never
//! used. Entries are written
//! atomically (temporary file, then rename).
//!
//! Location: `$MEMLAB_CACHE_DIR`, else `$XDG_CACHE_HOME/memlab`, else `~/.cache/memlab`, under
//! `image-folder/`. `MEMLAB_CACHE_DIR=off` disables the cache. A cache that cannot be written
//! (read-only home, full disk) only costs the time to decode again.

use std::io::Write;
use std::path::{Path, PathBuf};

use memlab_plugin_api::prelude::*;
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"MLIMGC1\n";

/// Size and modification time of a file, as a line for a cache key.
pub fn stamp(path: &Path) -> PResult<String> {
    let m = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let t = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok(format!("{} bytes, mtime {t}\n", m.len()))
}

fn dir() -> Option<PathBuf> {
    match std::env::var_os("MEMLAB_CACHE_DIR") {
        Some(v) if v == "off" => None,
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(|x| PathBuf::from(x).join("memlab"))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/memlab"))),
    }
    .map(|d| d.join("image-folder"))
}

/// Decoded images: class names, labels, CHW bytes of `labels.len()` images.
pub type Decoded = (Vec<String>, Vec<i64>, Vec<u8>);

/// The images described by `key` (of `per` bytes each): read from an intact cache entry, or
/// built by `build()` and stored.
pub fn cached(key: &str, per: usize, build: impl FnOnce() -> PResult<Decoded>) -> PResult<Decoded> {
    let Some(dir) = dir() else {
        return build();
    };
    let path = dir.join(format!("{:x}.bin", Sha256::digest(key.as_bytes())));
    if let Some(d) = read(&path, per) {
        return Ok(d);
    }
    let d = build()?;
    if let Err(e) = write(&path, &d) {
        eprintln!(
            "warning: image-folder: could not cache the decoded images in {}: {e}",
            path.display()
        );
    }
    Ok(d)
}

fn u64_at(b: &[u8], at: &mut usize) -> Option<u64> {
    let v = u64::from_le_bytes(b.get(*at..*at + 8)?.try_into().ok()?);
    *at += 8;
    Some(v)
}

fn read(path: &Path, per: usize) -> Option<Decoded> {
    let bytes = std::fs::read(path).ok()?;
    let n = bytes.len().checked_sub(32)?;
    if !bytes.starts_with(MAGIC) {
        return None;
    }
    if Sha256::digest(&bytes[..n])[..] != bytes[n..] {
        eprintln!(
            "warning: image-folder: cache entry {} is damaged; decoding again",
            path.display()
        );
        return None;
    }
    let mut at = MAGIC.len();
    let k = u64_at(&bytes, &mut at)? as usize;
    let mut classes = Vec::new();
    for _ in 0..k {
        let len = u64_at(&bytes, &mut at)? as usize;
        classes.push(String::from_utf8(bytes.get(at..at + len)?.to_vec()).ok()?);
        at += len;
    }
    let m = u64_at(&bytes, &mut at)? as usize;
    let mut labels = Vec::with_capacity(m);
    for _ in 0..m {
        labels.push(u64_at(&bytes, &mut at)? as i64);
    }
    if n - at != m.checked_mul(per)? {
        return None;
    }
    Some((classes, labels, bytes[at..n].to_vec()))
}

fn write(path: &Path, (classes, labels, pixels): &Decoded) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut all = Vec::with_capacity(pixels.len() + 8 * labels.len() + 64);
    all.extend_from_slice(MAGIC);
    all.extend_from_slice(&(classes.len() as u64).to_le_bytes());
    for c in classes {
        all.extend_from_slice(&(c.len() as u64).to_le_bytes());
        all.extend_from_slice(c.as_bytes());
    }
    all.extend_from_slice(&(labels.len() as u64).to_le_bytes());
    for l in labels {
        all.extend_from_slice(&l.to_le_bytes());
    }
    all.extend_from_slice(pixels);
    let digest = Sha256::digest(&all);
    all.extend_from_slice(&digest);
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&all)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_damage_is_detected() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x.bin");
        let d: Decoded = (
            vec!["a".to_string(), "b".to_string()],
            vec![0, 1, 1],
            (0..12).collect(),
        );
        write(&p, &d).unwrap();
        assert_eq!(read(&p, 4), Some(d.clone()));
        // Another image size: not this entry.
        assert_eq!(read(&p, 5), None);
        // One flipped byte: ignored.
        let mut b = std::fs::read(&p).unwrap();
        let k = b.len() - 40;
        b[k] ^= 1;
        std::fs::write(&p, &b).unwrap();
        assert_eq!(read(&p, 4), None);
        // Truncated: ignored.
        std::fs::write(&p, &b[..20]).unwrap();
        assert_eq!(read(&p, 4), None);
    }
}
