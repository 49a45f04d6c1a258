//! The house rules behind `cargo xtask layout`: no import cycle between the modules of any crate. Each file is
//! parsed with syn; every path that names a module of its own crate (`crate::a::b`,
//! `super::x`, `self::y`, `child::z`, in `use` trees, types, expressions and macro arguments) is an
//! edge from the file's module to the deepest module the path names. `mod x;` is not an
//! edge: a parent may declare children that use it. Test modules (`#[cfg(test)]`) are
//! left out, as they are not part of the crate's layout.
//!
//! The same parse also fails on a path compiled in outside tests
//! (`env!("CARGO_MANIFEST_DIR")`) and on an environment read in crates/vm (its caller
//! passes a `vm::config::Config`) and on a path or name in ARCHITECTURE.md's backticks
//! that the workspace does not have, and prints the longest functions.
//!
//! Hand-written on syn rather than `cargo modules dependencies --acyclic`: that tool
//! builds rust-analyzer (minutes on two cores) and follows its release cadence; these
//! checks run in a second.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// Module path (`""` for the crate root, `scenario::steps`) → the modules it uses.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// The module a source file is, relative to `src`: `lib.rs` → `""`, `a.rs` → `a`,
/// `a/mod.rs` → `a`, `a/b.rs` → `a::b`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            rust_files(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

/// Collects the crate-relative paths one file uses, as segment lists after resolving
/// `crate`, `super` and `self` against the file's module.
struct Uses<'a> {
    module: &'a [String],
    modules: &'a BTreeSet<String>,
    found: Vec<Vec<String>>,
}

impl Uses<'_> {
    /// `segments` as written; `None` when the path does not start in this crate.
    fn resolve(&self, segments: &[String]) -> Option<Vec<String>> {
        let first = segments.first()?;
        let mut base: Vec<String> = match first.as_str() {
            "crate" => Vec::new(),
            "self" => self.module.to_vec(),
            "super" => {
                let mut b = self.module.to_vec();
                b.pop();
                b
            }
            // A path relative to this module (`child::item`, edition 2018 paths).
            name => {
                let mut child = self.module.to_vec();
                child.push(name.to_string());
                if !self.modules.contains(&child.join("::")) {
                    return None;
                }
                let mut full = self.module.to_vec();
                full.extend(segments.iter().cloned());
                return Some(full);
            }
        };
        let mut rest = &segments[1..];
        while rest.first().is_some_and(|s| s == "super") {
            base.pop();
            rest = &rest[1..];
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }

    fn add(&mut self, segments: Vec<String>) {
        if let Some(p) = self.resolve(&segments) {
            self.found.push(p);
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut full = prefix.clone();
                if n.ident != "self" {
                    full.push(n.ident.to_string());
                }
                self.add(full);
            }
            syn::UseTree::Rename(r) => {
                let mut full = prefix.clone();
                full.push(r.ident.to_string());
                self.add(full);
            }
            syn::UseTree::Glob(_) => self.add(prefix.clone()),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }

    /// `crate :: a :: b` (or `super ::`, `self ::`) sequences inside macro arguments.
    fn tokens(&mut self, tokens: TokenStream) {
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < trees.len() {
            match &trees[i] {
                TokenTree::Group(g) => self.tokens(g.stream()),
                TokenTree::Ident(id)
                    if ["crate", "super", "self"].contains(&id.to_string().as_str()) =>
                {
                    let mut segments = vec![id.to_string()];
                    let mut j = i + 1;
                    while let (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b))) =
                        (trees.get(j), trees.get(j + 1))
                    {
                        if a.as_char() != ':' || b.as_char() != ':' {
                            break;
                        }
                        match trees.get(j + 2) {
                            Some(TokenTree::Ident(next)) => segments.push(next.to_string()),
                            _ => break,
                        }
                        j += 3;
                    }
                    if segments.len() > 1 {
                        self.add(segments);
                    }
                    i = j.max(i + 1);
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
    }
}

impl<'ast> Visit<'ast> for Uses<'_> {
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    // `pub(crate)` and `pub(super)` name who may see an item, not a module it uses.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        self.add(segments);
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }
}

