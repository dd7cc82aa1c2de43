//! Dataset downloads: what `memlab data fetch NAME [--dest DIR]` runs.
//!
//! A dataset plugin declares its published files with their md5 digests
//! ([`memlab_plugin_api::Plugin::dataset_files`]; the host knows no dataset by itself). A file is streamed
//! into a temporary file inside the destination directory while its md5 is computed, checked,
//! and only then renamed to its final name, so an interrupted or corrupt download never leaves a
//! file under the real name. A file already present with the right digest is not downloaded
//! again; one with a wrong digest is downloaded again and replaced.
//!
//! The files are kept as published (no extraction): the shipped `cifar10` dataset reads
//! `cifar-10-python.tar.gz` as it is and `mnist` reads gzipped IDX files, so after a fetch
//! either's `path` is simply the destination directory.
//!
//! Without internet access the download fails fast (connect timeout [`CONNECT_TIMEOUT`]) with a
//! message that names the URL and tells how to place the files by hand instead.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use md5::{Digest, Md5};

use crate::plugins::Registry;

/// How long to wait for a name lookup and for a connection (TCP and TLS) to a server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a single read may stall (waiting for the response, or mid-body) before giving up.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// One published file of a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct OfficialFile {
    /// File name, both on the server and on disk.
    pub name: String,
    /// Where it is downloaded from.
    pub url: String,
    /// Lower-case hex md5 of the whole file.
    pub md5: String,
}

/// A dataset's class-folder layout (`<split>/<class>/<image>`), which `--from` imports.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassFolderLayout {
    /// Sub-folder of the destination receiving `<split>.tar`.
    pub dir: String,
    /// Class folder names, in label order.
    pub classes: Vec<String>,
    /// `(split, images per class)`.
    pub splits: Vec<(String, usize)>,
}

/// What a dataset plugin declares about its files ([`memlab_plugin_api::Plugin::dataset_files`]):
/// everything `memlab data fetch` knows about a dataset comes from here, none of it from the
/// host.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetSpec {
    /// The dataset component's name.
    pub name: String,
    /// One line about the files.
    pub about: String,
    /// The published files.
    pub files: Vec<OfficialFile>,
    /// How to point the dataset at the files.
    pub usage: String,
    /// A class-folder copy `--from` accepts too.
    pub class_folders: Option<ClassFolderLayout>,
}

impl DatasetSpec {
    fn from_ffi(f: &memlab_plugin_api::ffi::DatasetFiles) -> DatasetSpec {
        DatasetSpec {
            name: f.dataset.to_string(),
            about: f.about.to_string(),
            files: f
                .files
                .iter()
                .map(|p| OfficialFile {
                    name: p.name.to_string(),
                    url: p.url.to_string(),
                    md5: p.md5.to_string(),
                })
                .collect(),
            usage: f.usage.to_string(),
            class_folders: f
                .class_folders
                .as_ref()
                .into_option()
                .map(|c| ClassFolderLayout {
                    dir: c.dir.to_string(),
                    classes: c.classes.iter().map(|s| s.to_string()).collect(),
                    splits: c
                        .splits
                        .iter()
                        .map(|t| (t.0.to_string(), t.1 as usize))
                        .collect(),
                }),
        }
    }
}

/// Every dataset whose plugin declares files, by name.
pub fn specs(reg: &Registry) -> Vec<DatasetSpec> {
    let mut v: Vec<DatasetSpec> = reg
        .dataset_files()
        .iter()
        .map(DatasetSpec::from_ffi)
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// The spec of `dataset`, or an error listing the datasets that declare files.
pub fn lookup(reg: &Registry, dataset: &str) -> Result<DatasetSpec> {
    let all = specs(reg);
    let known: Vec<String> = all.iter().map(|d| d.name.clone()).collect();
    all.into_iter().find(|d| d.name == dataset).ok_or_else(|| {
        anyhow!(
            "unknown dataset {dataset:?}: no loaded plugin declares its files; memlab can fetch: {}",
            if known.is_empty() {
                "nothing (no dataset plugin declares files)".to_string()
            } else {
                known.join(", ")
            }
        )
    })
}

/// Downloads the files of `ds` into the directory `dest` (created if missing) and returns
/// their paths, in the declared order.
///
/// Files already in `dest` with the right md5 are kept without downloading. Each download goes
/// to a temporary file in `dest`, is verified against the published md5, then renamed into
/// place; a wrong digest is an error naming the file with the expected and actual digests (the
/// temporary file is removed). A server that cannot be reached is an error naming the URL that
/// failed and telling how to place the files by hand. Progress is drawn on stderr when it is a
/// terminal, logged otherwise.
pub fn fetch(ds: &DatasetSpec, dest: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dest)
        .with_context(|| format!("cannot create destination directory {}", dest.display()))?;
    let hint = manual_hint(ds, dest);
    let agent = agent(true);
    let mut paths = Vec::with_capacity(ds.files.len());
    for f in &ds.files {
        paths.push(fetch_file(&agent, &f.url, &f.name, &f.md5, dest, &hint)?);
    }
    log::info!(
        "{}: {} file(s) ready in {}",
        ds.name,
        paths.len(),
        dest.display()
    );
    Ok(paths)
}

