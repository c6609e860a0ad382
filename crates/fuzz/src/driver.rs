//! A small, stable, in-process mutational fuzzer: what CI runs the targets with.
//!
//! libFuzzer needs a nightly toolchain (`-Zsanitizer`) and an instrumented build, which CI
//! cannot afford; this driver needs neither. It is not coverage-guided, so it leans on a
//! good seed corpus and per-target dictionaries instead:
//!
//! ```text
//!   corpus/<target>/* + artifacts/<target>-*  ──replay──►  target(input)
//!        │ pick one (or two, to splice)
//!        ▼
//!   mutate 1–8 times: flip bit · set byte · insert · delete · duplicate a run ·
//!   interesting integer (LE/BE, 1/2/4/8 bytes) · dictionary token · splice · truncate
//!        │
//!        ▼
//!   target(input) under catch_unwind, timed and its allocations measured
//!        │ panic, > HANG_SECS, or > alloc bound
//!        ▼
//!   artifacts/<target>-<kind>-<hash>  and the run fails naming that file
//! ```
//!
//! Everything is deterministic for a given seed (a SplitMix64 generator, no system
//! randomness), so a failure prints the seed and iteration that reproduces it; the input
//! itself is saved too, and [`replay`] runs every saved artifact first, so a crash stays
//! failing until its cause is fixed.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Target;

/// Inputs longer than this are cut back (the parsers' own limits are far below it).
pub const MAX_INPUT: usize = 64 * 1024;

/// One call slower than this is reported as a hang.
pub const HANG_SECS: u64 = 5;

/// SplitMix64: tiny, fast, and the same sequence on every platform and Rust version.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

const INTERESTING: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
    u64::MAX - 1,
    48,
    4096,
    65536,
];

const INTERESTING_TEXT: &[&str] = &[
    "0",
    "-1",
    "1e999",
    "-0",
    "18446744073709551616",
    "9223372036854775807",
    "4294967296",
    "null",
    "true",
    "\"\"",
    "[]",
    "{}",
    "\\u0000",
    "\\ud800",
    "%",
    "%zz",
    "%00",
    "\u{feff}",
    "\u{202e}",
    "𝕏",
    "é",
    "\t",
    "\r\n",
    " ",
    "\"",
    "=",
    ",",
    "/",
];

/// Applies one to eight random mutations to `data` (in place).
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, dict: &[&[u8]], other: &[u8]) {
    let rounds = 1 + rng.below(8);
    for _ in 0..rounds {
        let len = data.len();
        match rng.below(12) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.next_u64() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                data.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(32));
                data.drain(i..i + n);
            }
            4 if len > 0 => {
                // Duplicate a run (repetition finds length and nesting bugs).
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let run = data[i..i + n].to_vec();
                let at = rng.below(len + 1);
                let most = if rng.chance(16) { 256 } else { 4 };
                let times = 1 + rng.below(most);
                for _ in 0..times {
                    data.splice(at..at, run.iter().copied());
                }
            }
            5 if len > 0 => {
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let width = [1usize, 2, 4, 8][rng.below(4)];
                let bytes = if rng.chance(2) { v.to_be_bytes() } else { v.to_le_bytes() };
                let bytes = if bytes[0] == 0 && width < 8 { &bytes[8 - width..] } else { &bytes[..width] };
                let i = rng.below(len);
                for (k, b) in bytes.iter().enumerate() {
                    if let Some(slot) = data.get_mut(i + k) {
                        *slot = *b;
                    }
                }
            }
            6 | 7 if !dict.is_empty() => {
                let token = dict[rng.below(dict.len())];
                let i = rng.below(len + 1);
                if rng.chance(2) || len == 0 {
                    data.splice(i..i, token.iter().copied());
                } else {
                    let end = (i + token.len()).min(len);
                    data.splice(i..end, token.iter().copied());
                }
            }
            8 => {
                let token = INTERESTING_TEXT[rng.below(INTERESTING_TEXT.len())].as_bytes();
                let i = rng.below(len + 1);
                data.splice(i..i, token.iter().copied());
            }
            9 if !other.is_empty() => {
                // Splice: our head, the other input's tail.
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            10 if len > 0 => {
                data.truncate(rng.below(len));
            }
            11 if len > 1 => {
                // Swap two bytes.
                let (a, b) = (rng.below(len), rng.below(len));
                data.swap(a, b);
            }
            _ => {}
        }
    }
    data.truncate(MAX_INPUT);
}

