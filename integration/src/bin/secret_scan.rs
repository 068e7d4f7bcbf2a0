//! `secret-scan DIR`: fail when anything the test suite left in DIR holds a
//! private key or a bearer token in clear (see `gatehouse_integration::scan`).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: secret-scan DIR");
        return ExitCode::from(2);
    };
    let (findings, files, bytes) = match gatehouse_integration::scan::scan_dir(&dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("secret scan: cannot read {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    };
    if files == 0 {
        eprintln!("secret scan: {} holds nothing: the suite left no artifacts to scan", dir.display());
        return ExitCode::from(2);
    }
    for f in &findings {
        eprintln!("secret scan: {} at byte {}: {}", f.file.display(), f.offset, f.what);
    }
    if findings.is_empty() {
        println!(
            "secret scan: {files} files, {bytes} bytes (logs, responses, recordings, database rows): no private key material, no bearer token in clear"
        );
        ExitCode::SUCCESS
    } else {
        eprintln!("secret scan: {} finding(s) in {files} files", findings.len());
        ExitCode::FAILURE
    }
}
