//! A tiny expression language (in the spirit of cranelift-jit-demo's toy
//! language, written anew): every value is an `i64`.
//!
//! ```text
//! fn fib(n) = if n < 2 then n else fib(n - 1) + fib(n - 2)
//! fn main() = print(fib(20))
//! ```
//!
//! `print(x)` calls the host; `a < b` and `a == b` are 1 or 0.

use std::collections::HashMap;

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{self, AbiParam, InstBuilder, types};
use cranelift_codegen::isa::TargetFrontendConfig;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};

/// An expression.
#[derive(Debug, Clone)]
pub(crate) enum Expr {
    Num(i64),
    Var(String),
    Bin(char, Box<Expr>, Box<Expr>),
    If(Box<Expr>, Box<Expr>, Box<Expr>),
    Call(String, Vec<Expr>),
}

/// `fn name(params) = body`.
#[derive(Debug, Clone)]
pub(crate) struct Def {
    pub(crate) name: String,
    pub(crate) params: Vec<String>,
    pub(crate) body: Expr,
}

/// The signature of a toy function of `arity` arguments.
pub(crate) fn signature(
    call_conv: cranelift_codegen::isa::CallConv,
    arity: usize,
) -> ir::Signature {
    let mut sig = ir::Signature::new(call_conv);
    sig.params
        .extend((0..arity).map(|_| AbiParam::new(types::I64)));
    sig.returns.push(AbiParam::new(types::I64));
    sig
}

fn tokens(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = src.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c.is_alphanumeric() || c == '_' {
            let mut word = String::new();
            while let Some(&c) = chars.peek().filter(|c| c.is_alphanumeric() || **c == '_') {
                word.push(c);
                chars.next();
            }
            out.push(word);
        } else if c == '=' {
            chars.next();
            if chars.peek() == Some(&'=') {
                chars.next();
                out.push("==".into());
            } else {
                out.push("=".into());
            }
        } else {
            out.push(c.to_string());
            chars.next();
        }
    }
    out
}

struct Parser {
    toks: Vec<String>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&str> {
        self.toks.get(self.at).map(String::as_str)
    }
    fn next(&mut self) -> Result<String, String> {
        let t = self
            .toks
            .get(self.at)
            .cloned()
            .ok_or("unexpected end of input")?;
        self.at += 1;
        Ok(t)
    }
    fn expect(&mut self, want: &str) -> Result<(), String> {
        match self.next()? {
            t if t == want => Ok(()),
            t => Err(format!("expected `{want}`, found `{t}`")),
        }
    }
    fn def(&mut self) -> Result<Def, String> {
        self.expect("fn")?;
        let name = self.next()?;
        self.expect("(")?;
        let mut params = Vec::new();
        while self.peek() != Some(")") {
            params.push(self.next()?);
            if self.peek() == Some(",") {
                self.next()?;
            }
        }
        self.expect(")")?;
        self.expect("=")?;
        Ok(Def {
            name,
            params,
            body: self.expr()?,
        })
    }
    fn expr(&mut self) -> Result<Expr, String> {
        if self.peek() == Some("if") {
            self.next()?;
            let c = self.expr()?;
            self.expect("then")?;
            let t = self.expr()?;
            self.expect("else")?;
            let e = self.expr()?;
            return Ok(Expr::If(Box::new(c), Box::new(t), Box::new(e)));
        }
        let lhs = self.sum()?;
        match self.peek() {
            Some("<") | Some("==") => {
                let op = if self.next()? == "<" { '<' } else { '=' };
                Ok(Expr::Bin(op, Box::new(lhs), Box::new(self.sum()?)))
            }
            _ => Ok(lhs),
        }
    }
    fn sum(&mut self) -> Result<Expr, String> {
        let mut lhs = self.term()?;
        while let Some(op @ ("+" | "-")) = self.peek() {
            let op = op.chars().next().unwrap_or('+');
            self.next()?;
            lhs = Expr::Bin(op, Box::new(lhs), Box::new(self.term()?));
        }
        Ok(lhs)
    }
    fn term(&mut self) -> Result<Expr, String> {
        let mut lhs = self.atom()?;
        while self.peek() == Some("*") {
            self.next()?;
            lhs = Expr::Bin('*', Box::new(lhs), Box::new(self.atom()?));
        }
        Ok(lhs)
    }
    fn atom(&mut self) -> Result<Expr, String> {
        let t = self.next()?;
        if t == "(" {
            let e = self.expr()?;
            self.expect(")")?;
            return Ok(e);
        }
        if let Ok(n) = t.parse() {
            return Ok(Expr::Num(n));
        }
        if self.peek() != Some("(") {
            return Ok(Expr::Var(t));
        }
        self.next()?;
        let mut args = Vec::new();
        while self.peek() != Some(")") {
            args.push(self.expr()?);
            if self.peek() == Some(",") {
                self.next()?;
            }
        }
        self.expect(")")?;
        Ok(Expr::Call(t, args))
    }
}

