//! Finding a function's program on this machine and checking it can run, so a command
//! that does not exist or is not executable is refused at deploy time.
//!
//! A program with a `/` is a path. A bare name is looked up in `[functions] path`, then in
//! the directory of the running nuage executable (where the normal build puts `toupper`
//! and `echo`), then in `$PATH`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::unistd::{AccessFlags, access};

/// Where bare program names are looked up, in order.
#[derive(Debug, Clone, Default)]
pub struct SearchPath {
    pub dirs: Vec<PathBuf>,
}

impl SearchPath {
    /// `configured`, then the nuage executable's directory, then `$PATH`.
    pub fn new(configured: &[PathBuf]) -> SearchPath {
        let mut dirs: Vec<PathBuf> = configured.to_vec();
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
        {
            dirs.push(dir);
        }
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path).filter(|d| d.is_absolute()));
        }
        SearchPath { dirs }
    }

    /// The executable `program` names on this machine.
    pub fn resolve(&self, program: &str) -> Result<PathBuf, String> {
        if program.is_empty() {
            return Err("the command is empty".into());
        }
        if program.contains('/') {
            let path = PathBuf::from(program);
            check_executable(&path)?;
            return Ok(path);
        }
        for dir in &self.dirs {
            let candidate = dir.join(program);
            if candidate.is_file() && check_executable(&candidate).is_ok() {
                return Ok(candidate);
            }
        }
        let dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        Err(format!(
            "command `{program}` not found (looked in {}); give its path after --, or add its directory to [functions] path",
            if dirs.is_empty() {
                "no directory".to_owned()
            } else {
                dirs.join(", ")
            }
        ))
    }
}

/// Refuses what exists but cannot be run, saying why.
pub fn check_executable(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("command {} does not exist", path.display())
        } else {
            format!("command {}: {e}", path.display())
        }
    })?;
    if meta.is_dir() {
        return Err(format!("command {} is a directory", path.display()));
    }
    if meta.permissions().mode() & 0o111 == 0 || access(path, AccessFlags::X_OK).is_err() {
        return Err(format!(
            "command {} is not executable (chmod +x it)",
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_paths_and_refusals() {
        let tmp = tempfile::tempdir().unwrap();
        let exe = tmp.path().join("f");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = tmp.path().join("g");
        std::fs::write(&plain, "x").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();

        let search = SearchPath {
            dirs: vec![tmp.path().to_path_buf()],
        };
        assert_eq!(search.resolve("f").unwrap(), exe);
        assert_eq!(search.resolve(exe.to_str().unwrap()).unwrap(), exe);
        let e = search.resolve("g").unwrap_err();
        assert!(e.contains("not found"), "{e}");
        let e = search.resolve(plain.to_str().unwrap()).unwrap_err();
        assert!(e.contains("not executable"), "{e}");
        let e = search.resolve("/nonexistent/x").unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        let e = search.resolve(tmp.path().to_str().unwrap()).unwrap_err();
        assert!(e.contains("is a directory"), "{e}");
        assert!(SearchPath::new(&[]).resolve("sh").is_ok());
    }
}
