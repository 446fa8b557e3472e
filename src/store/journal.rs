//! An append-only journal of small records with its own group commit, beside sled: what
//! must be durable before an answer without waiting for sled's flushes, which every run
//! shares (the webhook receiver's accepted deliveries, see `triggers::accepted`).
//!
//! The journal is a directory of segment files, `<number>.log`, each a sequence of
//! entries `[length: u32 LE][crc32 of the payload: u32 LE][payload]`. [`Journal::append`]
//! writes an entry and returns once it is on disk: one `fdatasync` covers every entry
//! written before it started, whichever thread asked (the first waiter runs it for all,
//! as sled's group commit does). A segment holds at most [`SEGMENT_ENTRIES`] entries; the
//! next one starts a new file (and the directory is synced with the next entry, so the new
//! file's name is durable with it).
//!
//! What an entry stands for is settled elsewhere (for a delivery: its run durable in
//! sled); [`Journal::settle`] counts that, and a full segment whose entries are all
//! settled is deleted. [`Journal::open`] returns the entries the segments left by an
//! earlier process hold, for the caller to settle before it appends; a torn last entry (a
//! crash in the middle of its write, so never acknowledged) ends a segment's reading.
//! [`Journal::forget_earlier`] then deletes those segments.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Entries per segment file.
pub const SEGMENT_ENTRIES: u64 = 4096;

/// The most an entry may hold: a longer length in a file is a torn or foreign entry.
const MAX_ENTRY_BYTES: usize = 256 << 20;

/// The journal in a directory (see the module documentation).
pub struct Journal {
    dir: PathBuf,
    state: Mutex<State>,
    synced: Condvar,
}

/// The segment being written, and the group commit's counters.
struct State {
    /// The file entries go to, and its number; none until the first append.
    active: Option<(u64, Arc<File>)>,
    /// Entries in the active segment.
    active_entries: u64,
    /// The number the next segment gets.
    next_segment: u64,
    /// Entries written so far (in this process).
    written: u64,
    /// Entries known to be on disk.
    synced: u64,
    /// A sync is running.
    syncing: bool,
    /// Files written since the last sync (the active one, and one sealed since).
    unsynced: Vec<Arc<File>>,
    /// A segment file was created since the last sync: the directory is synced too.
    dir_dirty: bool,
    /// The last sync that failed (the entries it covered up to) and why.
    failed: Option<(u64, io::ErrorKind, String)>,
    /// Per segment of this process: entries appended, entries settled, and whether it is
    /// full (no more entries go to it).
    segments: BTreeMap<u64, Segment>,
    /// The segments an earlier process left (see [`Journal::forget_earlier`]).
    earlier: Vec<u64>,
}

#[derive(Default)]
struct Segment {
    appended: u64,
    settled: u64,
    sealed: bool,
}

fn segment_name(number: u64) -> String {
    format!("{number:020}.log")
}

fn segment_number(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".log")?.parse().ok()
}

impl Journal {
    /// Opens the journal in `dir` (created if missing); returns it with the entries of the
    /// segments an earlier process left, oldest first.
    pub fn open(dir: &Path) -> io::Result<(Journal, Vec<Vec<u8>>)> {
        fs::create_dir_all(dir)?;
        let mut numbers: Vec<u64> = fs::read_dir(dir)?
            .filter_map(|entry| segment_number(&entry.ok()?.path()))
            .collect();
        numbers.sort_unstable();
        let mut entries = Vec::new();
        for number in &numbers {
            read_segment(&dir.join(segment_name(*number)), &mut entries)?;
        }
        let journal = Journal {
            dir: dir.to_owned(),
            state: Mutex::new(State {
                active: None,
                active_entries: 0,
                next_segment: numbers.last().map_or(1, |n| n + 1),
                written: 0,
                synced: 0,
                syncing: false,
                unsynced: Vec::new(),
                dir_dirty: false,
                failed: None,
                segments: BTreeMap::new(),
                earlier: numbers,
            }),
            synced: Condvar::new(),
        };
        Ok((journal, entries))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deletes the segments an earlier process left, once what their entries stand for
    /// is settled (durably); the deletions are durable when this returns.
    pub fn forget_earlier(&self) -> io::Result<()> {
        let earlier = std::mem::take(&mut self.lock().earlier);
        if earlier.is_empty() {
            return Ok(());
        }
        for number in earlier {
            match fs::remove_file(self.dir.join(segment_name(number))) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
        File::open(&self.dir)?.sync_all()
    }

    /// Appends an entry; returns the segment it went to once it is on disk.
    pub fn append(&self, payload: &[u8]) -> io::Result<u64> {
        if payload.len() > MAX_ENTRY_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a journal entry holds at most {MAX_ENTRY_BYTES} bytes"),
            ));
        }
        let mut bytes = Vec::with_capacity(payload.len() + 8);
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        bytes.extend_from_slice(payload);

