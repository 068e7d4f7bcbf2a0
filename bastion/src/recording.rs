//! Asciicast v2 recorder, independent of SSH. Every event is one complete
//! line written with one `write` call, so a recording cut off by a crash is
//! still parseable line by line. The file's SHA-256 is computed as it is
//! written; nothing is re-read.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sha2::{Digest, Sha256};

/// What the header says about the recorded channel.
#[derive(Debug, Clone, Serialize)]
pub struct Header {
    pub width: u32,
    pub height: u32,
    pub title: String,
    pub command: Option<String>,
    pub env: std::collections::BTreeMap<String, String>,
    /// Gatehouse metadata: session, user, host, login, channel kind.
    pub gatehouse: serde_json::Value,
}

/// Byte count and SHA-256 of one direction.
#[derive(Default)]
struct Direction {
    bytes: u64,
    recorded: u64,
    hash: Sha256,
    /// Bytes of an incomplete UTF-8 sequence carried to the next chunk.
    carry: Vec<u8>,
}

/// Totals when a recording is finished.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub path: PathBuf,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub sha256_in: String,
    pub sha256_out: String,
    pub truncated: bool,
    pub file_sha256: String,
}

pub struct Recorder {
    file: File,
    path: PathBuf,
    file_hash: Sha256,
    start: Instant,
    /// Per-direction cap on recorded data; `None` records everything.
    cap: Option<u64>,
    input: Direction,
    output: Direction,
    truncated: bool,
    line: Vec<u8>,
    /// Bytes of whole lines in the file.
    written: u64,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("path", &self.path).finish()
    }
}

impl Recorder {
    /// Create the file (it must not exist), mode 0600, and write the header.
    pub fn create(path: &Path, header: &Header, cap: Option<u64>) -> std::io::Result<Self> {
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let file = opts.open(path)?;
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let mut h = serde_json::json!({
            "version": 2,
            "width": header.width.max(1),
            "height": header.height.max(1),
            "timestamp": timestamp,
            "title": header.title,
            "env": header.env,
            "gatehouse": header.gatehouse,
        });
        if let (Some(cmd), Some(obj)) = (&header.command, h.as_object_mut()) {
            obj.insert("command".into(), serde_json::Value::String(cmd.clone()));
        }
        let mut rec = Self {
            file,
            path: path.to_path_buf(),
            file_hash: Sha256::new(),
            start: Instant::now(),
            cap,
            input: Direction::default(),
            output: Direction::default(),
            truncated: false,
            line: Vec::with_capacity(256),
            written: 0,
        };
        let mut line = serde_json::to_vec(&h).map_err(std::io::Error::other)?;
        line.push(b'\n');
        rec.write_line(&line)?;
        Ok(rec)
    }

    /// Append one whole line. If the disk refuses part of it, the file is
    /// cut back to the last whole line, so the recording stays parseable line
    /// by line up to the failure.
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        if let Err(e) = self.file.write_all(line) {
            let _ = self.file.set_len(self.written);
            let _ = std::io::Seek::seek(&mut self.file, std::io::SeekFrom::Start(self.written));
            return Err(e);
        }
        self.written += line.len() as u64;
        self.file_hash.update(line);
        Ok(())
    }

    fn event(&mut self, code: &str, text: &str) -> std::io::Result<()> {
        let escaped = serde_json::to_string(text).map_err(std::io::Error::other)?;
        self.event_escaped(code, &escaped)
    }

    /// Write `[t, "code", <escaped JSON string>]` as one line.
    fn event_escaped(&mut self, code: &str, escaped: &str) -> std::io::Result<()> {
        let t = self.start.elapsed().as_secs_f64();
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        line.extend_from_slice(format!("[{t:.6}, \"{code}\", ").as_bytes());
        line.extend_from_slice(escaped.as_bytes());
        line.extend_from_slice(b"]\n");
        let r = self.write_line(&line);
        self.line = line;
        r
    }

    fn data(&mut self, output: bool, data: &[u8]) -> std::io::Result<()> {
        let cap = self.cap;
        let dir = if output { &mut self.output } else { &mut self.input };
        dir.bytes += data.len() as u64;
        dir.hash.update(data);
        // The cap bounds what this direction stores in the file (escaped
        // text), so disk use is predictable whatever the data looks like.
        let room = match cap {
            Some(c) => c.saturating_sub(dir.recorded),
            None => u64::MAX,
        };
        if room == 0 {
            self.truncated = true;
            return Ok(());
        }
        let take = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
        if take < data.len() {
            self.truncated = true;
        }
        let mut text = utf8_chunk(&mut dir.carry, &data[..take]);
        let mut escaped = serde_json::to_string(&text).map_err(std::io::Error::other)?;
        if escaped.len() as u64 > room {
            self.truncated = true;
            // Binary data expands when escaped; keep the part that fits.
            let mut keep = usize::try_from(room.saturating_mul(text.len() as u64) / escaped.len() as u64).unwrap_or(0);
            while keep > 0 && !text.is_char_boundary(keep) {
                keep -= 1;
            }
            text.truncate(keep);
            escaped = serde_json::to_string(&text).map_err(std::io::Error::other)?;
        }
        dir.recorded += escaped.len() as u64;
        if text.is_empty() {
            return Ok(());
        }
        self.event_escaped(if output { "o" } else { "i" }, &escaped)
    }

    /// Data from the target to the user (stdout and stderr).
    pub fn output(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.data(true, data)
    }

    /// Data from the user to the target (keystrokes, stdin, uploads).
    pub fn input(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.data(false, data)
    }

    /// The terminal was resized.
    pub fn resize(&mut self, cols: u32, rows: u32) -> std::io::Result<()> {
        self.event("r", &format!("{cols}x{rows}"))
    }

    /// A marker event (asciicast "m"), used for what the proxy itself says.
    pub fn marker(&mut self, text: &str) -> std::io::Result<()> {
        self.event("m", text)
    }

    /// Write the closing marker, flush to disk and return the totals.
    pub fn finish(mut self, exit: &str) -> std::io::Result<Summary> {
        let sha_in = hex::encode(std::mem::take(&mut self.input.hash).finalize());
        let sha_out = hex::encode(std::mem::take(&mut self.output.hash).finalize());
        let closing = format!(
            "gatehouse: end {exit}; bytes_in={} sha256_in={sha_in} bytes_out={} sha256_out={sha_out}{}",
            self.input.bytes,
            self.output.bytes,
            if self.truncated { " (data beyond the recording cap was counted and hashed, not stored)" } else { "" }
        );
        self.marker(&closing)?;
        self.file.sync_data()?;
        Ok(Summary {
            path: self.path.clone(),
            bytes_in: self.input.bytes,
            bytes_out: self.output.bytes,
            sha256_in: sha_in,
            sha256_out: sha_out,
            truncated: self.truncated,
            file_sha256: hex::encode(self.file_hash.clone().finalize()),
        })
    }

    pub fn bytes_in(&self) -> u64 {
        self.input.bytes
    }

    pub fn bytes_out(&self) -> u64 {
        self.output.bytes
    }
}