/// Parses every `fn` definition of `src`.
pub(crate) fn parse_program(src: &str) -> Result<Vec<Def>, String> {
    let mut p = Parser {
        toks: tokens(src),
        at: 0,
    };
    let mut defs = Vec::new();
    while p.peek().is_some() {
        defs.push(p.def()?);
    }
    Ok(defs)
}

/// Parses one expression.
pub(crate) fn parse_expr(src: &str) -> Result<Expr, String> {
    let mut p = Parser {
        toks: tokens(src),
        at: 0,
    };
    let e = p.expr()?;
    match p.peek() {
        None => Ok(e),
        Some(t) => Err(format!("unexpected `{t}`")),
    }
}

/// Translates `def` into `func` (whose signature is set). `callee(name,
/// arity, func)` declares a function to call in `func` (`print` included).
pub(crate) fn translate(
    def: &Def,
    func: &mut ir::Function,
    config: TargetFrontendConfig,
    callee: &mut dyn FnMut(&str, usize, &mut ir::Function) -> Result<ir::FuncRef, String>,
) -> Result<(), String> {
    // Callees first: the builder borrows the function from here on.
    let mut refs = HashMap::new();
    collect_calls(&def.body, &mut |name, arity| {
        if !refs.contains_key(name) {
            refs.insert(name.to_string(), callee(name, arity, func)?);
        }
        Ok(())
    })?;
    let mut fctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(func, &mut fctx);
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let vars: HashMap<String, ir::Value> = def
        .params
        .iter()
        .cloned()
        .zip(b.block_params(entry).to_vec())
        .collect();
    let v = emit(&def.body, &mut b, &vars, &refs)?;
    b.ins().return_(&[v]);
    b.seal_all_blocks();
    b.finalize(config);
    Ok(())
}

fn collect_calls(
    e: &Expr,
    f: &mut dyn FnMut(&str, usize) -> Result<(), String>,
) -> Result<(), String> {
    match e {
        Expr::Num(_) | Expr::Var(_) => Ok(()),
        Expr::Bin(_, a, b) => {
            collect_calls(a, f)?;
            collect_calls(b, f)
        }
        Expr::If(c, t, e) => {
            collect_calls(c, f)?;
            collect_calls(t, f)?;
            collect_calls(e, f)
        }
        Expr::Call(name, args) => {
            f(name, args.len())?;
            args.iter().try_for_each(|a| collect_calls(a, f))
        }
    }
}

fn emit(
    e: &Expr,
    b: &mut FunctionBuilder<'_>,
    vars: &HashMap<String, ir::Value>,
    refs: &HashMap<String, ir::FuncRef>,
) -> Result<ir::Value, String> {
    Ok(match e {
        Expr::Num(n) => b.ins().iconst(types::I64, *n),
        Expr::Var(v) => *vars
            .get(v)
            .ok_or_else(|| format!("unknown variable `{v}`"))?,
        Expr::Bin(op, l, r) => {
            let (l, r) = (emit(l, b, vars, refs)?, emit(r, b, vars, refs)?);
            match op {
                '+' => b.ins().iadd(l, r),
                '-' => b.ins().isub(l, r),
                '*' => b.ins().imul(l, r),
                _ => {
                    let cc = if *op == '<' {
                        IntCC::SignedLessThan
                    } else {
                        IntCC::Equal
                    };
                    let c = b.ins().icmp(cc, l, r);
                    b.ins().uextend(types::I64, c)
                }
            }
        }
        Expr::If(c, t, f) => {
            let c = emit(c, b, vars, refs)?;
            let (then_block, else_block, join) =
                (b.create_block(), b.create_block(), b.create_block());
            b.append_block_param(join, types::I64);
            b.ins().brif(c, then_block, &[], else_block, &[]);
            b.switch_to_block(then_block);
            let t = emit(t, b, vars, refs)?;
            b.ins().jump(join, &[t.into()]);
            b.switch_to_block(else_block);
            let f = emit(f, b, vars, refs)?;
            b.ins().jump(join, &[f.into()]);
            b.switch_to_block(join);
            b.block_params(join)[0]
        }
        Expr::Call(name, args) => {
            let args = args
                .iter()
                .map(|a| emit(a, b, vars, refs))
                .collect::<Result<Vec<_>, _>>()?;
            let call = b.ins().call(refs[name.as_str()], &args);
            b.inst_results(call)[0]
        }
    })
}
