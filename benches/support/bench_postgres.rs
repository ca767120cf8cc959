//! The PostgreSQL a bench measures: the database `TOLLGATE_BENCH_PG_URL` names, else a durable
//! cluster of the bench's own in `target/pg-bench` (`scripts/postgres`, fsync on), stopped when
//! the [`BenchPostgres`] is dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct BenchPostgres {
    pub url: String,
    /// The cluster this bench started (stopped on drop); `None` for a given database.
    own: Option<PathBuf>,
}

impl BenchPostgres {
    pub fn start() -> BenchPostgres {
        if let Ok(url) = std::env::var("TOLLGATE_BENCH_PG_URL") {
            return BenchPostgres { url, own: None };
        }
        let dir = root().join("target/pg-bench");
        let out = Command::new(root().join("scripts/postgres"))
            .arg("start")
            .arg(&dir)
            .env("TOLLGATE_PG_DURABLE", "1")
            .output()
            .expect("scripts/postgres");
        assert!(
            out.status.success(),
            "cannot start PostgreSQL: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        BenchPostgres {
            url: String::from_utf8(out.stdout).unwrap().trim().to_owned(),
            own: Some(dir),
        }
    }
}

impl Drop for BenchPostgres {
    fn drop(&mut self) {
        if let Some(dir) = &self.own {
            let _ = Command::new(root().join("scripts/postgres"))
                .arg("stop")
                .arg(dir)
                .output();
        }
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}