/// A source file and its syntax tree, parsed once for every check.
struct Parsed {
    path: PathBuf,
    syntax: syn::File,
}

/// The Rust files under `src`, sorted and parsed.
fn parse_crate(src: &Path) -> Result<Vec<Parsed>> {
    let mut files = Vec::new();
    rust_files(src, &mut files)?;
    files.sort();
    files.into_iter().map(|f| parse(&f)).collect()
}

fn parse(path: &Path) -> Result<Parsed> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let syntax = syn::parse_file(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(Parsed {
        path: path.to_path_buf(),
        syntax: without_tests(syntax),
    })
}

/// `file` without its tests (`#[cfg(test)]` items, `#[test]` functions, at any depth):
/// every check is about what a build compiles.
fn without_tests(mut file: syn::File) -> syn::File {
    fn attrs(item: &syn::Item) -> &[syn::Attribute] {
        match item {
            syn::Item::Const(i) => &i.attrs,
            syn::Item::Enum(i) => &i.attrs,
            syn::Item::Fn(i) => &i.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Macro(i) => &i.attrs,
            syn::Item::Mod(i) => &i.attrs,
            syn::Item::Static(i) => &i.attrs,
            syn::Item::Struct(i) => &i.attrs,
            syn::Item::Trait(i) => &i.attrs,
            syn::Item::Type(i) => &i.attrs,
            syn::Item::Use(i) => &i.attrs,
            _ => &[],
        }
    }
    fn keep(items: &mut Vec<syn::Item>) {
        items.retain(|item| !is_test_fn(attrs(item)));
        for item in items {
            match item {
                syn::Item::Mod(m) => {
                    if let Some((_, inner)) = &mut m.content {
                        keep(inner);
                    }
                }
                syn::Item::Impl(i) => i
                    .items
                    .retain(|f| !matches!(f, syn::ImplItem::Fn(f) if is_test_fn(&f.attrs))),
                _ => {}
            }
        }
    }
    keep(&mut file.items);
    file
}

/// The module graph of the crate whose sources are under `src`.
#[cfg(test)]
fn graph(src: &Path) -> Result<Graph> {
    Ok(graph_of(src, &parse_crate(src)?))
}

fn graph_of(src: &Path, files: &[Parsed]) -> Graph {
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(src, &f.path)).collect();
    let mut graph = Graph::new();
    for file in files {
        let module = module_of(src, &file.path);
        let parts: Vec<String> = if module.is_empty() {
            Vec::new()
        } else {
            module.split("::").map(String::from).collect()
        };
        let mut uses = Uses {
            module: &parts,
            modules: &modules,
            found: Vec::new(),
        };
        uses.visit_file(&file.syntax);
        let edges = graph.entry(module.clone()).or_default();
        for path in uses.found {
            // The deepest module the path names: `a::b::Item` is module `a::b` if it
            // exists, else `a`.
            let target = (0..=path.len())
                .rev()
                .map(|n| path[..n].join("::"))
                .find(|m| modules.contains(m))
                .unwrap_or_default();
            if target != module {
                edges.insert(target);
            }
        }
    }
    graph
}

/// A cycle in `graph` as the modules along it (first = last), if there is one.
pub fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = stack.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::Open);
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, marks, stack) {
                return Some(c);
            }
        }
        stack.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut marks, &mut Vec::new()))
}

fn shown(module: &str) -> &str {
    if module.is_empty() { "crate" } else { module }
}

