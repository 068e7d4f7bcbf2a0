//! The asciicast writer with arbitrary bytes in both directions, under a cap:
//! every line of the file is valid JSON, the header is asciicast v2, and the
//! byte counts and hashes cover every byte.
#![no_main]
use gatehouse_bastion::recording::{Header, Recorder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.cast");
    let header = Header {
        width: 80,
        height: 24,
        title: String::from_utf8_lossy(data.get(..16).unwrap_or(data)).into_owned(),
        command: None,
        env: Default::default(),
        gatehouse: serde_json::json!({}),
    };
    let mut r = Recorder::create(&path, &header, Some(64)).unwrap();
    let (mut inb, mut outb) = (0u64, 0u64);
    for (i, chunk) in data.chunks(7).enumerate() {
        if i % 2 == 0 {
            r.output(chunk).unwrap();
            outb += chunk.len() as u64;
        } else {
            r.input(chunk).unwrap();
            inb += chunk.len() as u64;
        }
    }
    let s = r.finish("exit_status=0").unwrap();
    assert_eq!((s.bytes_in, s.bytes_out), (inb, outb));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines = text.lines();
    let h: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(h["version"], 2);
    for l in lines {
        let e: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(e[0].is_f64() && e[1].is_string() && e[2].is_string());
    }
});