/// The by-hand instructions for `ds` into `dest`, appended to download errors.
fn manual_hint(ds: &DatasetSpec, dest: &Path) -> String {
    let mut s = format!(
        "To place the files by hand instead, download on a machine with internet access and copy \
         into {}:",
        dest.display()
    );
    for f in &ds.files {
        s.push_str(&format!("\n  {}  (md5 {}, from {})", f.name, f.md5, f.url));
    }
    s.push_str("\n(any mirror serving these names works: the md5 is what is checked)\n");
    s.push_str(&ds.usage);
    s
}

/// The HTTP client: fail-fast connects, a stall timeout on reads, no transparent decompression.
/// `env_proxy` honours the usual `HTTPS_PROXY` / `NO_PROXY` variables (tests turn it off so a
/// developer's proxy settings never route loopback requests away).
fn agent(env_proxy: bool) -> ureq::Agent {
    let mut cfg = ureq::Agent::config_builder()
        .timeout_resolve(Some(CONNECT_TIMEOUT))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(READ_TIMEOUT))
        .timeout_per_read(Some(READ_TIMEOUT))
        .user_agent(concat!("memlab/", env!("CARGO_PKG_VERSION")));
    if !env_proxy {
        cfg = cfg.proxy(None);
    }
    cfg.build().into()
}

/// Makes sure `dest/name` exists with md5 `md5`, downloading it from `url` if needed.
/// `hint` (the by-hand instructions) is appended to download errors.
fn fetch_file(
    agent: &ureq::Agent,
    url: &str,
    name: &str,
    md5: &str,
    dest: &Path,
    hint: &str,
) -> Result<PathBuf> {
    let target = dest.join(name);
    if target.is_file() {
        let actual = md5_file(&target)?;
        if actual.eq_ignore_ascii_case(md5) {
            log::info!(
                "{} already present (md5 ok), not downloading",
                target.display()
            );
            return Ok(target);
        }
        log::warn!(
            "{} exists but its md5 is {actual}, expected {md5}: downloading it again",
            target.display()
        );
    }
    // Downloaded files get the umask's mode, like any created file (not tempfile's 0o600).
    let mut tmp = crate::io::output::temp_builder()
        .prefix(&format!(".{name}."))
        .suffix(".part")
        .tempfile_in(dest)
        .with_context(|| format!("cannot create a temporary file in {}", dest.display()))?;
    log::info!("downloading {url} -> {}", target.display());
    let actual = match download(agent, url, name, tmp.as_file_mut()) {
        Ok(digest) => digest,
        Err(e) => return Err(e.explain(url, hint)),
    };
    if !actual.eq_ignore_ascii_case(md5) {
        // Dropping the temporary file deletes it.
        drop(tmp);
        bail!(
            "checksum mismatch for {name} downloaded from {url}: expected md5 {md5}, got {actual} \
             (the download was discarded; try again, or place the file by hand)"
        );
    }
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("cannot flush the download of {name}"))?;
    tmp.persist(&target)
        .map_err(|e| anyhow!(e.error))
        .with_context(|| {
            format!(
                "cannot move the download into place as {}",
                target.display()
            )
        })?;
    Ok(target)
}

/// Why a download failed: the errors differ in what the user should be told.
#[derive(Debug)]
enum DownloadError {
    /// The server could not be reached or the connection broke (offline, DNS, timeout, refused).
    Network(String),
    /// The server answered with an error status.
    Status(u16),
    /// Writing the local file failed.
    Local(std::io::Error),
}

impl DownloadError {
    fn explain(self, url: &str, hint: &str) -> anyhow::Error {
        match self {
            Self::Network(e) => anyhow!(
                "could not download {url}: {e}\nmemlab needs internet access for `memlab data \
                 fetch` (it gives up on a server after {} s without a connection).\n{hint}",
                CONNECT_TIMEOUT.as_secs()
            ),
            Self::Status(code) => {
                anyhow!("could not download {url}: the server answered HTTP {code}\n{hint}")
            }
            Self::Local(e) => anyhow!("could not save the download of {url}: {e}"),
        }
    }
}

impl From<ureq::Error> for DownloadError {
    fn from(e: ureq::Error) -> Self {
        match e {
            ureq::Error::StatusCode(code) => Self::Status(code),
            ureq::Error::HostNotFound => Self::Network("host not found (no DNS / offline?)".into()),
            other => Self::Network(other.to_string()),
        }
    }
}