/// Turn bytes into text for an event, keeping an incomplete trailing UTF-8
/// sequence for the next chunk and replacing invalid bytes.
fn utf8_chunk(carry: &mut Vec<u8>, data: &[u8]) -> String {
    let mut buf = std::mem::take(carry);
    buf.extend_from_slice(data);
    // Find how much of the tail may be an incomplete sequence.
    let keep = incomplete_tail(&buf);
    let tail = buf.split_off(buf.len() - keep);
    *carry = tail;
    String::from_utf8_lossy(&buf).into_owned()
}

fn incomplete_tail(b: &[u8]) -> usize {
    // Look back at most 3 bytes for a lead byte whose sequence is unfinished.
    for back in 1..=3.min(b.len()) {
        let byte = b[b.len() - back];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // continuation byte, keep looking
        }
        let need = if byte & 0b1110_0000 == 0b1100_0000 {
            2
        } else if byte & 0b1111_0000 == 0b1110_0000 {
            3
        } else if byte & 0b1111_1000 == 0b1111_0000 {
            4
        } else {
            return 0;
        };
        return if back < need { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn header() -> Header {
        Header {
            width: 80,
            height: 24,
            title: "alice → root@web-1".into(),
            command: None,
            env: [("TERM".to_string(), "xterm".to_string())].into(),
            gatehouse: serde_json::json!({"session": "s_1"}),
        }
    }

    #[test]
    fn writes_parseable_asciicast_and_hashes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.cast");
        let mut r = Recorder::create(&path, &header(), None).unwrap();
        r.input(b"echo h\xc3").unwrap();
        r.input(b"\xa9llo\r").unwrap();
        r.output(b"h\xc3\xa9llo\r\n").unwrap();
        r.resize(100, 40).unwrap();
        let s = r.finish("exit_status=0").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        let h: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(h["version"], 2);
        assert_eq!(h["width"], 80);
        let events: Vec<serde_json::Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(events[0][1], "i");
        assert_eq!(events[0][2], "echo h");
        assert_eq!(events[1][2], "éllo\r");
        assert_eq!(events[2][1], "o");
        assert_eq!(events[3][1], "r");
        assert_eq!(events[3][2], "100x40");
        assert_eq!(events[4][1], "m");
        assert_eq!(s.bytes_in, 12);
        let file_sha = hex::encode(Sha256::digest(std::fs::read(&path).unwrap()));
        assert_eq!(s.file_sha256, file_sha);
        assert_eq!(s.sha256_out, hex::encode(Sha256::digest(b"h\xc3\xa9llo\r\n")));
    }

    #[test]
    fn cap_limits_stored_data_but_not_counts_or_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.cast");
        let mut r = Recorder::create(&path, &header(), Some(10)).unwrap();
        let data = vec![b'x'; 25];
        r.output(&data[..8]).unwrap();
        r.output(&data[8..]).unwrap();
        let s = r.finish("exit_status=0").unwrap();
        assert_eq!(s.bytes_out, 25);
        assert!(s.truncated);
        assert_eq!(s.sha256_out, hex::encode(Sha256::digest(&data)));
        let text = std::fs::read_to_string(&path).unwrap();
        let stored: usize = text
            .lines()
            .skip(1)
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|e| e[1] == "o")
            .map(|e| e[2].as_str().unwrap().len())
            .sum();
        assert_eq!(stored, 8, "10 bytes of escaped text: \"xxxxxxxx\"");
    }

    #[test]
    fn refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.cast");
        std::fs::write(&path, b"x").unwrap();
        assert!(Recorder::create(&path, &header(), None).is_err());
    }

    #[test]
    fn utf8_tail_detection() {
        assert_eq!(incomplete_tail(b"abc"), 0);
        assert_eq!(incomplete_tail(b"ab\xc3"), 1);
        assert_eq!(incomplete_tail(b"ab\xe2\x82"), 2);
        assert_eq!(incomplete_tail(b"ab\xe2\x82\xac"), 0);
        assert_eq!(incomplete_tail(b"\xf0\x9f\x98"), 3);
    }
}
