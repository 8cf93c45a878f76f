//! The spill file: an append-only NDJSON file of events that could not be
//! sent, replayed in order when Redis is back.
//!
//! `{spill_dir}/{service}.spill.ndjson` holds one event (the stream entry's
//! `data`) per line; `{service}.spill.offset` holds the byte offset up to
//! which lines were acknowledged by Redis, written after each acknowledged
//! batch, so a restarted process resumes the replay where it stopped (a crash
//! between the XADD and the offset write re-sends at most one batch). When
//! everything is replayed both files are truncated.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    #[error("spill file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub(crate) struct Spill {
    path: PathBuf,
    offset_path: PathBuf,
    file: File,
    /// Bytes in the file.
    len: u64,
    /// Bytes already replayed.
    read_at: u64,
    max_bytes: u64,
}

impl Spill {
    pub fn open(dir: &Path, service: &str, max_bytes: u64) -> Result<Self, SpillError> {
        let safe: String = service
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(format!("{safe}.spill.ndjson"));
        let io = |source| SpillError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(io)?;
        let len = complete_len(&file).map_err(io)?;
        file.set_len(len).map_err(io)?;
        let offset_path = dir.join(format!("{safe}.spill.offset"));
        let read_at = std::fs::read_to_string(&offset_path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
            .min(len);
        Ok(Self {
            path,
            offset_path,
            file,
            len,
            read_at,
            max_bytes,
        })
    }

    fn err(&self, source: std::io::Error) -> SpillError {
        SpillError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Bytes written but not yet replayed.
    pub fn backlog(&self) -> u64 {
        self.len - self.read_at
    }

    /// Appends lines while they fit under the bound; returns how many were
    /// written (the rest must be dropped and counted by the caller).
    pub fn append<'a>(
        &mut self,
        lines: impl Iterator<Item = &'a str>,
    ) -> Result<usize, SpillError> {
        let mut buf = Vec::new();
        let mut n = 0;
        for line in lines {
            let add = line.len() as u64 + 1;
            if self.len + buf.len() as u64 + add > self.max_bytes {
                break;
            }
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            n += 1;
        }
        if !buf.is_empty() {
            self.file.write_all(&buf).map_err(|e| self.err(e))?;
            self.file.flush().map_err(|e| self.err(e))?;
            self.len += buf.len() as u64;
        }
        Ok(n)
    }

    /// Forces the file to disk (shutdown).
    pub fn sync(&self) -> Result<(), SpillError> {
        self.file.sync_data().map_err(|e| self.err(e))
    }

    /// Up to `max` unreplayed lines and the offset just past them.
    pub fn peek(&self, max: usize) -> Result<(Vec<String>, u64), SpillError> {
        let mut f = File::open(&self.path).map_err(|e| self.err(e))?;
        f.seek(SeekFrom::Start(self.read_at))
            .map_err(|e| self.err(e))?;
        let mut r = BufReader::new(f.take(self.len - self.read_at));
        let mut out = Vec::new();
        let mut at = self.read_at;
        let mut line = String::new();
        while out.len() < max {
            line.clear();
            let n = r.read_line(&mut line).map_err(|e| self.err(e))?;
            if n == 0 || !line.ends_with('\n') {
                break; // end, or a torn last line of a crashed writer
            }
            at += n as u64;
            out.push(line.trim_end().to_string());
        }
        Ok((out, at))
    }

    /// Marks everything before `offset` as replayed; truncates when all is.
    pub fn consume(&mut self, offset: u64) -> Result<(), SpillError> {
        self.read_at = offset.min(self.len);
        if self.read_at == self.len {
            self.file.set_len(0).map_err(|e| self.err(e))?;
            self.len = 0;
            self.read_at = 0;
            let _ = std::fs::remove_file(&self.offset_path);
        } else {
            std::fs::write(&self.offset_path, self.read_at.to_string()).map_err(|e| self.err(e))?;
        }
        Ok(())
    }
}

/// Length of the file up to its last newline: a torn line left by a crash
/// mid-write is cut off rather than glued to the next one.
fn complete_len(file: &File) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    let tail = len.min(64 * 1024);
    let mut f = file.try_clone()?;
    f.seek(SeekFrom::Start(len - tail))?;
    let mut buf = Vec::with_capacity(tail as usize);
    f.take(tail).read_to_end(&mut buf)?;
    Ok(match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => len - tail + i as u64 + 1,
        None if tail == len => 0,
        None => len, // no newline in the last 64 KiB: leave it, replay skips it
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_replays_in_order_and_resumes() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = Spill::open(dir.path(), "svc/a", 1_000).expect("open");
        assert_eq!(s.append(["a", "bb", "ccc"].into_iter()).expect("append"), 3);
        let (lines, off) = s.peek(2).expect("peek");
        assert_eq!(lines, ["a", "bb"]);
        s.consume(off).expect("consume");
        drop(s);
        // a restarted process resumes after what was acknowledged
        let mut s = Spill::open(dir.path(), "svc/a", 1_000).expect("reopen");
        let (lines, off) = s.peek(10).expect("peek");
        assert_eq!(lines, ["ccc"]);
        s.consume(off).expect("consume");
        assert_eq!(s.backlog(), 0);
        assert_eq!(std::fs::metadata(&s.path).expect("meta").len(), 0);
    }

    #[test]
    fn stops_at_the_bound_and_skips_a_torn_line() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = Spill::open(dir.path(), "x", 10).expect("open");
        assert_eq!(
            s.append(["1234", "5678", "9"].into_iter()).expect("append"),
            2
        );
        assert_eq!(s.backlog(), 10);
        // a crash mid-write leaves a line without its newline
        s.file.write_all(b"torn").expect("write");
        s.len += 4;
        let (lines, _) = s.peek(10).expect("peek");
        assert_eq!(lines, ["1234", "5678"]);
        drop(s);
        // reopening cuts the torn tail off, so the next line starts clean
        let s = Spill::open(dir.path(), "x", 10).expect("reopen");
        assert_eq!(s.backlog(), 10);
    }
}