/// Streams `url` into `out`, showing progress, and returns the lower-case hex md5 of the body.
fn download(
    agent: &ureq::Agent,
    url: &str,
    label: &str,
    out: &mut File,
) -> std::result::Result<String, DownloadError> {
    let response = agent
        .get(url)
        // The files are stored compressed already; ask for them byte for byte.
        .header("Accept-Encoding", "identity")
        .call()?;
    let total = response.body().content_length();
    let mut reader = response.into_body().into_reader();
    let mut progress = Progress::new(label, total);
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut done = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                progress.abandon();
                return Err(DownloadError::Network(format!(
                    "connection failed after {done} bytes: {e}"
                )));
            }
        };
        hasher.update(&buf[..n]);
        if let Err(e) = out.write_all(&buf[..n]) {
            progress.abandon();
            return Err(DownloadError::Local(e));
        }
        done += n as u64;
        progress.set(done);
    }
    out.flush().map_err(DownloadError::Local)?;
    progress.finish(done);
    Ok(format!("{:x}", hasher.finalize()))
}

/// Lower-case hex md5 of a file on disk.
fn md5_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Md5::new();
    std::io::copy(&mut f, &mut hasher)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// Download progress: a byte bar on a terminal, log lines (every 10 %, or every 16 MiB when the
/// size is unknown) otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    label: String,
    total: Option<u64>,
    next_log: u64,
    t0: Instant,
}

impl Progress {
    const UNKNOWN_STEP: u64 = 16 << 20;

    fn new(label: &str, total: Option<u64>) -> Self {
        // The shared bars (io::progress), so a download sits with any other bar on screen.
        let bar = match total {
            Some(t) => crate::io::progress::bar(
                t,
                "{prefix}{msg} [{bar:30}] {bytes}/{total_bytes}  {bytes_per_sec}  eta {eta}",
            ),
            None => {
                crate::io::progress::spinner("{prefix}{msg} {spinner} {bytes}  {bytes_per_sec}")
            }
        };
        if let Some(b) = &bar {
            b.set_message(label.to_string());
        }
        let next_log = match total {
            Some(t) => (t / 10).max(1),
            None => Self::UNKNOWN_STEP,
        };
        Self {
            bar,
            label: label.to_string(),
            total,
            next_log,
            t0: Instant::now(),
        }
    }

    fn set(&mut self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        if done < self.next_log {
            return;
        }
        let mib = done as f64 / f64::from(1u32 << 20);
        match self.total {
            Some(t) if t > 0 => {
                log::info!(
                    "{}: {mib:.1} MiB ({:.0} %)",
                    self.label,
                    100.0 * done as f64 / t as f64
                );
                let step = (t / 10).max(1);
                self.next_log = (done / step + 1) * step;
            }
            _ => {
                log::info!("{}: {mib:.1} MiB", self.label);
                self.next_log = (done / Self::UNKNOWN_STEP + 1) * Self::UNKNOWN_STEP;
            }
        }
    }

