//! A REPL for the toy language (`examples/common/toy.rs`) on
//! kiln-cranelift: `fn` lines define — or, for a name already defined,
//! redefine in place (hot swap: callers compiled earlier call the new
//! body) — and expression lines are compiled into a group of their own,
//! run, and freed.
//!
//! ```text
//! cargo run -p kiln-cranelift --example repl            # a built-in session
//! cargo run -p kiln-cranelift --example repl -- -       # read stdin
//! ```

#[path = "common/toy.rs"]
mod toy;

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::{Arc, RwLock};

use cranelift_codegen::Context;
use cranelift_codegen::ir::{Function, UserFuncName};
use cranelift_module::{FuncId, Linkage, Module, default_libcall_names};
use kiln_cranelift::{KilnBuilder, KilnModule};

const SESSION: &str = "
fn square(x) = x * x
fn area(w, h) = square(w) + h
area(3, 4)
fn square(x) = x * x * x
area(3, 4)
fn fact(n) = if n < 2 then 1 else n * fact(n - 1)
fact(10)
";

/// Names the REPL knows -> (id, arity); shared with lazy callbacks.
type Names = Arc<RwLock<HashMap<String, (FuncId, usize)>>>;

struct Repl {
    module: KilnModule,
    names: Names,
}

impl Repl {
    fn callee(names: &Names, name: &str, arity: usize) -> Result<FuncId, String> {
        match names.read().map_err(|e| e.to_string())?.get(name) {
            Some(&(id, n)) if n == arity => Ok(id),
            _ => Err(format!("no function {name} of {arity} argument(s)")),
        }
    }

    /// Defines `def` lazily, or swaps in its new body.
    fn define(&mut self, def: toy::Def) -> Result<String, Box<dyn std::error::Error>> {
        let arity = def.params.len();
        let known = self
            .names
            .read()
            .map_err(|e| e.to_string())?
            .get(&def.name)
            .copied();
        let call_conv = self.module.isa().default_call_conv();
        if let Some((id, n)) = known {
            if n != arity {
                return Err(format!("{} takes {n} argument(s)", def.name).into());
            }
            let mut func = Function::with_name_signature(
                UserFuncName::user(0, id.as_u32()),
                toy::signature(call_conv, arity),
            );
            let (module, names) = (&mut self.module, &self.names);
            toy::translate(
                &def,
                &mut func,
                module.isa().frontend_config(),
                &mut |c, n, f| Ok(module.declare_func_in_func(Self::callee(names, c, n)?, f)),
            )?;
            self.module.replace_function(id, func)?;
            return Ok(format!("redefined {}", def.name));
        }
        let names = self.names.clone();
        let name = def.name.clone();
        let id = self.module.declare_lazy_function(
            &name,
            Linkage::Export,
            &toy::signature(call_conv, arity),
            move |cx| {
                let mut func = cx.make_function();
                toy::translate(
                    &def,
                    &mut func,
                    cx.isa().frontend_config(),
                    &mut |c, n, f| Ok(cx.declare_func_in_func(Self::callee(&names, c, n)?, f)),
                )?;
                Ok(func)
            },
        )?;
        self.names
            .write()
            .map_err(|e| e.to_string())?
            .insert(name.clone(), (id, arity));
        self.module.finalize_definitions()?;
        Ok(format!("defined {name}"))
    }

    /// Compiles `expr` into a group of its own, runs it, frees it.
    fn eval(&mut self, expr: toy::Expr) -> Result<i64, Box<dyn std::error::Error>> {
        let sig = toy::signature(self.module.isa().default_call_conv(), 0);
        let id = self.module.declare_anonymous_function(&sig)?;
        let def = toy::Def {
            name: String::new(),
            params: Vec::new(),
            body: expr,
        };
        let mut ctx = Context::for_function(Function::with_name_signature(
            UserFuncName::user(0, id.as_u32()),
            sig,
        ));
        let (module, names) = (&mut self.module, &self.names);
        toy::translate(
            &def,
            &mut ctx.func,
            module.isa().frontend_config(),
            &mut |c, n, f| Ok(module.declare_func_in_func(Self::callee(names, c, n)?, f)),
        )?;
        let group = self.module.new_group()?;
        self.module.set_group(Some(group));
        let defined = self.module.define_function(id, &mut ctx);
        self.module.set_group(None);
        defined?;
        self.module.finalize_definitions()?;
        // SAFETY: the expression takes nothing and returns an i64.
        let f: extern "C" fn() -> i64 =
            unsafe { std::mem::transmute(self.module.get_finalized_function(id)) };
        let value = f();
        // SAFETY: it returned, and nothing else calls an expression.
        unsafe { self.module.free_group(group)? };
        Ok(value)
    }

    fn line(&mut self, line: &str) -> Result<String, Box<dyn std::error::Error>> {
        if line.starts_with("fn ") {
            let mut defs = toy::parse_program(line)?;
            let def = defs.pop().ok_or("nothing to define")?;
            return self.define(def);
        }
        Ok(self.eval(toy::parse_expr(line)?)?.to_string())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let module = KilnBuilder::new(default_libcall_names())?.build()?;
    let mut repl = Repl {
        module,
        names: Names::default(),
    };
    let lines: Vec<String> = if std::env::args().nth(1).as_deref() == Some("-") {
        std::io::stdin().lock().lines().collect::<Result<_, _>>()?
    } else {
        SESSION.lines().map(str::to_string).collect()
    };
    for line in lines.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
        println!("> {line}");
        match repl.line(line) {
            Ok(out) => println!("{out}"),
            Err(e) => println!("error: {e}"),
        }
    }
    Ok(())
}