/// JSON values worth trying anywhere in a document.
const INTERESTING_JSON: &[&str] = &[
    "null",
    "true",
    "0",
    "-1",
    "1.5",
    "1e308",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "\"\"",
    "\"x\"",
    "\"\\u0000\"",
    "\"\u{202e}\u{1d54f}\"",
    "[]",
    "{}",
    "[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]",
    "{\"a\":{\"b\":{\"c\":[1,\"2\",null]}}}",
];

/// Structure-aware mutation for JSON inputs: parse, change one value, key or element
/// (another type, a boundary, a dictionary token, a deep copy of a sibling), serialise.
/// `None` when `data` is not JSON.
pub fn mutate_json(rng: &mut Rng, data: &[u8], dict: &[&[u8]]) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(data).ok()?;
    for _ in 0..1 + rng.below(3) {
        mutate_value(rng, &mut v, dict, 0);
    }
    serde_json::to_vec(&v).ok()
}

fn some_json(rng: &mut Rng, dict: &[&[u8]]) -> serde_json::Value {
    // A dictionary token that is a `"key":value` pair gives its value; else an interesting one.
    if !dict.is_empty() && rng.chance(2) {
        let token = String::from_utf8_lossy(dict[rng.below(dict.len())]).into_owned();
        if let Ok(serde_json::Value::Object(m)) = serde_json::from_str(&format!("{{{token}}}"))
            && let Some(v) = m.into_iter().next().map(|(_, v)| v)
        {
            return v;
        }
        if let Ok(v) = serde_json::from_str(&token) {
            return v;
        }
    }
    serde_json::from_str(INTERESTING_JSON[rng.below(INTERESTING_JSON.len())]).unwrap_or(serde_json::Value::Null)
}

fn mutate_value(rng: &mut Rng, v: &mut serde_json::Value, dict: &[&[u8]], depth: usize) {
    use serde_json::Value;
    let descend = depth < 8 && rng.below(3) != 0;
    match v {
        Value::Object(m) if descend && !m.is_empty() => {
            let k = m.keys().nth(rng.below(m.len())).cloned().unwrap_or_default();
            if let Some(child) = m.get_mut(&k) {
                mutate_value(rng, child, dict, depth + 1);
            }
        }
        Value::Array(a) if descend && !a.is_empty() => {
            let i = rng.below(a.len());
            mutate_value(rng, &mut a[i], dict, depth + 1);
        }
        Value::Object(m) => match rng.below(4) {
            0 if !m.is_empty() => {
                let k = m.keys().nth(rng.below(m.len())).cloned().unwrap_or_default();
                m.remove(&k);
            }
            1 if !dict.is_empty() => {
                // A `"key":value` token from the dictionary.
                let token = String::from_utf8_lossy(dict[rng.below(dict.len())]).into_owned();
                if let Ok(Value::Object(extra)) = serde_json::from_str(&format!("{{{token}}}")) {
                    m.extend(extra);
                } else {
                    m.insert(token, some_json(rng, dict));
                }
            }
            _ => *v = some_json(rng, dict),
        },
        Value::Array(a) => match rng.below(3) {
            0 if !a.is_empty() => {
                let i = rng.below(a.len());
                let copy = a[i].clone();
                a.push(copy);
            }
            1 if !a.is_empty() => {
                a.remove(rng.below(a.len()));
            }
            _ => a.push(some_json(rng, dict)),
        },
        Value::String(s) if rng.chance(3) => {
            let mut bytes = std::mem::take(s).into_bytes();
            mutate(rng, &mut bytes, dict, b"");
            *s = String::from_utf8_lossy(&bytes).into_owned();
        }
        Value::Number(_) if rng.chance(2) => {
            let n = INTERESTING[rng.below(INTERESTING.len())];
            *v = match rng.below(3) {
                0 => serde_json::json!(n),
                1 => serde_json::json!((n as i64).wrapping_neg()),
                _ => serde_json::json!(n as f64 + 0.5),
            };
        }
        _ => *v = some_json(rng, dict),
    }
}

/// What went wrong with one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Panic(String),
    Hang(Duration),
    Alloc { peak: usize, bound: usize },
}

