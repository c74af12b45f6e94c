//! The bad-configuration corpus: every case under `tests/bad-configs/<NN-name>/` is a small
//! configuration tree that must fail validation with exactly the lines of its `expected` file
//! (`file:line:column: reason`, paths relative to the case). A case that validates clean fails.
//! `KILN_BLESS=1` rewrites the `expected` files from the current output (review the diff!).

use std::path::{Path, PathBuf};

use kiln_builder::config;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/bad-configs")
}

/// What `kiln validate` reports for a configuration tree.
fn diagnostics(dir: &Path) -> String {
    match config::load(dir) {
        Ok(c) => c.validate_all().to_string(),
        Err(d) => d.to_string(),
    }
}

#[test]
fn every_bad_config_reports_exactly_its_expected_problems() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(corpus())
        .expect("tests/bad-configs exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 35,
        "only {} cases in the corpus",
        cases.len()
    );
    let bless = std::env::var_os("KILN_BLESS").is_some();
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let got = diagnostics(case);
        let expected_path = case.join("expected");
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got.trim().is_empty() {
            failures.push(format!("{name}: validates clean, but is in the bad corpus"));
        } else if got.trim_end() != expected.trim_end() {
            failures.push(format!("{name}:\n--- expected\n{expected}--- got\n{got}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Diagnostics come out sorted and deduplicated, whatever order the checks ran in.
#[test]
fn diagnostics_are_sorted_by_file_line_column() {
    for case in std::fs::read_dir(corpus()).unwrap() {
        let case = case.unwrap().path();
        if !case.is_dir() {
            continue;
        }
        let d = match config::load(&case) {
            Ok(c) => c.validate_all(),
            Err(d) => d,
        };
        let spans: Vec<_> =
            d.0.iter()
                .map(|x| (x.span.clone(), x.message.clone()))
                .collect();
        let mut sorted = spans.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(spans, sorted, "{}", case.display());
    }
}
