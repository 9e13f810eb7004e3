//! Runs scenarios by seed on worker threads, bounds each in real time (a busy loop in a poll
//! hangs a thread, which no virtual clock notices), and reports every failing seed with the
//! command that runs it alone.

use std::{
    collections::{BTreeMap, VecDeque},
    panic::{self, AssertUnwindSafe},
    sync::{Arc, Mutex, Once, mpsc},
    thread,
    time::{Duration, Instant},
};

use crate::{
    run::{panic_message, panic_text, play},
    scenario::{Mode, Scenario},
    tokens::DELIBERATE_PANIC,
};

/// Real time one scenario may take; it takes well under a second.
const WALL_LIMIT: Duration = Duration::from_secs(60);

/// The seeds to run: `STRESS_SEEDS=a,b,c` (decimal or `0x` hex) exactly, or seeds 1 to
/// `count(n)` for `STRESS_N=n`, or 1 to `default`. (`STRESS_VERBOSE=1` prints what each did.)
pub fn seeds(default: u64, count: impl Fn(u64) -> u64) -> Vec<u64> {
    if let Ok(list) = std::env::var("STRESS_SEEDS") {
        return list.split(',').map(|s| parse_seed(s.trim())).collect();
    }
    let last = match std::env::var("STRESS_N") {
        Ok(n) => count(n.trim().parse().expect("STRESS_N is a count")),
        Err(_) => default,
    };
    (1..=last).collect()
}

fn parse_seed(text: &str) -> u64 {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.unwrap_or_else(|_| panic!("STRESS_SEEDS holds {text:?}, not a seed"))
}

/// What a scenario broke, its summary and its tally; or the panic that ended it.
type Played = Result<(Vec<String>, String, String), String>;

enum Event {
    Started,
    Done(Played),
}

/// Plays every seed in `mode`; panics with a report of each failing seed. `test` is the name
/// of the test, for the command that re-runs a seed.
pub fn run(mode: Mode, seeds: Vec<u64>, test: &str) {
    quiet_deliberate_panics();
    let count = seeds.len();
    let queue = Arc::new(Mutex::new(VecDeque::from(seeds)));
    let (events, rx) = mpsc::channel();
    let workers = thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(count);
    for _ in 0..workers {
        let (queue, events) = (Arc::clone(&queue), events.clone());
        thread::spawn(move || {
            while let Some(seed) = queue.lock().unwrap().pop_front() {
                let _ = events.send((seed, Event::Started));
                let played = panic::catch_unwind(AssertUnwindSafe(|| {
                    let scenario = Scenario::generate(seed, mode);
                    let (broken, tally) = play(&scenario);
                    (broken, scenario.to_string(), tally)
                }));
                let _ = events.send((seed, Event::Done(played.map_err(panic_message))));
            }
        });
    }
    drop(events);
    let rerun = |seed| {
        format!(
            "run it alone: STRESS_SEEDS={seed} cargo test --all-features --test layer_stress {test}"
        )
    };
    let verbose = std::env::var_os("STRESS_VERBOSE").is_some();
    let (mut running, mut failures) = (BTreeMap::new(), Vec::new());
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok((seed, Event::Started)) => {
                running.insert(seed, Instant::now());
            }
            Ok((seed, Event::Done(played))) => {
                running.remove(&seed);
                if let (true, Ok((_, scenario, tally))) = (verbose, &played) {
                    println!("seed {seed}: {tally}\n  {scenario}");
                }
                match played {
                    Ok((broken, ..)) if broken.is_empty() => {}
                    Ok((broken, scenario, _)) => failures.push(format!(
                        "seed {seed} ({mode:?}) broke {} invariants:\n    {}\n  scenario: {scenario}\n  {}",
                        broken.len(),
                        broken.iter().take(12).cloned().collect::<Vec<_>>().join("\n    "),
                        rerun(seed)
                    )),
                    Err(panic) => failures.push(format!(
                        "seed {seed} ({mode:?}) panicked: {panic}\n  {}",
                        rerun(seed)
                    )),
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let late = running
                    .iter()
                    .find(|(_, since)| since.elapsed() > WALL_LIMIT);
                if let Some((seed, _)) = late {
                    failures.push(format!(
                        "seed {seed} ({mode:?}) ran for over {WALL_LIMIT:?} of real time: a \
                         thread busy in a poll that never returns?\n  {}",
                        rerun(*seed)
                    ));
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The source's deliberate panics are caught by Tokio and reported to callers as errors;
/// printing each would bury the report.
fn quiet_deliberate_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let report = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !panic_text(info.payload()).is_some_and(|t| t.contains(DELIBERATE_PANIC)) {
                report(info);
            }
        }));
    });
}
