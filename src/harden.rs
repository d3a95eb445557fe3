//! The process, hardened at start: no core dumps. A crash, or a signal that asks for a dump,
//! must never write the memory that holds the root key or an intermediate key to disk, and a
//! non-dumpable process cannot be attached to (ptrace) by other processes of the same user.

/// Forbids core dumps for this process: the core size limit is set to zero (hard and soft) and
/// the process is marked not dumpable. Says why if the system refused.
pub fn forbid_core_dumps() -> Result<(), String> {
    use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};
    let zero = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    setrlimit(Resource::Core, zero).map_err(|e| format!("cannot set RLIMIT_CORE to 0: {e}"))?;
    set_dumpable_behavior(DumpableBehavior::NotDumpable)
        .map_err(|e| format!("cannot mark the process not dumpable: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn after_it_the_process_dumps_no_core() {
        super::forbid_core_dumps().unwrap();
        let limit = rustix::process::getrlimit(rustix::process::Resource::Core);
        assert_eq!((limit.current, limit.maximum), (Some(0), Some(0)));
        assert_eq!(
            rustix::process::dumpable_behavior().unwrap(),
            rustix::process::DumpableBehavior::NotDumpable
        );
    }
}