        let mut state = self.lock();
        if state.active.is_none() || state.active_entries >= SEGMENT_ENTRIES {
            self.start_segment(&mut state)?;
        }
        let (segment, file) = match &state.active {
            Some((number, file)) => (*number, Arc::clone(file)),
            None => return Err(io::Error::other("no journal segment")),
        };
        // A failed write may leave part of the entry: nothing more goes to this file.
        if let Err(err) = (&*file).write_all(&bytes) {
            state.active = None;
            return Err(err);
        }
        state.active_entries += 1;
        state.written += 1;
        let mine = state.written;
        state.segments.entry(segment).or_default().appended += 1;
        if !state.unsynced.iter().any(|f| Arc::ptr_eq(f, &file)) {
            state.unsynced.push(file);
        }
        drop(state);
        self.sync(mine)?;
        Ok(segment)
    }

    /// Seals the active segment (if any) and starts a new file.
    fn start_segment(&self, state: &mut State) -> io::Result<()> {
        if let Some((number, _)) = state.active.take() {
            let sealed = state.segments.entry(number).or_default();
            sealed.sealed = true;
        }
        let number = state.next_segment;
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(self.dir.join(segment_name(number)))?;
        state.next_segment += 1;
        state.active = Some((number, Arc::new(file)));
        state.active_entries = 0;
        state.dir_dirty = true;
        state.segments.entry(number).or_default();
        Ok(())
    }

    /// Returns once entry number `mine` (of this process) is on disk: the sync running may
    /// have started before it was written, so the next one is waited for, or run.
    fn sync(&self, mine: u64) -> io::Result<()> {
        let mut state = self.lock();
        loop {
            if state.synced >= mine {
                return match &state.failed {
                    Some((upto, kind, message)) if *upto >= mine => {
                        Err(io::Error::new(*kind, message.clone()))
                    }
                    _ => Ok(()),
                };
            }
            if !state.syncing {
                state.syncing = true;
                let target = state.written;
                let files = std::mem::take(&mut state.unsynced);
                let dir = std::mem::take(&mut state.dir_dirty);
                drop(state);
                let mut result = files.iter().try_for_each(|f| f.sync_data());
                if result.is_ok() && dir {
                    result = File::open(&self.dir).and_then(|d| d.sync_all());
                }
                let mut after = self.lock();
                after.syncing = false;
                after.synced = target;
                if let Err(err) = &result {
                    after.failed = Some((target, err.kind(), err.to_string()));
                    // Nothing more goes to a file whose sync failed.
                    after.active = None;
                }
                drop(after);
                self.synced.notify_all();
                return result;
            }
            state = self.synced.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Counts `count` entries of `segment` as settled; deletes the segment when it is
    /// full and all its entries are settled. Returns whether it was deleted (durably).
    pub fn settle(&self, segment: u64, count: u64) -> io::Result<bool> {
        let mut state = self.lock();
        let Some(entry) = state.segments.get_mut(&segment) else {
            return Ok(false);
        };
        entry.settled += count;
        let done = entry.sealed && entry.settled >= entry.appended;
        if !done {
            return Ok(false);
        }
        state.segments.remove(&segment);
        drop(state);
        fs::remove_file(self.dir.join(segment_name(segment)))?;
        File::open(&self.dir)?.sync_all()?;
        Ok(true)
    }
}

/// Reads a segment's entries into `entries`, up to its end or its first torn entry.
fn read_segment(path: &Path, entries: &mut Vec<Vec<u8>>) -> io::Result<()> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let length =
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let crc = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        let start = at + 8;
        if length > MAX_ENTRY_BYTES || start + length > bytes.len() {
            break;
        }
        let payload = &bytes[start..start + length];
        if crc32fast::hash(payload) != crc {
            break;
        }
        entries.push(payload.to_vec());
        at = start + length;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_back_after_a_reopen_until_a_torn_one() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (journal, old) = Journal::open(dir.path()).unwrap();
            assert!(old.is_empty());
            for i in 0..3 {
                journal.append(format!("entry {i}").as_bytes()).unwrap();
            }
        }
        // A crash in the middle of a fourth entry's write.
        let file = fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut torn = OpenOptions::new().append(true).open(&file).unwrap();
        torn.write_all(&[9, 0, 0, 0, 1, 2, 3, 4, b'x']).unwrap();
        let (journal, old) = Journal::open(dir.path()).unwrap();
        let texts: Vec<String> = old
            .iter()
            .map(|e| String::from_utf8(e.clone()).unwrap())
            .collect();
        assert_eq!(texts, ["entry 0", "entry 1", "entry 2"]);
        // New entries go to a new segment; the earlier ones go once forgotten.
        journal.append(b"after").unwrap();
        journal.forget_earlier().unwrap();
        drop(journal);
        let (_, old) = Journal::open(dir.path()).unwrap();
        assert_eq!(old, [b"after".to_vec()]);
    }

    #[test]
    fn a_full_segment_goes_once_its_entries_are_settled() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path()).unwrap();
        let journal = Arc::new(journal);
        // Appended from many threads at once: every entry is there once.
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let journal = Arc::clone(&journal);
                std::thread::spawn(move || {
                    (0..SEGMENT_ENTRIES / 4)
                        .map(|i| journal.append(format!("{t}/{i}").as_bytes()).unwrap())
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let mut per_segment: BTreeMap<u64, u64> = BTreeMap::new();
        for thread in threads {
            for segment in thread.join().unwrap() {
                *per_segment.entry(segment).or_default() += 1;
            }
        }
        assert_eq!(per_segment.len(), 2, "{per_segment:?}");
        let (&first, &count) = per_segment.iter().next().unwrap();
        assert_eq!(count, SEGMENT_ENTRIES);
        let files = || fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files(), 2);
        assert!(!journal.settle(first, count - 1).unwrap());
        assert!(journal.settle(first, 1).unwrap());
        assert_eq!(files(), 1);
        // The active segment stays, settled or not.
        let (&last, &count) = per_segment.iter().nth(1).unwrap();
        assert!(!journal.settle(last, count).unwrap());
        drop(journal);
        let (_, old) = Journal::open(dir.path()).unwrap();
        assert_eq!(old.len() as u64, count);
    }
}
