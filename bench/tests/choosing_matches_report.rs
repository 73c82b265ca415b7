//! `docs/choosing.md` quotes its figures from `docs/compare-local/report.md`, the committed
//! `compare --local` run. The page's rule: every measured figure is written in backticks and
//! starts with a digit, exactly as the report prints it (`7.115 ms`, `108253 msgs/s`,
//! `0.12 (0.10–0.16)`). When the report is regenerated, the quotes it no longer contains fail
//! here, each one named, and so does a figure written outside backticks, which the check
//! would otherwise miss. Reads two files: no broker, no build of anything but this test.

use std::path::PathBuf;

const PAGE: &str = "docs/choosing.md";
const REPORT: &str = "docs/compare-local/report.md";

fn read(relative: &str) -> String {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", relative]
        .iter()
        .collect();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One line of the page outside fenced code blocks (the command there is not a figure).
struct Line<'a> {
    number: usize,
    /// The backtick spans, in order.
    quoted: Vec<&'a str>,
    /// The text between the spans.
    prose: Vec<&'a str>,
}

fn lines(page: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (index, text) in page.lines().enumerate() {
        if text.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut quoted = Vec::new();
        let mut prose = Vec::new();
        let pieces: Vec<&str> = text.split('`').collect();
        // An unpaired backtick leaves the rest of the line as prose, where it is still checked.
        let paired = pieces.len() % 2 == 1;
        for (at, piece) in pieces.iter().enumerate() {
            if at % 2 == 1 && (paired || at + 1 < pieces.len()) {
                quoted.push(*piece);
            } else {
                prose.push(*piece);
            }
        }
        out.push(Line {
            number: index + 1,
            quoted,
            prose,
        });
    }
    out
}

/// A backtick span is a figure when it starts with a digit; identifiers (`per_key_order`),
/// options (`?linger.ms=0`) and patterns (`order.*`) do not.
fn is_figure(span: &str) -> bool {
    span.starts_with(|c: char| c.is_ascii_digit())
}

/// `figure` occurs in `report` as a whole number: `0.84` does not match inside `0.847`, nor
/// `7.1` inside `17.1`.
fn occurs_in(report: &str, figure: &str) -> bool {
    report.match_indices(figure).any(|(at, _)| {
        let before = report[..at].chars().next_back();
        let after = &report[at + figure.len()..];
        let mut next = after.chars();
        let first = next.next();
        let continues = match first {
            Some(c) if c.is_ascii_digit() => true,
            Some('.' | ',') => next.next().is_some_and(|c| c.is_ascii_digit()),
            _ => false,
        };
        !before.is_some_and(|c| c.is_ascii_digit() || c == '.') && !continues
    })
}

/// Units that make a number a measurement; counts of messages, keys or rounds are parameters.
const UNITS: [&str; 12] = [
    "msgs/s",
    "MB/s",
    "ms",
    "µs",
    "us",
    "%",
    "×",
    "x",
    "passed",
    "failed",
    "lost",
    "duplicates",
];

/// The figures in prose: a decimal number (a ratio or a time), or a number followed by one of
/// `UNITS`. Digits inside a word (`p99`, `murmur2`, `e2e`) and dotted versions (`4.1.1`) are
/// neither.
/// `next_line` is the prose that starts the following line: a paragraph wrapped between a
/// number and its unit (`30` / `passed`) is still one figure.
fn unmarked_figures(prose: &str, next_line: &str) -> Vec<String> {
    let chars: Vec<char> = prose.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let starts = chars[i].is_ascii_digit()
            && !(i > 0
                && (chars[i - 1].is_alphanumeric() || matches!(chars[i - 1], '_' | '.' | '-')));
        if !starts {
            i += 1;
            continue;
        }
        let begin = i;
        let mut dots = 0;
        while i < chars.len() {
            let c = chars[i];
            let joins_digits = matches!(c, '.' | ',')
                && chars.get(i + 1).is_some_and(char::is_ascii_digit)
                && chars[i - 1].is_ascii_digit();
            if c.is_ascii_digit() {
                i += 1;
            } else if joins_digits {
                dots += usize::from(c == '.');
                i += 1;
            } else {
                break;
            }
        }
        if dots > 1 {
            continue;
        }
        let number: String = chars[begin..i].iter().collect();
        let rest: String = chars[i..].iter().collect();
        let (gap, unit_text) = if rest.trim().is_empty() {
            (" ", next_line.trim_start())
        } else {
            let text = rest.strip_prefix([' ', '\u{a0}']).unwrap_or(&rest);
            (&rest[..rest.len() - text.len()], text)
        };
        let unit = UNITS.iter().find(|unit| {
            unit_text.strip_prefix(*unit).is_some_and(|after| {
                !after.starts_with(|c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '/'))
            })
        });
        if let Some(unit) = unit {
            found.push(format!("{number}{gap}{unit}"));
        } else if dots == 1 {
            found.push(number);
        }
    }
    found
}

