//! Reading traces back: the CTF traces and Trace Event JSON files nuage wrote, found
//! anywhere under the given directories, merged into one set of spans.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::ctf::{EVENT_SPAN_BEGIN, EVENT_SPAN_END, FORMAT_VERSION, MAGIC, STREAM_FILE};
use super::{SpanRecord, ctf::PACKET_PREAMBLE_BYTES};

/// Directories descended into, at most, below each given one.
pub const MAX_DEPTH: usize = 8;
/// Trace files read at most (CTF streams and JSON files together).
pub const MAX_FILES: usize = 10_000;
/// Largest trace file read.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// One traced process, as found on disk.
#[derive(Debug, Clone)]
pub struct ProcessTrace {
    pub path: PathBuf,
    pub hostname: String,
    pub role: String,
    pub pid: u32,
    pub spans: usize,
}

/// Everything read from a set of directories.
#[derive(Debug, Default)]
pub struct TraceSet {
    pub spans: Vec<SpanRecord>,
    pub processes: Vec<ProcessTrace>,
    /// Things a person should know: spans never ended, files cut short, skipped files.
    pub warnings: Vec<String>,
}

/// Reads every nuage trace under `dirs`. CTF is preferred; a JSON file only adds spans
/// that no CTF trace had (a process whose CTF trace was removed, or another tool's
/// export of ours).
pub fn read_dirs(dirs: &[PathBuf]) -> anyhow::Result<TraceSet> {
    let mut ctf_dirs = Vec::new();
    let mut json_files = Vec::new();
    for d in dirs {
        if !d.exists() {
            bail!("{}: no such file or directory", d.display());
        }
        if d.is_file() {
            json_files.push(d.clone());
            continue;
        }
        find(d, 0, &mut ctf_dirs, &mut json_files)?;
    }
    if ctf_dirs.len() + json_files.len() > MAX_FILES {
        bail!(
            "more than {MAX_FILES} traces under {}; analyze fewer directories at once",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    ctf_dirs.sort();
    json_files.sort();
    let mut set = TraceSet::default();
    let mut seen: HashSet<(u128, u64)> = HashSet::new();
    for dir in &ctf_dirs {
        match read_ctf(dir, &mut set.warnings) {
            Ok((process, spans)) => add(&mut set, &mut seen, process, spans),
            Err(e) => set
                .warnings
                .push(format!("{}: skipped: {e:#}", dir.display())),
        }
    }
    for file in &json_files {
        match read_json(file) {
            Ok((process, spans)) => add(&mut set, &mut seen, process, spans),
            Err(e) => set
                .warnings
                .push(format!("{}: skipped: {e:#}", file.display())),
        }
    }
    if set.processes.is_empty() {
        let why = if set.warnings.is_empty() {
            String::new()
        } else {
            format!("; {}", set.warnings.join("; "))
        };
        bail!(
            "no nuage trace under {} (expected ctf/<host>-<role>-<pid>/metadata or json/*.json; record with --trace DIR){why}",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(set)
}

fn add(
    set: &mut TraceSet,
    seen: &mut HashSet<(u128, u64)>,
    mut process: ProcessTrace,
    spans: Vec<SpanRecord>,
) {
    let before = set.spans.len();
    for s in spans {
        if seen.insert((s.trace_id, s.span_id)) {
            set.spans.push(s);
        }
    }
    process.spans = set.spans.len() - before;
    if process.spans > 0 {
        set.processes.push(process);
    }
}

fn find(
    dir: &Path,
    depth: usize,
    ctf: &mut Vec<PathBuf>,
    json: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    if dir.join("metadata").is_file() {
        ctf.push(dir.to_path_buf());
        return Ok(());
    }
    if depth > MAX_DEPTH || ctf.len() + json.len() > MAX_FILES {
        return Ok(());
    }
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            find(&path, depth + 1, ctf, json)?;
        } else if path.extension().is_some_and(|e| e == "json") {
            json.push(path);
        }
    }
    Ok(())
}

/// The `key = value;` of the metadata's env block.
fn env_value<'a>(metadata: &'a str, key: &str) -> Option<&'a str> {
    let env = metadata.split("env {").nth(1)?.split("};").next()?;
    env.lines().find_map(|l| {
        let (k, v) = l.trim().split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_end_matches(';').trim().trim_matches('"'))
    })
}