    fn finish(&mut self, done: u64) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let secs = self.t0.elapsed().as_secs_f64();
        log::info!(
            "{}: {:.1} MiB in {secs:.1} s",
            self.label,
            done as f64 / f64::from(1u32 << 20)
        );
    }

    fn abandon(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A declared dataset as a plugin would declare it (test data: two files).
    fn spec(name: &str, usage: &str) -> DatasetSpec {
        let file = |n: &str| OfficialFile {
            name: format!("{name}-{n}"),
            url: format!("https://example.invalid/{name}-{n}"),
            md5: "0123456789abcdef0123456789abcdef".into(),
        };
        DatasetSpec {
            name: name.into(),
            about: format!("{name} files"),
            files: vec![file("file.bin"), file("other.bin")],
            usage: usage.into(),
            class_folders: None,
        }
    }

    /// A one-route HTTP server on 127.0.0.1 answering every request with `status` and `body`.
    /// It serves at most `max_requests` and stops by itself after 20 s either way.
    /// Returns the URL of a file on it and a count of requests served.
    fn serve(
        status: &'static str,
        body: Vec<u8>,
        max_requests: usize,
    ) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut served = 0;
            while served < max_requests && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        answer(stream, status, &body);
                        counter.fetch_add(1, Ordering::SeqCst);
                        served += 1;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => break,
                }
            }
        });
        (format!("http://{addr}/data/file.bin"), hits)
    }

    fn answer(mut stream: TcpStream, status: &str, body: &[u8]) {
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // Read the request head (bounded), then answer regardless of what it asked.
        let mut head = Vec::new();
        let mut byte = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
            match stream.read(&mut byte) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&byte[..n]),
            }
        }
        let reply = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(reply.as_bytes());
        let _ = stream.write_all(body);
        let _ = stream.flush();
    }

    /// A URL on a local port nothing listens on: connecting is refused at once.
    fn closed_port_url() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        format!("http://127.0.0.1:{port}/mnist/train-images-idx3-ubyte.gz")
    }

    fn md5_hex(data: &[u8]) -> String {
        format!("{:x}", Md5::digest(data))
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn payload() -> Vec<u8> {
        (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn downloads_and_verifies() {
        let body = payload();
        let (url, hits) = serve("200 OK", body.clone(), 1);
        let dir = tempfile::tempdir().unwrap();
        let path = fetch_file(
            &agent(false),
            &url,
            "file.bin",
            &md5_hex(&body),
            dir.path(),
            "HINT",
        )
        .unwrap();
        assert_eq!(path, dir.path().join("file.bin"));
        assert_eq!(std::fs::read(&path).unwrap(), body);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        // No temporary file is left behind.
        assert_eq!(entries(dir.path()), vec!["file.bin".to_string()]);
    }

    #[test]
    fn checksum_mismatch_is_an_error_and_leaves_nothing() {
        let body = payload();
        let (url, _) = serve("200 OK", body.clone(), 1);
        let dir = tempfile::tempdir().unwrap();
        let expected = "0123456789abcdef0123456789abcdef";
        let err = fetch_file(
            &agent(false),
            &url,
            "file.bin",
            expected,
            dir.path(),
            "HINT",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("file.bin"), "{err}");
        assert!(err.contains(expected), "{err}");
        assert!(err.contains(&md5_hex(&body)), "{err}");
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    }

    #[test]
    fn existing_file_with_right_checksum_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let body = b"already here".to_vec();
        std::fs::write(dir.path().join("file.bin"), &body).unwrap();
        // Nothing listens at the URL: any download attempt would fail.
        let path = fetch_file(
            &agent(false),
            &closed_port_url(),
            "file.bin",
            &md5_hex(&body),
            dir.path(),
            "HINT",
        )
        .unwrap();
        assert_eq!(std::fs::read(path).unwrap(), body);
        assert_eq!(entries(dir.path()), vec!["file.bin".to_string()]);
    }

    #[test]
    fn existing_file_with_wrong_checksum_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file.bin"), b"truncated").unwrap();
        let body = payload();
        let (url, hits) = serve("200 OK", body.clone(), 1);
        fetch_file(
            &agent(false),
            &url,
            "file.bin",
            &md5_hex(&body),
            dir.path(),
            "HINT",
        )
        .unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert_eq!(std::fs::read(dir.path().join("file.bin")).unwrap(), body);
        assert_eq!(entries(dir.path()), vec!["file.bin".to_string()]);
    }

    #[test]
    fn unreachable_server_explains_how_to_work_offline() {
        let dir = tempfile::tempdir().unwrap();
        let ds = spec(
            "mnist",
            "The mnist dataset reads a directory of these IDX files, gzipped or not.",
        );
        let hint = manual_hint(&ds, dir.path());
        let url = closed_port_url();
        let t0 = Instant::now();
        let err = fetch_file(
            &agent(false),
            &url,
            "train-images-idx3-ubyte.gz",
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            dir.path(),
            &hint,
        )
        .unwrap_err()
        .to_string();
        assert!(t0.elapsed() < CONNECT_TIMEOUT, "took {:?}", t0.elapsed());
        assert!(err.contains(&url), "{err}");
        assert!(err.contains("internet"), "{err}");
        assert!(err.contains("memlab data fetch"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        for f in &ds.files {
            assert!(err.contains(&f.name), "{err}");
        }
        assert!(err.contains("gzipped or not"), "{err}");
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    }

    #[test]
    fn http_error_status_names_the_url_and_the_manual_route() {
        let (url, _) = serve("404 Not Found", b"gone".to_vec(), 1);
        let dir = tempfile::tempdir().unwrap();
        let hint = manual_hint(
            &spec("cifar10", "or the extracted cifar-10-batches-py directory"),
            dir.path(),
        );
        let err = fetch_file(&agent(false), &url, "file.bin", "00", dir.path(), &hint)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&url) && err.contains("404"), "{err}");
        assert!(err.contains("cifar10-file.bin"), "{err}");
        assert!(err.contains("cifar-10-batches-py"), "{err}");
        assert!(entries(dir.path()).is_empty());
    }

    #[test]
    fn unknown_dataset_says_what_can_be_fetched() {
        let reg = Registry::from_files(&[]).unwrap();
        let err = lookup(&reg, "imagenet").unwrap_err().to_string();
        assert!(
            err.contains("imagenet") && err.contains("no dataset plugin"),
            "{err}"
        );
    }
}
