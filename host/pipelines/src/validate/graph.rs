//! The step graph: unknown `needs`, needs across the main/`finally` line,
//! cycles (reported with their path), and the ancestor/descendant sets that
//! expression checks and rerun-from use.

use std::collections::{BTreeMap, BTreeSet};

use super::Report;
use crate::model::Pipeline;

pub(super) fn check_graph(r: &mut Report<'_>, p: &Pipeline) {
    let ids: BTreeSet<&str> = p.all_steps().map(|s| s.id.as_str()).collect();
    for step in p.all_steps() {
        let id = Some(step.id.as_str());
        let is_finally = p.is_finally(&step.id);
        for need in &step.needs {
            if !ids.contains(need.as_str()) {
                r.add(id, "needs", format!("unknown step {need:?}"));
            } else if p.is_finally(need) != is_finally {
                let msg = if is_finally {
                    "finally steps run after every main step; they may only need other finally steps"
                } else {
                    "a main step cannot need a finally step"
                };
                r.add(id, "needs", format!("{need:?}: {msg}"));
            }
        }
    }
    for cycle in cycles(p) {
        r.add(
            Some(&cycle[0]),
            "needs",
            format!("cycle {}", cycle.join(" -> ")),
        );
    }
}

fn edges(p: &Pipeline) -> BTreeMap<&str, Vec<&str>> {
    p.all_steps()
        .map(|s| (s.id.as_str(), s.needs.iter().map(String::as_str).collect()))
        .collect()
}

/// Every cycle through `needs`, each once, as a path that ends where it
/// starts: `["a", "b", "a"]` means a needs b and b needs a.
pub fn cycles(p: &Pipeline) -> Vec<Vec<String>> {
    let edges = edges(p);
    let mut done = BTreeSet::new();
    let mut found: Vec<Vec<String>> = Vec::new();
    let mut seen_sets = BTreeSet::new();
    for step in p.all_steps() {
        let mut stack = Vec::new();
        visit(&step.id, &edges, &mut stack, &mut done, &mut |cycle| {
            let set: BTreeSet<String> = cycle.iter().cloned().collect();
            if seen_sets.insert(set) {
                found.push(cycle);
            }
        });
    }
    found
}

fn visit<'a>(
    id: &'a str,
    edges: &BTreeMap<&'a str, Vec<&'a str>>,
    stack: &mut Vec<&'a str>,
    done: &mut BTreeSet<&'a str>,
    report: &mut dyn FnMut(Vec<String>),
) {
    if done.contains(id) {
        return;
    }
    if let Some(pos) = stack.iter().position(|s| *s == id) {
        let mut cycle: Vec<String> = stack[pos..].iter().map(|s| s.to_string()).collect();
        cycle.push(id.to_string());
        report(cycle);
        return;
    }
    stack.push(id);
    for next in edges.get(id).into_iter().flatten() {
        if edges.contains_key(next) {
            visit(next, edges, stack, done, report);
        }
    }
    stack.pop();
    done.insert(id);
}

/// Steps that `id` needs, directly or through other steps (never `id`
/// itself, even in a cycle).
pub fn ancestors(p: &Pipeline, id: &str) -> BTreeSet<String> {
    closure(id, &edges(p))
}

/// Steps that need `id`, directly or through other steps.
pub fn descendants(p: &Pipeline, id: &str) -> BTreeSet<String> {
    let mut reverse: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for s in p.all_steps() {
        for n in &s.needs {
            reverse.entry(n.as_str()).or_default().push(s.id.as_str());
        }
    }
    closure(id, &reverse)
}

fn closure(id: &str, edges: &BTreeMap<&str, Vec<&str>>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo: Vec<&str> = edges.get(id).cloned().unwrap_or_default();
    while let Some(next) = todo.pop() {
        if next != id && out.insert(next.to_string()) {
            todo.extend(edges.get(next).into_iter().flatten());
        }
    }
    out
}
