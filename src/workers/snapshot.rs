//! Project snapshots: the project directory as a tar archive with fixed times and owners,
//! so the same files give the same bytes and the same content address
//! (`snapshot-<sha256>`). Left out: `.git`, the controller's data, logs and reports
//! directories, and `secrets/` (a worker receives only the secrets its steps declare).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A packed project: its object name and bytes.
#[derive(Debug)]
pub struct Snapshot {
    /// `snapshot-<sha256 of the bytes>`.
    pub name: String,
    /// The tar archive.
    pub bytes: Vec<u8>,
}

/// Packs `project_dir`, leaving out `skip` (absolute paths) and the directories every
/// project keeps out of a snapshot.
pub fn pack(project_dir: &Path, skip: &[PathBuf]) -> std::io::Result<Snapshot> {
    let mut files = Vec::new();
    walk(project_dir, project_dir, skip, &mut files)?;
    files.sort();
    let mut builder = tar::Builder::new(Vec::new());
    for relative in files {
        let path = project_dir.join(&relative);
        let meta = fs::symlink_metadata(&path)?;
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        if meta.file_type().is_symlink() {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            header.set_mode(0o777);
            builder.append_link(&mut header, &relative, fs::read_link(&path)?)?;
        } else {
            use std::os::unix::fs::PermissionsExt;
            let data = fs::read(&path)?;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(data.len() as u64);
            header.set_mode(meta.permissions().mode() & 0o777);
            builder.append_data(&mut header, &relative, data.as_slice())?;
        }
    }
    let bytes = builder.into_inner()?;
    let name = format!("snapshot-{}", hex::encode(Sha256::digest(&bytes)));
    Ok(Snapshot { name, bytes })
}

/// What the files of a snapshot look like without reading them: a hash of each file's
/// path, size, change and modification times (nanoseconds) and mode, in path order. Two
/// equal fingerprints mean the files were not touched in between, so the last pack of the
/// project can be used again instead of reading every file.
pub fn fingerprint(project_dir: &Path, skip: &[PathBuf]) -> std::io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let mut files = Vec::new();
    walk(project_dir, project_dir, skip, &mut files)?;
    files.sort();
    let mut hash = Sha256::new();
    for relative in files {
        let meta = fs::symlink_metadata(project_dir.join(&relative))?;
        hash.update(relative.as_os_str().as_encoded_bytes());
        for number in [
            meta.size(),
            meta.mtime() as u64,
            meta.mtime_nsec() as u64,
            meta.ctime() as u64,
            meta.ctime_nsec() as u64,
            u64::from(meta.mode()),
        ] {
            hash.update(number.to_le_bytes());
        }
    }
    Ok(hex::encode(hash.finalize()))
}

fn walk(
    root: &Path,
    dir: &Path,
    skip: &[PathBuf],
    files: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        if dir == root && (name == ".git" || name == "secrets" || name == "target") {
            continue;
        }
        if skip.iter().any(|s| path.starts_with(s)) {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(root, &path, skip, files)?;
        } else if kind.is_file() || kind.is_symlink() {
            if let Ok(relative) = path.strip_prefix(root) {
                files.push(relative.to_path_buf());
            }
        }
    }
    Ok(())
}

/// Unpacks a snapshot into `target` (made whole or not at all: unpacked beside it, then
/// renamed into place). Entries that would land outside `target` are refused by `tar`.
pub fn unpack(reader: impl Read, target: &Path) -> std::io::Result<()> {
    if target.is_dir() {
        return Ok(());
    }
    let parent = target.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent)?;
    let staging = parent.join(format!(
        ".unpack-{}-{}",
        std::process::id(),
        ulid::Ulid::new()
    ));
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.unpack(&staging)?;
    match fs::rename(&staging, target) {
        Ok(()) => Ok(()),
        // Another attempt unpacked the same snapshot first.
        Err(_) if target.is_dir() => fs::remove_dir_all(&staging),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_files_pack_to_the_same_name_and_unpack_whole_without_secrets() {
        let project = tempfile::tempdir().unwrap();
        let root = project.path();
        fs::create_dir_all(root.join("suites")).unwrap();
        fs::create_dir_all(root.join("secrets")).unwrap();
        fs::create_dir_all(root.join("data")).unwrap();
        fs::write(root.join("suites/api.sh"), "echo api\n").unwrap();
        fs::write(root.join("secrets/token"), "hunter2").unwrap();
        fs::write(root.join("data/db"), "state").unwrap();
        let skip = [root.join("data")];
        let first = pack(root, &skip).unwrap();
        let second = pack(root, &skip).unwrap();
        assert_eq!(first.name, second.name);
        let untouched = fingerprint(root, &skip).unwrap();
        assert_eq!(fingerprint(root, &skip).unwrap(), untouched);
        fs::write(root.join("data/db"), "other state").unwrap();
        assert_eq!(
            fingerprint(root, &skip).unwrap(),
            untouched,
            "skipped files"
        );
        fs::write(root.join("suites/api.sh"), "echo changed\n").unwrap();
        assert_ne!(pack(root, &skip).unwrap().name, first.name);
        assert_ne!(fingerprint(root, &skip).unwrap(), untouched);

        let out = tempfile::tempdir().unwrap();
        let target = out.path().join("ws");
        unpack(first.bytes.as_slice(), &target).unwrap();
        assert_eq!(
            fs::read_to_string(target.join("suites/api.sh")).unwrap(),
            "echo api\n"
        );
        assert!(!target.join("secrets").exists());
        assert!(!target.join("data").exists());
    }
}
