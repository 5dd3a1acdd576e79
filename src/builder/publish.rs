use oci_client::Reference;

use super::SessionLayer;
use crate::config::Config;
use crate::error::{BuildError, Error};
use crate::image::{self, ComposedImage};
use crate::model::Digest;
use crate::plan::{Plan, SessionPlan};
use crate::printer::Printer;
use crate::registry::Registry;

/// After `build` pushed `target` (manifest `digest`, `size` bytes): record when, for
/// `prune` (best effort: a failure is a warning, the image counts as old).
pub(super) async fn mark_pushed(
    registry: &Registry,
    target: &Reference,
    digest: &Digest,
    size: usize,
    printer: &Printer,
) {
    match registry.mark_pushed(target, digest, size).await {
        Ok(true) => printer.verbose(format!(
            "recorded the push time of {} as {}",
            target.whole(),
            crate::registry::pushed::marker_tag(digest)
        )),
        Ok(false) => {}
        Err(e) => printer.warn(format!(
            "could not record when {} was pushed (`venvimg prune` will count it as old): {}",
            target.whole(),
            e.to_string().lines().next().unwrap_or_default()
        )),
    }
}

/// After `build` pushed the session image `target`: its SBOM, as a referrer of it (the
/// registry's referrers API, else the `sha256-<hex>` referrers tag). An image pushed
/// without its SBOM is an error saying how to push it again: a plan would call the image
/// a hit and never push one.
pub(super) async fn push_sbom(
    registry: &Registry,
    config: &Config,
    target: &Reference,
    img: &ComposedImage,
    s: &SessionPlan,
    layer: &SessionLayer,
    printer: &Printer,
) -> Result<(), Error> {
    let Some(dists) = &layer.distributions else {
        return Ok(());
    };
    let repository = format!("{}/{}", target.resolve_registry(), target.repository());
    let venv_path = s.venv_dir.path_in(&config.envdir);
    let doc = crate::sbom::document(
        &crate::sbom::Subject {
            repository: &repository,
            tag: s.tag.as_str(),
            session: &s.config.name,
            key: s.key.as_str(),
            python: &layer.record.python,
            venv_path: &venv_path,
        },
        dists,
    );
    let artifact = crate::registry::referrers::Artifact {
        artifact_type: crate::sbom::MEDIA_TYPE,
        data: &doc,
        annotations: [
            (
                crate::sbom::ANNOTATION.to_string(),
                format!("CycloneDX {}", crate::sbom::SPEC_VERSION),
            ),
            (
                image::TITLE_ANNOTATION.to_string(),
                format!("SBOM of {}", s.config.name),
            ),
        ]
        .into(),
        layer_annotations: [(
            image::TITLE_ANNOTATION.to_string(),
            crate::sbom::FILE_NAME.to_string(),
        )]
        .into(),
    };
    let pushed = registry
        .push_referrer(target, &img.manifest_digest, img.manifest.len(), &artifact)
        .await
        .map_err(|e| BuildError::Sbom {
            image: format!("{}@{}", target.whole(), img.manifest_digest),
            session: s.config.name.clone(),
            detail: e.to_string(),
        })?;
    printer.verbose(format!(
        "{}: SBOM {} ({} distributions) {}",
        s.config.name,
        pushed.digest,
        dists.len(),
        match &pushed.via {
            crate::registry::referrers::Via::Api => "listed by the referrers API".to_string(),
            crate::registry::referrers::Via::Tag(t) => format!("listed under the tag {t}"),
        }
    ));
    Ok(())
}

/// The plan's dry run, for the next plans on other runners (best effort).
pub(super) async fn share_dry_run(plan: &Plan, registry: &Registry, printer: &Printer) {
    if let Some((target, d)) = &plan.dry_run_to_share {
        match registry
            .push_artifact(target, crate::python::dryrun::MEDIA_TYPE, d.to_bytes())
            .await
        {
            Ok(_) => printer.verbose(format!("saved the dry run as {}", target.whole())),
            Err(e) => printer.warn(format!("could not save the dry run for other runners: {e}")),
        }
    }
}
