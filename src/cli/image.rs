//! `csv-agent image build | path`.

use anyhow::Result;
use clap::Subcommand;

use crate::sandbox::image::{self, Image, ImageProgress, ImageSpec};

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the image (a Python environment with the pinned data stack).
    Build {
        /// Rebuild even if a ready image exists.
        #[arg(long)]
        force: bool,
    },
    /// Print where the image is (building it first if needed).
    Path,
}

/// Progress on stderr: steps always, pip's lines indented.
pub struct StderrProgress;

impl ImageProgress for StderrProgress {
    fn step(&self, message: &str) {
        eprintln!("csv-agent: image: {message}");
    }
    fn line(&self, line: &str) {
        eprintln!("    {line}");
    }
}

/// Locate the image, building it on first use (blocking work off the runtime).
pub async fn ensure_image() -> Result<Image> {
    let spec = ImageSpec::from_env();
    // Refuse before spending minutes on a build the jail could not use.
    let location = spec
        .prebuilt
        .clone()
        .unwrap_or_else(|| spec.cache_dir.clone());
    crate::sandbox::check_image_location(&location)?;
    let image =
        tokio::task::spawn_blocking(move || image::ensure(&spec, &StderrProgress)).await??;
    Ok(image)
}

pub async fn run(cmd: ImageCommand) -> Result<i32> {
    match cmd {
        ImageCommand::Build { force } => {
            let spec = ImageSpec::from_env();
            let image =
                tokio::task::spawn_blocking(move || image::build(&spec, &StderrProgress, force))
                    .await??;
            eprintln!("csv-agent: image ready (Python {})", image.python_version);
            println!("{}", image.root.display());
        }
        ImageCommand::Path => {
            let image = ensure_image().await?;
            println!("{}", image.root.display());
        }
    }
    Ok(super::EXIT_OK)
}

/// The image the environment names (`CSV_AGENT_PYTHON`,
/// `CSV_AGENT_CACHE_DIR`, `CSV_AGENT_IMAGE`). Defined at the CLI
/// edge, so neither `sandbox` nor `config` imports the other.
impl crate::sandbox::image::ImageSpec {
    pub fn from_env() -> Self {
        crate::sandbox::image::ImageSpec {
            python: crate::config::python(),
            cache_dir: crate::config::cache_dir(),
            prebuilt: crate::config::prebuilt_image(),
        }
    }
}
