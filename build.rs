//! Embeds the data catalogs: every `src/questions/templates/*.toml` becomes
//! an entry of `TEMPLATE_FILES` and every
//! `src/questions/compose/operators/*.toml` one of `OPERATOR_FILES` (file
//! stem, contents), in name order, so adding a template or an operator is
//! editing a file.

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

fn main() {
    embed("src/questions/templates", "TEMPLATE_FILES", "templates.rs");
    embed(
        "src/questions/compose/operators",
        "OPERATOR_FILES",
        "operators.rs",
    );
}