/// Checks every crate of the workspace; prints each crate's module and edge counts and
/// the longest functions.
pub fn check(root: &Path) -> Result<()> {
    let mut crates: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))?
        .flatten()
        .map(|e| e.path().join("src"))
        .collect();
    crates.push(root.join("xtask/src"));
    crates.sort();
    let mut problems = Vec::new();
    let mut all = Vec::new();
    for src in crates.iter().filter(|s| s.is_dir()) {
        let files = parse_crate(src)?;
        let g = graph_of(src, &files);
        let edges: usize = g.values().map(BTreeSet::len).sum();
        let name = src
            .parent()
            .unwrap_or(src)
            .strip_prefix(root)
            .unwrap_or(src);
        match find_cycle(&g) {
            None => eprintln!(
                "layout: {}: {} modules, {edges} imports between them, no cycle",
                name.display(),
                g.len()
            ),
            Some(c) => {
                let path: Vec<&str> = c.iter().map(|m| shown(m)).collect();
                problems.push(format!(
                    "import cycle between modules: {}: {}",
                    name.display(),
                    path.join(" -> ")
                ));
            }
        }
        if name == Path::new("crates/vm") {
            for file in &files {
                let rel = file.path.strip_prefix(root).unwrap_or(&file.path);
                problems.extend(env_reads(&file.syntax).into_iter().map(|(line, what)| {
                    format!(
                        "{}:{line}: `{what}`: the vm crate reads no environment variable; its caller passes them in vm::config::Config (lab::host_env reads them)",
                        rel.display()
                    )
                }));
            }
        }
        all.extend(files);
    }
    all.push(parse(&root.join("tests/matrix.rs"))?);
    for file in &all {
        let rel = file.path.strip_prefix(root).unwrap_or(&file.path);
        problems.extend(compiled_in_paths(&file.syntax).into_iter().map(|line| {
            format!(
                "{}:{line}: a path compiled in outside tests (a binary built in one checkout would read that checkout's files; find the workspace at run time with lab::workspace)",
                rel.display()
            )
        }));
    }
    let mut lengths: Vec<(usize, String)> = all
        .iter()
        .flat_map(|f| {
            let rel = f.path.strip_prefix(root).unwrap_or(&f.path).to_path_buf();
            function_lengths(&f.syntax)
                .into_iter()
                .map(move |(name, lines)| (lines, format!("{}: {name}", rel.display())))
        })
        .collect();
    lengths.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    eprintln!("layout: the longest functions (tests left out):");
    for (lines, name) in lengths.iter().take(10) {
        eprintln!("  {lines:>4} lines  {name}");
    }
    let map = root.join("ARCHITECTURE.md");
    let text =
        std::fs::read_to_string(&map).with_context(|| format!("reading {}", map.display()))?;
    let listing = WorkspaceListing::read(root)?;
    problems.extend(
        stale_map_entries(&text, &listing)
            .into_iter()
            .map(|e| format!("ARCHITECTURE.md names `{e}`, which the workspace does not have")),
    );
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    eprintln!(
        "layout: {} files, no path compiled in outside tests, no environment read in crates/vm",
        all.len()
    );
    Ok(())
}

/// The workspace's files (but `target/` and hidden directories) and every word of its
/// Rust sources: what the map's backticked paths and names are checked against.
pub struct WorkspaceListing {
    /// Paths relative to the root, with `/` between components.
    files: Vec<String>,
    words: BTreeSet<String>,
}

impl WorkspaceListing {
    pub fn read(root: &Path) -> Result<WorkspaceListing> {
        let mut files = Vec::new();
        let mut words = BTreeSet::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for e in
                std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
            {
                let path = e?.path();
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                if name.starts_with('.') && name != ".cargo" || (dir == root && name == "target") {
                    continue;
                }
                let rel = path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                if path.is_dir() {
                    files.push(format!("{rel}/"));
                    dirs.push(path);
                    continue;
                }
                if path.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    words.extend(
                        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                            .filter(|w| !w.is_empty())
                            .map(String::from),
                    );
                }
                files.push(rel);
            }
        }
        Ok(WorkspaceListing { files, words })
    }

    /// Whether `path` (a directory with or without its `/`) is the workspace's: from the
    /// root when it has a `/`, else a file of that name anywhere.
    fn has_path(&self, path: &str) -> bool {
        let path = path.trim_end_matches('/');
        self.files
            .iter()
            .map(|f| f.trim_end_matches('/'))
            .any(|f| f == path || (!path.contains('/') && f.ends_with(&format!("/{path}"))))
    }
}

