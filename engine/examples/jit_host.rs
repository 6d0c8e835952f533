//! A small JIT host on kiln's engine.
//!
//! "Compiling" a function here means building a Rust closure and storing it in
//! a code table; its "address" is the slot index. Everything else is what a
//! real host does: modules are materialization units compiled on worker
//! threads when first needed, each declaring what its functions call, and
//! several threads look functions up and run them only once they are Ready
//! — that is, once everything they call is compiled too.
//!
//! Run with `cargo run --example jit_host -p kiln-engine`.

use std::sync::{Arc, Mutex};
use std::thread;

use kiln_engine::*;

type Code = Arc<dyn Fn(&Machine, i64) -> i64 + Send + Sync>;

/// The code table: compiled functions, addressed by index.
#[derive(Default, Clone)]
struct Machine {
    code: Arc<Mutex<Vec<Code>>>,
    session: Option<Session>,
    order: Option<SearchOrder>,
}

impl Machine {
    fn install(&self, code: Code) -> u64 {
        let mut table = self.code.lock().unwrap();
        table.push(code);
        (table.len() - 1) as u64
    }

    /// Calls a function by name: look it up at Ready, then run it.
    fn call(&self, name: &str, arg: i64) -> Result<i64> {
        let session = self
            .session
            .as_ref()
            .expect("machine attached to a session");
        let order = self.order.as_ref().expect("machine has a search order");
        let sym = session.intern(name);
        let found = session
            .lookup(
                order,
                &LookupSet::required([sym.clone()]),
                RequiredState::Ready,
            )
            .wait()?;
        let address = found.get(&sym).expect("required symbol present").address;
        let code = self.code.lock().unwrap()[address as usize].clone();
        Ok(code(self, arg))
    }
}

/// A module of functions: `(name, callees, body)`.
struct Module {
    name: String,
    machine: Machine,
    functions: Vec<(SymbolName, Vec<SymbolName>, Code)>,
}

impl MaterializationUnit for Module {
    fn name(&self) -> &str {
        &self.name
    }

    fn symbols(&self) -> Vec<(SymbolName, SymbolFlags)> {
        self.functions
            .iter()
            .map(|(n, _, _)| (n.clone(), SymbolFlags::EXPORTED | SymbolFlags::CALLABLE))
            .collect()
    }

    fn materialize(self: Box<Self>, r: Responsibility) {
        println!("  [{}] compiling module {}", thread_name(), self.name);
        let mut defs = Vec::new();
        let mut groups = Vec::new();
        for (name, callees, body) in self.functions {
            let address = self.machine.install(body);
            defs.push((
                name.clone(),
                SymbolDef::new(address, SymbolFlags::EXPORTED | SymbolFlags::CALLABLE),
            ));
            groups.push(DependenceGroup::new([name], [(r.dylib().clone(), callees)]));
        }
        if let Err(e) = r.resolve(&defs) {
            return r.fail(e);
        }
        let _ = r.emit(groups);
    }
}

fn thread_name() -> String {
    thread::current().name().unwrap_or("main").to_string()
}

fn main() -> Result<()> {
    let session = Session::builder().dispatcher(WorkerPool::new(2)).build();
    let app = session.create_dylib("app")?;
    let machine = Machine {
        session: Some(session.clone()),
        order: Some(SearchOrder::new().with(&app, DylibLookup::ExportedOnly)),
        ..Machine::default()
    };
    let n = |s: &str| session.intern(s);

    // Two mutually recursive modules: is_even calls is_odd and back.
    app.define(Module {
        name: "even.mod".into(),
        machine: machine.clone(),
        functions: vec![(
            n("is_even"),
            vec![n("is_odd")],
            Arc::new(|m: &Machine, x| {
                if x == 0 {
                    1
                } else {
                    m.call("is_odd", x - 1).unwrap()
                }
            }),
        )],
    })?;
    app.define(Module {
        name: "odd.mod".into(),
        machine: machine.clone(),
        functions: vec![(
            n("is_odd"),
            vec![n("is_even")],
            Arc::new(|m: &Machine, x| {
                if x == 0 {
                    0
                } else {
                    m.call("is_even", x - 1).unwrap()
                }
            }),
        )],
    })?;
    // A module calling one whose code generation fails; owned by its own
    // tracker so it can be removed.
    let tracker = app.create_tracker()?;
    app.define_with(
        Module {
            name: "uses_broken.mod".into(),
            machine: machine.clone(),
            functions: vec![(
                n("twice_broken"),
                vec![n("broken")],
                Arc::new(|m: &Machine, x| 2 * m.call("broken", x).unwrap()),
            )],
        },
        &tracker,
    )?;
    app.define(FailingUnit(n("broken")))?;

    println!("four threads call is_even concurrently (each module compiles once):");
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let m = machine.clone();
            thread::spawn(move || m.call("is_even", 10 + t).unwrap())
        })
        .collect();
    for (t, h) in handles.into_iter().enumerate() {
        println!("  is_even({}) = {}", 10 + t, h.join().unwrap());
    }

    println!("calling a function whose dependency fails to compile:");
    match machine.call("twice_broken", 1) {
        Ok(v) => println!("  unexpected success: {v}"),
        Err(e) => println!("  error: {e}\n  root cause: {}", e.root_cause()),
    }

    println!("removing the tracker that owned twice_broken:");
    tracker.remove()?;
    println!(
        "  twice_broken is now {:?}",
        app.symbol_state(&n("twice_broken"))
    );
    session.end();
    Ok(())
}

/// Defines `broken`, and fails to compile it.
struct FailingUnit(SymbolName);

impl MaterializationUnit for FailingUnit {
    fn name(&self) -> &str {
        "broken.mod"
    }
    fn symbols(&self) -> Vec<(SymbolName, SymbolFlags)> {
        vec![(
            self.0.clone(),
            SymbolFlags::EXPORTED | SymbolFlags::CALLABLE,
        )]
    }
    fn materialize(self: Box<Self>, r: Responsibility) {
        r.fail(Error::msg(
            "type error at broken.src:3: expected i64, found str",
        ));
    }
}
