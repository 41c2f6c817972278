//! The XDP half from userspace: load and attach the program, keep its maps
//! (watched VIPs, held VIPs) in step with the engine, read its counters and
//! its conflict events.

// HELPER-E: implementation goes here.
