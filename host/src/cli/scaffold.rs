//! `memlab new`: scaffolds a plugin crate, outside any workspace, that builds, loads and runs
//! as it is.
//!
//! The files come from `host/templates/` (compiled in with `include_str!`): one `lib.rs` and
//! one `example.toml` per kind, and a `Cargo.toml`, `README.md` and `.gitignore` shared by all.
//! Placeholders `{{name}}` (component name), `{{crate}}` (package name, the same),
//! `{{lib}}` (library file), `{{kind}}`, `{{dependency}}` (the `memlab-plugin-api` line) and
//! `{{api}}` (that dependency in words) are replaced; the component name only appears inside
//! string literals and comments, so each `lib.rs` template is itself valid Rust. PLUGINS.md's
//! worked examples are these templates rendered (`tests/scaffold.rs` checks both).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use memlab_plugin_api::ffi::ComponentKind;

/// The kinds `memlab new` accepts, in the order its messages list them.
pub const KINDS: [ComponentKind; 5] = [
    ComponentKind::Architecture,
    ComponentKind::Schedule,
    ComponentKind::Conditioning,
    ComponentKind::Dataset,
    ComponentKind::Criterion,
];

/// Which template `memlab new` writes: one per kind, and for criteria a second one
/// (`--images`) that asks the host for the neighbours' images and an embedding network's
/// features (plugin-api 0.3.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Template {
    /// The component kind.
    pub kind: ComponentKind,
    /// The criterion that looks beyond distances (`--images`; criteria only).
    pub images: bool,
}

impl From<ComponentKind> for Template {
    fn from(kind: ComponentKind) -> Template {
        Template {
            kind,
            images: false,
        }
    }
}

impl Template {
    /// The template of `kind`, the `--images` one when `images` (refused for other kinds
    /// than criteria).
    pub fn new(kind: ComponentKind, images: bool) -> Result<Template, String> {
        if images && kind != ComponentKind::Criterion {
            return Err(format!(
                "--images is for criteria (a criterion that judges on images and features), \
                 not for a {kind}"
            ));
        }
        Ok(Template { kind, images })
    }
}

/// `lib.rs` and `example.toml` templates.
fn templates(t: Template) -> (&'static str, &'static str) {
    match t.kind {
        ComponentKind::Architecture => (
            include_str!("../../templates/architecture/lib.rs"),
            include_str!("../../templates/architecture/example.toml"),
        ),
        ComponentKind::Schedule => (
            include_str!("../../templates/schedule/lib.rs"),
            include_str!("../../templates/schedule/example.toml"),
        ),
        ComponentKind::Conditioning => (
            include_str!("../../templates/conditioning/lib.rs"),
            include_str!("../../templates/conditioning/example.toml"),
        ),
        ComponentKind::Dataset => (
            include_str!("../../templates/dataset/lib.rs"),
            include_str!("../../templates/dataset/example.toml"),
        ),
        ComponentKind::Criterion if t.images => (
            include_str!("../../templates/criterion-images/lib.rs"),
            include_str!("../../templates/criterion-images/example.toml"),
        ),
        ComponentKind::Criterion => (
            include_str!("../../templates/criterion/lib.rs"),
            include_str!("../../templates/criterion/example.toml"),
        ),
    }
}

const CARGO_TOML: &str = include_str!("../../templates/Cargo.toml");
const README: &str = include_str!("../../templates/README.md");
const GITIGNORE: &str = include_str!("../../templates/gitignore");

/// How the scaffolded crate depends on `memlab-plugin-api`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiDependency {
    /// By path to a checkout's `plugin-api` directory (absolute).
    Path(PathBuf),
    /// By version requirement, from a registry.
    Version(String),
}

impl ApiDependency {
    /// The `plugin-api` directory of the checkout this binary was built from, if it is still
    /// there (`host/../plugin-api`, resolved at run time).
    pub fn this_checkout() -> Result<ApiDependency, String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-api");
        ApiDependency::path(&dir).map_err(|e| {
            format!(
                "{e} (it is where this memlab was built); pass --api-path DIR or \
                 --api-version {}",
                memlab_plugin_api::API_VERSION
            )
        })
    }

    /// By path to `dir`, which must hold the `memlab-plugin-api` crate.
    pub fn path(dir: &Path) -> Result<ApiDependency, String> {
        let manifest = dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest)
            .map_err(|e| format!("memlab-plugin-api not found at {}: {e}", manifest.display()))?;
        if !text.contains("name = \"memlab-plugin-api\"") {
            return Err(format!(
                "{} is not the memlab-plugin-api crate",
                manifest.display()
            ));
        }
        let abs = dir
            .canonicalize()
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(ApiDependency::Path(abs))
    }

    /// By version requirement (`0.1`, `=0.1.0`, ...).
    pub fn version(req: &str) -> Result<ApiDependency, String> {
        let ok = !req.trim().is_empty()
            && req
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || " .,*^~=<>+-".contains(c));
        if !ok {
            return Err(format!(
                "--api-version `{req}` is not a version requirement (e.g. {})",
                memlab_plugin_api::API_VERSION
            ));
        }
        Ok(ApiDependency::Version(req.trim().to_string()))
    }

    /// The `[dependencies]` line.
    fn toml_line(&self) -> String {
        match self {
            ApiDependency::Path(p) => format!(
                "memlab-plugin-api = {{ path = {} }}",
                toml::Value::String(p.display().to_string())
            ),
            ApiDependency::Version(v) => {
                format!("memlab-plugin-api = {}", toml::Value::String(v.clone()))
            }
        }
    }

    /// The dependency in words, for the README.
    fn describe(&self) -> String {
        match self {
            ApiDependency::Path(p) => format!("by path (`{}`)", p.display()),
            ApiDependency::Version(v) => format!("version `{v}`"),
        }
    }
}