#[test]
fn every_figure_the_page_quotes_is_in_the_report() {
    let page = read(PAGE);
    let report = read(REPORT);
    let mut quoted = 0;
    let mut missing = Vec::new();
    for line in lines(&page) {
        for span in line.quoted.into_iter().filter(|span| is_figure(span)) {
            quoted += 1;
            if !occurs_in(&report, span) {
                missing.push(format!("{PAGE}:{}: `{span}`", line.number));
            }
        }
    }
    assert!(
        quoted >= 20,
        "{PAGE} quotes {quoted} figures in backticks; its trade-off rows should quote the report"
    );
    assert!(
        missing.is_empty(),
        "{} figure(s) quoted in {PAGE} are not in {REPORT} (regenerated since?); quote the \
         report's current figures:\n{}",
        missing.len(),
        missing.join("\n")
    );
}

#[test]
fn every_figure_on_the_page_is_quoted() {
    let page = read(PAGE);
    let lines = lines(&page);
    let mut unmarked = Vec::new();
    for (at, line) in lines.iter().enumerate() {
        let next_line = lines
            .get(at + 1)
            .filter(|next| next.number == line.number + 1)
            .and_then(|next| next.prose.first().copied())
            .unwrap_or("");
        for (piece, prose) in line.prose.iter().enumerate() {
            let last = piece + 1 == line.prose.len();
            for figure in unmarked_figures(prose, if last { next_line } else { "" }) {
                unmarked.push(format!("{PAGE}:{}: {figure}", line.number));
            }
        }
    }
    assert!(
        unmarked.is_empty(),
        "{} figure(s) in {PAGE} are outside backticks, where no check compares them with \
         {REPORT}: quote each as the report prints it, in backticks, or drop it:\n{}",
        unmarked.len(),
        unmarked.join("\n")
    );
}

#[test]
fn the_page_states_the_rule() {
    let page = read(PAGE);
    assert!(
        page.contains("bench/tests/choosing_matches_report.rs"),
        "{PAGE} should say, near its top, how its figures are written and which test checks them"
    );
}

#[test]
fn the_scanner_tells_figures_from_parameters_and_names() {
    assert_eq!(
        unmarked_figures(
            "p50 0.59 ms at 2,000 msgs/s, 100 B, 22x faster; 0.85 (0.82–0.87)",
            ""
        ),
        ["0.59 ms", "2,000 msgs/s", "22x", "0.85", "0.82", "0.87"]
    );
    assert_eq!(
        unmarked_figures(
            "Kafka 4.1.1, AMQP 0-9-1, p99, murmur2, 16 partitions, 1 KiB, 3 s, 20 messages, x-stream",
            "passed"
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        unmarked_figures("Kafka 30", "passed, 0 failed"),
        ["30 passed"]
    );
    assert_eq!(
        unmarked_figures("30 passed, 0 failed, 5470 duplicates", ""),
        ["30 passed", "0 failed", "5470 duplicates"]
    );
    assert!(occurs_in("p99 7.115 ms (p50", "7.115 ms"));
    assert!(!occurs_in("ratio 0.847 (rounds", "0.84"));
    assert!(!occurs_in("e2e p99 17.1 ms", "7.1 ms"));
    assert!(!occurs_in("librdkafka 2.12.1", "2.12"));
    assert!(is_figure("0.12 (0.10–0.16)") && !is_figure("per_key_order") && !is_figure("?acks=0"));
}
