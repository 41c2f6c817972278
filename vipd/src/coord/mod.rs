//! ZooKeeper: the session, the election and the VIP configuration store.

// HELPER-C: implementation goes here.