/// The backticked tokens of `map` that name a path or a Rust item the workspace does not
/// have. A token with a `/` is a path from the root; one with a file extension alone, a
/// file of that name anywhere (absolute paths are the host's or a guest's: prose); a token that reads as a Rust path (`a::B`, `f()`) names items, each of
/// whose segments must be a word of the sources. Anything else (commands, flags, keys
/// with dashes) is prose.
pub fn stale_map_entries(map: &str, listing: &WorkspaceListing) -> Vec<String> {
    let mut stale = Vec::new();
    for (i, token) in map.split('`').enumerate() {
        // Globs, commands, runtime spellings; and paths on the host or in a guest.
        if i % 2 == 0
            || token.contains(['*', ' ', '#', '@', '='])
            || token.starts_with(['/', '$', '~'])
        {
            continue;
        }
        let is_file = [".rs", ".toml", ".md", ".yml"]
            .iter()
            .any(|x| token.ends_with(x));
        if token.contains('/') || is_file {
            if !listing.has_path(token) && !stale.contains(&token.to_string()) {
                stale.push(token.to_string());
            }
            continue;
        }
        let name = token.strip_suffix("()").unwrap_or(token);
        let segments: Vec<&str> = name.split("::").collect();
        let rust_like = segments.iter().all(|s| {
            !s.is_empty()
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !s.starts_with(|c: char| c.is_ascii_digit())
        });
        if rust_like
            && segments.iter().any(|s| !listing.words.contains(*s))
            && !stale.contains(&token.to_string())
        {
            stale.push(token.to_string());
        }
    }
    stale
}

/// Reads of the environment (`std::env::var`, `var_os`, `vars`, `vars_os`) in a file
/// [`without_tests`], as (line, path written).
fn env_reads(file: &syn::File) -> Vec<(usize, String)> {
    struct Find(Vec<(usize, String)>);
    impl<'ast> Visit<'ast> for Find {
        fn visit_path(&mut self, p: &'ast syn::Path) {
            let names: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
            let reads = names.windows(2).any(|w| {
                w[0] == "env" && matches!(w[1].as_str(), "var" | "var_os" | "vars" | "vars_os")
            });
            if reads {
                let line = p.segments[0].ident.span().start().line;
                self.0.push((line, names.join("::")));
            }
            syn::visit::visit_path(self, p);
        }
        fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
            // `use std::env::var;` hides the read from the paths that follow.
            let text = quote_use(&u.tree);
            if text.contains("env::var") {
                let line = u.use_token.span.start().line;
                self.0.push((line, format!("use {text}")));
            }
        }
    }
    fn quote_use(tree: &syn::UseTree) -> String {
        match tree {
            syn::UseTree::Path(p) => format!("{}::{}", p.ident, quote_use(&p.tree)),
            syn::UseTree::Name(n) => n.ident.to_string(),
            syn::UseTree::Rename(r) => r.ident.to_string(),
            syn::UseTree::Glob(_) => "*".into(),
            syn::UseTree::Group(g) => g.items.iter().map(quote_use).collect::<Vec<_>>().join(","),
        }
    }
    let mut find = Find(Vec::new());
    find.visit_file(file);
    find.0
}

fn is_test_fn(attrs: &[syn::Attribute]) -> bool {
    is_cfg_test(attrs) || attrs.iter().any(|a| a.path().is_ident("test"))
}