fn read_ctf(
    dir: &Path,
    warnings: &mut Vec<String>,
) -> anyhow::Result<(ProcessTrace, Vec<SpanRecord>)> {
    let meta_path = dir.join("metadata");
    let metadata = std::fs::read_to_string(&meta_path)
        .with_context(|| format!("cannot read {}", meta_path.display()))?;
    if !metadata.starts_with("/* CTF 1.8") {
        bail!("not a CTF 1.8 text metadata file (packetized metadata is not read)");
    }
    let tracer = env_value(&metadata, "tracer_name").unwrap_or("?");
    if tracer != "nuage" {
        bail!("a CTF trace written by `{tracer}`, not nuage; the analyzer reads nuage traces");
    }
    let format: u32 = env_value(&metadata, "nuage_trace_format")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if format != FORMAT_VERSION {
        bail!("trace format {format}; this nuage reads format {FORMAT_VERSION}");
    }
    let process = ProcessTrace {
        path: dir.to_path_buf(),
        hostname: env_value(&metadata, "hostname").unwrap_or("?").to_owned(),
        role: env_value(&metadata, "role").unwrap_or("?").to_owned(),
        pid: env_value(&metadata, "vpid")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        spans: 0,
    };
    let stream_path = dir.join(STREAM_FILE);
    let len = std::fs::metadata(&stream_path)
        .with_context(|| format!("cannot read {}", stream_path.display()))?
        .len();
    if len > MAX_FILE_BYTES {
        bail!(
            "{} is {len} bytes, more than {MAX_FILE_BYTES}",
            stream_path.display()
        );
    }
    let data = std::fs::read(&stream_path)?;
    let (spans, problems) = decode_stream(&data);
    warnings.extend(
        problems
            .into_iter()
            .map(|p| format!("{}: {p}", stream_path.display())),
    );
    Ok((process, spans))
}

/// Decodes a stream file; returns the spans whose end was recorded, and what was wrong.
pub fn decode_stream(data: &[u8]) -> (Vec<SpanRecord>, Vec<String>) {
    let mut open: HashMap<u64, SpanRecord> = HashMap::new();
    let mut done = Vec::new();
    let mut problems = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let mut r = Reader {
            data,
            at,
            end: data.len(),
        };
        let header = (|| {
            let magic = r.u32()?;
            r.skip(16)?; // uuid
            let _stream_id = r.u32()?;
            let _begin = r.u64()?;
            let _end = r.u64()?;
            let content_bits = r.u64()?;
            let packet_bits = r.u64()?;
            Some((magic, content_bits, packet_bits))
        })();
        let Some((magic, content_bits, packet_bits)) = header else {
            problems.push(format!(
                "packet at byte {at} is cut short (the process died while writing?)"
            ));
            break;
        };
        let content = (content_bits / 8) as usize;
        let packet = (packet_bits / 8) as usize;
        if magic != MAGIC
            || content < PACKET_PREAMBLE_BYTES
            || packet < content
            || at + packet > data.len()
        {
            problems.push(format!(
                "bad or cut packet at byte {at}; the rest of the stream is skipped"
            ));
            break;
        }
        let mut ev = Reader {
            data,
            at: at + PACKET_PREAMBLE_BYTES,
            end: at + content,
        };
        while ev.at < ev.end {
            if decode_event(&mut ev, &mut open, &mut done).is_none() {
                problems.push(format!("bad event in the packet at byte {at}"));
                break;
            }
        }
        at += packet;
    }
    if !open.is_empty() {
        problems.push(format!(
            "{} span(s) began but never ended (still running, or the process stopped first)",
            open.len()
        ));
    }
    (done, problems)
}

fn decode_event(
    r: &mut Reader,
    open: &mut HashMap<u64, SpanRecord>,
    done: &mut Vec<SpanRecord>,
) -> Option<()> {
    let id = r.u32()?;
    let ts = r.u64()?;
    let pid = r.u32()?;
    let tid = r.u32()?;
    match id {
        EVENT_SPAN_BEGIN => {
            let trace_id = u128::from_str_radix(&r.string()?, 16).ok()?;
            let span_id = r.u64()?;
            let parent_id = r.u64()?;
            let name = r.string()?;
            let component = r.string()?;
            let detail = r.string()?;
            open.insert(
                span_id,
                SpanRecord {
                    trace_id,
                    span_id,
                    parent_id,
                    name,
                    component,
                    detail,
                    start_ns: ts,
                    end_ns: ts,
                    pid,
                    tid,
                },
            );
        }
        EVENT_SPAN_END => {
            let _trace = r.string()?;
            let span_id = r.u64()?;
            let _name = r.string()?;
            let _component = r.string()?;
            if let Some(mut s) = open.remove(&span_id) {
                s.end_ns = ts.max(s.start_ns);
                done.push(s);
            }
        }
        _ => return None,
    }
    Some(())
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
    end: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.at + n > self.end {
            return None;
        }
        let s = &self.data[self.at..self.at + n];
        self.at += n;
        Some(s)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let rest = &self.data[self.at..self.end];
        let nul = rest.iter().position(|&b| b == 0)?;
        let s = String::from_utf8_lossy(&rest[..nul]).into_owned();
        self.at += nul + 1;
        Some(s)
    }
}