/// Parses a kind name; the error lists the valid ones.
pub fn parse_kind(s: &str) -> Result<ComponentKind, String> {
    KINDS.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
        let names: Vec<&str> = KINDS.iter().map(|k| k.as_str()).collect();
        format!("unknown kind `{s}` ({})", names.join(", "))
    })
}

/// Checks that `name` can be both the component name and the crate name: ASCII letters,
/// digits, `-` and `_`, starting with a letter.
pub fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid plugin name `{name}`: use ASCII letters, digits, `-` and `_`, starting \
             with a letter (it names both the component and the crate)"
        ))
    }
}

/// File name of the library cargo builds for crate `name` on this platform
/// (`libmy_plugin.so` for `my-plugin` on Linux).
pub fn library_file(name: &str) -> String {
    format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        name.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    )
}

/// The files of a scaffolded crate, as (relative path, content).
pub fn render(
    template: impl Into<Template>,
    name: &str,
    api: &ApiDependency,
) -> Vec<(&'static str, String)> {
    let template = template.into();
    let kind = template.kind;
    let (lib_rs, example) = templates(template);
    let fill = |t: &str| {
        t.replace("{{name}}", name)
            .replace("{{crate}}", name)
            .replace("{{kind}}", kind.as_str())
            .replace("{{lib}}", &library_file(name))
            .replace("{{dependency}}", &api.toml_line())
            .replace("{{api}}", &api.describe())
    };
    vec![
        ("Cargo.toml", fill(CARGO_TOML)),
        ("src/lib.rs", fill(lib_rs)),
        ("example.toml", fill(example)),
        ("README.md", fill(README)),
        (".gitignore", GITIGNORE.to_string()),
    ]
}

/// Writes a new plugin crate of `kind` named `name` into `dir`, which must not exist or be
/// empty. Returns the files written. Usage mistakes (bad name, non-empty directory) are
/// errors of type [`ScaffoldError`].
pub fn scaffold(
    kind: impl Into<Template>,
    name: &str,
    dir: &Path,
    api: &ApiDependency,
) -> Result<Vec<PathBuf>> {
    check_name(name).map_err(ScaffoldError)?;
    if dir.exists() {
        let empty = dir.is_dir()
            && std::fs::read_dir(dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .next()
                .is_none();
        if !empty {
            return Err(ScaffoldError(format!(
                "{} already exists and is not an empty directory; refusing to overwrite it \
                 (choose another --dir)",
                dir.display()
            ))
            .into());
        }
    }
    let mut written = Vec::new();
    for (rel, text) in render(kind.into(), name, api) {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// A mistake in the arguments of `memlab new` (exit code 2), as opposed to an I/O failure.
#[derive(Debug, Clone)]
pub struct ScaffoldError(pub String);

impl std::fmt::Display for ScaffoldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ScaffoldError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_names_are_checked() {
        assert_eq!(parse_kind("dataset"), Ok(ComponentKind::Dataset));
        assert_eq!(
            parse_kind("foo").unwrap_err(),
            "unknown kind `foo` (architecture, schedule, conditioning, dataset, criterion)"
        );
        assert!(check_name("my-net_2").is_ok());
        for bad in ["", "2net", "my net", "nät", "a/b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(ApiDependency::version("0.1").is_ok());
        assert!(ApiDependency::version("0.1\"\nx").is_err());
        assert!(Template::new(ComponentKind::Criterion, true).is_ok());
        let e = Template::new(ComponentKind::Dataset, true).unwrap_err();
        assert!(e.contains("--images is for criteria"), "{e}");
    }

    #[test]
    fn rendering_fills_every_placeholder() {
        let api = ApiDependency::Path(PathBuf::from("/x/plugin \"api\""));
        let images = Template::new(ComponentKind::Criterion, true).unwrap();
        let all = KINDS.into_iter().map(Template::from).chain([images]);
        for kind in all {
            for (rel, text) in render(kind, "my-thing", &api) {
                assert!(!text.contains("{{"), "{kind:?} {rel}: {text}");
                if rel == "Cargo.toml" {
                    let t: toml::Table = toml::from_str(&text).unwrap();
                    assert_eq!(
                        t["dependencies"]["memlab-plugin-api"]["path"].as_str(),
                        Some("/x/plugin \"api\"")
                    );
                }
                if rel == "example.toml" {
                    assert!(text.contains("name = \"my-thing\""), "{kind:?}");
                }
            }
        }
        let v = render(
            ComponentKind::Criterion,
            "c",
            &ApiDependency::Version("0.1".into()),
        );
        assert!(v[0].1.contains("memlab-plugin-api = \"0.1\""));
    }

    #[test]
    fn refuses_a_non_empty_directory() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("keep.txt"), "mine").unwrap();
        let api = ApiDependency::Version("0.1".into());
        let e = scaffold(ComponentKind::Dataset, "d", tmp.path(), &api).unwrap_err();
        assert!(e.downcast_ref::<ScaffoldError>().is_some(), "{e}");
        assert!(e.to_string().contains("refusing to overwrite"), "{e}");
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("keep.txt")).unwrap(),
            "mine"
        );
        // An empty directory is fine.
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let files = scaffold(ComponentKind::Dataset, "d", &empty, &api).unwrap();
        assert_eq!(files.len(), 5);
    }
}
