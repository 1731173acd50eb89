//! Embeds the data catalogs: every `src/questions/templates/*.toml` becomes
//! an entry of `TEMPLATE_FILES` and every
//! `src/questions/compose/operators/*.toml` one of `OPERATOR_FILES` (file
//! stem, contents), in name order, so adding a template or an operator is
//! editing a file. Embeds the bundled datasets too: every `datasets/<slug>/`
//! with a `data.csv` becomes an entry of `BUNDLED_DATASETS` (slug, data.csv
//! bytes, meta.json bytes), so an installed binary runs without the source
//! tree (src/datasets/embedded.rs).

use std::fmt::Write as _;
use std::path::Path;

fn embed(folder: &str, constant: &str, out_file: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(folder);
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut out = format!("pub const {constant}: &[(&str, &str)] = &[\n");
    for path in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    ({stem:?}, include_str!({:?})),",
            path.display().to_string()
        );
    }
    out.push_str("];\n");
    let target = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join(out_file);
    std::fs::write(&target, out).unwrap_or_else(|e| panic!("writing {}: {e}", target.display()));
}

fn embed_datasets() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut folders: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.join("data.csv").is_file())
        .collect();
    folders.sort();
    let mut out = String::from("pub const BUNDLED_DATASETS: &[(&str, &[u8], &[u8])] = &[\n");
    for folder in &folders {
        let slug = folder
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let (data, meta) = (folder.join("data.csv"), folder.join("meta.json"));
        println!("cargo:rerun-if-changed={}", folder.display());
        println!("cargo:rerun-if-changed={}", data.display());
        println!("cargo:rerun-if-changed={}", meta.display());
        let meta = if meta.is_file() {
            format!("include_bytes!({:?})", meta.display().to_string())
        } else {
            "b\"\"".to_string()
        };
        let _ = writeln!(
            out,
            "    ({slug:?}, include_bytes!({:?}), {meta}),",
            data.display().to_string()
        );
    }
    out.push_str("];\n");
    let target =
        Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("datasets.rs");
    std::fs::write(&target, out).unwrap_or_else(|e| panic!("writing {}: {e}", target.display()));
}

fn main() {
    embed("src/questions/templates", "TEMPLATE_FILES", "templates.rs");
    embed(
        "src/questions/compose/operators",
        "OPERATOR_FILES",
        "operators.rs",
    );
    embed_datasets();
}