/// Every function and method (of a file [`without_tests`]), as (name, lines it spans).
fn function_lengths(file: &syn::File) -> Vec<(String, usize)> {
    struct Find(Vec<(String, usize)>, Vec<String>);
    fn span_lines(s: proc_macro2::Span) -> usize {
        s.end().line.saturating_sub(s.start().line) + 1
    }
    impl<'ast> Visit<'ast> for Find {
        fn visit_item_impl(&mut self, i: &'ast syn::ItemImpl) {
            let owner = match &*i.self_ty {
                syn::Type::Path(t) => t
                    .path
                    .segments
                    .last()
                    .map(|s| s.ident.to_string())
                    .unwrap_or_default(),
                _ => String::new(),
            };
            self.1.push(owner);
            syn::visit::visit_item_impl(self, i);
            self.1.pop();
        }
        fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
            use syn::spanned::Spanned;
            self.0.push((f.sig.ident.to_string(), span_lines(f.span())));
            syn::visit::visit_item_fn(self, f);
        }
        fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
            use syn::spanned::Spanned;
            let owner = self.1.last().cloned().unwrap_or_default();
            self.0
                .push((format!("{owner}::{}", f.sig.ident), span_lines(f.span())));
            syn::visit::visit_impl_item_fn(self, f);
        }
    }
    let mut find = Find(Vec::new(), Vec::new());
    find.visit_file(file);
    find.0
}

