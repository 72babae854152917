//! Replays every file of the fuzz corpora (`fuzz/corpus/<target>/`) through the entry points the
//! fuzz targets call (`certrotd::fuzzing`), so that an input a fuzzer once found, or a seed,
//! that crashes a parser again fails `make test` without nightly or cargo-fuzz.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use certrotd::fuzzing::{Entry, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn replay(target: &str, entry: Entry) {
    let dir = fuzz_dir().join("corpus").join(target);
    let files = names_in(&dir);
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    let mut accepted = 0;
    for name in &files {
        let path = dir.join(name);
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        // A panic names the file, so the failing input is known without a debugger.
        let result = std::panic::catch_unwind(|| entry(&data));
        match result {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(_) => panic!("fuzz target {target} fails on {}", path.display()),
        }
    }
    // Seeds the parser refuses never reach the round-trip checks: keep at least one it accepts.
    assert!(
        accepted > 0,
        "{}: the parser accepts none of the {} files, so none reaches the checks",
        dir.display(),
        files.len()
    );
}

#[test]
fn every_target_has_a_fuzz_target_and_a_corpus() {
    let listed: BTreeSet<String> = TARGETS.iter().map(|(n, _)| (*n).to_owned()).collect();
    let corpora = names_in(&fuzz_dir().join("corpus"));
    assert_eq!(
        corpora, listed,
        "fuzz/corpus/* and certrotd::fuzzing::TARGETS"
    );
    let replayed: BTreeSet<String> = REPLAYED.iter().map(|n| (*n).to_owned()).collect();
    assert_eq!(replayed, listed, "the targets replayed here and TARGETS");
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for name in &listed {
        let source = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let text = std::fs::read_to_string(&source)
            .unwrap_or_else(|e| panic!("read {}: {e}", source.display()));
        assert!(
            text.contains(&format!("certrotd::fuzzing::{name}(data)")),
            "{} does not call certrotd::fuzzing::{name}",
            source.display()
        );
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
    }
}

macro_rules! corpus_tests {
    ($($name:ident),* $(,)?) => {
        /// The targets replayed below, checked against `TARGETS`.
        const REPLAYED: &[&str] = &[$(stringify!($name)),*];
        $(
            #[test]
            fn $name() {
                replay(stringify!($name), certrotd::fuzzing::$name);
            }
        )*
    };
}

corpus_tests!(
    pem,
    x509,
    private_key,
    kubeconfig,
    manifest,
    control,
    cfssl_answer,
    lease_record,
    journal,
    duration,
    window,
    config,
);
