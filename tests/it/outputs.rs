//! Images written as OCI layouts and archives, checked by the tools users load them with:
//! podman (load + run), skopeo and umoci. The image is the real test base from the
//! loopback registry plus a small layer packed here.
use crate::support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Output;

use oci_client::Reference;
use venvimg::config::BuilderKind;
use venvimg::image::{self, BaseImage, ComposedImage, LayerDescriptor};
use venvimg::layer::{pack_tree, PackOptions, PackedLayer};
use venvimg::model::Digest;
use venvimg::model::Platform;
use venvimg::outputs::{self, BlobSources};
use venvimg::printer::{Printer, Verbosity};
use venvimg::registry::{push, Registry, Transport};

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    registry: Registry,
    base: BaseImage,
    layer: PackedLayer,
    image: ComposedImage,
    /// Where the image is named (a unique repository in the test registry).
    reference: Reference,
    local: HashMap<Digest, PathBuf>,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn printer() -> Printer {
    Printer::new(Verbosity::Quiet)
}

/// A venv-like tree `opt/nox/x/` whose `bin/python` is a symlink to the base's python,
/// packed as a layer and composed onto the base with a venvimg record.
fn fixture(rt: &tokio::runtime::Runtime, tag: &str) -> Fixture {
    let env = support::testenv();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let venv = dir.join("tree/opt/nox/x");
    std::fs::create_dir_all(venv.join("bin")).unwrap();
    std::os::unix::fs::symlink("/usr/bin/python3", venv.join("bin/python")).unwrap();
    std::fs::write(venv.join("pyvenv.cfg"), "home = /usr/bin\nuv = 0.5.0\n").unwrap();
    let layer = pack_tree(
        &dir.join("tree"),
        &PackOptions::new("/"),
        &dir.join("layer.tar.gz"),
    )
    .unwrap();

    let registry = Registry::new(
        Transport {
            monolithic: true,
            ..Default::default()
        },
        &[env.registry.as_str()],
    )
    .unwrap();
    let base_ref: Reference = env.base.parse().unwrap();
    let base = rt
        .block_on(registry.resolve_base(&base_ref, &Platform::host()))
        .unwrap();
    let labels = support::record_labels("x", base.digest.as_str());
    let annotations: BTreeMap<String, String> = [
        (
            "org.opencontainers.image.base.name".to_string(),
            base.reference.whole(),
        ),
        (
            "org.opencontainers.image.base.digest".to_string(),
            base.digest.to_string(),
        ),
    ]
    .into();
    let image = image::compose(
        &base,
        &[LayerDescriptor {
            media_type: layer.media_type().to_string(),
            digest: layer.digest.clone(),
            size: layer.size,
            diff_id: layer.diff_id.clone(),
            created_by: "venvimg: test layer".into(),
        }],
        &labels,
        &annotations,
        None,
    );
    let reference: Reference = format!("{}:{tag}", support::unique_repo("outputs"))
        .parse()
        .unwrap();
    let local = [(layer.digest.clone(), layer.path.clone())].into();
    Fixture {
        _tmp: tmp,
        dir,
        registry,
        base,
        layer,
        image,
        reference,
        local,
    }
}

impl Fixture {
    fn write(&self, rt: &tokio::runtime::Runtime, dest: &str, local: &HashMap<Digest, PathBuf>) {
        let sources = BlobSources {
            local,
            base: &self.base.reference,
            repository: &self.reference,
            remote: &HashMap::new(),
        };
        rt.block_on(outputs::write_output(
            &self.registry,
            dest,
            &self.reference,
            &self.image,
            &sources,
            &printer(),
        ))
        .unwrap_or_else(|e| panic!("writing {dest}: {e}"));
    }
}