fn read_json(path: &Path) -> anyhow::Result<(ProcessTrace, Vec<SpanRecord>)> {
    let len = std::fs::metadata(path)?.len();
    if len > MAX_FILE_BYTES {
        bail!("{len} bytes, more than {MAX_FILE_BYTES}");
    }
    let text = std::fs::read_to_string(path)?;
    let value: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        // The array format allows a missing `]` (a process that died).
        Err(_) => serde_json::from_str(&format!("{}\n]", text.trim_end().trim_end_matches(',')))
            .context("not Trace Event JSON")?,
    };
    let events = match &value {
        serde_json::Value::Array(a) => a.as_slice(),
        serde_json::Value::Object(o) => o
            .get("traceEvents")
            .and_then(|v| v.as_array())
            .map(Vec::as_slice)
            .context("no traceEvents array")?,
        _ => bail!("not Trace Event JSON"),
    };
    let mut process = ProcessTrace {
        path: path.to_path_buf(),
        hostname: "?".into(),
        role: "?".into(),
        pid: 0,
        spans: 0,
    };
    let mut spans = Vec::new();
    for e in events {
        let ph = e.get("ph").and_then(|v| v.as_str()).unwrap_or("");
        if ph == "M" && e.get("name").and_then(|v| v.as_str()) == Some("process_name") {
            // "nuage <role> @ <host>"
            if let Some(n) = e.pointer("/args/name").and_then(|v| v.as_str()) {
                if let Some((role, host)) =
                    n.strip_prefix("nuage ").and_then(|r| r.split_once(" @ "))
                {
                    process.role = role.to_owned();
                    process.hostname = host.to_owned();
                }
            }
            process.pid = e.get("pid").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
            continue;
        }
        if ph != "X" {
            continue;
        }
        let hex = |k: &str| e.pointer(&format!("/args/{k}")).and_then(|v| v.as_str());
        let (Some(trace), Some(span), Some(parent)) =
            (hex("trace_id"), hex("span_id"), hex("parent_id"))
        else {
            continue;
        };
        let (Ok(trace_id), Ok(span_id), Ok(parent_id)) = (
            u128::from_str_radix(trace, 16),
            u64::from_str_radix(span, 16),
            u64::from_str_radix(parent, 16),
        ) else {
            continue;
        };
        let ns = |k: &str| {
            e.get(k)
                .and_then(|v| v.as_f64())
                .map(|us| (us * 1000.0).round() as u64)
        };
        let (Some(start_ns), Some(dur_ns)) = (ns("ts"), ns("dur")) else {
            continue;
        };
        let text = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
        spans.push(SpanRecord {
            trace_id,
            span_id,
            parent_id,
            name: text("name"),
            component: text("cat"),
            detail: hex("detail").unwrap_or("").to_owned(),
            start_ns,
            end_ns: start_ns + dur_ns,
            pid: e.get("pid").and_then(|v| v.as_u64()).unwrap_or(0) as u32,
            tid: e.get("tid").and_then(|v| v.as_u64()).unwrap_or(0) as u32,
        });
    }
    Ok((process, spans))
}

