//! The README and `docs/` show only code that is checked somewhere:
//! - the README's one Rust block is the text of `examples/quickstart.rs` (between its marker
//!   lines), which compiles as an example and runs in `tests/quickstart.rs`;
//! - the Rust blocks of `docs/*.md` are doctests (`src/lib.rs` includes each file);
//! - a `sh` block holds only commands that `.ci/run` or a test runs, written there verbatim;
//! - anything else (output, commands for a person to adapt) is a `text` block.
//!
//! It also keeps the README within the size the issue set, and every relative link pointing at a
//! file that exists.

use std::path::{Path, PathBuf};

const QUICKSTART_BEGINS: &str = "// README quickstart begins";
const QUICKSTART_ENDS: &str = "// README quickstart ends";
/// The README is an introduction; the rest belongs in docs/.
const README_MAX_BYTES: usize = 16 * 1024;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// README.md and every docs/*.md, with their paths relative to the repository.
fn documents() -> Vec<(String, String)> {
    let mut docs = vec![("README.md".to_string(), read(&root().join("README.md")))];
    let mut names: Vec<String> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .map(|e| {
            e.expect("docs/ entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".md"))
        .collect();
    names.sort();
    for name in names {
        let path = format!("docs/{name}");
        let text = read(&root().join(&path));
        docs.push((path, text));
    }
    docs
}

struct Block {
    /// Where it starts: `file:line` of its opening fence.
    at: String,
    info: String,
    text: String,
}

/// The fenced code blocks of a Markdown text.
fn blocks(file: &str, markdown: &str) -> Vec<Block> {
    let mut found = Vec::new();
    let mut open: Option<Block> = None;
    for (n, line) in markdown.lines().enumerate() {
        let fence = line.trim_start().starts_with("```");
        match open.take() {
            None if fence => {
                open = Some(Block {
                    at: format!("{file}:{}", n + 1),
                    info: line.trim_start().trim_start_matches('`').trim().to_string(),
                    text: String::new(),
                })
            }
            None => {}
            Some(block) if fence => found.push(block),
            Some(mut block) => {
                block.text.push_str(line);
                block.text.push('\n');
                open = Some(block);
            }
        }
    }
    if let Some(block) = open {
        panic!("{}: code block never closed", block.at);
    }
    found
}

fn quickstart_excerpt() -> String {
    let source = read(&root().join("examples/quickstart.rs"));
    let (_, rest) = source
        .split_once(&format!("{QUICKSTART_BEGINS}\n"))
        .expect("examples/quickstart.rs has the begin marker");
    let (excerpt, _) = rest
        .split_once(QUICKSTART_ENDS)
        .expect("examples/quickstart.rs has the end marker");
    excerpt.to_string()
}

#[test]
fn the_readme_quickstart_is_the_compiled_example() {
    let readme = read(&root().join("README.md"));
    let rust: Vec<Block> = blocks("README.md", &readme)
        .into_iter()
        .filter(|b| b.info.starts_with("rust"))
        .collect();
    assert_eq!(
        rust.len(),
        1,
        "the README's only Rust block is the quickstart (more Rust goes to docs/, as doctests)"
    );
    assert!(
        rust[0].text == quickstart_excerpt(),
        "{}: the quickstart differs from examples/quickstart.rs between {QUICKSTART_BEGINS:?} \
         and {QUICKSTART_ENDS:?}; copy the example's text into the README",
        rust[0].at
    );
}

#[test]
fn the_readme_stays_an_introduction() {
    let size = read(&root().join("README.md")).len();
    assert!(
        size <= README_MAX_BYTES,
        "README.md is {size} bytes (at most {README_MAX_BYTES}): move details to docs/"
    );
}

#[test]
fn every_code_block_says_what_it_is() {
    let lib = read(&root().join("src/lib.rs"));
    for (file, text) in documents() {
        for block in blocks(&file, &text) {
            assert!(
                ["rust", "sh", "text"].contains(&block.info.as_str()),
                "{}: a code block is `rust` (checked), `sh` (a command a test runs) or `text`, \
                 not {:?}",
                block.at,
                block.info
            );
            if block.info == "rust" && file != "README.md" {
                let include = format!("include_str!(\"../{file}\")");
                assert!(
                    lib.contains(&include),
                    "{}: {file} has Rust blocks, so src/lib.rs must include it as doctests \
                     ({include})",
                    block.at
                );
            }
        }
        // An indented block would escape these checks: every block is fenced.
        let mut previous_blank = true;
        let mut in_fence = false;
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("```") {
                in_fence = !in_fence;
            }
            assert!(
                in_fence || !previous_blank || !line.starts_with("    "),
                "{file}:{}: an indented code block; fence it as `sh` or `text`",
                n + 1
            );
            previous_blank = line.trim().is_empty();
        }
    }
}

#[test]
fn shell_blocks_hold_only_commands_that_ci_or_a_test_runs() {
    let mut runners = vec![read(&root().join(".ci/run"))];
    for entry in std::fs::read_dir(root().join("tests")).expect("tests/") {
        let path = entry.expect("tests/ entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            runners.push(read(&path));
        }
    }
    for (file, text) in documents() {
        for block in blocks(&file, &text).into_iter().filter(|b| b.info == "sh") {
            for command in block.text.lines().map(str::trim) {
                if command.is_empty() || command.starts_with('#') {
                    continue;
                }
                assert!(
                    runners.iter().any(|r| r.contains(command)),
                    "{}: `{command}` is in a `sh` block, but neither .ci/run nor a test under \
                     tests/ runs it (spelled exactly so); make a test run it or fence it as `text`",
                    block.at
                );
            }
        }
    }
}

#[test]
fn relative_links_point_at_files_that_exist() {
    for (file, text) in documents() {
        let dir = Path::new(&file).parent().unwrap_or(Path::new(""));
        for (_, rest) in text.match_indices("](").map(|(i, _)| text.split_at(i + 2)) {
            let target = rest.split(')').next().unwrap_or_default();
            let path = target.split('#').next().unwrap_or_default();
            if path.is_empty() || path.contains("://") || path.starts_with("mailto:") {
                continue;
            }
            assert!(
                root().join(dir).join(path).exists(),
                "{file}: the link to {target:?} points at nothing"
            );
        }
    }
}
