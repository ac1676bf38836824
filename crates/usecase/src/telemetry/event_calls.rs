//! Holds every log event in the workspace's `crates/*/src` to one form:
//! `tracing::<level>!(name: NAME, …)` with `message = NAME` among its fields, `NAME` a constant
//! of a names module. An event name written as a literal is a name no list shows, which
//! dashboards and log queries then miss (as `background_outage_ended` once was, spelled inline
//! next to its own constant).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

const LEVELS: &[&str] = &["info", "warn", "error", "debug", "trace", "event"];

/// Every `.rs` file under `crates/*/src`.
fn sources() -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                found.push(path);
            }
        }
    }
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut found = Vec::new();
    for member in std::fs::read_dir(crates).unwrap() {
        let src = member.unwrap().path().join("src");
        if src.is_dir() {
            walk(&src, &mut found);
        }
    }
    found
}

/// Skips a comment or a string or char literal starting at `at`; `None` when there is none.
fn skip_non_code(text: &[char], at: usize) -> Option<usize> {
    let rest = |offset: usize| text.get(at + offset).copied();
    match (text[at], rest(1)) {
        ('/', Some('/')) => Some(
            (at..text.len())
                .find(|&i| text[i] == '\n')
                .unwrap_or(text.len()),
        ),
        ('/', Some('*')) => Some(
            (at + 2..text.len().saturating_sub(1))
                .find(|&i| text[i] == '*' && text[i + 1] == '/')
                .map_or(text.len(), |i| i + 2),
        ),
        ('"', _) => {
            let mut i = at + 1;
            while i < text.len() && text[i] != '"' {
                i += if text[i] == '\\' { 2 } else { 1 };
            }
            Some(i + 1)
        }
        ('r', Some('"' | '#')) if at == 0 || !is_ident(text[at - 1]) => {
            let hashes = text[at + 1..].iter().take_while(|&&c| c == '#').count();
            if text.get(at + 1 + hashes) != Some(&'"') {
                return None;
            }
            let close: Vec<char> = std::iter::once('"')
                .chain("#".repeat(hashes).chars())
                .collect();
            let body = at + 2 + hashes;
            Some(
                (body..text.len())
                    .find(|&i| text[i..].starts_with(&close))
                    .map_or(text.len(), |i| i + close.len()),
            )
        }
        // A char literal ('x', '\n'); a lifetime ('a) is code.
        ('\'', Some('\\')) => Some((at + 3..text.len()).find(|&i| text[i] == '\'')? + 1),
        ('\'', Some(_)) if rest(2) == Some('\'') => Some(at + 3),
        _ => None,
    }
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// The top-level arguments of the call whose `(` is at `open`, as written.
fn arguments(text: &[char], open: usize) -> Vec<String> {
    let (mut args, mut current, mut depth, mut i) = (Vec::new(), String::new(), 0, open);
    while i < text.len() {
        if let Some(next) = skip_non_code(text, i) {
            // Literals are kept (they are what is judged), comments dropped.
            if text[i] != '/' {
                current.extend(&text[i..next.min(text.len())]);
            }
            i = next;
            continue;
        }
        let c = text[i];
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            break;
        }
        if c == ',' && depth == 1 {
            args.push(std::mem::take(&mut current));
        } else if i > open {
            current.push(c);
        }
        i += 1;
    }
    args.push(current);
    args.iter()
        .flat_map(|arg| split_repetition(arg))
        .map(|arg| arg.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|arg| !arg.is_empty())
        .collect()
}

/// A `macro_rules!` repetition holds its own commas, so the argument after it comes along:
/// `$($key = $value,)* message = $name` is split into the repetition and `message = $name`.
fn split_repetition(arg: &str) -> Vec<String> {
    let arg = arg.trim();
    if !arg.starts_with("$(") {
        return vec![arg.to_owned()];
    }
    let mut depth = 0;
    for (i, c) in arg.char_indices().skip(1) {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            let rest = arg[i + 1..].trim_start_matches(['*', '+', '?']);
            return vec![arg[..=i].to_owned(), rest.to_owned()];
        }
    }
    vec![arg.to_owned()]
}

/// What is wrong with one event call's arguments, if anything.
fn judge(args: &[String]) -> Option<String> {
    let literal = |arg: &str| {
        let raw = arg
            .strip_prefix('r')
            .map(|rest| rest.trim_start_matches('#'));
        arg.starts_with('"') || raw.is_some_and(|rest| rest.starts_with('"'))
    };
    if let Some(arg) = args.iter().find(|arg| literal(arg)) {
        return Some(format!("its text is the literal {arg}"));
    }
    let value_of = |key: &str, sep: char| {
        args.iter().find_map(|arg| {
            let value = arg.strip_prefix(key)?.trim_start().strip_prefix(sep)?;
            (!value.starts_with('=')).then(|| value.trim().to_owned())
        })
    };
    let (name, message) = (value_of("name", ':'), value_of("message", '='));
    if let Some(value) = [&name, &message].into_iter().flatten().find(|v| literal(v)) {
        return Some(format!("its name is the literal {value}"));
    }
    match (name, message) {
        (Some(name), Some(message)) if name == message => None,
        (name, message) => Some(format!(
            "it is not written `name: NAME, …, message = NAME, …` (name: {name:?}, message: {message:?})"
        )),
    }
}

