//! The committed inputs of one fuzz target (`fuzz/seeds/TARGET`, `fuzz/regressions/TARGET`), for
//! the stable-toolchain tests that replay them through the target's entry point, and the writer
//! that regenerates its seed corpus.

use std::path::{Path, PathBuf};

/// One fuzz target's committed corpus.
#[derive(Debug, Clone, Copy)]
pub struct FuzzCorpus {
    target: &'static str,
}

impl FuzzCorpus {
    /// The corpus of `target` (the name of its directory under `fuzz/seeds`).
    pub const fn new(target: &'static str) -> Self {
        FuzzCorpus { target }
    }

    fn dir(&self, kind: &str) -> PathBuf {
        // The testkit sits beside `fuzz/` in the workspace, so this holds from any test binary.
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz")
            .join(kind)
            .join(self.target)
    }

    /// The seed corpus, sorted by file name, with each file's path.
    pub fn seeds(&self) -> Vec<(PathBuf, Vec<u8>)> {
        self.read("seeds")
    }

    /// Every input a fuzz run found a crash, timeout or leak with (none is fine).
    pub fn regressions(&self) -> Vec<(PathBuf, Vec<u8>)> {
        self.read("regressions")
    }

    fn read(&self, kind: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let Ok(dir) = std::fs::read_dir(self.dir(kind)) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        files
            .into_iter()
            .map(|path| {
                let bytes = std::fs::read(&path)
                    .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
                (path, bytes)
            })
            .collect()
    }

    /// Replace the seed corpus with `seeds`, written as `seed-00`, `seed-01`, …
    pub fn write_seeds(&self, seeds: &[Vec<u8>]) -> std::io::Result<()> {
        let dir = self.dir("seeds");
        std::fs::create_dir_all(&dir)?;
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), seed)?;
        }
        Ok(())
    }
}