/// Writes one Trace Event JSON file with every span of `set`, for Perfetto (which
/// opens one file at a time).
pub fn write_merged_json(set: &TraceSet, out: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    let file =
        std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut w = std::io::BufWriter::new(file);
    writeln!(w, "[")?;
    let mut first = true;
    let mut sep = |w: &mut std::io::BufWriter<std::fs::File>| -> std::io::Result<()> {
        if !std::mem::take(&mut first) {
            writeln!(w, ",")?;
        }
        Ok(())
    };
    for p in &set.processes {
        sep(&mut w)?;
        let meta = serde_json::json!({
            "name": "process_name", "ph": "M", "pid": p.pid, "tid": p.pid,
            "args": {"name": format!("nuage {} @ {}", p.role, p.hostname)},
        });
        write!(w, "{meta}")?;
    }
    for s in &set.spans {
        sep(&mut w)?;
        let args = serde_json::json!({
            "trace_id": format!("{:032x}", s.trace_id),
            "span_id": format!("{:016x}", s.span_id),
            "parent_id": format!("{:016x}", s.parent_id),
            "detail": s.detail,
        });
        write!(
            w,
            r#"{{"name":{},"cat":{},"ph":"X","ts":{}.{:03},"dur":{}.{:03},"pid":{},"tid":{},"args":{args}}}"#,
            serde_json::json!(s.name),
            serde_json::json!(s.component),
            s.start_ns / 1000,
            s.start_ns % 1000,
            (s.end_ns - s.start_ns) / 1000,
            (s.end_ns - s.start_ns) % 1000,
            s.pid,
            s.tid,
        )?;
    }
    writeln!(w, "\n]")?;
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{ProcessInfo, SpanState, Tracer};
    use super::*;

    fn record(t: &Tracer, trace_id: u128, span_id: u64, parent_id: u64, name: &'static str) {
        let mut s = SpanState {
            trace_id,
            span_id,
            parent_id,
            name,
            component: "test",
            detail: format!("d{span_id}"),
            start_ns: 0,
        };
        t.begin(&mut s);
        t.end(&s);
    }

    #[test]
    fn ctf_and_json_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let t = Tracer::create(tmp.path(), "unit").unwrap();
        // Enough spans for several packets.
        for i in 1..=3000u64 {
            record(&t, 0xabc, i, i - 1, "step");
        }
        t.finish().unwrap();
        let info: &ProcessInfo = t.info();

        let mut warnings = Vec::new();
        let (p, spans) = read_ctf(t.ctf_dir(), &mut warnings).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(p.pid, info.pid);
        assert_eq!(p.role, "unit");
        assert_eq!(spans.len(), 3000);
        assert_eq!(spans[41].span_id, 42);
        assert_eq!(spans[41].parent_id, 41);
        assert_eq!(spans[41].detail, "d42");
        assert!(spans.windows(2).all(|w| w[0].start_ns <= w[1].start_ns));
        let data = std::fs::read(t.ctf_dir().join(STREAM_FILE)).unwrap();
        assert!(
            data.len() > 2 * super::super::ctf::PACKET_EVENTS_BYTES,
            "several packets"
        );

        let (jp, jspans) = read_json(t.json_path()).unwrap();
        assert_eq!(jp.role, "unit");
        assert_eq!(jspans.len(), 3000);
        // Same spans, same times (to the microsecond decimals written).
        assert_eq!(jspans[41].span_id, spans[41].span_id);
        assert!(jspans[41].start_ns.abs_diff(spans[41].start_ns) < 1000);

        // Both formats of one process: each span once.
        let set = read_dirs(&[tmp.path().to_path_buf()]).unwrap();
        assert_eq!(set.spans.len(), 3000);
        assert_eq!(set.processes.len(), 1);
    }

    #[test]
    fn truncated_stream_keeps_whole_packets() {
        let tmp = tempfile::tempdir().unwrap();
        let t = Tracer::create(tmp.path(), "unit").unwrap();
        record(&t, 1, 1, 0, "a");
        t.flush().unwrap();
        record(&t, 1, 2, 0, "b");
        t.flush().unwrap();
        let path = t.ctf_dir().join(STREAM_FILE);
        let mut data = std::fs::read(&path).unwrap();
        data.truncate(data.len() - 5);
        let (spans, problems) = decode_stream(&data);
        assert_eq!(spans.len(), 1);
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn unended_json_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let t = Tracer::create(tmp.path(), "unit").unwrap();
        record(&t, 1, 1, 0, "a");
        t.flush().unwrap(); // no finish: no closing bracket
        let (_, spans) = read_json(t.json_path()).unwrap();
        assert_eq!(spans.len(), 1);
    }

    #[test]
    fn missing_dir_and_foreign_trace_are_explained() {
        let err = read_dirs(&[PathBuf::from("/nonexistent/t")]).unwrap_err();
        assert!(err.to_string().contains("no such file"), "{err}");
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("lttng");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(
            d.join("metadata"),
            "/* CTF 1.8 */\nenv {\n\ttracer_name = \"lttng-ust\";\n};\n",
        )
        .unwrap();
        let err = read_dirs(&[tmp.path().to_path_buf()]).unwrap_err();
        assert!(err.to_string().contains("no nuage trace"), "{err}");
        assert!(err.to_string().contains("written by `lttng-ust`"), "{err}");
    }
}