impl Failure {
    fn kind(&self) -> &'static str {
        match self {
            Failure::Panic(_) => "crash",
            Failure::Hang(_) => "hang",
            Failure::Alloc { .. } => "oom",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Panic(m) => write!(f, "panicked: {m}"),
            Failure::Hang(d) => write!(f, "took {:.1} s (more than {HANG_SECS} s)", d.as_secs_f64()),
            Failure::Alloc { peak, bound } => write!(f, "allocated {peak} bytes at once (more than the {bound}-byte bound)"),
        }
    }
}

/// Measures the peak of live heap bytes while `f` runs on this thread; `None` when the
/// binary has no measuring allocator installed (see [`crate::alloc`]).
pub type PeakMeter = fn(&mut dyn FnMut()) -> Option<usize>;

/// Runs the target once on `input`, catching a panic and judging time and memory.
pub fn run_one(target: &Target, input: &[u8], meter: Option<PeakMeter>) -> Result<(), Failure> {
    let started = Instant::now();
    let mut outcome = Ok(());
    let mut call = || {
        outcome = catch_unwind(AssertUnwindSafe(|| (target.run)(input))).map_err(|e| {
            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
            Failure::Panic(msg.unwrap_or_else(|| "a non-string panic".into()))
        });
    };
    let peak = match meter {
        Some(m) => m(&mut call),
        None => {
            call();
            None
        }
    };
    outcome?;
    let took = started.elapsed();
    if took > Duration::from_secs(HANG_SECS) {
        return Err(Failure::Hang(took));
    }
    let bound = alloc_bound(input.len());
    if let Some(peak) = peak.filter(|p| *p > bound) {
        return Err(Failure::Alloc { peak, bound });
    }
    Ok(())
}

/// How much one call may hold at once: 64 MiB plus 256 bytes per input byte. The parsers
/// hold a few copies of their input; decompressors hold their window (bounded by the
/// target's output cap).
pub fn alloc_bound(input_len: usize) -> usize {
    (64 << 20) + 256 * input_len
}

/// The inputs checked into `corpus/<target>/`, sorted by name.
pub fn corpus(root: &Path, target: &str) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut out = Vec::new();
    let dir = root.join("corpus").join(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    paths.sort();
    for p in paths {
        if p.is_file() {
            let data = std::fs::read(&p)?;
            out.push((p, data));
        }
    }
    Ok(out)
}

/// Saved failing inputs for `target` (`artifacts/<target>-*`).
pub fn artifacts(root: &Path, target: &str) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let dir = root.join("artifacts");
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(out) };
    let prefix = format!("{target}-");
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix)) {
            let data = std::fs::read(&p)?;
            out.push((p, data));
        }
    }
    Ok(out)
}

/// Writes a failing input to `artifacts/<target>-<kind>-<hash>` and returns its path.
pub fn save_artifact(root: &Path, target: &str, failure: &Failure, input: &[u8]) -> std::io::Result<PathBuf> {
    let mut h = DefaultHasher::new();
    input.hash(&mut h);
    let dir = root.join("artifacts");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{target}-{}-{:016x}", failure.kind(), h.finish()));
    std::fs::write(&path, input)?;
    Ok(path)
}

/// Replays every corpus input and saved artifact; the first failure, with its file.
pub fn replay(root: &Path, target: &Target, meter: Option<PeakMeter>) -> Result<usize, String> {
    let mut inputs = corpus(root, target.name).map_err(|e| format!("reading corpus/{}: {e}", target.name))?;
    if inputs.is_empty() {
        return Err(format!("corpus/{} is empty: every target needs seeds", target.name));
    }
    inputs.extend(artifacts(root, target.name).map_err(|e| format!("reading artifacts: {e}"))?);
    for (path, data) in &inputs {
        if let Err(f) = run_one(target, data, meter) {
            return Err(format!("{}: {f} (replay with this file)", path.display()));
        }
    }
    Ok(inputs.len())
}

/// What a fuzzing run did.
#[derive(Debug, Clone)]
pub struct Report {
    pub iterations: u64,
    pub elapsed: Duration,
}

