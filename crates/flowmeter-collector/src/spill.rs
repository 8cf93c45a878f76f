//! The spill file: an append-only file of events that could not be sent,
//! replayed in order when Redis is back.
//!
//! `{spill_dir}/{service}.spill.ndjson` holds batches: a header line
//! `#batch {id}` with the batch's id, then one event (the stream entry's
//! `data`) per line. The id is the one the batch was (or would have been)
//! sent with, so a replay after a partial write or a crash adds only what
//! is missing (the producer's idempotency records, see `sender`). Lines
//! before any header (a file of a collector that wrote no headers) are
//! replayed in groups under fresh ids.
//!
//! `{service}.spill.offset` holds the byte offset up to which batches were
//! acknowledged by Redis, written after each acknowledged batch, so a
//! restarted process resumes the replay where it stopped. When everything
//! is replayed both files are truncated.

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

/// What starts the header line of a batch; event lines are JSON objects.
const HEADER: &str = "#batch ";

/// A batch read back from the file.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SpilledBatch {
    /// The id it was spilled with; `None` for lines without a header.
    pub id: Option<String>,
    /// Its events' lines (may be fewer than were spilled: a torn batch).
    pub lines: Vec<String>,
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

    /// Appends a batch (its header, then its lines while they fit under
    /// the bound); returns how many lines were written (the rest must be
    /// dropped and counted by the caller). Nothing is written when not one
    /// line fits.
    pub fn append<'a>(
        &mut self,
        id: &str,
        lines: impl Iterator<Item = &'a str>,
    ) -> Result<usize, SpillError> {
        let mut buf = format!("{HEADER}{id}\n").into_bytes();
        let header = buf.len();
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
        if buf.len() > header {
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

    /// The next unreplayed batch and the offset just past it: a header
    /// and every line up to the next header, or up to `max_bare` lines
    /// without a header. `None` when nothing complete is left (the end, or
    /// a torn last line of a crashed writer).
    pub fn peek(&self, max_bare: usize) -> Result<Option<(SpilledBatch, u64)>, SpillError> {
        let mut f = File::open(&self.path).map_err(|e| self.err(e))?;
        f.seek(SeekFrom::Start(self.read_at))
            .map_err(|e| self.err(e))?;
        let mut r = BufReader::new(f.take(self.len - self.read_at));
        let mut batch = SpilledBatch {
            id: None,
            lines: Vec::new(),
        };
        let mut at = self.read_at;
        let mut line = String::new();
        loop {
            line.clear();
            let n = r.read_line(&mut line).map_err(|e| self.err(e))?;
            if n == 0 || !line.ends_with('\n') {
                break; // end, or a torn last line of a crashed writer
            }
            let text = line.trim_end();
            if let Some(id) = text.strip_prefix(HEADER) {
                if at > self.read_at {
                    break; // the next batch
                }
                batch.id = Some(id.to_string());
            } else {
                if batch.id.is_none() && batch.lines.len() >= max_bare {
                    break;
                }
                batch.lines.push(text.to_string());
            }
            at += n as u64;
        }
        Ok((at > self.read_at).then_some((batch, at)))
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

    /// The next batch's id and lines, consumed.
    fn next(s: &mut Spill) -> Option<(Option<String>, Vec<String>)> {
        let (b, off) = s.peek(2).expect("peek")?;
        s.consume(off).expect("consume");
        Some((b.id, b.lines))
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn appends_replays_batches_in_order_and_resumes() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = Spill::open(dir.path(), "svc/a", 1_000).expect("open");
        assert_eq!(s.append("b1", ["a", "bb"].into_iter()).expect("append"), 2);
        assert_eq!(s.append("b2", ["ccc"].into_iter()).expect("append"), 1);
        assert_eq!(
            next(&mut s),
            Some((Some("b1".into()), strs(&["a", "bb"]))),
            "a whole batch, whatever max_bare"
        );
        drop(s);
        // a restarted process resumes after what was acknowledged, same id
        let mut s = Spill::open(dir.path(), "svc/a", 1_000).expect("reopen");
        assert_eq!(next(&mut s), Some((Some("b2".into()), strs(&["ccc"]))));
        assert_eq!(next(&mut s), None);
        assert_eq!(s.backlog(), 0);
        assert_eq!(std::fs::metadata(&s.path).expect("meta").len(), 0);
    }

    #[test]
    fn lines_without_a_header_come_in_groups_of_max_bare() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("x.spill.ndjson"), "1\n2\n3\n#batch b\n4\n").expect("write");
        let mut s = Spill::open(dir.path(), "x", 1_000).expect("open");
        assert_eq!(next(&mut s), Some((None, strs(&["1", "2"]))));
        assert_eq!(next(&mut s), Some((None, strs(&["3"]))));
        assert_eq!(next(&mut s), Some((Some("b".into()), strs(&["4"]))));
        assert_eq!(next(&mut s), None);
    }

    #[test]
    fn stops_at_the_bound_and_skips_a_torn_line() {
        let dir = tempfile::tempdir().expect("tmp");
        // "#batch b\n" is 9 bytes: room for two 4-byte lines in 19
        let mut s = Spill::open(dir.path(), "x", 19).expect("open");
        assert_eq!(
            s.append("b", ["1234", "5678", "9"].into_iter())
                .expect("append"),
            2
        );
        assert_eq!(s.backlog(), 19);
        // nothing fits: not even the header is written
        assert_eq!(s.append("c", ["1"].into_iter()).expect("append"), 0);
        assert_eq!(s.backlog(), 19);
        // a crash mid-write leaves a line without its newline
        s.file.write_all(b"torn").expect("write");
        s.len += 4;
        let (b, _) = s.peek(10).expect("peek").expect("a batch");
        assert_eq!(b.lines, ["1234", "5678"]);
        drop(s);
        // reopening cuts the torn tail off, so the next line starts clean
        let s = Spill::open(dir.path(), "x", 19).expect("reopen");
        assert_eq!(s.backlog(), 19);
    }

    #[test]
    fn a_header_torn_off_its_lines_is_an_empty_batch() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("x.spill.ndjson"), "#batch b\n").expect("write");
        let mut s = Spill::open(dir.path(), "x", 1_000).expect("open");
        assert_eq!(next(&mut s), Some((Some("b".into()), Vec::new())));
        assert_eq!(s.backlog(), 0);
    }
}
