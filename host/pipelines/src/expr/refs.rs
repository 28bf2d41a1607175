//! The variable paths an expression reads, such as `steps.render.outputs.image`
//! or `params.tier`, found by walking the CEL syntax tree. Validation checks
//! each path against the pipeline before any run starts.

use cel::common::ast::operators::INDEX;
use cel::common::ast::{EntryExpr, Expr, LiteralValue};
use cel::{IdedExpr as Expression, Program};

/// Dotted paths read by `program`, each as its segments: `a.b["c"]` gives
/// `["a", "b", "c"]`. Variables bound by macros (`x` in `l.all(x, x > 0)`)
/// are left out; dynamic parts (`a[b]`) end a path.
pub fn references(program: &Program) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    walk(program.expression(), &mut Vec::new(), &mut out);
    out
}

fn path_of(e: &Expression) -> Option<Vec<String>> {
    match &e.expr {
        Expr::Ident(name) => Some(vec![name.clone()]),
        Expr::Select(s) => {
            let mut p = path_of(&s.operand)?;
            p.push(s.field.clone());
            Some(p)
        }
        Expr::Call(c) if c.func_name == INDEX && c.target.is_none() && c.args.len() == 2 => {
            let Expr::Literal(LiteralValue::String(k)) = &c.args[1].expr else {
                return None;
            };
            let mut p = path_of(&c.args[0])?;
            p.push(k.to_string());
            Some(p)
        }
        _ => None,
    }
}

fn walk(e: &Expression, bound: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    if let Some(path) = path_of(e) {
        if !bound.contains(&path[0]) {
            out.push(path);
        }
        return;
    }
    match &e.expr {
        Expr::Select(s) => walk(&s.operand, bound, out),
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                walk(t, bound, out);
            }
            c.args.iter().for_each(|a| walk(a, bound, out));
        }
        Expr::List(l) => l.elements.iter().for_each(|x| walk(x, bound, out)),
        Expr::Map(m) => m
            .entries
            .iter()
            .for_each(|x| walk_entry(&x.expr, bound, out)),
        Expr::Struct(s) => s
            .entries
            .iter()
            .for_each(|x| walk_entry(&x.expr, bound, out)),
        Expr::Comprehension(c) => {
            walk(&c.iter_range, bound, out);
            walk(&c.accu_init, bound, out);
            let before = bound.len();
            bound.push(c.iter_var.clone());
            bound.extend(c.iter_var2.clone());
            bound.push(c.accu_var.clone());
            for part in [&c.loop_cond, &c.loop_step, &c.result] {
                walk(part, bound, out);
            }
            bound.truncate(before);
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

fn walk_entry(e: &EntryExpr, bound: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match e {
        EntryExpr::StructField(f) => walk(&f.value, bound, out),
        EntryExpr::MapEntry(m) => {
            walk(&m.key, bound, out);
            walk(&m.value, bound, out);
        }
    }
}
