//! The workspace's structural rules, checked from the sources (docs/architecture.md, "Crates"):
//!
//! - the crates that drive the built binary from outside (`chaos`, `jepsen`, `bench`) depend on
//!   no server crate (`gateway`, `manager`, `raft`, `store`), by any kind of edge, however
//!   indirect; the gateway never links the manager's Raft code;
//! - inside every crate the import graph between its files is acyclic;
//! - each shared mechanism (WebSocket handshake, certificate verifier, reconnect backoff, link
//!   frame reader) is written once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Crates that drive the binary from outside, and the server crates they must not link.
const OUTSIDE_DRIVERS: &[&str] = &["firetower-chaos", "firetower-jepsen", "firetower-bench"];
const SERVER_CRATES: &[&str] = &[
    "firetower-gateway",
    "firetower-manager",
    "firetower-raft",
    "firetower-store",
];

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every workspace crate: package name -> (directory, workspace crates it depends on by any
/// edge kind: normal, dev or build).
fn workspace_graph() -> BTreeMap<String, (PathBuf, BTreeSet<String>)> {
    let root = workspace_root();
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root.join("Cargo.toml")).expect("root Cargo.toml"))
            .expect("root Cargo.toml parses");
    let members: Vec<String> = manifest["workspace"]["members"]
        .as_array()
        .expect("workspace.members")
        .iter()
        .map(|m| m.as_str().expect("member path").to_owned())
        .collect();
    let mut dirs = vec![root.clone()];
    dirs.extend(members.iter().map(|m| root.join(m)));
    let mut graph = BTreeMap::new();
    for dir in dirs {
        let text = std::fs::read_to_string(dir.join("Cargo.toml")).expect("crate Cargo.toml");
        let table: toml::Table = toml::from_str(&text).expect("crate Cargo.toml parses");
        let name = table["package"]["name"]
            .as_str()
            .expect("package.name")
            .to_owned();
        let mut deps = BTreeSet::new();
        for kind in ["dependencies", "dev-dependencies", "build-dependencies"] {
            if let Some(section) = table.get(kind).and_then(|s| s.as_table()) {
                deps.extend(
                    section
                        .keys()
                        .filter(|k| k.starts_with("firetower"))
                        .cloned(),
                );
            }
        }
        graph.insert(name, (dir, deps));
    }
    graph
}

fn reachable(
    graph: &BTreeMap<String, (PathBuf, BTreeSet<String>)>,
    from: &str,
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_owned()];
    while let Some(next) = stack.pop() {
        if let Some((_, deps)) = graph.get(&next) {
            for dep in deps {
                if seen.insert(dep.clone()) {
                    stack.push(dep.clone());
                }
            }
        }
    }
    seen
}

#[test]
fn outside_drivers_link_no_server_crate() {
    let graph = workspace_graph();
    for driver in OUTSIDE_DRIVERS {
        assert!(
            graph.contains_key(*driver),
            "{driver} is a workspace member"
        );
        let linked = reachable(&graph, driver);
        let bad: Vec<_> = SERVER_CRATES
            .iter()
            .filter(|server| linked.contains(**server))
            .collect();
        assert!(bad.is_empty(), "{driver} links {bad:?}");
    }
}

#[test]
fn the_gateway_links_no_raft_code() {
    let graph = workspace_graph();
    let linked = reachable(&graph, "firetower-gateway");
    for server in ["firetower-manager", "firetower-raft", "firetower-store"] {
        assert!(!linked.contains(server), "the gateway links {server}");
    }
}

#[test]
fn the_dependency_graph_between_crates_is_acyclic() {
    let graph = workspace_graph();
    for name in graph.keys() {
        assert!(
            !reachable(&graph, name).contains(name),
            "{name} depends on itself"
        );
    }
}

/// The non-test text of a source file: comments dropped, and everything from the first
/// top-level `#[cfg(test)]` on (tests sit at the bottom of a file, by the style guide).
fn code_of(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Module path (`a::b`) of every file under `src`.
fn modules_of(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path
                .strip_prefix(src)
                .expect("under src")
                .with_extension("");
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
            if parts.first().map(String::as_str) == Some("bin") {
                continue; // separate binaries are crates of their own
            }
            out.insert(parts.join("::"), path);
        }
    }
    out
}