/// Fuzzes `target` from its corpus for `budget` with `seed`. On a failure the input is
/// saved under `artifacts/` and the error names the file, the seed and the iteration.
pub fn fuzz(root: &Path, target: &Target, seed: u64, budget: Duration, meter: Option<PeakMeter>) -> Result<Report, String> {
    let seeds: Vec<Vec<u8>> =
        corpus(root, target.name).map_err(|e| format!("reading corpus/{}: {e}", target.name))?.into_iter().map(|(_, d)| d).collect();
    if seeds.is_empty() {
        return Err(format!("corpus/{} is empty", target.name));
    }
    // Inputs found during the run that were accepted differently are not tracked (no
    // coverage); a small pool of recent mutants gives mutations a chance to stack.
    let mut pool: Vec<Vec<u8>> = Vec::new();
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut iterations = 0u64;
    while started.elapsed() < budget {
        for _ in 0..64 {
            let base = if !pool.is_empty() && rng.chance(3) { &pool[rng.below(pool.len())] } else { &seeds[rng.below(seeds.len())] };
            let other = &seeds[rng.below(seeds.len())];
            let structured = if target.json && rng.chance(2) { mutate_json(&mut rng, base, target.dictionary) } else { None };
            let mut input = match structured {
                Some(input) => input,
                None => {
                    let mut input = base.clone();
                    mutate(&mut rng, &mut input, target.dictionary, other);
                    input
                }
            };
            input.truncate(MAX_INPUT);
            iterations += 1;
            // Measuring allocations costs a little; do it on one call in eight.
            let m = if iterations.is_multiple_of(8) { meter } else { None };
            if let Err(f) = run_one(target, &input, m) {
                let saved = save_artifact(root, target.name, &f, &input)
                    .map_or_else(|e| format!("(could not save it: {e})"), |p| p.display().to_string());
                return Err(format!(
                    "target {} {f}\n  input saved to {saved}\n  seed {seed:#x}, iteration {iterations}\n  input (escaped): {}",
                    target.name,
                    input.escape_ascii().to_string().chars().take(2000).collect::<String>()
                ));
            }
            if pool.len() < 256 {
                pool.push(input);
            } else {
                let i = rng.below(pool.len());
                pool[i] = input;
            }
        }
    }
    Ok(Report { iterations, elapsed: started.elapsed() })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_stable() {
        // SplitMix64's published first outputs for seed 0 (so a seed printed by CI
        // reproduces the same run anywhere).
        let mut r = Rng::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn mutation_is_deterministic_and_bounded() {
        let run = || {
            let mut rng = Rng::new(7);
            let mut data = b"hello world".to_vec();
            for _ in 0..2000 {
                mutate(&mut rng, &mut data, &[b"TOKEN"], b"other input");
            }
            data
        };
        let a = run();
        assert_eq!(a, run());
        assert!(a.len() <= MAX_INPUT);
    }

    #[test]
    fn json_mutation_keeps_json_and_changes_it() {
        let mut rng = Rng::new(3);
        let seed = br#"{"name":"x","ram":1024,"tags":{"a":[1,2]}}"#;
        let mut changed = 0;
        for _ in 0..200 {
            let out = mutate_json(&mut rng, seed, &[br#""brand":"bhyve""#]).unwrap();
            assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
            changed += usize::from(out != seed);
        }
        assert!(changed > 150, "{changed}");
        assert!(mutate_json(&mut rng, b"not json", &[]).is_none());
    }

    #[test]
    fn a_panic_is_caught_and_saved() {
        fn boom(d: &[u8]) {
            assert!(!d.starts_with(b"x"), "found it");
        }
        let t = Target { name: "boom", run: boom, dictionary: &[], json: false };
        let dir = tempfile::tempdir().unwrap();
        let f = run_one(&t, b"xyz", None).unwrap_err();
        assert!(matches!(&f, Failure::Panic(m) if m.contains("found it")), "{f:?}");
        let p = save_artifact(dir.path(), "boom", &f, b"xyz").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"xyz");
        assert!(p.file_name().unwrap().to_str().unwrap().starts_with("boom-crash-"));
        std::fs::create_dir_all(dir.path().join("corpus/boom")).unwrap();
        std::fs::write(dir.path().join("corpus/boom/seed"), b"abc").unwrap();
        let err = replay(dir.path(), &t, None).unwrap_err();
        assert!(err.contains("boom-crash-"), "{err}");
        // And fuzzing finds it from a seed one mutation away.
        std::fs::remove_file(&p).unwrap();
        std::fs::write(dir.path().join("corpus/boom/seed"), b"yyz").unwrap();
        let t2 = Target { name: "boom", run: boom, dictionary: &[b"x"], json: false };
        let err = fuzz(dir.path(), &t2, 1, Duration::from_secs(10), None).unwrap_err();
        assert!(err.contains("input saved to") && err.contains("found it"), "{err}");
    }
}
