//! Announcing VIPs: paced gratuitous ARP per interface (R7, R9).

// HELPER-B: implementation goes here.