/// Every event call of `source`: its line, and what is wrong with it if anything.
fn event_calls(source: &str) -> Vec<(usize, Option<String>)> {
    let text: Vec<char> = source.chars().collect();
    let line_of = |at: usize| text[..at].iter().filter(|&&c| c == '\n').count() + 1;
    let mut found = Vec::new();
    let mut i = 0;
    while i < text.len() {
        if let Some(next) = skip_non_code(&text, i) {
            i = next;
            continue;
        }
        if !is_ident(text[i]) || (i > 0 && is_ident(text[i - 1])) {
            i += 1;
            continue;
        }
        let end = (i..text.len())
            .find(|&j| !is_ident(text[j]))
            .unwrap_or(text.len());
        let ident: String = text[i..end].iter().collect();
        let before: String = text[i.saturating_sub(9)..i].iter().collect();
        let through_tracing = before.ends_with("tracing::");
        let is_event = if ident.starts_with('$') {
            through_tracing
        } else {
            LEVELS.contains(&ident.as_str()) && (through_tracing || !before.ends_with("::"))
        };
        let open = (end + 1..text.len()).find(|&j| !text[j].is_whitespace());
        if is_event
            && text.get(end) == Some(&'!')
            && let Some(open) = open.filter(|&j| text[j] == '(')
        {
            found.push((line_of(i), judge(&arguments(&text, open))));
        }
        i = end;
    }
    found
}

/// Every event call of `source` that breaks the form, as `line: reason`.
fn violations(source: &str) -> Vec<String> {
    event_calls(source)
        .into_iter()
        .filter_map(|(line, wrong)| Some(format!("{line}: {}", wrong?)))
        .collect()
}

#[test]
fn every_log_event_in_the_workspace_names_itself_by_a_constant() {
    let files = sources();
    assert!(
        files.len() > 50,
        "found the crates' sources: {}",
        files.len()
    );
    let (mut calls, mut wrong) = (0, Vec::new());
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        calls += event_calls(&source).len();
        for violation in violations(&source) {
            wrong.push(format!("{}:{violation}", file.display()));
        }
    }
    assert!(calls > 50, "the scan sees the event calls: {calls}");
    assert!(
        wrong.is_empty(),
        "event calls not in the one form:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_scan_rejects_a_literal_event_and_accepts_the_one_form() {
    let literal = "fn f() { tracing::warn!(%error, \"thing_failed\"); }";
    assert_eq!(violations(literal).len(), 1, "{literal}");
    let named_literal = "fn f() { tracing::info!(name: \"x\", a = 1, \"{}\", names::X); }";
    assert_eq!(violations(named_literal).len(), 1, "{named_literal}");
    let bare_level = "use tracing::warn;\nfn f() {\n    warn!(x = 1, message = \"y\");\n}";
    assert_eq!(violations(bare_level), ["3: its name is the literal \"y\""]);
    let mismatched = "fn f() { tracing::debug!(name: event::A, message = event::B); }";
    assert_eq!(violations(mismatched).len(), 1, "{mismatched}");
    let in_a_macro = "macro_rules! m { ($l:ident) => { tracing::$l!(k = 1, \"z\") } }";
    assert_eq!(violations(in_a_macro).len(), 1, "{in_a_macro}");
    let repeated = "macro_rules! m { ($n:expr $(, $k:ident = $v:expr)*) => { tracing::info!(name: $n, $($k = $v,)* message = $n) } }";
    assert!(
        violations(repeated).is_empty(),
        "{:?}",
        violations(repeated)
    );
    let raw_field = "fn f() { tracing::info!(name: names::A, message = names::A, r#loop = l); }";
    assert!(
        violations(raw_field).is_empty(),
        "{:?}",
        violations(raw_field)
    );

    let good = "fn f(c: char) -> &'static str {\n    // tracing::info!(\"in a comment\");\n    let _ = '(';\n    tracing::warn!(name: event::A, message = event::A, error = %ErrorChain(&e), x = ?(1, 2));\n    log::info!(\"another facade\");\n    \"tracing::info!(\\\"in a string\\\")\"\n}";
    assert!(violations(good).is_empty(), "{:?}", violations(good));
}
