//! The toy language (`examples/common/toy.rs`) on kiln-cranelift, every
//! function compiled lazily: its body is translated and compiled on its
//! first call (`fn unused` never is).
//!
//! ```text
//! cargo run -p kiln-cranelift --example toy
//! ```

#[path = "common/toy.rs"]
#[allow(dead_code, reason = "the REPL uses more of the language")]
mod toy;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use cranelift_module::{FuncId, Linkage, Module, default_libcall_names};
use kiln_cranelift::KilnBuilder;

const PROGRAM: &str = "
    fn fib(n) = if n < 2 then n else fib(n - 1) + fib(n - 2)
    fn even(n) = if n == 0 then 1 else odd(n - 1)
    fn odd(n) = if n == 0 then 0 else even(n - 1)
    fn unused(x) = x * 1000
    fn main() = print(fib(20)) + print(even(10)) + print(odd(10))
";

static COMPILED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn print(x: i64) -> i64 {
    println!("print: {x}");
    x
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let defs = toy::parse_program(PROGRAM)?;
    let mut builder = KilnBuilder::new(default_libcall_names())?;
    builder.symbol("print", print as *const u8);
    let mut module = builder.build()?;
    let call_conv = module.isa().default_call_conv();
    let print_id =
        module.declare_function("print", Linkage::Import, &toy::signature(call_conv, 1))?;
    // Name -> (id, arity), filled once every function is declared.
    let ids: Arc<OnceLock<HashMap<String, (FuncId, usize)>>> = Arc::new(OnceLock::new());
    let mut declared = HashMap::new();
    for def in defs {
        let sig = toy::signature(call_conv, def.params.len());
        let (name, arity, ids) = (def.name.clone(), def.params.len(), ids.clone());
        let id = module.declare_lazy_function(&name, Linkage::Export, &sig, move |cx| {
            COMPILED.fetch_add(1, Ordering::SeqCst);
            let mut func = cx.make_function();
            let ids = ids.get().ok_or("declarations incomplete")?;
            toy::translate(
                &def,
                &mut func,
                cx.isa().frontend_config(),
                &mut |callee, n, f| {
                    let id = match ids.get(callee) {
                        Some(&(id, arity)) if arity == n => id,
                        _ if callee == "print" && n == 1 => print_id,
                        _ => return Err(format!("no function {callee} of {n} argument(s)")),
                    };
                    Ok(cx.declare_func_in_func(id, f))
                },
            )?;
            Ok(func)
        })?;
        declared.insert(name, (id, arity));
    }
    let main_id = declared.get("main").ok_or("no main")?.0;
    let _ = ids.set(declared);
    module.finalize_definitions()?;
    println!(
        "compiled before the first call: {}",
        COMPILED.load(Ordering::SeqCst)
    );
    // SAFETY: `main` takes nothing and returns an i64.
    let main: extern "C" fn() -> i64 =
        unsafe { std::mem::transmute(module.get_finalized_function(main_id)) };
    let result = main();
    println!("main() = {result}");
    println!(
        "compiled after it: {} of 5 (unused never is)",
        COMPILED.load(Ordering::SeqCst)
    );
    assert_eq!(result, 6765 + 1);
    // SAFETY: nothing runs the module's code any more.
    unsafe { module.free_memory() };
    Ok(())
}