/// Identifiers paths (`a::b::c`) following `prefix` in `code`.
fn paths_after<'a>(code: &'a str, prefix: &'a str) -> impl Iterator<Item = Vec<&'a str>> + 'a {
    code.match_indices(prefix).filter_map(move |(at, _)| {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            return None;
        }
        let rest = &code[at + prefix.len()..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let parts: Vec<&str> = rest[..end].split("::").filter(|p| !p.is_empty()).collect();
        (!parts.is_empty()).then_some(parts)
    })
}

/// The file-level import graph of one crate: module -> modules it names through `crate::` or
/// `super::`.
fn import_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules_of(src);
    let longest_module = |path: &[&str]| {
        (1..=path.len())
            .rev()
            .map(|i| path[..i].join("::"))
            .find(|candidate| modules.contains_key(candidate))
    };
    let mut graph = BTreeMap::new();
    for (module, file) in &modules {
        let code = code_of(&std::fs::read_to_string(file).expect("read source"));
        let mut deps = BTreeSet::new();
        for path in paths_after(&code, "crate::") {
            deps.extend(longest_module(&path));
        }
        let parent: Vec<&str> = if module.is_empty() {
            Vec::new()
        } else {
            let mut p: Vec<&str> = module.split("::").collect();
            p.pop();
            p
        };
        for path in paths_after(&code, "super::") {
            let mut full = parent.clone();
            full.extend(path);
            deps.extend(longest_module(&full));
        }
        deps.remove(module);
        deps.remove("");
        graph.insert(module.clone(), deps);
    }
    graph
}

/// Strongly connected components with more than one member (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        let graph = s.graph;
        for w in graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !state.index.contains_key(v.as_str()) {
            visit(&mut state, v);
        }
    }
    state.found
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let mut graph = BTreeMap::new();
    graph.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    graph.insert("b".to_owned(), BTreeSet::from(["c".to_owned()]));
    graph.insert("c".to_owned(), BTreeSet::from(["a".to_owned()]));
    graph.insert("d".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(cycles(&graph), vec![vec!["a", "b", "c"]]);
    graph.get_mut("c").expect("c").clear();
    assert!(cycles(&graph).is_empty());
}

/// No crate has a cycle among its files' imports (a module's `use crate::x` makes it depend
/// on `x`): each crate reads bottom-up, as docs/architecture.md draws it.
#[test]
fn no_crate_has_a_module_cycle() {
    let mut found = Vec::new();
    for (name, (dir, _)) in workspace_graph() {
        let src = dir.join("src");
        let graph = import_graph(&src);
        assert!(!graph.is_empty(), "{name} has source files");
        for cycle in cycles(&graph) {
            found.push(format!("{name}: {}", cycle.join(" <-> ")));
        }
    }
    assert!(found.is_empty(), "module cycles:\n{found:#?}");
}

/// Every `.rs` file of the workspace outside `target/`, with its non-test code.
fn all_sources() -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for (_, (dir, _)) in workspace_graph() {
        for sub in ["src", "tests", "examples", "benches"] {
            let mut stack = vec![dir.join(sub)];
            while let Some(d) = stack.pop() {
                let Ok(entries) = std::fs::read_dir(&d) else {
                    continue;
                };
                for entry in entries {
                    let path = entry.expect("dir entry").path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if path.extension().and_then(|e| e.to_str()) == Some("rs")
                        && !path.ends_with("tests/structure.rs")
                    {
                        let text = std::fs::read_to_string(&path).expect("read source");
                        out.push((path, code_of(&text)));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn each_shared_mechanism_is_written_once() {
    let sources = all_sources();
    for (needle, what) in [
        (
            "258EAFA5-E914-47DA-95CA-C5AB0DC85B11",
            "the WebSocket accept key",
        ),
        (
            "ServerCertVerifier for",
            "a QUIC server certificate verifier",
        ),
        ("struct ReconnectPolicy", "the reconnect backoff"),
        (
            "fn read_link_frame",
            "the link's length-prefixed frame reader",
        ),
    ] {
        let places: Vec<_> = sources
            .iter()
            .filter(|(_, code)| code.contains(needle))
            .map(|(path, _)| path.display().to_string())
            .collect();
        assert_eq!(places.len(), 1, "{what} is written in {places:?}");
    }
}