/// The lines where `env!("CARGO_MANIFEST_DIR")` (alone or inside `concat!`) compiles a
/// checkout's path into a binary (in a file [`without_tests`]).
fn compiled_in_paths(file: &syn::File) -> Vec<usize> {
    struct Find(Vec<usize>);
    impl<'ast> Visit<'ast> for Find {
        fn visit_macro(&mut self, m: &'ast syn::Macro) {
            let tokens = m.tokens.to_string();
            let is_env = m.path.is_ident("env") && tokens.contains("CARGO_MANIFEST_DIR");
            if is_env
                || tokens
                    .replace(' ', "")
                    .contains("env!(\"CARGO_MANIFEST_DIR\"")
            {
                self.0.push(m.path.segments[0].ident.span().start().line);
            }
        }
    }
    let mut find = Find(Vec::new());
    find.visit_file(file);
    find.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_compiled_in_is_found_outside_tests_only() {
        let file = syn::parse_file(
            r#"
fn root() -> &'static str { env!("CARGO_MANIFEST_DIR") }
fn vm() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/vm")
}
fn version() -> &'static str { env!("CARGO_PKG_VERSION") }
#[test]
fn t() { let _ = env!("CARGO_MANIFEST_DIR"); }
#[cfg(test)]
mod tests { fn f() { let _ = env!("CARGO_MANIFEST_DIR"); } }
"#,
        )
        .unwrap();
        assert_eq!(compiled_in_paths(&without_tests(file)), vec![2, 4]);
    }

    #[test]
    fn the_map_may_name_only_what_exists() {
        let dir = crate_with(&[
            (
                "crates/vm/src/guest/mod.rs",
                "pub struct Guest; impl Guest { pub fn write_files() {} }",
            ),
            ("crates/lab/src/report/html.rs", "fn page() {}"),
        ]);
        let listing = WorkspaceListing::read(dir.path()).unwrap();
        let map = "`crates/vm/src/guest/` and `mod.rs`, `crates/lab/src/report/html.rs`; \
                   `Guest::write_files`, `page()`, `cargo xtask test`, `--jobs`, `/dev/kvm`; \
                   `write_dir_files`, `crates/vm/src/guest.rs`, `Guest::write`, `ready.rs`, \
                   `report/html.rs`";
        assert_eq!(
            stale_map_entries(map, &listing),
            vec![
                "write_dir_files",
                "crates/vm/src/guest.rs",
                "Guest::write",
                "ready.rs",
                "report/html.rs"
            ]
        );
    }

    #[test]
    fn environment_reads_are_found_outside_tests_only() {
        let file = syn::parse_file(
            r#"
use std::env::var_os;
fn a() { let _ = std::env::var("X"); }
fn b() { let _ = env::vars(); }
fn c() { let _ = std::env::current_dir(); let _ = env!("CARGO_PKG_VERSION"); }
#[test]
fn t() { let _ = std::env::var("X"); }
#[cfg(test)]
mod tests { fn f() { let _ = std::env::var_os("X"); } }
"#,
        )
        .unwrap();
        let lines: Vec<usize> = env_reads(&without_tests(file))
            .into_iter()
            .map(|(l, _)| l)
            .collect();
        assert_eq!(lines, vec![2, 3, 4]);
    }

    #[test]
    fn functions_and_methods_are_measured_in_lines() {
        let file = syn::parse_file(
            "fn one() {}\nstruct S;\nimpl S {\n    fn three(&self) {\n        let _ = 1;\n    }\n}\n#[test]\nfn t() {}\n",
        )
        .unwrap();
        assert_eq!(
            function_lengths(&without_tests(file)),
            vec![("one".to_string(), 1), ("S::three".to_string(), 3)]
        );
    }

    fn crate_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    #[test]
    fn module_names() {
        let src = Path::new("/s");
        assert_eq!(module_of(src, Path::new("/s/lib.rs")), "");
        assert_eq!(module_of(src, Path::new("/s/a.rs")), "a");
        assert_eq!(module_of(src, Path::new("/s/a/mod.rs")), "a");
        assert_eq!(module_of(src, Path::new("/s/a/b.rs")), "a::b");
    }

    #[test]
    fn a_cycle_through_use_type_and_macro_is_found() {
        let dir = crate_with(&[
            ("lib.rs", "mod a; mod b; mod c;"),
            ("a.rs", "use crate::b::Thing;\npub(crate) struct A;"),
            ("b.rs", "pub struct Thing(crate::c::C);"),
            (
                "c.rs",
                "pub struct C;\nfn f() { println!(\"{}\", crate::a::A); }",
            ),
        ]);
        let g = graph(dir.path()).unwrap();
        assert_eq!(g["a"], BTreeSet::from(["b".to_string()]));
        assert_eq!(g["c"], BTreeSet::from(["a".to_string()]));
        let cycle = find_cycle(&g).unwrap();
        assert_eq!(cycle.first(), cycle.last());
        assert_eq!(cycle.len(), 4, "{cycle:?}");
    }

    #[test]
    fn children_using_a_parent_and_siblings_are_no_cycle() {
        let dir = crate_with(&[
            ("lib.rs", "pub mod s;"),
            (
                "s/mod.rs",
                "pub mod x; pub mod y;\npub struct Spec;\npub fn run() { y::go() }",
            ),
            ("s/x.rs", "use super::Spec;\npub fn x(_: Spec) {}"),
            (
                "s/y.rs",
                "use crate::s::{Spec, x};\npub fn go() { x::x(Spec) }",
            ),
        ]);
        let g = graph(dir.path()).unwrap();
        assert_eq!(g["s::x"], BTreeSet::from(["s".to_string()]));
        assert_eq!(
            g["s::y"],
            BTreeSet::from(["s".to_string(), "s::x".to_string()])
        );
        // The parent uses y, and y uses the parent: that is a cycle.
        assert_eq!(g["s"], BTreeSet::from(["s::y".to_string()]));
        assert!(find_cycle(&g).is_some());
    }

    #[test]
    fn test_modules_are_left_out() {
        let dir = crate_with(&[
            ("lib.rs", "mod a; mod b;"),
            ("a.rs", "use crate::b::B;"),
            (
                "b.rs",
                "pub struct B;\n#[cfg(test)]\nmod tests { use crate::a; }",
            ),
        ]);
        assert_eq!(find_cycle(&graph(dir.path()).unwrap()), None);
    }

    #[test]
    fn this_workspace_has_no_cycle() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        check(&root).unwrap();
    }
}