fn check(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn podman(args: &[&str]) -> String {
    let out = support::podman()
        .args(args)
        .output()
        .expect("cannot run podman");
    check(&format!("podman {}", args.join(" ")), out)
}

/// `bin/python` came through as a symlink to the base's interpreter.
fn assert_runs_with_symlink(image: &str) {
    let out = podman(&[
        "run",
        "--rm",
        "--network",
        "none",
        image,
        "sh",
        "-c",
        "test -L /opt/nox/x/bin/python && readlink /opt/nox/x/bin/python && /opt/nox/x/bin/python -c 'print(40 + 2)'",
    ]);
    assert_eq!(out, "/usr/bin/python3\n42\n", "in {image}");
}

/// `podman load` names the image as venvimg wrote it; the loaded config is ours.
fn assert_loaded(f: &Fixture) {
    let name = f.reference.whole();
    let id = podman(&["image", "inspect", "--format", "{{.Id}}", &name]);
    assert_eq!(
        format!("sha256:{}", id.trim()),
        f.image.config_digest,
        "{name} is not the image we wrote"
    );
    assert_runs_with_symlink(&name);
    podman(&["rmi", "--force", &name]);
}

/// Write the image as `TRANSPORT:<dir>/FILE` (`docker-archive`, `oci-archive`); `podman
/// load` names it and runs it.
fn archive_loads_into_podman_and_runs(transport: &str, file: &str) {
    let rt = runtime();
    let f = fixture(&rt, transport);
    let file = f.dir.join(file);
    f.write(&rt, &format!("{transport}:{}", file.display()), &f.local);
    let out = podman(&["load", "-i", file.to_str().unwrap()]);
    assert!(
        out.contains(&f.reference.whole()),
        "podman load said: {out}"
    );
    assert_loaded(&f);
}

#[test]
fn docker_archive_loads_into_podman_and_runs() {
    archive_loads_into_podman_and_runs("docker-archive", "image.tar");
}

#[test]
fn oci_archive_loads_into_podman_and_runs() {
    archive_loads_into_podman_and_runs("oci-archive", "image.oci.tar");
}

#[test]
fn load_puts_the_image_into_podman_storage() {
    let rt = runtime();
    let f = fixture(&rt, "load");
    let work = tempfile::tempdir().unwrap();
    let sources = BlobSources {
        local: &f.local,
        base: &f.base.reference,
        repository: &f.reference,
        remote: &HashMap::new(),
    };
    rt.block_on(outputs::load(
        BuilderKind::Podman,
        &f.registry,
        &f.reference,
        &f.image,
        &sources,
        work.path(),
        &printer(),
    ))
    .unwrap();
    assert_eq!(
        std::fs::read_dir(work.path()).unwrap().count(),
        0,
        "the archive should be gone after loading"
    );
    assert_loaded(&f);
}

#[test]
fn oci_dir_is_a_layout_skopeo_and_umoci_accept() {
    let rt = runtime();
    let f = fixture(&rt, "oci-dir");
    let tag = f.reference.tag().unwrap();
    let layout = f.dir.join("layout");
    let dest = format!("oci:{}", layout.display());
    f.write(&rt, &dest, &f.local);

    let out = support::skopeo()
        .args(["inspect", &format!("oci:{}:{tag}", layout.display())])
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_str(&check("skopeo inspect", out)).unwrap();
    assert_eq!(info["Digest"], f.image.manifest_digest.as_str());
    assert_eq!(
        info["Layers"].as_array().unwrap().len(),
        f.base.manifest.layers().len() + 1
    );
    assert_eq!(
        info["Labels"][image::SESSIONS_LABEL],
        "x",
        "config labels lost: {info}"
    );

    let out = std::process::Command::new("umoci")
        .args(["ls", "--layout", layout.to_str().unwrap()])
        .output()
        .expect("cannot run umoci (apt-get install -y umoci)");
    assert_eq!(check("umoci ls", out).trim(), tag);
    let out = std::process::Command::new("umoci")
        .args([
            "stat",
            "--json",
            "--image",
            &format!("{}:{tag}", layout.display()),
        ])
        .output()
        .unwrap();
    let stat: serde_json::Value = serde_json::from_str(&check("umoci stat", out)).unwrap();
    assert!(
        stat["history"].as_array().is_some_and(|h| !h.is_empty()),
        "umoci stat: {stat}"
    );

    // skopeo reads every blob (digests checked) when it copies the layout.
    let copy = f.dir.join("copy");
    let out = support::skopeo()
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("dir:{}", copy.display()))
        .output()
        .unwrap();
    check("skopeo copy oci: dir:", out);

    // Writing it again leaves the same bytes; a fresh layout has the same bytes too.
    let index = std::fs::read(layout.join("index.json")).unwrap();
    f.write(&rt, &dest, &f.local);
    assert_eq!(std::fs::read(layout.join("index.json")).unwrap(), index);
    let again = f.dir.join("layout2");
    f.write(&rt, &format!("oci:{}", again.display()), &f.local);
    assert_eq!(tree(&layout), tree(&again));
}

/// Every file of a directory, by relative path, with its bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn layers_not_packed_here_are_fetched_from_the_registry() {
    let rt = runtime();
    let f = fixture(&rt, "fetched");
    // From local files: the venv layer packed here, base layers fetched from the base.
    let from_local = f.dir.join("local.tar");
    f.write(
        &rt,
        &format!("oci-archive:{}", from_local.display()),
        &f.local,
    );

    // Push it, then write with no local files: every layer comes from a registry.
    rt.block_on(push::push_image(
        &f.registry,
        &f.reference,
        &f.image,
        &f.base,
        &f.local,
    ))
    .unwrap();
    let none = HashMap::new();
    let from_registry = f.dir.join("registry.tar");
    f.write(
        &rt,
        &format!("oci-archive:{}", from_registry.display()),
        &none,
    );
    let a = std::fs::read(&from_local).unwrap();
    let b = std::fs::read(&from_registry).unwrap();
    assert!(
        a == b,
        "archives differ depending on where the blobs came from"
    );
    assert!(
        a.windows(64).any(|w| w == f.layer.digest.hex().as_bytes()),
        "the venv layer is not in the archive"
    );

    // The docker archive too, and podman runs what it loads.
    let docker = f.dir.join("docker.tar");
    f.write(&rt, &format!("docker-archive:{}", docker.display()), &none);
    podman(&["load", "-i", docker.to_str().unwrap()]);
    assert_loaded(&f);
    support::delete_image(&f.reference.whole());
}

#[test]
fn unknown_destinations_are_usage_errors() {
    let rt = runtime();
    let f = fixture(&rt, "bad-dest");
    let sources = BlobSources {
        local: &f.local,
        base: &f.base.reference,
        repository: &f.reference,
        remote: &HashMap::new(),
    };
    let err = rt
        .block_on(outputs::write_output(
            &f.registry,
            "tarball:/tmp/x.tar",
            &f.reference,
            &f.image,
            &sources,
            &printer(),
        ))
        .unwrap_err();
    assert_eq!(err.exit_code(), 2);
    let msg = err.to_string();
    assert!(msg.contains("tarball:/tmp/x.tar"), "{msg}");
    assert!(
        msg.contains("oci:DIR, oci-archive:FILE or docker-archive:FILE"),
        "{msg}"
    );

    // A directory that is not a layout is not scribbled into.
    let junk = f.dir.join("junk");
    std::fs::create_dir(&junk).unwrap();
    std::fs::write(junk.join("notes.txt"), "mine").unwrap();
    let err = rt
        .block_on(outputs::write_output(
            &f.registry,
            &format!("oci:{}", junk.display()),
            &f.reference,
            &f.image,
            &sources,
            &printer(),
        ))
        .unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    assert!(!junk.join("index.json").exists());
}
